"""pipeline.resume and pipeline.keras_private: resumable state, replay, Keras internals.

The Keras-internals tests are the alarm for a Keras upgrade: exact resume
relies on private Keras attributes (keras_private.PRIVATE_API); each test
fails naming the attribute that went missing or stopped working.
"""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from pipeline import callbacks, fitting, keras_private, resume, tracking
from pipeline.config import parse_config
from pipeline.history import history_text

from .conftest import small_params


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
    es, rl = callbacks.make_early_stopping(vcfg), callbacks.make_reduce_lr(vcfg)
    lr, stop = resume.replay_callbacks(_rows([1.0, 0.9, 0.95]), es, rl)
    assert (lr, stop) == (pytest.approx(0.005), False)
    assert (es.best, es.wait, es.best_epoch) == (0.9, 1, 1)
    assert fitting.stopped_early(_rows([1.0, 0.9, 0.95, 0.97]), vcfg)
    assert not fitting.stopped_early(_rows([1.0, 0.9, 0.95, 0.8]), vcfg)


def test_backup_state_is_dropped_when_params_change_or_rows_are_missing(tmp_path):
    root = tmp_path / "state"
    state = resume.open_backup(root, {"variant_params_hash": "a"})
    state.run_id = "r1"
    state.rows = _rows([1.0, 0.9, 0.8])
    state.save()
    (root / "history.csv").write_text(history_text(state.rows))
    (root / "checkpoint").mkdir()
    (root / "checkpoint" / "latest.weights.h5").write_bytes(b"x")
    (root / "checkpoint" / "training_metadata.json").write_text('{"epoch": 2, "batch": 0}')
    resumed = resume.open_backup(root, {"variant_params_hash": "a"})
    # The third row was written after the last checkpoint: that epoch is rerun.
    assert resumed.run_id == "r1" and [r["epoch"] for r in resumed.rows] == [1, 2]
    (root / "checkpoint" / "training_metadata.json").write_text('{"epoch": 5, "batch": 0}')
    assert resume.open_backup(root, {"variant_params_hash": "a"}).rows == []  # inconsistent
    assert not root.exists()
    fresh = resume.open_backup(root, {"variant_params_hash": "a"})
    fresh.run_id = "r2"
    fresh.save()
    assert resume.open_backup(root, {"variant_params_hash": "b"}).run_id is None


def _mlflow_run(project, status: str = "RUNNING") -> str:
    """A run in the project's real MLflow backend; RUNNING is what a SIGKILL leaves."""
    import mlflow

    tracking.configure(project.paths)
    client = mlflow.MlflowClient()
    run_id = client.create_run(tracking.ensure_experiment(project.paths, "resume")).info.run_id
    if status != "RUNNING":
        client.set_terminated(run_id, status=status)
    return run_id


def _status(run_id: str) -> str:
    import mlflow

    return mlflow.MlflowClient().get_run(run_id).info.status


def _save_state(root, fingerprint: dict[str, str], run_id: str) -> None:
    state = resume.open_backup(root, fingerprint)
    state.run_id = run_id
    state.save()


def test_a_discarded_state_ends_its_still_running_run_as_killed(project):
    root = project.root / ".pipeline_state" / "train" / "baseline"
    changed = _mlflow_run(project)
    _save_state(root, {"variant_params_hash": "a"}, changed)
    state = resume.open_run_backup(root, {"variant_params_hash": "b"})  # params changed
    assert state.run_id is None and not root.exists()
    assert _status(changed) == "KILLED"

    inconsistent = _mlflow_run(project)
    _save_state(root, {"variant_params_hash": "b"}, inconsistent)
    (root / "checkpoint").mkdir()
    (root / "checkpoint" / "latest.weights.h5").write_bytes(b"x")
    (root / "checkpoint" / "training_metadata.json").write_text('{"epoch": 3, "batch": 0}')
    assert resume.open_run_backup(root, {"variant_params_hash": "b"}).run_id is None
    assert _status(inconsistent) == "KILLED"  # no history rows for 3 epochs


def test_only_an_abandoned_running_run_is_killed(project):
    root = project.root / ".pipeline_state" / "train" / "baseline"
    resumed = _mlflow_run(project)
    _save_state(root, {"variant_params_hash": "a"}, resumed)
    assert resume.open_run_backup(root, {"variant_params_hash": "a"}).run_id == resumed
    assert _status(resumed) == "RUNNING"  # the resume continues it

    for status in ("FINISHED", "FAILED"):
        ended = _mlflow_run(project, status)
        _save_state(root, {"variant_params_hash": "a"}, ended)
        resume.open_run_backup(root, {"variant_params_hash": "b"})
        assert _status(ended) == status
    _save_state(root, {"variant_params_hash": "a"}, "0" * 32)  # a run that is gone
    assert resume.open_run_backup(root, {"variant_params_hash": "b"}).run_id is None


def test_layer_weights_round_trip(tmp_path):
    weights = [np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1.5], dtype=np.float32)]
    resume.save_layer_weights(tmp_path / "w.npz", weights)
    loaded = resume.load_layer_weights(tmp_path / "w.npz")
    assert len(loaded) == 2
    for got, want in zip(loaded, weights, strict=True):
        np.testing.assert_array_equal(got, want)


def test_fingerprint_changes_with_class_weights():
    class Data:
        meta = {"manifest_hash": "abc"}

    vcfg = parse_config(small_params()).variant("baseline")
    plain = resume.fingerprint_of(vcfg, Data(), None)
    assert plain["data_version"] == "abc" and plain["variant"] == "baseline"
    assert resume.fingerprint_of(vcfg, Data(), {0: 1.0, 1: 2.0}) != plain


# ----------------------------------------------------------- Keras internals


@pytest.mark.parametrize(
    "owner,attribute",
    keras_private.PRIVATE_API,
    ids=[f"{owner}.{attribute}" for owner, attribute in keras_private.PRIVATE_API],
)
def test_keras_still_has_each_private_attribute_resume_relies_on(owner, attribute):
    obj = keras_private.probe_objects()[owner]
    if not hasattr(obj, attribute):
        pytest.fail(
            f"Keras {keras.__version__} removed or renamed {owner}.{attribute}; exact resume "
            "relies on it (pipeline/keras_private.py, written for Keras 3.15): adapt that module"
        )


def test_a_missing_internal_raises_naming_it():
    with pytest.raises(keras_private.KerasInternalsError, match=r"EarlyStopping\.no_such"):
        keras_private.require(keras.callbacks.EarlyStopping(), "no_such")
    assert keras_private.missing_private_api() == []


def test_keras_checkpoint_file_names_are_the_ones_resume_reads(tmp_path):
    keras_cb = keras.callbacks.BackupAndRestore(str(tmp_path / "ckpt"))
    names = {
        "BackupAndRestore._weights_path": (keras_cb._weights_path, resume.CHECKPOINT_WEIGHTS),
        "BackupAndRestore._training_metadata_path": (
            keras_cb._training_metadata_path,
            resume.CHECKPOINT_METADATA,
        ),
    }
    for attribute, (path, expected) in names.items():
        assert str(path).endswith(expected), f"Keras {keras.__version__}: {attribute} is {path}"


def _tiny_model(dropout: float = 0.0) -> keras.Model:
    layers = [keras.Input((3,)), keras.layers.Dense(4, name="hidden")]
    if dropout:
        layers.append(keras.layers.Dropout(dropout, seed=1))
    layers.append(keras.layers.Dense(2, activation="softmax", name="output"))
    model = keras.Sequential(layers)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    return model


def _tiny_data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.normal(size=(16, 3)).astype("float32"), rng.integers(0, 2, 16)


@pytest.mark.slow
def test_atomic_checkpoint_is_written_through_keras_save_hook(tmp_path):
    """Keras must still call BackupAndRestore._save_model at each epoch end."""
    x, y = _tiny_data()
    link = tmp_path / "checkpoint"
    backup = keras_private.AtomicBackupAndRestore(str(link), delete_checkpoint=False)
    _tiny_model().fit(x, y, epochs=2, callbacks=[backup], verbose=0)
    assert link.is_symlink(), (
        f"Keras {keras.__version__} no longer calls BackupAndRestore._save_model at epoch end: "
        "the checkpoint was written in place, not atomically (pipeline/keras_private.py)"
    )
    assert link.resolve().name == "checkpoint-2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint", "checkpoint-2"]
    assert resume.checkpoint_epoch(link) == 2
    meta = json.loads((link / resume.CHECKPOINT_METADATA).read_text())
    assert meta == {"epoch": 2, "batch": 0}

    # Keras restores from it: a second fit to 3 epochs runs only the third.
    seen = []
    epoch_log = keras.callbacks.LambdaCallback(on_epoch_begin=lambda e, logs: seen.append(e))
    again = keras_private.AtomicBackupAndRestore(str(link), delete_checkpoint=False)
    _tiny_model().fit(x, y, epochs=3, callbacks=[again, epoch_log], verbose=0)
    assert seen == [2] and resume.checkpoint_epoch(link) == 3


def test_seed_generators_finds_every_random_stream():
    assert keras_private.seed_generators(_tiny_model()) == []
    generators = keras_private.seed_generators(_tiny_model(dropout=0.5))
    assert len(generators) == 1, (
        f"Keras {keras.__version__}: Layer._flatten_layers / Layer._seed_generators no longer "
        "yield a Dropout layer's SeedGenerator (pipeline/keras_private.py)"
    )
    assert isinstance(generators[0], keras.random.SeedGenerator)


@pytest.mark.slow
def test_restored_weights_are_what_early_stopping_restores():
    """EarlyStopping.best_weights, set on resume, is what it restores when it stops."""
    x, y = _tiny_data()
    model = _tiny_model()
    zeros = [np.zeros_like(w) for w in model.get_weights()]
    es = keras.callbacks.EarlyStopping(monitor="loss", patience=5, restore_best_weights=True)

    class Prime(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            es.best = -np.inf  # no epoch improves on it: the primed weights stay the best
            keras_private.set_restored_weights(es, zeros)

    model.fit(x, y, epochs=2, callbacks=[es, Prime()], verbose=0)
    for got in model.get_weights():
        np.testing.assert_array_equal(got, 0.0)
