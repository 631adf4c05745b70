"""The train stage's Keras callbacks, and the EarlyStopping / ReduceLROnPlateau it uses.

Per epoch, in the order fitting.fit_variant lists them:

- `EpochSeeder`: resets every dropout/augmentation random stream at the epoch
  start to a pure function of (seed, epoch), so a resumed run draws the masks
  an uninterrupted one would;
- `HistoryRows`: appends the epoch's row to the resume state's history.csv;
- `BestWeights`: keeps the lowest-val_loss weights on disk across restarts;
- `StopWhenClear`: ends training once its overfitting is clear (pipeline.stopping);
- `ResumePrimer`: on a resumed fit, replays early stopping and the LR schedule
  from the completed rows and restores the learning rate and best weights;
- `MlflowEpochs`: logs the epoch's metrics and gaps (step = 1-based epoch).

The atomic checkpoint callback is pipeline.keras_private.AtomicBackupAndRestore.
Inputs: a VariantConfig and a resume.BackupState. Outputs: the state's
history.csv and best_weights.npz, MLflow metrics. Importing this module
imports Keras.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras.callbacks import Callback

from pipeline import history, keras_private, tracking
from pipeline.config import VariantConfig
from pipeline.io import write_text_atomic
from pipeline.resume import BackupState, load_layer_weights, replay_callbacks, save_layer_weights
from pipeline.seeds import epoch_stream_seed
from pipeline.stopping import ClearOverfitStop

log = logging.getLogger(__name__)


def make_early_stopping(vcfg: VariantConfig) -> keras.callbacks.EarlyStopping | None:
    """EarlyStopping on val_loss restoring the best weights; None when disabled."""
    es = vcfg.train.early_stopping
    if not es.enabled:
        return None
    return keras.callbacks.EarlyStopping(
        monitor="val_loss",
        mode="min",
        patience=es.patience,
        min_delta=es.min_delta,
        restore_best_weights=True,
    )


def make_reduce_lr(vcfg: VariantConfig) -> keras.callbacks.ReduceLROnPlateau | None:
    """ReduceLROnPlateau on val_loss; None when disabled."""
    rl = vcfg.train.reduce_lr
    if not rl.enabled:
        return None
    return keras.callbacks.ReduceLROnPlateau(
        monitor="val_loss", mode="min", factor=rl.factor, patience=rl.patience
    )


class EpochSeeder(Callback):
    """Re-seed every dropout/augmentation random stream at each epoch start.

    Keras 3 does not store SeedGenerator states in weight checkpoints, so
    without this a resumed run would draw different dropout masks.
    """

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.seed = seed

    def on_epoch_begin(self, epoch, logs=None):
        for i, generator in enumerate(keras_private.seed_generators(self.model)):
            state = np.array([epoch_stream_seed(self.seed, epoch, i), 0], dtype="int64")
            generator.state.assign(state.astype(generator.state.dtype))


class HistoryRows(Callback):
    """Append each completed epoch's row to the backup's history.csv."""

    def __init__(self, state: BackupState) -> None:
        super().__init__()
        self.state = state
        self._lr = 0.0
        self._start = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        # The rate used during the epoch (ReduceLROnPlateau changes it at the end).
        self._lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        row = {"epoch": epoch + 1}
        for key in history.METRIC_COLUMNS:
            row[key] = float(logs.get(key, float("nan")))
        row["learning_rate"] = self._lr
        row["epoch_seconds"] = time.perf_counter() - self._start
        self.state.rows.append(row)
        write_text_atomic(self.state.history_csv, history.history_text(self.state.rows))
        log.info(
            "epoch %d: loss %.4f acc %.4f val_loss %.4f val_acc %.4f (%.1fs)",
            row["epoch"],
            row["loss"],
            row["accuracy"],
            row["val_loss"],
            row["val_accuracy"],
            row["epoch_seconds"],
        )


class BestWeights(Callback):
    """Keep the lowest-val_loss weights on disk (atomically), across restarts."""

    def __init__(self, path: Path, best: float) -> None:
        super().__init__()
        self.path = path
        self.best = best

    def on_epoch_end(self, epoch, logs=None):
        current = (logs or {}).get("val_loss")
        if current is None or not math.isfinite(current) or not current < self.best:
            return
        self.best = float(current)
        save_layer_weights(self.path, self.model.get_weights())


class StopWhenClear(Callback):
    """Ends training after the epoch at which its overfitting is clear (pipeline.stopping).

    Listed after `HistoryRows`, whose row for the epoch it reads. The best
    weights are restored by fitting.fit_variant from `BestWeights`' file.
    """

    def __init__(self, state: BackupState, rule: ClearOverfitStop) -> None:
        super().__init__()
        self.state = state
        self.rule = rule
        self.stopped_epoch = 0  # 1-based; 0 = did not stop

    def on_epoch_end(self, epoch, logs=None):
        if self.rule.fires(self.state.rows):
            self.stopped_epoch = epoch + 1
            self.model.stop_training = True
            log.info("overfitting is clear at epoch %d: training stops", epoch + 1)


class ResumePrimer(Callback):
    """After the checkpoint is restored, replay early stopping / LR schedule state.

    Listed after EarlyStopping and ReduceLROnPlateau, whose on_train_begin
    resets what this one then sets.
    """

    def __init__(
        self,
        rows: list[dict[str, float]],
        early_stopping: keras.callbacks.EarlyStopping | None,
        reduce_lr: keras.callbacks.ReduceLROnPlateau | None,
        best_weights: Path,
    ) -> None:
        super().__init__()
        self.rows = rows
        self.early_stopping = early_stopping
        self.reduce_lr = reduce_lr
        self.best_weights = best_weights

    def on_train_begin(self, logs=None):
        if not self.rows:
            return
        lr, _ = replay_callbacks(self.rows, self.early_stopping, self.reduce_lr)
        self.model.optimizer.learning_rate = lr
        if self.early_stopping is not None:
            keras_private.set_restored_weights(
                self.early_stopping,
                load_layer_weights(self.best_weights)
                if self.best_weights.exists()
                else self.model.get_weights(),
            )
        for callback in (self.early_stopping, self.reduce_lr):
            if callback is not None:
                callback.set_model(self.model)


class MlflowEpochs(Callback):
    """One MLflow metrics call per epoch, step = 1-based epoch."""

    def __init__(self, state: BackupState) -> None:
        super().__init__()
        self.state = state

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None):
        tracking.log_epoch(history.epoch_metrics(self.state.rows[-1]), epoch + 1)
