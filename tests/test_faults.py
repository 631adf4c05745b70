"""Fault injection under the real `dvc repro`: kills, an unreachable tracking server,
a full disk, and source trees DVC itself cannot hash.

Every case checks what a user would: one clear line and no traceback, the last
good outputs still in place, and a rerun that works. They start from the shared
repro'd repo (`pipeline_repo`, digits at 8x8, two variants) copied per test.

Faults tested next to the code they concern: a full disk inside prepare's own
writes and reserved arrays (test_prepare), names that are not UTF-8, symlink
loops and bombs in the source listing (test_datasets, test_prepare), stale
staging folders (test_prepared), an abandoned MLflow run ended KILLED
(test_resume), kill-and-resume of training (test_resume), duplicate params keys
(test_config), and retrain's one-line failures and plain cron log (test_retrain).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from .conftest import (
    BIN,
    dvc,
    dvc_env,
    init_repo,
    mount_tmpfs,
    ran_stages,
    small_params,
    umount_tmpfs,
    write_png_folder,
)

pytestmark = pytest.mark.slow

UNREACHABLE = "http://127.0.0.1:9"  # nothing listens: every MLflow call fails fast


def snapshot(root: Path, outs: list[str]) -> dict[str, bytes]:
    """The bytes of every file under `outs` (files or folders), by relative path."""
    files: dict[str, bytes] = {}
    for out in outs:
        path = root / out
        for f in [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()):
            files[str(f.relative_to(root))] = f.read_bytes()
    return files


def edit_params(root: Path, change) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    change(params)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def assert_one_clear_error(done: subprocess.CompletedProcess, *needles: str) -> None:
    text = done.stdout + done.stderr
    assert "Traceback" not in text, text
    errors = [line for line in text.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, text
    for needle in needles:
        assert needle in errors[0], errors[0]


# Each stage with a params change that makes it rerun, and the outputs it owns.
STAGES = {
    "prepare": (lambda p: p["data"].update(seed=7), ["data/prepared"]),
    "validate": (
        lambda p: p["validate"].update(max_examples=7),
        ["reports/validation.json", "reports/validation_flags.json", "reports/data_docs"],
    ),
    "train@baseline": (
        lambda p: p["variants"].update(baseline={"train": {"epochs": 3}}),
        ["models/baseline"],
    ),
    "learning_curve@0.25": (
        lambda p: p["variants"].update(baseline={"train": {"epochs": 3}}),
        ["models/learning_curve/0.25"],
    ),
    "evaluate": (
        lambda p: p["evaluate"].update(min_effect=0.02),
        ["reports/evaluation.json", "reports/comparison.csv", "reports/figures"],
    ),
    # report has no params: it reruns when forced (`-f`) or when evaluate's outputs change
    "report": (lambda p: None, ["reports/report.html"]),
}
TRACKED = ["validate", "train@baseline", "learning_curve@0.25", "evaluate"]


# --------------------------------------------------------------------------- MLflow down


@pytest.mark.parametrize("stage", TRACKED)
def test_an_unreachable_tracking_server_is_one_line_and_keeps_the_last_results(own_repo, stage):
    """Every stage that logs to MLflow contacts it before writing anything; DVC deletes
    no output (all persist), so the failure loses nothing and the rerun works."""
    root = own_repo
    change, outs = STAGES[stage]
    before = snapshot(root, outs)
    assert before
    edit_params(root, change)
    failed = dvc(root, "repro", "-s", stage, check=False, MLFLOW_TRACKING_URI=UNREACHABLE)
    assert failed.returncode != 0, failed.stdout
    assert_one_clear_error(failed, UNREACHABLE, "unreachable", "MLFLOW_TRACKING_URI")
    assert snapshot(root, outs) == before
    # ...and the next run with MLflow back reruns it (the failure recorded nothing).
    assert stage in ran_stages(dvc(root, "repro", "-s", stage).stdout)
    assert json.loads(dvc(root, "status", stage, "--json").stdout or "{}") == {}


# --------------------------------------------------------------------------- kills


def stage_pids(module: str) -> list[int]:
    """Live processes running `python -m pipeline.<module>`."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"pipeline.{module}".encode() in argv:
            pids.append(int(entry.name))
    return pids


def kill_while_running(root: Path, stage: str, busy: str | None) -> None:
    """Start `dvc repro -s stage` and SIGKILL dvc and the stage (as a closed terminal or
    the OOM killer would) once the stage is mid-write: when a path matching the glob
    `busy` (a staging folder, resume state) exists under `root`; with no `busy`, a tenth
    of a second into the stage's own process (still importing: what that tests is that
    DVC deleted nothing before starting it)."""
    module = "train" if stage.startswith(("train", "learning_curve")) else stage
    child = subprocess.Popen(
        [str(BIN / "dvc"), "repro", "-s", *(["-f"] if stage == "report" else []), stage],
        cwd=root,
        env=dvc_env(root),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )

    def started() -> bool:
        return bool(next(root.glob(busy), None)) if busy else bool(stage_pids(module))

    deadline = time.monotonic() + 300
    while not started() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    if not busy:
        time.sleep(0.1)
    assert child.poll() is None, f"{stage} finished before it could be killed"
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()


@pytest.mark.parametrize(
    ("stage", "busy"),
    [
        ("prepare", "data/.prepared.*"),  # the new dataset's staging folder
        ("validate", "reports/.data_docs.*"),  # the new Data Docs' staging folder
        ("train@baseline", ".pipeline_state/train/baseline/*"),  # an epoch's resume state
        ("evaluate", "reports/.figures.*"),  # the new figures' staging folder
        ("report", None),
    ],
)
def test_a_killed_stage_keeps_the_last_results_and_the_rerun_completes(own_repo, stage, busy):
    root = own_repo
    change, outs = STAGES[stage]
    before = snapshot(root, outs)
    edit_params(root, change)
    kill_while_running(root, stage, busy)
    assert snapshot(root, outs) == before
    assert not [p for p in root.rglob(".*.tmp")], "a temp file was left behind"
    force = ["-f"] if stage == "report" else []
    assert stage in ran_stages(dvc(root, "repro", "-s", *force, stage).stdout)
    assert json.loads(dvc(root, "status", stage, "--json").stdout or "{}") == {}
    # the killed run's staging folder went with the rerun
    assert not [p for p in root.glob(busy or "reports/.report.html.*")]
    if stage == "prepare":
        assert len(pd.read_parquet(root / "data/prepared/manifest.parquet")) == 1797
        assert json.loads((root / "data/prepared/meta.json").read_text())["seed"] == 7


# --------------------------------------------------------------------------- full disk


def fill(disk: Path) -> Path:
    """Write a file on `disk` until it is full; returns it (delete it to free the disk)."""
    filler = disk / "filler.bin"
    with open(filler, "wb", buffering=0) as f:
        for chunk in (2**20, 2**12, 1):
            try:
                while True:
                    f.write(b"\0" * chunk)
            except OSError:
                continue
    return filler


@pytest.fixture
def full_disk_repo(own_repo: Path, tmp_path: Path):
    """`own_repo` copied onto its own tmpfs, with 64 MB to spare (filled by the test)."""
    used = sum(p.lstat().st_blocks * 512 for p in own_repo.rglob("*"))
    disk = tmp_path / "disk"
    mount_tmpfs(disk, f"{used // 2**20 + 64}m")
    try:
        subprocess.run(["cp", "-a", f"{own_repo}/.", str(disk)], check=True)
        yield disk
    finally:
        umount_tmpfs(disk)


def test_a_full_disk_fails_each_stage_with_one_line_and_keeps_its_outputs(full_disk_repo):
    """After prepare (which checks space up front: test_prepare), a full disk can hit any
    write: MLflow's database, a report, a figure, a model. Each stage says so in one line
    and keeps its last outputs; with space back, `dvc repro` finishes."""
    root = full_disk_repo
    # dropout, not the learning curve's variant: its change reruns no learning-curve stage.
    dropout = {"model": {"dropout": 0.5}, "train": {"epochs": 3}}
    edit_params(root, lambda p: p["variants"].update(dropout=dropout))
    edit_params(root, lambda p: p["validate"].update(max_examples=7))
    filler = fill(root)
    env = {**dvc_env(root), "PYTHONPATH": str(root)}
    outputs = {name: outs for name, (_, outs) in STAGES.items()}
    outputs["train@dropout"] = ["models/dropout"]
    for stage, args in [
        ("validate", []),
        ("train@dropout", ["--variant", "dropout"]),
        ("evaluate", []),
        ("report", []),
    ]:
        outs = outputs[stage]
        before = snapshot(root, outs)
        module = stage.split("@")[0]
        done = subprocess.run(
            [sys.executable, "-m", f"pipeline.{module}", *args],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 2, (stage, done.stdout, done.stderr)
        assert_one_clear_error(done, "the disk is full", "Free some space")
        assert snapshot(root, outs) == before, stage
        assert not [p for p in root.rglob(".*.tmp")], stage
    filler.unlink()
    ran = ran_stages(dvc(root, "repro").stdout)
    assert {"validate", "train@dropout", "evaluate", "report"} <= ran


# --------------------------------------------------------------------------- odd source trees


def test_source_trees_dvc_cannot_hash_still_reproduce(tmp_path: Path):
    """DVC's hashing of a dependency stops on symlink loops, dangling links and names
    that are not UTF-8; prepare depends on the `source` stage's fingerprint instead,
    so `dvc repro` works and prepare records each odd entry."""
    root = tmp_path / "repo"
    images = root / "images"
    write_png_folder(images, per_class=12, classes=("a", "b"), seed=3)
    (images / "a" / "loop").symlink_to("..")  # images/a/loop -> images/a
    (images / "b" / "gone.png").symlink_to("nowhere.png")
    odd = os.fsencode(images / "b") + b"/caf\xe9.png"  # Latin-1 bytes: not UTF-8
    with open(odd, "wb") as f:
        f.write((images / "b" / "000.png").read_bytes())
    init_repo(root, small_params(data={"source": "images", "image_size": [8, 8]}))
    first = dvc(root, "repro", "prepare")
    assert "prepare" in ran_stages(first.stdout)
    assert "2 not regular files" in first.stdout  # the loop and the dangling link
    manifest = pd.read_parquet(root / "data/prepared/manifest.parquet").set_index("id")
    assert manifest.loc["b/caf\\xe9.png", "status"] == "ok"
    assert manifest.loc["b/gone.png", "status"] != "ok"
    assert ran_stages(dvc(root, "repro", "prepare").stdout) == set()
    os.unlink(odd)
    assert ran_stages(dvc(root, "repro", "prepare").stdout) == {"prepare"}


def test_a_source_under_home_reproduces(tmp_path: Path):
    """`data.source: ~/photos` was once taken by DVC as '<project>/~/photos'."""
    home = tmp_path / "home"
    write_png_folder(home / "photos", per_class=12, classes=("a", "b"), seed=4)
    root = tmp_path / "repo"
    init_repo(root, small_params(data={"source": "~/photos", "image_size": [8, 8]}))
    first = dvc(root, "repro", "prepare", HOME=str(home))
    assert "prepare" in ran_stages(first.stdout)
    meta = json.loads((root / "data/prepared/meta.json").read_text())
    assert meta["classes"] == ["a", "b"] and meta["source"] == "~/photos"
    assert ran_stages(dvc(root, "repro", "prepare", HOME=str(home)).stdout) == set()
