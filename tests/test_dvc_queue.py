"""Parallel variants through DVC's experiment queue: `dvc exp run --queue` + `dvc queue start -j 2`.

Each queued experiment runs its stages in a temporary copy of the repo under
.dvc/tmp/exps/; the runs still land in the repo's own mlflow.db (DVC_ROOT, see
tracking.store_root), one parent run per experiment, and `dvc exp show`
compares them. Two workers at once corrupt nothing: the sqlite store passes its
integrity check with every epoch of both runs, both experiments' outputs come
back from the DVC cache with `dvc exp apply`, and the two really ran at once.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import dvc

pytestmark = pytest.mark.slow


def git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=root, check=True, capture_output=True, text=True
    ).stdout


def wait_for_queue(root: Path, timeout: float = 1200) -> str:
    """`dvc queue status` once nothing is queued or running."""
    deadline = time.monotonic() + timeout
    while True:
        status = dvc(root, "queue", "status").stdout
        if not any(word in status for word in ("Queued", "Running")):
            return status
        assert time.monotonic() < deadline, status
        time.sleep(3)


def test_two_queued_experiments_run_in_parallel_into_one_store(own_repo):
    from mlflow import MlflowClient

    root = own_repo
    (root / ".gitignore").write_text("/mlflow.db\n/mlartifacts/\n/.pipeline_state/\n")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "results")
    for name, rate in (("drop03", "0.3"), ("drop07", "0.7")):
        dvc(
            root,
            "exp",
            "run",
            "--queue",
            "-n",
            name,
            "-S",
            f"variants.dropout.model.dropout={rate}",
        )
    dvc(root, "queue", "start", "-j", "2")
    status = wait_for_queue(root)
    assert status.count("Success") == 2, status + dvc(root, "queue", "logs", "drop03").stdout

    shown = json.loads(dvc(root, "exp", "show", "--json").stdout)
    experiments = {
        rev["name"]: rev["data"]
        for head in shown
        for group in head.get("experiments") or []
        for rev in group["revs"]
        if rev.get("name") in ("drop03", "drop07")
    }
    assert set(experiments) == {"drop03", "drop07"}
    for name, rate in (("drop03", 0.3), ("drop07", 0.7)):
        data = experiments[name]
        assert (
            data["params"]["params.yaml"]["data"]["variants"]["dropout"]["model"]["dropout"] == rate
        )
        verdict = data["metrics"]["reports/metrics.json"]["data"]["dropout"]["verdict"]
        assert verdict in {"overfitting", "underfitting", "good_fit"}

    # Both experiments' runs are in the repo's own store, whole, each under its own parent.
    db = root / "mlflow.db"
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    client = MlflowClient(f"sqlite:///{db}")
    experiment = client.get_experiment_by_name("cnn-overfitting")
    runs = client.search_runs(
        [experiment.experiment_id], "tags.stage = 'train' and tags.variant = 'dropout'"
    )
    by_rate = {r.data.params["model.dropout"]: r for r in runs}
    assert {"0.3", "0.7"} <= set(by_rate), sorted(by_rate)
    parents = set()
    for rate in ("0.3", "0.7"):
        run = by_rate[rate]
        assert run.info.status == "FINISHED"
        steps = sorted(
            m.step for m in client.get_metric_history(run.info.run_id, "curves/val_loss")
        )
        assert steps == list(range(1, int(run.data.metrics["training/epochs_run"]) + 1))
        assert "eval/test_accuracy" in run.data.metrics  # its experiment's evaluate ran
        parents.add(run.data.tags["mlflow.parentRunId"])
    assert len(parents) == 2
    # The two ran at once: each experiment's pipeline run began before the other's ended.
    first, second = sorted((client.get_run(p).info for p in parents), key=lambda i: i.start_time)
    assert second.start_time < first.end_time, (first, second)

    # The DVC cache holds each experiment's outputs whole.
    for name in ("drop03", "drop07"):
        dvc(root, "exp", "apply", name)
        applied = json.loads((root / "reports" / "metrics.json").read_text())
        assert applied == experiments[name]["metrics"]["reports/metrics.json"]["data"]
        assert "modified" not in dvc(root, "status").stdout
