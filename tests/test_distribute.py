"""pipeline.distribute: tf.distribute strategies for one variant's training, for real.

- `mirrored` on 2 logical CPU devices and `multi_worker_mirrored` with 2 worker
  processes on loopback (scripts/train-workers.sh) each train the variant to the
  end, and their curves match a one-device run of the same global batch;
- under multi-worker only the chief writes the outputs and the MLflow run;
- a killed run under a strategy is refused with a clear message, not resumed;
- TF_CONFIG and the strategy must agree.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline import distribute, history
from pipeline.cli import StageError

from .conftest import (
    REPO,
    Project,
    digits_arrays,
    make_prepared,
    small_params,
    write_validation,
)

# Same arithmetic, other summation order: a strategy's losses match one device's
# within 0.1 % and its accuracies within 1 point. Measured on these 3 epochs, for
# mirrored and for 2 workers alike: losses within 2.2e-4 relative, accuracies within
# 0.4 points (4 of 1,259 train images, 1 of 269 val images near a decision
# boundary flip when the weights differ in their last digits).
LOSS_RTOL, ACCURACY_ATOL = 1e-3, 0.01


def read_rows(path: Path) -> list[dict[str, float]]:
    with path.open() as handle:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)]


def train_env(project: Project, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CONFIG", "MLFLOW_RUN_ID")}
    env["MLFLOW_TRACKING_URI"] = project.tracking_uri
    return {**env, **extra}


def set_strategy(project: Project, strategy: str) -> None:
    params = yaml.safe_load(project.paths.params.read_text())
    params["variants"]["baseline"] = {"train": {"strategy": strategy}}
    project.write_params(params)


def train_subprocess(project: Project, **env: str) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.train", "--variant", "baseline"],
        cwd=project.root, env=train_env(project, **env), capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done


@pytest.fixture(scope="module")
def one_device(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, float]]:
    """baseline's history trained on one device (strategy none), as the reference: the
    same digits and params as `digits_prepared`, trained once for the module's tests."""
    project = Project(tmp_path_factory.mktemp("one_device"))
    x, y = digits_arrays()
    make_prepared(project.paths.prepared_dir, x, y, [str(c) for c in range(10)])
    project.write_params(small_params(data={"image_size": [8, 8]}))
    write_validation(project)
    train_subprocess(project)
    return read_rows(project.paths.history_csv("baseline"))


def assert_same_curves(rows, reference) -> None:
    assert [r["epoch"] for r in rows] == [r["epoch"] for r in reference]
    for row, ref in zip(rows, reference, strict=True):
        for key in ("loss", "val_loss"):
            assert row[key] == pytest.approx(ref[key], rel=LOSS_RTOL), (row["epoch"], key)
        for key in ("accuracy", "val_accuracy"):
            assert row[key] == pytest.approx(ref[key], abs=ACCURACY_ATOL), (row["epoch"], key)


@pytest.mark.slow
def test_mirrored_on_two_cpu_devices_matches_one_device(digits_prepared, one_device):
    set_strategy(digits_prepared, "mirrored")
    done = train_subprocess(digits_prepared, PIPELINE_CPU_DEVICES="2")
    assert "trained baseline" in done.stdout
    assert_same_curves(read_rows(digits_prepared.paths.history_csv("baseline")), one_device)
    assert digits_prepared.paths.model_file("baseline").exists()


@pytest.mark.slow
def test_two_workers_train_one_variant_and_only_the_chief_writes(digits_prepared, one_device):
    from mlflow import MlflowClient

    project = digits_prepared
    set_strategy(project, "multi_worker_mirrored")
    before = {p for p in project.root.rglob("*") if p.is_file()}
    done = subprocess.run(
        ["bash", str(REPO / "scripts" / "train-workers.sh"), "2", "baseline"],
        cwd=project.root, env=train_env(project, PYTHON=sys.executable), capture_output=True,
        text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "trained baseline" in done.stdout  # the chief's summary line
    worker_log = (project.root / ".pipeline_state/workers/baseline/worker-1.log").read_text()
    assert "worker: trained baseline with the chief" in worker_log, worker_log
    assert_same_curves(read_rows(project.paths.history_csv("baseline")), one_device)

    # One MLflow train run: the chief's, none from worker 1 (the reference trained elsewhere).
    client = MlflowClient(project.tracking_uri)
    name = yaml.safe_load(project.paths.params.read_text())["mlflow"]["experiment"]
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id], "tags.stage = 'train'")
    assert len(runs) == 1, [r.data.params.get("train.strategy") for r in runs]
    chief = json.loads(project.paths.run_info("baseline").read_text())["run_id"]
    assert client.get_run(chief).data.params["train.strategy"] == "multi_worker_mirrored"
    # Worker 1 wrote nothing in the project but its log: every new file is the chief's.
    new = {p.relative_to(project.root) for p in project.root.rglob("*") if p.is_file()} - {
        p.relative_to(project.root) for p in before
    }
    chiefs = {
        Path("models/baseline"),
        Path("mlartifacts"),
        Path("mlflow.db"),
        Path(".pipeline_state/locks"),  # the chief holds the variant's training lock
    }
    others = {p for p in new if not any(p == c or c in p.parents for c in chiefs)}
    assert others == {Path(".pipeline_state/workers/baseline/worker-1.log")}, sorted(others)


@pytest.mark.slow
def test_a_killed_run_under_a_strategy_is_refused_not_resumed(digits_prepared, monkeypatch):
    from pipeline import train

    project = digits_prepared
    write_validation(project)
    set_strategy(project, "mirrored")
    monkeypatch.setattr(distribute, "_started", {})
    real = history.epoch_metrics

    def killed_after_epoch_2(row):
        if row["epoch"] == 2:
            raise KeyboardInterrupt  # as a kill would, after epoch 2's state is saved
        return real(row)

    monkeypatch.setattr(history, "epoch_metrics", killed_after_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train.main(["--variant", "baseline"])
    monkeypatch.setattr(history, "epoch_metrics", real)
    with pytest.raises(StageError, match=r"does not resume .*Remove .*pipeline_state"):
        train.main(["--variant", "baseline"])
    assert not project.paths.model_file("baseline").exists()  # nothing half-written


@pytest.mark.parametrize(
    ("tf_config", "strategy", "message"),
    [
        (None, "multi_worker_mirrored", "needs TF_CONFIG"),
        ("not json", "multi_worker_mirrored", "TF_CONFIG is not valid"),
        ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}}',
         "none", "lists 2 workers but train.strategy is 'none'"),
    ],
)  # fmt: skip
def test_tf_config_and_the_strategy_must_agree(monkeypatch, tf_config, strategy, message):
    monkeypatch.setattr(distribute, "_started", {})
    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(distribute.DistributeError, match=message):
        distribute.start(strategy)
    assert distribute._started == {}


def test_the_chief_is_worker_0_or_the_chief_task(monkeypatch):
    monkeypatch.setattr(distribute, "_started", {"multi_worker_mirrored": object()})
    two = {"cluster": {"worker": ["a:1", "b:2"]}}
    for index, chief in ((0, True), (1, False)):
        monkeypatch.setenv(
            "TF_CONFIG", json.dumps({**two, "task": {"type": "worker", "index": index}})
        )
        assert distribute.is_chief() is chief
    with_chief = {"cluster": {"chief": ["c:0"], "worker": ["a:1"]}}
    monkeypatch.setenv(
        "TF_CONFIG", json.dumps({**with_chief, "task": {"type": "worker", "index": 0}})
    )
    assert distribute.is_chief() is False
    monkeypatch.setattr(distribute, "_started", {"none": object()})
    assert distribute.is_chief() is True  # without multi-worker every process writes


def test_a_process_runs_under_one_strategy(monkeypatch):
    monkeypatch.setattr(distribute, "_started", {"none": object()})
    with pytest.raises(distribute.DistributeError, match="already runs under 'none'"):
        distribute.start("mirrored")


def test_a_multi_worker_variant_trains_its_learning_curve_on_one_device(monkeypatch):
    from pipeline import train
    from pipeline.config import ConfigError, parse_config

    from .conftest import small_params

    started = []
    monkeypatch.setattr(distribute, "start", started.append)
    multi = {"train": {"strategy": "multi_worker_mirrored"}}
    cfg = parse_config(small_params(variants={"baseline": multi}))
    train.start_strategy(cfg, "baseline", fraction=0.25)
    train.start_strategy(cfg, "baseline", fraction=None)
    assert started == ["none", "multi_worker_mirrored"]
    seeds = parse_config(
        small_params(variants={"baseline": {"train": {**multi["train"], "seeds": 2}}})
    )
    with pytest.raises(ConfigError, match=r"variants.baseline: .*train.seeds: 1 for it \(now 2\)"):
        train.start_strategy(seeds, "baseline", fraction=None)


def test_thread_pools_are_set_before_tensorflow_starts_and_kept_after():
    code = (
        "import tensorflow as tf\n"
        "from pipeline import distribute\n"
        "distribute.set_threads(1, 1)\n"
        "t = tf.config.threading\n"
        "print(t.get_intra_op_parallelism_threads(), t.get_inter_op_parallelism_threads())\n"
        "tf.constant(1.0) + 1.0\n"
        "distribute.set_threads(2, 2)  # TensorFlow has run an op: kept, no error\n"
        "print(t.get_intra_op_parallelism_threads(), t.get_inter_op_parallelism_threads())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["1", "1", "1", "1"]
