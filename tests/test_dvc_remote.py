"""Shared data and models through a DVC remote: push from one clone, pull in another.

A local-directory remote stands in for S3 or SSH (the README shows both); the
commands and what DVC stores are the same. After `dvc pull` the second clone
has the prepared data and every model, `dvc repro` reruns nothing, and its
evaluation is the first clone's, byte for byte.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from .conftest import dvc, ran_stages

pytestmark = pytest.mark.slow


def git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=root, check=True, capture_output=True, text=True
    ).stdout


def test_push_from_one_clone_and_pull_in_another_reproduces_nothing(own_repo, tmp_path):
    first = own_repo
    (first / ".gitignore").write_text("/mlflow.db\n/mlartifacts/\n/.pipeline_state/\n")
    remote = tmp_path / "remote"
    dvc(first, "remote", "add", "-d", "team", str(remote))
    git(first, "add", "-A")
    git(first, "commit", "-qm", "results and the team remote")
    pushed = dvc(first, "push")
    assert "pushed" in pushed.stdout, pushed.stdout
    assert any(remote.rglob("*")), "nothing reached the remote"

    second = tmp_path / "second"
    git(tmp_path, "clone", "-q", str(first), str(second))
    assert not (second / "data" / "prepared").exists()  # git holds no data or model
    assert not (second / "models" / "baseline" / "model.keras").exists()
    # The remote gone: pull fails and says what is missing; back in place, it works.
    remote.rename(tmp_path / "away")
    failed = dvc(second, "pull", check=False)
    assert failed.returncode != 0, failed.stdout
    assert "missing" in (failed.stdout + failed.stderr).lower(), failed.stdout + failed.stderr
    (tmp_path / "away").rename(remote)
    dvc(second, "pull")
    for rel in ("data/prepared/manifest.parquet", "models/baseline/model.keras",
                "models/dropout/model.keras"):  # fmt: skip
        assert (second / rel).read_bytes() == (first / rel).read_bytes(), rel

    status = dvc(second, "status").stdout
    assert "changed" not in status.replace("always changed", ""), status
    again = dvc(second, "repro")
    assert ran_stages(again.stdout) == set(), again.stdout
    for rel in ("reports/evaluation.json", "reports/metrics.json", "dvc.lock"):
        assert (second / rel).read_bytes() == (first / rel).read_bytes(), rel
