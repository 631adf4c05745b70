"""pipeline.dvc_runner: the dvc command, its environment, and its failures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import dvc_runner, tracking

from .conftest import dvc, dvc_env


def test_parse_dvc_status():
    assert dvc_runner.parse_dvc_status("{}\n") == {}
    assert dvc_runner.parse_dvc_status("") == {}
    changed = dvc_runner.parse_dvc_status('warning: x\n{"train": [{"changed deps": {}}]}')
    assert list(changed) == ["train"]
    # an always-changed stage says nothing about whether anything would change
    both = '{"source": ["always changed"], "prepare": [{"changed deps": {}}]}'
    assert list(dvc_runner.parse_dvc_status(both)) == ["prepare"]
    with pytest.raises(dvc_runner.DvcError, match="cannot parse"):
        dvc_runner.parse_dvc_status("ERROR: no")


def test_dvc_command_is_this_interpreter_unless_overridden(monkeypatch):
    monkeypatch.delenv(dvc_runner.DVC_ENV, raising=False)
    assert dvc_runner.dvc_command() == [sys.executable, "-m", "dvc"]
    monkeypatch.setenv(dvc_runner.DVC_ENV, "/opt/dvc/bin/dvc --cd 'my repo'")
    assert dvc_runner.dvc_command() == ["/opt/dvc/bin/dvc", "--cd", "my repo"]


def test_child_env_carries_the_repro_id_and_this_interpreter_first_on_path(monkeypatch):
    monkeypatch.setenv("PATH", "/usr/bin")
    env = dvc_runner.child_env("abc")
    assert env[tracking.REPRO_ID_ENV] == "abc"
    assert env["PATH"] == os.pathsep.join([str(Path(sys.executable).parent), "/usr/bin"])
    monkeypatch.delenv("PATH")
    assert dvc_runner.child_env("abc")["PATH"] == str(Path(sys.executable).parent)


def fake_dvc(tmp_path: Path, script: str) -> list[str]:
    path = tmp_path / "fake_dvc.py"
    path.write_text(script)
    return [sys.executable, str(path)]


def test_dvc_status_parses_changes_and_reports_a_failure(tmp_path):
    ok = fake_dvc(tmp_path, "print('{\"train\": []}')")
    assert dvc_runner.dvc_status(tmp_path, ok, dict(os.environ)) == {"train": []}
    failing = fake_dvc(tmp_path, "import sys; print('no dvc.yaml', file=sys.stderr); sys.exit(2)")
    with pytest.raises(dvc_runner.DvcError, match="status --json exited 2: no dvc.yaml"):
        dvc_runner.dvc_status(tmp_path, failing, dict(os.environ))


def test_dvc_repro_failure_and_a_missing_command_raise(tmp_path):
    failing = fake_dvc(tmp_path, "import sys; sys.exit(3)")
    with pytest.raises(dvc_runner.DvcError, match="repro exited 3; the champion was left"):
        dvc_runner.dvc_repro(tmp_path, failing, dict(os.environ))
    missing = [str(tmp_path / "no-such-dvc")]
    with pytest.raises(dvc_runner.DvcError, match="cannot run"):
        dvc_runner.dvc_repro(tmp_path, missing, dict(os.environ))
    with pytest.raises(dvc_runner.DvcError, match="cannot run"):
        dvc_runner.dvc_status(tmp_path, missing, dict(os.environ))


FINGERPRINTED = """\
stages:
  fingerprint:
    cmd: cp input.txt fingerprint.txt
    always_changed: true
    outs:
      - fingerprint.txt:
          cache: false
  use:
    cmd: cp fingerprint.txt out.txt
    deps:
      - fingerprint.txt
    outs:
      - out.txt:
          cache: false
"""


@pytest.mark.slow
def test_refresh_lets_status_see_what_an_always_changed_stage_would_change(tmp_path):
    """`dvc status` lists an always-changed stage every time and cannot see past it: the
    retrain reruns it first, then a changed input shows as a change of its dependents."""
    root = tmp_path / "repo"
    root.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    (root / "dvc.yaml").write_text(FINGERPRINTED)
    (root / "input.txt").write_text("one")
    dvc(root, "init", "-q")
    dvc(root, "repro")
    assert dvc_runner.always_changed_stages(root) == ["fingerprint"]
    cmd, env = dvc_runner.dvc_command(), dvc_env(root)
    raw = json.loads(dvc(root, "status", "--json").stdout)
    assert raw == {"fingerprint": ["always changed"]}
    assert dvc_runner.dvc_status(root, cmd, env) == {}  # nothing would change

    (root / "input.txt").write_text("two")
    assert dvc_runner.dvc_status(root, cmd, env) == {}  # dvc status alone cannot tell
    dvc_runner.refresh(root, cmd, env)
    assert list(dvc_runner.dvc_status(root, cmd, env)) == ["use"]
    assert (root / "out.txt").read_text() == "one"  # refresh ran only the fingerprint
