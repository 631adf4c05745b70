"""pipeline.train: data pipeline, class weights, determinism, resume, MLflow, failures.

Training runs on the real digits at 8x8 (conftest's digits_prepared) with a
tiny CNN for 1-3 epochs; the resume test kills a real training subprocess.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline import train
from pipeline.cli import StageError
from pipeline.config import ConfigError, parse_config

from .conftest import REPO, Project, small_params

VARIANT_TRAIN = {"epochs": 2, "batch_size": 64, "class_weight": "off"}
# Dropout and augmentation: the random streams a resume must reproduce.
RANDOM_VARIANT = {"model": {"dropout": 0.3, "augmentation": {"enabled": True}}}


def _write(project: Project, train_over: dict | None = None, variants: dict | None = None):
    params = small_params(
        data={"image_size": [8, 8]},
        train={**VARIANT_TRAIN, **(train_over or {})},
        variants=variants or {"baseline": {}, "noisy": RANDOM_VARIANT},
    )
    return project.write_params(params)


def _subprocess_env(project: Project, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO)
    env["MLFLOW_TRACKING_URI"] = project.tracking_uri
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env.update(extra)
    return env


# ----------------------------------------------------------------- pure parts


def test_epoch_order_is_a_function_of_seed_and_epoch():
    a = train.epoch_order(50, seed=3, epoch=1)
    np.testing.assert_array_equal(a, train.epoch_order(50, seed=3, epoch=1))
    assert sorted(a) == list(range(50))
    assert not np.array_equal(a, train.epoch_order(50, seed=3, epoch=2))
    assert not np.array_equal(a, train.epoch_order(50, seed=4, epoch=1))


def test_train_dataset_batches_each_epoch_separately_and_resumes_mid_stream():
    x = np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1)
    y = np.arange(10, dtype=np.int64)
    full = [
        (xb.numpy(), yb.numpy())
        for xb, yb in train.train_dataset(x, y, batch_size=4, seed=5, first_epoch=0, epochs=3)
    ]
    assert [len(yb) for _, yb in full] == [4, 4, 2] * 3  # no batch straddles two epochs
    for epoch in range(3):
        seen = np.concatenate([yb for _, yb in full[3 * epoch : 3 * epoch + 3]])
        np.testing.assert_array_equal(seen, train.epoch_order(10, 5, epoch))
    xb, yb = full[0]
    assert xb.dtype == np.float32 and xb.shape == (4, 1, 1, 1)
    np.testing.assert_array_equal(xb[:, 0, 0, 0], yb.astype(np.float32))
    resumed = [yb.numpy() for _, yb in train.train_dataset(x, y, 4, 5, first_epoch=2, epochs=3)]
    for got, want in zip(resumed, [yb for _, yb in full[6:]], strict=True):
        np.testing.assert_array_equal(got, want)


def test_eval_dataset_keeps_file_order():
    x = np.arange(5, dtype=np.uint8).reshape(5, 1, 1, 1)
    labels = [yb.numpy() for _, yb in train.eval_dataset(x, np.arange(5), batch_size=2)]
    np.testing.assert_array_equal(np.concatenate(labels), np.arange(5))


def test_balanced_class_weights():
    weights = train.balanced_class_weights(np.array([0, 0, 0, 1]), n_classes=3)
    assert weights[0] == pytest.approx(4 / (2 * 3))
    assert weights[1] == pytest.approx(4 / (2 * 1))
    assert weights[2] == 1.0  # absent class


def _validation(path: Path, balance_ok: bool) -> Path:
    path.write_text(
        json.dumps(
            {
                "success": True,
                "checks": [
                    {"name": "label_set", "success": True, "severity": "error"},
                    {"name": "class_balance", "success": balance_ok, "severity": "warning"},
                ],
            }
        )
    )
    return path


def test_class_weight_auto_follows_the_class_balance_check(tmp_path, caplog):
    y = np.array([0, 0, 0, 1])
    failed = _validation(tmp_path / "failed.json", balance_ok=False)
    passed = _validation(tmp_path / "passed.json", balance_ok=True)
    assert train.resolve_class_weights("auto", y, 2, failed) == train.balanced_class_weights(y, 2)
    assert train.resolve_class_weights("auto", y, 2, passed) is None
    with caplog.at_level(logging.INFO, logger="pipeline.train"):
        assert train.resolve_class_weights("auto", y, 2, tmp_path / "missing.json") is None
    assert "missing.json not found: class weights off" in caplog.text
    assert train.resolve_class_weights("on", y, 2, passed) == train.balanced_class_weights(y, 2)
    assert train.resolve_class_weights("off", y, 2, failed) is None


def test_class_weight_auto_rejects_a_broken_validation_report(tmp_path):
    bad = tmp_path / "validation.json"
    bad.write_text("{not json")
    with pytest.raises(StageError, match="validation.json: not valid JSON"):
        train.resolve_class_weights("auto", np.array([0, 1]), 2, bad)


def _rows(val_losses, lr=0.01):
    return [
        {"epoch": i + 1, "loss": 1.0, "accuracy": 0.5, "val_loss": v, "val_accuracy": 0.5,
         "learning_rate": lr, "epoch_seconds": 0.1}
        for i, v in enumerate(val_losses)
    ]  # fmt: skip


def test_replayed_callbacks_follow_keras_rules():
    cfg = parse_config(
        small_params(
            train={"early_stopping": {"patience": 2}, "reduce_lr": {"enabled": True, "patience": 1}}
        )
    )
    vcfg = cfg.variant("baseline")
    es, rl = train.make_early_stopping(vcfg), train.make_reduce_lr(vcfg)
    lr, stop = train.replay_callbacks(_rows([1.0, 0.9, 0.95]), es, rl)
    assert (lr, stop) == (pytest.approx(0.005), False)
    assert (es.best, es.wait, es.best_epoch) == (0.9, 1, 1)
    assert train.stopped_early(_rows([1.0, 0.9, 0.95, 0.97]), vcfg)
    assert not train.stopped_early(_rows([1.0, 0.9, 0.95, 0.8]), vcfg)


def test_backup_state_is_dropped_when_params_change_or_rows_are_missing(tmp_path):
    root = tmp_path / "state"
    state = train.open_backup(root, {"variant_params_hash": "a"})
    state.run_id = "r1"
    state.rows = _rows([1.0, 0.9, 0.8])
    state.save()
    (root / "history.csv").write_text(train.history_text(state.rows))
    (root / "checkpoint").mkdir()
    (root / "checkpoint" / "latest.weights.h5").write_bytes(b"x")
    (root / "checkpoint" / "training_metadata.json").write_text('{"epoch": 2, "batch": 0}')
    resumed = train.open_backup(root, {"variant_params_hash": "a"})
    # The third row was written after the last checkpoint: that epoch is rerun.
    assert resumed.run_id == "r1" and [r["epoch"] for r in resumed.rows] == [1, 2]
    (root / "checkpoint" / "training_metadata.json").write_text('{"epoch": 5, "batch": 0}')
    assert train.open_backup(root, {"variant_params_hash": "a"}).rows == []  # inconsistent
    assert not root.exists()
    fresh = train.open_backup(root, {"variant_params_hash": "a"})
    fresh.run_id = "r2"
    fresh.save()
    assert train.open_backup(root, {"variant_params_hash": "b"}).run_id is None


# ------------------------------------------------------------------- training


def _history(project: Project, variant: str) -> pd.DataFrame:
    return pd.read_csv(project.paths.history_csv(variant))


def test_train_writes_the_contract_outputs_and_mlflow_run(digits_prepared):
    import mlflow
    from mlflow.tracking import MlflowClient

    project = digits_prepared
    # class_weight auto + a failed class_balance check: fit runs with weights.
    _write(project, train_over={"class_weight": "auto"})
    project.paths.reports_dir.mkdir()
    _validation(project.paths.validation_json, balance_ok=False)
    assert train.main(["--variant", "baseline"]) == 0

    history = _history(project, "baseline")
    assert list(history.columns) == list(train.HISTORY_COLUMNS)
    assert history["epoch"].tolist() == [1, 2]
    assert (history["epoch_seconds"] > 0).all()
    metrics = json.loads(project.paths.train_metrics("baseline").read_text())
    assert set(metrics) == {
        "variant", "best_epoch", "stopped_epoch", "epochs_run", "train_seconds",
        "images_per_second", "best_val_loss", "best_val_accuracy", "params",
    }  # fmt: skip
    assert metrics["epochs_run"] == 2 and metrics["best_epoch"] in (1, 2)
    assert metrics["best_val_loss"] == pytest.approx(history["val_loss"].min())
    run_info = json.loads(project.paths.run_info("baseline").read_text())
    assert run_info["variant"] == "baseline"
    assert not project.paths.backup_dir("baseline").exists()

    import keras

    model = keras.saving.load_model(project.paths.model_file("baseline"))
    assert model.get_layer("conv_1") is not None
    assert model.count_params() == metrics["params"]

    mlflow.set_tracking_uri(project.tracking_uri)
    client = MlflowClient(project.tracking_uri)
    run = client.get_run(run_info["run_id"])
    assert run.info.status == "FINISHED"
    assert run.info.experiment_id == run_info["experiment_id"]
    for tag in ("variant", "stage", "git_commit", "data_version", "params_hash", "repro_id"):
        assert tag in run.data.tags, tag
    assert run.data.tags["variant"] == "baseline" and run.data.tags["stage"] == "train"
    params = run.data.params
    assert params["model.conv_filters"] == "[4]" and params["train.epochs"] == "2"
    assert params["data.n_classes"] == "10" and params["data.image_size"] == "[8, 8]"
    assert params["train.class_weight"] == "auto"
    assert params["train.class_weight_applied"] == "True"
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "gap_accuracy", "gap_loss",
                "learning_rate"):  # fmt: skip
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert steps == [1, 2], key
    gap = client.get_metric_history(run.info.run_id, "gap_accuracy")[-1].value
    row = history.iloc[-1]
    assert gap == pytest.approx(row["accuracy"] - row["val_accuracy"])
    for key in ("best_epoch", "stopped_epoch", "epochs_run", "train_seconds", "images_per_second"):
        assert run.data.metrics[key] == pytest.approx(metrics[key]), key
    assert run.data.metrics["param_count"] == metrics["params"]
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id)]
    assert "model_summary.txt" in artifacts

    loaded = mlflow.keras.load_model(run_info["model_uri"])
    x = np.asarray(project_images(project)[:4], dtype=np.float32)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    pyfunc = mlflow.pyfunc.load_model(run_info["model_uri"])
    assert np.asarray(pyfunc.predict(x)).shape == (4, 10)
    assert pyfunc.metadata.signature is not None


def project_images(project: Project) -> np.ndarray:
    return np.load(project.paths.prepared_dir / "test_x.npy")


def test_same_params_and_data_give_the_same_history(digits_prepared):
    project = digits_prepared
    _write(project)
    assert train.main(["--variant", "noisy"]) == 0
    first = _history(project, "noisy")
    first_run = json.loads(project.paths.run_info("noisy").read_text())["run_id"]
    assert train.main(["--variant", "noisy"]) == 0
    second = _history(project, "noisy")
    assert json.loads(project.paths.run_info("noisy").read_text())["run_id"] != first_run
    cols = ["loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"]
    np.testing.assert_allclose(first[cols].to_numpy(), second[cols].to_numpy(), atol=1e-6)


def test_nan_loss_stops_with_a_clear_error_and_no_outputs(digits_prepared, monkeypatch):
    import mlflow
    from mlflow.tracking import MlflowClient

    import pipeline.models

    real_build = pipeline.models.build_model

    def poisoned(*args, **kwargs):
        # Simulate a diverged model: an infinite weight makes the loss NaN at once.
        model = real_build(*args, **kwargs)
        kernel = model.get_layer("output").kernel
        kernel.assign(np.full(kernel.shape, np.inf, dtype="float32"))
        return model

    monkeypatch.setattr(pipeline.models, "build_model", poisoned)
    project = digits_prepared
    _write(project)
    with pytest.raises(StageError, match=r"variant 'baseline'.*epoch 1.*learning_rate"):
        train.main(["--variant", "baseline"])
    assert not project.paths.variant_dir("baseline").exists()
    assert not project.paths.backup_dir("baseline").exists()
    mlflow.set_tracking_uri(project.tracking_uri)
    runs = MlflowClient(project.tracking_uri).search_runs(
        [mlflow.get_experiment_by_name("cnn-overfitting").experiment_id]
    )
    assert [r.info.status for r in runs] == ["FAILED"]


def test_a_kill_after_training_reuses_the_finished_epochs(digits_prepared, monkeypatch):
    project = digits_prepared
    _write(project, train_over={"epochs": 1})

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # killed while writing the outputs

    real_write = train.write_outputs
    monkeypatch.setattr(train, "write_outputs", crash)
    with pytest.raises(KeyboardInterrupt):
        train.main(["--variant", "baseline"])
    state = json.loads((project.paths.backup_dir("baseline") / "state.json").read_text())
    assert state["fit_done"] is True
    assert not project.paths.variant_dir("baseline").exists()
    monkeypatch.setattr(train, "write_outputs", real_write)
    fitted = []
    real_fit = train.train_dataset
    monkeypatch.setattr(
        train, "train_dataset", lambda *a, **k: fitted.append(1) or real_fit(*a, **k)
    )
    assert train.main(["--variant", "baseline"]) == 0
    assert fitted == []  # no epoch was trained again
    run_info = json.loads(project.paths.run_info("baseline").read_text())
    assert run_info["run_id"] == state["run_id"]


def test_unknown_variant_is_a_config_error_listing_the_variants(digits_prepared):
    _write(digits_prepared)
    with pytest.raises(ConfigError, match="unknown variant 'nope'.*baseline, noisy"):
        train.main(["--variant", "nope"])


def test_unknown_variant_exits_2_from_the_command_line(digits_prepared):
    project = digits_prepared
    _write(project)
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.train", "--variant", "nope"],
        cwd=project.root, env=_subprocess_env(project), capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "unknown variant 'nope'" in proc.stderr and "baseline, noisy" in proc.stderr


def test_unreachable_tracking_server_fails_fast_without_outputs(digits_prepared):
    project = digits_prepared
    _write(project)
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.train", "--variant", "baseline"],
        cwd=project.root, env=_subprocess_env(project, MLFLOW_TRACKING_URI="http://127.0.0.1:9"),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    elapsed = time.monotonic() - start
    assert proc.returncode == 2, proc.stderr
    assert "http://127.0.0.1:9" in proc.stderr and "unreachable" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert elapsed < 30
    assert not project.paths.models_dir.exists()
    assert not project.paths.state_dir.exists()


# --------------------------------------------------------------------- resume


def _checkpoint_epoch(project: Project, variant: str) -> int:
    return train.checkpoint_epoch(project.paths.backup_dir(variant) / "checkpoint")


@pytest.mark.slow
def test_resume_after_sigkill_matches_an_uninterrupted_run(digits_prepared, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    project = digits_prepared
    # Enough epochs that the kill lands mid-run; LR schedule and early stopping
    # on, so their replayed state is exercised too.
    over = {
        "epochs": 10,
        "batch_size": 16,
        "learning_rate": 0.005,
        "early_stopping": {"enabled": True, "patience": 3},
        "reduce_lr": {"enabled": True, "patience": 1, "factor": 0.5},
    }
    _write(project, train_over=over)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.train", "--variant", "noisy"],
        cwd=project.root, env=_subprocess_env(project), stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 180
    try:
        while _checkpoint_epoch(project, "noisy") < 2:
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "training did not reach epoch 2"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
        proc.stderr.close()
    killed_at = _checkpoint_epoch(project, "noisy")
    assert 2 <= killed_at < 10
    assert not project.paths.model_file("noisy").exists()
    state = json.loads((project.paths.backup_dir("noisy") / "state.json").read_text())

    assert train.main(["--variant", "noisy"]) == 0
    resumed = _history(project, "noisy")
    run_info = json.loads(project.paths.run_info("noisy").read_text())
    assert run_info["run_id"] == state["run_id"]  # the same MLflow run continued
    client = MlflowClient(project.tracking_uri)
    steps = [m.step for m in client.get_metric_history(run_info["run_id"], "val_loss")]
    assert steps == resumed["epoch"].tolist()  # every epoch once, none lost
    assert client.get_run(run_info["run_id"]).info.status == "FINISHED"

    # The same training uninterrupted, in a fresh project with the same data.
    other = Project(tmp_path / "uninterrupted")
    other.root.mkdir()
    shutil.copytree(project.paths.prepared_dir, other.paths.prepared_dir)
    shutil.copy2(project.paths.params, other.paths.params)
    monkeypatch.chdir(other.root)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", other.tracking_uri)
    assert train.main(["--variant", "noisy"]) == 0
    straight = _history(other, "noisy")

    cols = ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"]
    assert len(resumed) == len(straight)
    np.testing.assert_allclose(resumed[cols].to_numpy(), straight[cols].to_numpy(), atol=1e-5)
    metrics = json.loads(project.paths.train_metrics("noisy").read_text())
    straight_metrics = json.loads(other.paths.train_metrics("noisy").read_text())
    for key in ("best_epoch", "stopped_epoch", "epochs_run"):
        assert metrics[key] == straight_metrics[key], key


def _fresh_copy(project: Project, root: Path, monkeypatch) -> Project:
    """A second project with the same data and params, made the current one."""
    other = Project(root)
    other.root.mkdir()
    shutil.copytree(project.paths.prepared_dir, other.paths.prepared_dir)
    shutil.copy2(project.paths.params, other.paths.params)
    monkeypatch.chdir(other.root)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", other.tracking_uri)
    return other


def test_resume_restores_best_weights_lr_schedule_and_early_stopping(
    digits_prepared, tmp_path, monkeypatch
):
    import keras
    from mlflow.tracking import MlflowClient

    project = digits_prepared
    # With this seed and rate, val_loss rises at epoch 4 (best stays epoch 3) and
    # ReduceLROnPlateau halves the rate for epoch 5: the interruption after
    # epoch 4 must carry the best weights, the LR and the callbacks' counters.
    # Seed 3 gives that scenario with this data (checked by the assert below,
    # which fails rather than skips if a change to training alters it).
    over = {
        "epochs": 5,
        "seed": 3,
        "batch_size": 16,
        "learning_rate": 0.05,
        "early_stopping": {"enabled": True, "patience": 2},
        "reduce_lr": {"enabled": True, "patience": 1, "factor": 0.5},
    }
    _write(project, train_over=over)
    real_metrics = train.epoch_metrics
    calls = []

    def interrupt_after_epoch_4(row):
        calls.append(row["epoch"])
        if len(calls) == 4:
            raise KeyboardInterrupt  # after epoch 4's checkpoint, before its MLflow log
        return real_metrics(row)

    monkeypatch.setattr(train, "epoch_metrics", interrupt_after_epoch_4)
    with pytest.raises(KeyboardInterrupt):
        train.main(["--variant", "noisy"])
    assert _checkpoint_epoch(project, "noisy") == 4
    monkeypatch.setattr(train, "epoch_metrics", real_metrics)
    assert train.main(["--variant", "noisy"]) == 0
    resumed = _history(project, "noisy")
    run_id = json.loads(project.paths.run_info("noisy").read_text())["run_id"]
    steps = [m.step for m in MlflowClient(project.tracking_uri).get_metric_history(run_id, "loss")]
    assert steps == [1, 2, 3, 4, 5]  # epoch 4 backfilled, nothing twice

    other = _fresh_copy(project, tmp_path / "straight", monkeypatch)
    assert train.main(["--variant", "noisy"]) == 0
    straight = _history(other, "noisy")
    cols = ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"]
    np.testing.assert_allclose(resumed[cols].to_numpy(), straight[cols].to_numpy(), atol=1e-5)
    lr = straight["learning_rate"].tolist()
    best_at_kill = int(straight.iloc[:4]["val_loss"].idxmin()) + 1
    assert lr[-1] < lr[0] and best_at_kill < 4, f"scenario lost: lr {lr}, best {best_at_kill}"
    images = np.asarray(project_images(project)[:8], dtype=np.float32)
    a = keras.saving.load_model(project.paths.model_file("noisy")).predict(images, verbose=0)
    b = keras.saving.load_model(other.paths.model_file("noisy")).predict(images, verbose=0)
    np.testing.assert_allclose(a, b, atol=1e-5)


# ------------------------------------------------------------- learning curve


def test_train_subset_is_stratified_nested_and_deterministic():
    y = np.repeat(np.arange(4), [40, 20, 100, 8])
    quarter = train.train_subset(y, 0.25, seed=42)
    half = train.train_subset(y, 0.5, seed=42)
    np.testing.assert_array_equal(quarter, train.train_subset(y, 0.25, seed=42))
    assert np.all(np.diff(quarter) > 0)  # sorted, unique rows
    assert set(quarter) < set(half)  # nested
    assert np.bincount(y[quarter]).tolist() == [10, 5, 25, 2]  # every class keeps its share
    assert np.bincount(y[half]).tolist() == [20, 10, 50, 4]
    assert not np.array_equal(quarter, train.train_subset(y, 0.25, seed=43))
    # A class too small for the fraction keeps one image rather than vanishing.
    assert np.bincount(y[train.train_subset(y, 0.01, seed=42)]).tolist() == [1, 1, 1, 1]
    with pytest.raises(ValueError, match="fraction"):
        train.train_subset(y, 0.0, seed=42)


def test_fraction_must_be_listed_and_the_variant_must_be_the_curves(digits_prepared):
    _write(digits_prepared)
    with pytest.raises(ConfigError, match=r"learning_curve\.fractions \(allowed: 0\.25, 0\.5\)"):
        train.main(["--variant", "baseline", "--fraction", "0.3"])
    with pytest.raises(ConfigError, match=r"learning_curve\.variant \('baseline'\), not 'noisy'"):
        train.main(["--variant", "noisy", "--fraction", "0.25"])
    assert not digits_prepared.paths.learning_curve_dir.exists()


@pytest.mark.slow
def test_fraction_stage_scores_its_subset_and_logs_a_tagged_run(digits_prepared):
    from mlflow.tracking import MlflowClient

    project = digits_prepared
    _write(project)
    n_full = len(np.load(project.paths.prepared_dir / "train_y.npy"))
    results = {}
    for fraction in ("0.25", "0.5"):
        proc = subprocess.run(
            [sys.executable, "-m", "pipeline.train", "--variant", "baseline",
             "--fraction", fraction],
            cwd=project.root, env=_subprocess_env(project), capture_output=True, text=True,
            timeout=600,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert f"models/learning_curve/{fraction}" in proc.stdout
        results[fraction] = json.loads(project.paths.fraction_result(float(fraction)).read_text())
        history = pd.read_csv(project.paths.fraction_history(float(fraction)))
        assert history["epoch"].tolist() == [1, 2]
        assert not project.paths.fraction_backup_dir(float(fraction)).exists()

    y_train = np.load(project.paths.prepared_dir / "train_y.npy")
    n_val = len(np.load(project.paths.prepared_dir / "val_y.npy"))
    for fraction, result in results.items():
        rows = train.train_subset(y_train, float(fraction), seed=42)
        assert result["fraction"] == float(fraction) and result["variant"] == "baseline"
        assert result["n_train"] == len(rows) == result["train"]["n"]
        assert result["n_train"] == pytest.approx(float(fraction) * n_full, abs=10)
        assert result["n_train_full"] == n_full and result["val"]["n"] == n_val
        for split in ("train", "val"):
            assert 0.0 <= result[split]["accuracy"] <= 1.0 and result[split]["loss"] > 0
        assert result["training"]["epochs_run"] == 2
        assert not (project.paths.fraction_dir(float(fraction)) / "model.keras").exists()
    assert results["0.25"]["n_train"] < results["0.5"]["n_train"]
    # The variant's own outputs are untouched: 1.0 is the train stage, not this one.
    assert not project.paths.variant_dir("baseline").exists()

    client = MlflowClient(project.tracking_uri)
    run = client.get_run(results["0.25"]["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    for tag in ("git_commit", "data_version", "params_hash", "repro_id"):
        assert tag in tags, tag
    assert tags["stage"] == "learning_curve" and tags["variant"] == "baseline"
    assert tags["train_fraction"] == "0.25"
    assert run.data.params["train_fraction"] == "0.25"
    assert run.data.params["n_train"] == str(results["0.25"]["n_train"])
    assert run.data.params["data.n_train"] == str(results["0.25"]["n_train"])
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")]
    assert steps == [1, 2]
    assert run.data.metrics["subset_val_accuracy"] == pytest.approx(
        results["0.25"]["val"]["accuracy"]
    )
