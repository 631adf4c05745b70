"""pipeline.callbacks on a tiny Keras model: each callback alone, no stage around it."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from pipeline import callbacks, keras_private
from pipeline.config import parse_config
from pipeline.history import HISTORY_COLUMNS, read_history
from pipeline.resume import BackupState, load_layer_weights, save_layer_weights
from pipeline.seeds import epoch_stream_seed

from .conftest import small_params


def _model(dropout: float = 0.0, learning_rate: float = 0.01) -> keras.Model:
    layers = [keras.Input((3,)), keras.layers.Dense(4)]
    if dropout:
        layers += [keras.layers.Dropout(dropout, seed=1), keras.layers.Dropout(dropout, seed=2)]
    layers.append(keras.layers.Dense(2, activation="softmax"))
    model = keras.Sequential(layers)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.normal(size=(16, 3)).astype("float32"), rng.integers(0, 2, 16)


def _state(tmp_path) -> BackupState:
    return BackupState(root=tmp_path / "state", fingerprint={"x": "1"})


def _vcfg(**train):
    return parse_config(small_params(train=train)).variant("baseline")


def test_factories_follow_the_config():
    assert callbacks.make_early_stopping(_vcfg(early_stopping={"enabled": False})) is None
    assert callbacks.make_reduce_lr(_vcfg(reduce_lr={"enabled": False})) is None
    es = callbacks.make_early_stopping(_vcfg(early_stopping={"enabled": True, "patience": 4}))
    assert (es.monitor, es.patience, es.restore_best_weights) == ("val_loss", 4, True)
    rl = callbacks.make_reduce_lr(_vcfg(reduce_lr={"enabled": True, "patience": 2, "factor": 0.5}))
    assert (rl.monitor, rl.patience, rl.factor) == ("val_loss", 2, 0.5)


@pytest.mark.slow
def test_history_rows_writes_one_row_per_epoch(tmp_path):
    x, y = _data()
    state = _state(tmp_path)
    _model(learning_rate=0.02).fit(
        x, y, validation_data=(x, y), epochs=2, callbacks=[callbacks.HistoryRows(state)], verbose=0
    )
    assert [row["epoch"] for row in state.rows] == [1, 2]
    assert set(state.rows[0]) == set(HISTORY_COLUMNS)
    assert state.rows[0]["learning_rate"] == pytest.approx(0.02)
    assert all(row["epoch_seconds"] > 0 for row in state.rows)
    assert read_history(state.history_csv) == state.rows  # on disk, exactly


def test_best_weights_keeps_only_improvements(tmp_path):
    model = _model()
    path = tmp_path / "best.npz"
    best = callbacks.BestWeights(path, best=1.0)
    best.set_model(model)
    best.on_epoch_end(0, {"val_loss": 1.5})  # worse than the resumed best
    assert not path.exists()
    best.on_epoch_end(1, {"val_loss": 0.5})
    saved = load_layer_weights(path)
    model.set_weights([w + 1 for w in model.get_weights()])
    for value in (0.7, math.nan, None):  # worse, non-finite, missing: the file stays
        best.on_epoch_end(2, {"val_loss": value})
    for got, want in zip(load_layer_weights(path), saved, strict=True):
        np.testing.assert_array_equal(got, want)
    assert best.best == 0.5


def test_epoch_seeder_makes_dropout_a_function_of_seed_and_epoch():
    model = _model(dropout=0.5)
    seeder = callbacks.EpochSeeder(seed=5)
    seeder.set_model(model)
    x = np.ones((4, 3), dtype="float32")

    def masks(epoch):
        seeder.on_epoch_begin(epoch)
        return model(x, training=True).numpy()

    first = masks(3)
    states = [np.asarray(g.state.value) for g in keras_private.seed_generators(model)]
    assert [s[0] for s in states] == [epoch_stream_seed(5, 3, i) for i in range(2)]
    np.testing.assert_array_equal(masks(3), first)  # the same epoch draws the same masks
    assert not np.array_equal(masks(4), first)


def test_resume_primer_restores_lr_and_best_weights(tmp_path):
    model = _model(learning_rate=0.01)
    vcfg = _vcfg(
        early_stopping={"enabled": True, "patience": 2},
        reduce_lr={"enabled": True, "patience": 1, "factor": 0.5},
    )
    es, rl = callbacks.make_early_stopping(vcfg), callbacks.make_reduce_lr(vcfg)
    rows = [
        {"epoch": i + 1, "loss": 1.0, "accuracy": 0.5, "val_loss": v, "val_accuracy": 0.5,
         "learning_rate": 0.01, "epoch_seconds": 0.1}
        for i, v in enumerate([1.0, 0.9, 0.95])
    ]  # fmt: skip
    best = [np.full_like(w, 7.0) for w in model.get_weights()]
    save_layer_weights(tmp_path / "best.npz", best)
    primer = callbacks.ResumePrimer(rows, es, rl, tmp_path / "best.npz")
    primer.set_model(model)
    primer.on_train_begin()
    assert float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)) == pytest.approx(0.005)
    assert (es.best, es.wait) == (0.9, 1)
    assert es.model is model and rl.model is model
    for got in es.best_weights:
        np.testing.assert_array_equal(got, 7.0)


def test_mlflow_epochs_logs_the_last_row_at_its_epoch(tmp_path, monkeypatch):
    from pipeline import tracking

    logged = []
    monkeypatch.setattr(tracking, "log_metrics", lambda m, step=None: logged.append((step, m)))
    state = _state(tmp_path)
    state.rows = [
        {"epoch": 1, "loss": 0.5, "accuracy": 0.9, "val_loss": 0.7, "val_accuracy": 0.8,
         "learning_rate": 0.01, "epoch_seconds": 0.1}
    ]  # fmt: skip
    callbacks.MlflowEpochs(state).on_epoch_end(0)
    assert len(logged) == 1
    step, metrics = logged[0]
    assert step == 1
    assert metrics["curves/gap_accuracy"] == pytest.approx(0.1)
    assert metrics["curves/gap_loss"] == pytest.approx(0.2)
    assert metrics["curves/learning_rate"] == 0.01
