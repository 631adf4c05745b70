"""Stage `train`: fit one variant's CNN and record its curves.

    python -m pipeline.train --variant NAME
    python -m pipeline.train --variant NAME --fraction F   # stage learning_curve@F

The flags only select: a variant defined in params.yaml `variants`, and for
the learning curve one of `learning_curve.fractions` (NAME must then be
`learning_curve.variant`); every hyperparameter comes from the variant's
effective `model` and `train` config.

Inputs: params.yaml, data/prepared/ (memory-mapped pixel arrays, meta.json),
reports/validation.json (for `train.class_weight: auto`).

Outputs, in models/<variant>/, all written together at the end (a failed or
killed run leaves the previous outputs as they were):
    model.keras   the best epoch's weights (lowest val_loss)
    history.csv   epoch (1-based), loss, accuracy, val_loss, val_accuracy,
                  learning_rate, epoch_seconds
    metrics.json  variant, best_epoch, stopped_epoch, epochs_run, train_seconds,
                  images_per_second, best_val_loss, best_val_accuracy, params
    run.json      run_id, experiment_id, model_uri, variant
    seeds.json    one entry per training seed (`train.seeds`; seed i uses
                  train.seed + i, seed 0 is the run above): seed, history rows,
                  best/stopped epoch, epochs run, MLflow run id, and the saved
                  (best-epoch) model's inference-mode accuracy, loss and n on
                  evaluate's train sample and the val split (`scores`; null for
                  seed 0 when it is the only seed, as evaluate scores
                  model.keras anyway)
plus one MLflow run with per-epoch metrics (step = epoch) and the logged model,
and with train.seeds > 1 one child run per extra seed (tags variant, seed).
Extra seeds keep no model file: their scores are taken before they are dropped.

Resuming: `.pipeline_state/train/<variant>/` (not a DVC output, so DVC leaves
it alone) holds a Keras BackupAndRestore checkpoint, the completed epochs'
history rows, the best weights so far and the MLflow run id; each extra seed
has its own such directory (`<variant>.seed-<i>`), all kept until the outputs
are written, so a kill during any seed resumes that seed and redoes none. A
run killed at any point restarts from the last completed epoch, logs into the same MLflow run
and ends with the same history as an uninterrupted run: the shuffle order and
the dropout/augmentation random streams are pure functions of (seed, epoch),
and the early-stopping / LR-schedule state is replayed from the history rows.
The state is discarded when the variant's params or the data version changed.

With `--fraction F` the same fit runs on a stratified subset of the train
split (`train_subset`: per class, a fixed shuffle seeded by data.seed, cut at
F, so a smaller fraction's subset lies inside a larger one's), validated on
the whole val split, and writes models/learning_curve/<F>/ instead:
    history.csv   as above
    result.json   variant, fraction, n_train (subset) and n_train_full, the
                  best epoch's model's inference-mode accuracy/loss/n on the
                  subset and on val, training metrics, mlflow_run_id
with resumable state in `.pipeline_state/learning_curve/<F>/` and an MLflow
run tagged stage=learning_curve, train_fraction=F. No model file is kept:
evaluate needs only the scores. The full-data point is the variant's own
train stage, so it is never trained twice.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import io
import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from pipeline import scoring, tracking
from pipeline.cli import StageError, run_stage
from pipeline.config import Config, ConfigError, VariantConfig, load_config
from pipeline.io import write_bytes_atomic, write_json_atomic, write_text_atomic
from pipeline.paths import Paths, fraction_key
from pipeline.prepared import PreparedDataset, load_prepared, staging_dir

log = logging.getLogger(__name__)

HISTORY_COLUMNS = (
    "epoch",
    "loss",
    "accuracy",
    "val_loss",
    "val_accuracy",
    "learning_rate",
    "epoch_seconds",
)
EPOCH_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate")
INPUT_EXAMPLE_IMAGES = 3


# --------------------------------------------------------------------------- data


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The training-set order of one (0-based) epoch: a pure function of (seed, epoch).

    A resumed run therefore sees exactly the batches an uninterrupted run would.
    """
    return np.random.default_rng([int(seed), int(epoch)]).permutation(n)


def _gather(x: np.ndarray):
    def gather(indices: np.ndarray) -> np.ndarray:
        # Only this batch's rows are read from the memory map.
        return np.ascontiguousarray(x[indices])

    return gather


def _batch_pipeline(indices, x: np.ndarray, y: np.ndarray, image_shape):
    """index batches -> (float32 images, int64 labels), gathered from the memmap."""
    import tensorflow as tf

    labels = tf.constant(np.asarray(y, dtype=np.int64))
    gather = _gather(x)

    def load(batch):
        images = tf.numpy_function(gather, [batch], tf.uint8, stateful=False)
        images.set_shape((None, *image_shape))
        return tf.cast(images, tf.float32), tf.gather(labels, batch)

    return indices.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def train_dataset(
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    seed: int,
    first_epoch: int,
    epochs: int,
):
    """Batches for epochs first_epoch..epochs-1 in one stream (use steps_per_epoch).

    Each epoch is shuffled by `epoch_order(seed, epoch)` and batched on its own,
    so no batch straddles two epochs and a resumed run continues the sequence.
    """
    import tensorflow as tf

    n = len(y)

    def order(epoch: np.int64) -> np.ndarray:
        return epoch_order(n, seed, int(epoch)).astype(np.int64)

    def one_epoch(epoch):
        perm = tf.numpy_function(order, [epoch], tf.int64, stateful=False)
        perm.set_shape((n,))
        return tf.data.Dataset.from_tensor_slices(perm).batch(batch_size)

    epochs_ds = tf.data.Dataset.range(first_epoch, epochs).flat_map(one_epoch)
    return _batch_pipeline(epochs_ds, x, y, x.shape[1:]).prefetch(tf.data.AUTOTUNE)


def eval_dataset(x: np.ndarray, y: np.ndarray, batch_size: int):
    """The split in file order, batched, gathered from the memmap."""
    import tensorflow as tf

    indices = tf.data.Dataset.from_tensor_slices(np.arange(len(y), dtype=np.int64))
    return _batch_pipeline(indices.batch(batch_size), x, y, x.shape[1:]).prefetch(tf.data.AUTOTUNE)


# ------------------------------------------------------------------ data subsets

# Separates the subset's random stream from every other use of data.seed.
SUBSET_STREAM = 7


def train_subset(y: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted train-split rows kept at `fraction`: stratified and nested.

    Each class's rows are shuffled once by a generator seeded with (seed,
    class), and the first round(fraction * count) of them (at least one) are
    kept, so every class keeps its share and a smaller fraction's subset is a
    prefix of, hence inside, a larger one's.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    y = np.asarray(y, dtype=np.int64)
    keep = []
    for label in np.unique(y):
        rows = np.flatnonzero(y == label)
        order = np.random.default_rng([int(seed), SUBSET_STREAM, int(label)]).permutation(rows)
        keep.append(order[: max(1, math.floor(fraction * len(rows) + 0.5))])
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=np.int64)


@dataclass(frozen=True)
class TrainSubset(PreparedDataset):
    """A prepared dataset whose train split is cut to `rows`; val and test stay whole.

    The subset's pixels are read into memory (a fraction of the train split).
    """

    rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def x(self, split: str) -> np.ndarray:
        x = super().x(split)
        return np.asarray(x[self.rows]) if split == "train" else x

    def y(self, split: str) -> np.ndarray:
        y = super().y(split)
        return y[self.rows] if split == "train" else y


# ------------------------------------------------------------------ class weights


def balanced_class_weights(y: np.ndarray, n_classes: int) -> dict[int, float]:
    """n / (k * count_c) per class (scikit-learn's "balanced"); absent classes get 1."""
    counts = np.bincount(np.asarray(y, dtype=np.int64), minlength=n_classes)
    present = counts > 0
    k = int(present.sum())
    total = float(counts.sum())
    return {c: (total / (k * float(counts[c])) if present[c] else 1.0) for c in range(n_classes)}


def class_balance_failed(validation_json: Path) -> bool | None:
    """Whether validate's class_balance check failed; None when the report is missing."""
    try:
        report = json.loads(validation_json.read_text())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise StageError(
            f"{validation_json}: not valid JSON ({exc}); rerun the validate stage"
        ) from None
    for check in report.get("checks", []):
        if check.get("name") == "class_balance":
            return not bool(check.get("success", True))
    return False


def resolve_class_weights(
    mode: str, y: np.ndarray, n_classes: int, validation_json: Path
) -> dict[int, float] | None:
    """train.class_weight off | on | auto -> Keras class_weight (or None)."""
    if mode == "off":
        return None
    if mode == "auto":
        failed = class_balance_failed(validation_json)
        if failed is None:
            log.info("%s not found: class weights off (class_weight: auto)", validation_json)
            return None
        if not failed:
            log.info("class_balance check passed: class weights off (class_weight: auto)")
            return None
        log.info("class_balance check failed: balanced class weights on (class_weight: auto)")
    return balanced_class_weights(y, n_classes)


# ----------------------------------------------------------------- history rows


def read_history(path: Path) -> list[dict[str, float]]:
    """history.csv rows as floats (epoch as int); [] when the file is missing."""
    if not path.exists():
        return []
    with path.open(newline="") as handle:
        rows = []
        for raw in csv.DictReader(handle):
            row = {key: float(raw[key]) for key in HISTORY_COLUMNS}
            row["epoch"] = int(row["epoch"])
            rows.append(row)
    return rows


def history_text(rows: Sequence[dict[str, float]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(HISTORY_COLUMNS)
    for row in rows:
        # repr round-trips floats exactly, so a resumed run's rows compare equal.
        writer.writerow([row["epoch"], *(repr(float(row[c])) for c in HISTORY_COLUMNS[1:])])
    return buffer.getvalue()


def best_row(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    """The epoch with the lowest val_loss (the first one on ties)."""
    return min(rows, key=lambda row: (row["val_loss"], row["epoch"]))


def first_non_finite(rows: Sequence[dict[str, float]]) -> dict[str, float] | None:
    for row in rows:
        if not (math.isfinite(row["loss"]) and math.isfinite(row["val_loss"])):
            return row
    return None


# -------------------------------------------------------------- resumable state


@dataclass
class BackupState:
    """What `.pipeline_state/train/<variant>/` holds between attempts."""

    root: Path
    fingerprint: dict[str, str]
    run_id: str | None = None
    fit_done: bool = False
    rows: list[dict[str, float]] = field(default_factory=list)

    @property
    def state_json(self) -> Path:
        return self.root / "state.json"

    @property
    def history_csv(self) -> Path:
        return self.root / "history.csv"

    @property
    def best_weights(self) -> Path:
        # Layer weights only (no optimizer state), as an .npz of get_weights().
        return self.root / "best_weights.npz"

    @property
    def checkpoint_dir(self) -> Path:
        return self.root / "checkpoint"

    @property
    def completed_epochs(self) -> int:
        return len(self.rows)

    def save(self) -> None:
        write_json_atomic(
            self.state_json,
            {"fingerprint": self.fingerprint, "run_id": self.run_id, "fit_done": self.fit_done},
        )

    def discard(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def checkpoint_epoch(checkpoint_dir: Path) -> int:
    """Epochs completed according to the Keras BackupAndRestore checkpoint (0 if none)."""
    meta = checkpoint_dir / "training_metadata.json"
    weights = checkpoint_dir / "latest.weights.h5"
    if not (meta.exists() and weights.exists()):
        return 0
    try:
        return int(json.loads(meta.read_text())["epoch"])
    except (ValueError, KeyError, TypeError):
        return 0


def open_backup(root: Path, fingerprint: dict[str, str]) -> BackupState:
    """The resumable state for this fingerprint; stale or inconsistent state is dropped."""
    state = BackupState(root=root, fingerprint=fingerprint)
    try:
        saved = json.loads(state.state_json.read_text())
    except (OSError, ValueError):
        saved = None
    if saved is None or saved.get("fingerprint") != fingerprint:
        if root.exists():
            log.info("discarding training state in %s (params or data changed)", root)
        state.discard()
        return state
    state.run_id = saved.get("run_id")
    state.fit_done = bool(saved.get("fit_done"))
    rows = read_history(state.history_csv)
    done = len(rows) if state.fit_done else checkpoint_epoch(state.checkpoint_dir)
    if len(rows) < done or [r["epoch"] for r in rows[:done]] != list(range(1, done + 1)):
        log.warning("training state in %s is inconsistent; starting over", root)
        state.discard()
        return BackupState(root=root, fingerprint=fingerprint)
    # Rows written after the last checkpoint belong to an epoch that is rerun.
    state.rows = rows[:done]
    if done:
        log.info("resuming %s after epoch %d (MLflow run %s)", root.name, done, state.run_id)
    return state


def fingerprint_of(
    vcfg: VariantConfig, data: PreparedDataset, class_weight: dict[int, float] | None
) -> dict[str, str]:
    """What a saved training state is only valid for."""
    weights = json.dumps(class_weight, sort_keys=True) if class_weight else "none"
    return {
        "variant": vcfg.name,
        "variant_params_hash": vcfg.params_hash(),
        "data_version": str(data.meta.get("manifest_hash", "none")),
        "class_weight": hashlib.sha256(weights.encode()).hexdigest()[:12],
    }


# ------------------------------------------------------------------ callbacks


def _keras_callbacks():
    """Callback classes, defined on first use so importing this module stays light."""
    import keras
    from keras.callbacks import BackupAndRestore, Callback

    class AtomicBackupAndRestore(BackupAndRestore):
        """BackupAndRestore whose checkpoint (weights + epoch) changes atomically.

        Keras writes the weights and then the epoch number in place; a kill
        in between would pair one epoch's weights with another's number. Here
        `backup_dir` is a symlink to a complete `<backup_dir>-<epoch>` directory,
        swapped in one rename. (Overrides Keras 3.15's private `_save_model`.)
        """

        def _save_model(self) -> None:
            link = Path(self.backup_dir)
            target = link.with_name(f"{link.name}-{self._current_epoch}")
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir(parents=True)
            self.model.save_weights(str(target / Path(self._weights_path).name))
            write_json_atomic(
                target / Path(self._training_metadata_path).name,
                {"epoch": self._current_epoch, "batch": self._last_batch_seen},
            )
            tmp_link = link.with_name(f".{link.name}.tmp")
            tmp_link.unlink(missing_ok=True)
            os.symlink(target.name, tmp_link)
            os.replace(tmp_link, link)
            for old in link.parent.glob(f"{link.name}-*"):
                if old != target:
                    shutil.rmtree(old, ignore_errors=True)

    class EpochSeeder(Callback):
        """Re-seed every dropout/augmentation random stream at each epoch start.

        Keras 3 does not store SeedGenerator states in weight checkpoints, so
        without this a resumed run would draw different dropout masks.
        """

        def __init__(self, seed: int) -> None:
            super().__init__()
            self.seed = seed

        def on_epoch_begin(self, epoch, logs=None):
            for i, generator in enumerate(_seed_generators(self.model)):
                generator.state.assign(
                    np.array([_derive_seed(self.seed, epoch, i), 0], dtype="int64").astype(
                        generator.state.dtype
                    )
                )

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
            for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
                row[key] = float(logs.get(key, float("nan")))
            row["learning_rate"] = self._lr
            row["epoch_seconds"] = time.perf_counter() - self._start
            self.state.rows.append(row)
            write_text_atomic(self.state.history_csv, history_text(self.state.rows))
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

    class ResumePrimer(Callback):
        """After the checkpoint is restored, replay early stopping / LR schedule state."""

        def __init__(self, rows, early_stopping, reduce_lr, best_weights: Path) -> None:
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
                self.early_stopping.best_weights = (
                    load_layer_weights(self.best_weights)
                    if self.best_weights.exists()
                    else self.model.get_weights()
                )
            for callback in (self.early_stopping, self.reduce_lr):
                if callback is not None:
                    callback.set_model(self.model)

    class MlflowEpochs(Callback):
        """One mlflow.log_metrics call per epoch, step = 1-based epoch."""

        def __init__(self, state: BackupState) -> None:
            super().__init__()
            self.state = state

        def on_epoch_end(self, epoch, logs=None):
            import mlflow

            mlflow.log_metrics(epoch_metrics(self.state.rows[-1]), step=epoch + 1)

    return SimpleNamespace(
        AtomicBackupAndRestore=AtomicBackupAndRestore,
        EpochSeeder=EpochSeeder,
        HistoryRows=HistoryRows,
        BestWeights=BestWeights,
        ResumePrimer=ResumePrimer,
        MlflowEpochs=MlflowEpochs,
    )


def save_layer_weights(path: Path, weights: Sequence[np.ndarray]) -> None:
    """model.get_weights() -> .npz, atomically."""
    buffer = io.BytesIO()
    np.savez(buffer, *weights)
    write_bytes_atomic(path, buffer.getvalue())


def load_layer_weights(path: Path) -> list[np.ndarray]:
    with np.load(path) as archive:
        return [archive[f"arr_{i}"] for i in range(len(archive.files))]


def _seed_generators(model) -> list:
    generators = []
    for layer in model._flatten_layers(include_self=False):
        generators.extend(getattr(layer, "_seed_generators", []))
    return generators


def _derive_seed(seed: int, epoch: int, index: int) -> int:
    digest = hashlib.sha256(f"{seed}:{epoch}:{index}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def epoch_metrics(row: dict[str, float]) -> dict[str, float]:
    """The per-epoch MLflow metrics of one history row, with the gaps."""
    metrics = {key: float(row[key]) for key in EPOCH_METRICS}
    metrics["gap_accuracy"] = row["accuracy"] - row["val_accuracy"]
    metrics["gap_loss"] = row["val_loss"] - row["loss"]
    return metrics


def make_early_stopping(vcfg: VariantConfig):
    import keras

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


def make_reduce_lr(vcfg: VariantConfig):
    import keras

    rl = vcfg.train.reduce_lr
    if not rl.enabled:
        return None
    return keras.callbacks.ReduceLROnPlateau(
        monitor="val_loss", mode="min", factor=rl.factor, patience=rl.patience
    )


def replay_callbacks(rows, early_stopping, reduce_lr) -> tuple[float, bool]:
    """Feed completed epochs' logs to fresh EarlyStopping / ReduceLROnPlateau.

    Uses the callbacks' own on_epoch_end against a stand-in model, so the
    replayed state follows Keras's exact rules. Returns the learning rate for
    the next epoch and whether early stopping ended training.
    """
    stand_in = SimpleNamespace(
        stop_training=False,
        optimizer=SimpleNamespace(learning_rate=rows[0]["learning_rate"]),
        # Not None, or EarlyStopping would move best_epoch on every epoch; the
        # real best weights are put in by ResumePrimer.
        get_weights=lambda: [],
    )
    active = [cb for cb in (early_stopping, reduce_lr) if cb is not None]
    for callback in active:
        callback.set_model(stand_in)
        callback.on_train_begin()
    for row in rows:
        logs = {key: row[key] for key in ("loss", "accuracy", "val_loss", "val_accuracy")}
        stand_in.optimizer.learning_rate = row["learning_rate"]
        for callback in active:
            callback.on_epoch_end(row["epoch"] - 1, dict(logs))
    return float(stand_in.optimizer.learning_rate), bool(stand_in.stop_training)


def stopped_early(rows, vcfg: VariantConfig) -> bool:
    """Whether early stopping ended training at the last completed epoch."""
    early_stopping = make_early_stopping(vcfg)
    if not rows or early_stopping is None:
        return False
    return replay_callbacks(rows, early_stopping, None)[1]


# --------------------------------------------------------------------- training


@dataclass(frozen=True)
class TrainResult:
    rows: list[dict[str, float]]
    model: Any
    stopped_epoch: int


def set_determinism(seed: int) -> None:
    """Same params and data -> same history (on CPU)."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def compile_model(model, learning_rate: float) -> None:
    import keras

    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )


def fit_variant(
    vcfg: VariantConfig,
    data: PreparedDataset,
    state: BackupState,
    class_weight: dict[int, float] | None,
    log_to_mlflow: bool = True,
) -> TrainResult:
    """Train (or resume) one variant; returns the history rows and the best model.

    Raises StageError when the loss becomes NaN or infinite.
    """
    import keras

    from pipeline.models import build_model

    tcfg = vcfg.train
    set_determinism(tcfg.seed)
    x_train, y_train = data.x("train"), data.y("train")
    x_val, y_val = data.x("val"), data.y("val")
    if len(y_train) == 0 or len(y_val) == 0:
        raise StageError(
            f"{data.root}: train has {len(y_train)} and val {len(y_val)} images; both must be "
            "non-empty (check data.val_fraction and data.train_fraction in params.yaml)"
        )
    model = build_model(vcfg.model, data.image_shape, len(data.classes), seed=tcfg.seed)
    compile_model(model, tcfg.learning_rate)

    first_epoch = state.completed_epochs
    stopped_epoch = 0
    already_stopped = stopped_early(state.rows, vcfg)
    if state.fit_done or first_epoch >= tcfg.epochs or already_stopped:
        # A kill after the last epoch but before the outputs were written.
        log.info("training of %s already complete (%d epochs)", vcfg.name, first_epoch)
        stopped_epoch = first_epoch if already_stopped else 0
        # As after fit, so model.keras has the same optimizer layout either way.
        model.optimizer.build(model.trainable_variables)
    else:
        kc = _keras_callbacks()
        early_stopping = make_early_stopping(vcfg)
        reduce_lr = make_reduce_lr(vcfg)
        best = best_row(state.rows)["val_loss"] if state.rows else math.inf
        callbacks = [
            keras.callbacks.TerminateOnNaN(),
            kc.EpochSeeder(tcfg.seed),
            *(cb for cb in (early_stopping, reduce_lr) if cb is not None),
            kc.HistoryRows(state),
            kc.BestWeights(state.best_weights, best),
            # After the history row and best weights, so a checkpoint never
            # claims an epoch whose row is missing.
            kc.AtomicBackupAndRestore(str(state.checkpoint_dir), delete_checkpoint=False),
            kc.ResumePrimer(list(state.rows), early_stopping, reduce_lr, state.best_weights),
        ]
        if log_to_mlflow:
            callbacks.append(kc.MlflowEpochs(state))
        batch_size = tcfg.batch_size
        steps = math.ceil(len(y_train) / batch_size)
        model.fit(
            train_dataset(x_train, y_train, batch_size, tcfg.seed, first_epoch, tcfg.epochs),
            validation_data=eval_dataset(x_val, y_val, batch_size),
            epochs=tcfg.epochs,
            steps_per_epoch=steps,
            class_weight=class_weight,
            callbacks=callbacks,
            shuffle=False,  # the dataset is shuffled per epoch by epoch_order
            verbose=0,
        )
        if early_stopping is not None and early_stopping.stopped_epoch > 0:
            stopped_epoch = early_stopping.stopped_epoch + 1

    bad = first_non_finite(state.rows)
    if bad is not None:
        state.discard()
        raise StageError(
            f"variant {vcfg.name!r}: the loss became {bad['loss']} (val_loss {bad['val_loss']}) "
            f"at epoch {bad['epoch']}; training stopped and no model was written. Lower "
            f"train.learning_rate (now {tcfg.learning_rate:g}) for this variant in params.yaml "
            f"(variants.{vcfg.name}.train.learning_rate)"
        )
    if not state.rows:
        raise StageError(f"variant {vcfg.name!r}: no epoch completed")
    state.fit_done = True
    state.save()
    if state.best_weights.exists():
        model.set_weights(load_layer_weights(state.best_weights))
    return TrainResult(rows=list(state.rows), model=model, stopped_epoch=stopped_epoch)


def summarize(
    vcfg: VariantConfig,
    rows: Sequence[dict[str, float]],
    stopped_epoch: int,
    n_train: int,
    n_params: int,
) -> dict[str, Any]:
    """metrics.json: best epoch (1-based), stopping, speed and size."""
    best = best_row(rows)
    train_seconds = float(sum(row["epoch_seconds"] for row in rows))
    speed = n_train * len(rows) / train_seconds if train_seconds > 0 else 0.0
    return {
        "variant": vcfg.name,
        "best_epoch": int(best["epoch"]),
        # 1-based epoch at which early stopping ended training; 0 = ran all epochs.
        "stopped_epoch": int(stopped_epoch),
        "epochs_run": len(rows),
        "train_seconds": round(train_seconds, 3),
        "images_per_second": round(speed, 1),
        "best_val_loss": float(best["val_loss"]),
        "best_val_accuracy": float(best["val_accuracy"]),
        "params": int(n_params),
    }


def run_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """metrics.json's numbers as MLflow run metrics ("params" is the parameter count)."""
    renamed = {"params": "param_count"}
    return {
        renamed.get(key, key): float(value)
        for key, value in metrics.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    }


def model_summary(model) -> str:
    lines: list[str] = []
    model.summary(print_fn=lambda line, **_: lines.append(line), line_length=100)
    return "\n".join(lines) + "\n"


def data_params(cfg: Config, data: PreparedDataset) -> dict[str, Any]:
    counts = data.meta.get("counts", {})
    return {
        "data.source": cfg.data.source,
        "data.image_size": json.dumps(list(data.image_shape[:2])),
        "data.channels": data.image_shape[2],
        "data.n_classes": len(data.classes),
        "data.n_train": int(counts.get("train", len(data.y("train")))),
        "data.n_val": int(counts.get("val", len(data.y("val")))),
        "data.train_fraction": cfg.data.train_fraction,
        "data.seed": cfg.data.seed,
    }


def backfill_mlflow(run_id: str, rows: Sequence[dict[str, float]]) -> None:
    """Log epochs whose rows exist but whose metrics a killed run never sent."""
    from mlflow.tracking import MlflowClient

    logged = {m.step for m in MlflowClient().get_metric_history(run_id, "val_loss")}
    import mlflow

    for row in rows:
        if row["epoch"] not in logged:
            mlflow.log_metrics(epoch_metrics(row), step=int(row["epoch"]))


def _run_exists(run_id: str | None) -> bool:
    if not run_id:
        return False
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient().get_run(run_id)
    except MlflowException:
        return False
    return True


def fit_tracked(
    paths: Paths,
    cfg: Config,
    vcfg: VariantConfig,
    data: PreparedDataset,
    *,
    stage: str,
    backup_root: Path,
    finish: Callable[[Any, TrainResult, dict[str, Any], dict[int, float] | None], None],
    run_params: dict[str, Any] | None = None,
    run_tags: dict[str, str] | None = None,
    fingerprint_extra: dict[str, str] | None = None,
    on_new_run: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Fit `vcfg` on `data` inside a resumable, tagged MLflow run; returns metrics.json's content.

    Shared by the variant stage and the learning curve. `finish(run, result,
    metrics, class_weight)` runs inside the MLflow run after training and writes
    the outputs; `on_new_run()` runs when no earlier run is being resumed.
    """
    class_weight = resolve_class_weights(
        vcfg.train.class_weight, data.y("train"), len(data.classes), paths.validation_json
    )
    fingerprint = {**fingerprint_of(vcfg, data, class_weight), **(fingerprint_extra or {})}
    state = open_run_backup(backup_root, fingerprint)
    if state.run_id is None and on_new_run is not None:
        on_new_run()
    import mlflow

    with tracking.stage_run(
        paths,
        cfg,
        stage=stage,
        variant=vcfg.name,
        resume_run_id=state.run_id,
        extra_tags=run_tags,
    ) as run:
        state.run_id = run.info.run_id
        state.save()
        if not state.fit_done:
            mlflow.log_params(
                {
                    **vcfg.flat(),
                    **data_params(cfg, data),
                    "train.class_weight_applied": class_weight is not None,
                    **(run_params or {}),
                }
            )
        backfill_mlflow(run.info.run_id, state.rows)
        result = fit_variant(vcfg, data, state, class_weight)
        n_train = len(data.y("train"))
        metrics = summarize(
            vcfg, result.rows, result.stopped_epoch, n_train, result.model.count_params()
        )
        mlflow.log_metrics(run_metrics(metrics))
        finish(run, result, metrics, class_weight)
    state.discard()
    return metrics


def train_variant(paths: Paths, cfg: Config, name: str) -> dict[str, Any]:
    """The whole stage for one variant; returns metrics.json's content."""
    vcfg = cfg.variant(name)
    tracking.configure(paths)  # an unreachable server fails here, before any work
    data = load_prepared(paths.prepared_dir)
    n_seeds = vcfg.train.seeds
    seed_tags = {"seed": str(vcfg.train.seed), "seed_index": "0"} if n_seeds > 1 else None

    def finish(run, result: TrainResult, metrics: dict[str, Any], class_weight) -> None:
        import mlflow

        mlflow.log_text(model_summary(result.model), "model_summary.txt")
        model_uri = log_keras_model(result.model, data)
        run_info = {
            "run_id": run.info.run_id,
            "experiment_id": run.info.experiment_id,
            "model_uri": model_uri,
            "variant": name,
        }
        entries = [seed_entry(0, vcfg.train.seed, result.rows, metrics, run.info.run_id, None)]
        if n_seeds > 1:
            indices = scoring.evaluation_indices(data)
            entries[0]["scores"] = scoring.score_splits(result.model, data, indices)
            for index in range(1, n_seeds):
                entries.append(
                    train_extra_seed(
                        paths, cfg, vcfg, index, data, class_weight, indices, run.info.run_id
                    )
                )
        seeds_record = {"variant": name, "n_seeds": n_seeds, "seeds": entries}
        write_outputs(paths, name, result, metrics, run_info, seeds_record)

    metrics = fit_tracked(
        paths,
        cfg,
        vcfg,
        data,
        stage="train",
        backup_root=paths.backup_dir(name),
        finish=finish,
        run_tags=seed_tags,
        # A new variant run: extra seeds' state from an earlier one would resume
        # into that run's children.
        on_new_run=lambda: discard_extra_seed_states(paths, name),
    )
    discard_extra_seed_states(paths, name)
    return metrics


def train_fraction(paths: Paths, cfg: Config, name: str, fraction: float) -> dict[str, Any]:
    """Stage learning_curve@<fraction>: the variant on a nested subset; returns result.json."""
    if name != cfg.learning_curve.variant:
        raise ConfigError(
            f"--fraction trains params.yaml learning_curve.variant "
            f"({cfg.learning_curve.variant!r}), not {name!r}"
        )
    fraction = cfg.learning_curve_fraction(fraction)
    vcfg = cfg.variant(name)
    tracking.configure(paths)
    full = load_prepared(paths.prepared_dir)
    n_full = len(full.y("train"))
    rows = train_subset(full.y("train"), fraction, cfg.data.seed)
    data = TrainSubset(root=full.root, manifest=full.manifest, meta=full.meta, rows=rows)
    key = fraction_key(fraction)
    subset_hash = hashlib.sha256(rows.tobytes()).hexdigest()[:12]
    result_json: dict[str, Any] = {}

    def finish(run, result: TrainResult, metrics: dict[str, Any], _class_weight=None) -> None:
        import mlflow

        from pipeline.scoring import model_accuracy_and_loss

        scores = {
            "train": model_accuracy_and_loss(result.model, data.x("train"), data.y("train")),
            "val": model_accuracy_and_loss(result.model, data.x("val"), data.y("val")),
        }
        mlflow.log_metrics(
            {f"subset_{split}_{m}": float(v[m]) for split, v in scores.items() for m in v}
        )
        result_json.update(
            {
                "variant": name,
                "fraction": fraction,
                "n_train": int(len(rows)),
                "n_train_full": n_full,
                "subset_hash": subset_hash,
                "data_version": str(full.meta.get("manifest_hash", "none")),
                "variant_params_hash": vcfg.params_hash(),
                **scores,
                "training": metrics,
                "mlflow_run_id": run.info.run_id,
            }
        )
        with staging_dir(paths.fraction_dir(fraction)) as tmp:
            (tmp / paths.fraction_history(fraction).name).write_text(history_text(result.rows))
            write_json_atomic(tmp / paths.fraction_result(fraction).name, result_json)

    fit_tracked(
        paths,
        cfg,
        vcfg,
        data,
        stage="learning_curve",
        backup_root=paths.fraction_backup_dir(fraction),
        finish=finish,
        run_params={
            "train_fraction": fraction,
            "n_train": int(len(rows)),
            "data.n_train": int(len(rows)),
            "data.n_train_full": n_full,
        },
        run_tags={"train_fraction": key},
        fingerprint_extra={"train_fraction": key, "subset": subset_hash},
    )
    return result_json


def open_run_backup(root: Path, fingerprint: dict[str, str]) -> BackupState:
    """open_backup, started over when the state's MLflow run no longer exists."""
    state = open_backup(root, fingerprint)
    if state.run_id and not _run_exists(state.run_id):
        log.info("MLflow run %s of the saved state is gone; starting over", state.run_id)
        state.discard()
        state = open_backup(root, fingerprint)
    return state


# ------------------------------------------------------------------ extra seeds


def seed_config(vcfg: VariantConfig, index: int) -> VariantConfig:
    """The variant trained with seed train.seed + index (index 0 is the variant itself)."""
    if index == 0:
        return vcfg
    train = vcfg.train.model_copy(update={"seed": vcfg.train.seed + index})
    return vcfg.model_copy(update={"train": train})


def seed_entry(
    index: int,
    seed: int,
    rows: Sequence[dict[str, float]],
    metrics: dict[str, Any],
    run_id: str,
    scores: dict[str, dict[str, Any]] | None,
) -> dict[str, Any]:
    """One seed's record in seeds.json; `metrics` is the seed's summarize()."""
    return {
        "index": index,
        "seed": seed,
        "mlflow_run_id": run_id,
        **{k: metrics[k] for k in ("best_epoch", "stopped_epoch", "epochs_run", "train_seconds")},
        "history": [dict(row) for row in rows],
        "scores": scores,
    }


def train_extra_seed(
    paths: Paths,
    cfg: Config,
    vcfg: VariantConfig,
    index: int,
    data: PreparedDataset,
    class_weight: dict[int, float] | None,
    indices: dict[str, np.ndarray],
    parent_run_id: str,
) -> dict[str, Any]:
    """Train (or resume) seed train.seed + index in a child MLflow run; its seeds.json entry."""
    import mlflow

    svcfg = seed_config(vcfg, index)
    seed = svcfg.train.seed
    state = open_run_backup(
        paths.backup_dir(vcfg.name, index), fingerprint_of(svcfg, data, class_weight)
    )
    with tracking.stage_run(
        paths,
        cfg,
        stage="train",
        variant=vcfg.name,
        resume_run_id=state.run_id,
        extra_tags={"seed": str(seed), "seed_index": str(index)},
        parent_run_id=parent_run_id,
        run_name=f"train-{vcfg.name}-seed{seed}",
    ) as run:
        state.run_id = run.info.run_id
        state.save()
        if not state.fit_done:
            mlflow.log_params({**svcfg.flat(), **data_params(cfg, data)})
        backfill_mlflow(run.info.run_id, state.rows)
        log.info(
            "training %s with seed %d (%d of %d)", vcfg.name, seed, index + 1, vcfg.train.seeds
        )
        result = fit_variant(svcfg, data, state, class_weight)
        n_train, n_params = len(data.y("train")), result.model.count_params()
        metrics = summarize(svcfg, result.rows, result.stopped_epoch, n_train, n_params)
        scores = scoring.score_splits(result.model, data, indices)
        # The same names evaluate logs on the variant's run, so the UI compares them.
        mlflow.log_metrics(
            {
                **run_metrics(metrics),
                **{
                    f"eval_{split}_{m}": s[m]
                    for split, s in scores.items()
                    for m in ("accuracy", "loss")
                },
            }
        )
    return seed_entry(index, seed, result.rows, metrics, run.info.run_id, scores)


def discard_extra_seed_states(paths: Paths, name: str) -> None:
    """Remove every extra seed's resume state of the variant (also of a larger train.seeds)."""
    for root in paths.backup_dir(name).parent.glob(f"{name}.seed-*"):
        shutil.rmtree(root, ignore_errors=True)


def log_keras_model(model, data: PreparedDataset) -> str:
    """Log the model with MLflow's Keras 3 flavour (signature + input example).

    Returns the logged model's URI (registrable with mlflow.register_model).
    """
    from mlflow.models import Model, infer_signature

    example = np.asarray(data.x("train")[:INPUT_EXAMPLE_IMAGES], dtype=np.float32)
    signature = infer_signature(example, np.asarray(model(example, training=False)))
    # MLflow checks the input example by predicting; keep Keras's progress bar
    # out of the stage's output.
    with contextlib.redirect_stdout(io.StringIO()):
        info = Model.log(
            artifact_path=None,
            name="model",
            flavor=_KerasFlavorWithExample(),
            model=model,
            signature=signature,
            input_example=example,
            pip_requirements=model_requirements(),
            # MLflow would reload the saved model to predict on the example; the
            # signature above already came from predicting on it.
            validate_serving_input=False,
        )
    return info.model_uri


def model_requirements() -> list[str]:
    """keras plus the installed TensorFlow backend, pinned.

    Given explicitly because inferring them would reload the model in a
    subprocess, and MLflow's Keras default lists keras alone.
    """
    from importlib import metadata

    import mlflow.keras

    requirements = list(mlflow.keras.get_default_pip_requirements())
    for dist in ("tensorflow-cpu", "tensorflow"):
        try:
            requirements.append(f"{dist}=={metadata.version(dist)}")
            break
        except metadata.PackageNotFoundError:
            continue
    return requirements


class _KerasFlavorWithExample:
    """mlflow.keras, except that save_model creates its target directory first.

    mlflow.keras.save_model writes input_example.json before creating the model
    directory, so `mlflow.keras.log_model(..., input_example=...)` fails with
    FileNotFoundError (mlflow/mlflow#16183, still open in MLflow 3.17).
    """

    __name__ = "mlflow.keras"

    @staticmethod
    def save_model(path, **kwargs):
        import mlflow.keras

        os.makedirs(path, exist_ok=True)
        kwargs.pop("validate_serving_input", None)  # Model.log's option, not save_model's
        return mlflow.keras.save_model(path=path, **kwargs)


def write_outputs(
    paths: Paths,
    name: str,
    result: TrainResult,
    metrics: dict[str, Any],
    run_info: dict[str, Any],
    seeds_record: dict[str, Any],
) -> None:
    """All five outputs in a staging dir, swapped in together."""
    with staging_dir(paths.variant_dir(name)) as tmp:
        result.model.save(str(tmp / paths.model_file(name).name))
        (tmp / paths.history_csv(name).name).write_text(history_text(result.rows))
        write_json_atomic(tmp / paths.train_metrics(name).name, metrics)
        write_json_atomic(tmp / paths.run_info(name).name, run_info)
        write_json_atomic(tmp / paths.seeds_json(name).name, seeds_record)


# -------------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.train",
        description="Train one variant defined in params.yaml `variants`.",
    )
    parser.add_argument("--variant", required=True, help="a key of params.yaml `variants`")
    parser.add_argument(
        "--fraction",
        type=float,
        help="learning curve: train on this share of the train split, one of params.yaml "
        "learning_curve.fractions (the variant must be learning_curve.variant)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    paths = Paths.here()
    cfg = load_config(paths.params)
    if args.fraction is not None:
        result = train_fraction(paths, cfg, args.variant, args.fraction)
        print(
            f"trained {args.variant} on {result['n_train']} of {result['n_train_full']} train "
            f"images (fraction {args.fraction:g}): val_accuracy {result['val']['accuracy']:.4f} "
            f"-> {paths.fraction_dir(args.fraction)}",
            file=sys.stdout,
        )
        return 0
    metrics = train_variant(paths, cfg, args.variant)
    n_seeds = cfg.variant(args.variant).train.seeds
    extra = f" (+{n_seeds - 1} more seeds in seeds.json)" if n_seeds > 1 else ""
    print(
        f"trained {args.variant}: best epoch {metrics['best_epoch']} of {metrics['epochs_run']}, "
        f"val_accuracy {metrics['best_val_accuracy']:.4f}{extra} -> "
        f"{paths.variant_dir(args.variant)}",
        file=sys.stdout,
    )
    return 0


if __name__ == "__main__":
    run_stage(main)
