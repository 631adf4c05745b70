"""Resumable training state: what survives a killed train run, and its replay.

`.pipeline_state/train/<variant>/` (not a DVC output, so DVC leaves it alone;
each extra seed has its own `<variant>.seed-<i>`, the learning curve
`.pipeline_state/learning_curve/<F>/`) holds:

    state.json          fingerprint, MLflow run id, fit_done
    history.csv         the completed epochs' rows (pipeline.history)
    best_weights.npz    the lowest-val_loss weights so far (layer weights only)
    checkpoint          Keras BackupAndRestore checkpoint: a symlink to a
                        complete `checkpoint-<epoch>/` (pipeline.keras_private)

A run killed at any point restarts from the last completed epoch, logs into
the same MLflow run and ends with the same history as an uninterrupted run:
the shuffle order and the dropout/augmentation random streams are pure
functions of (seed, epoch) (pipeline.train_input, pipeline.seeds), and the
early-stopping / LR-schedule state is replayed from the history rows
(`replay_callbacks`). The state is discarded when its fingerprint (variant
params, data version, class weights) changed, or its MLflow run is gone; the
run of a discarded state, if still RUNNING, is ended as KILLED.

Imports neither TensorFlow nor Keras: the Keras-specific half (the atomic
checkpoint, the random streams) is pipeline.keras_private.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from pipeline import tracking
from pipeline.config import VariantConfig
from pipeline.history import METRIC_COLUMNS, read_history
from pipeline.io import write_bytes_atomic, write_json_atomic
from pipeline.prepared import PreparedDataset

log = logging.getLogger(__name__)

# File names Keras's BackupAndRestore uses inside its backup_dir (Keras 3.15;
# tests/test_resume.py checks them against Keras itself).
CHECKPOINT_WEIGHTS = "latest.weights.h5"
CHECKPOINT_METADATA = "training_metadata.json"


@dataclass
class BackupState:
    """What `.pipeline_state/train/<variant>/` holds between attempts."""

    root: Path
    fingerprint: dict[str, str]
    run_id: str | None = None
    fit_done: bool = False
    rows: list[dict[str, float]] = field(default_factory=list)
    # The MLflow run of an earlier state this one replaced (not saved): nothing
    # continues it any more, so `open_run_backup` ends it.
    abandoned_run_id: str | None = None

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
    meta = checkpoint_dir / CHECKPOINT_METADATA
    weights = checkpoint_dir / CHECKPOINT_WEIGHTS
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
        state.abandoned_run_id = saved.get("run_id") if isinstance(saved, dict) else None
        return state
    state.run_id = saved.get("run_id")
    state.fit_done = bool(saved.get("fit_done"))
    rows = read_history(state.history_csv)
    done = len(rows) if state.fit_done else checkpoint_epoch(state.checkpoint_dir)
    if len(rows) < done or [r["epoch"] for r in rows[:done]] != list(range(1, done + 1)):
        log.warning("training state in %s is inconsistent; starting over", root)
        state.discard()
        return BackupState(root=root, fingerprint=fingerprint, abandoned_run_id=state.run_id)
    # Rows written after the last checkpoint belong to an epoch that is rerun.
    state.rows = rows[:done]
    if done:
        log.info("resuming %s after epoch %d (MLflow run %s)", root.name, done, state.run_id)
    return state


def open_run_backup(root: Path, fingerprint: dict[str, str]) -> BackupState:
    """open_backup, started over when the state's MLflow run no longer exists.

    The run of a discarded state, killed mid-training and so still RUNNING, is
    ended as KILLED: the new state starts a run of its own.
    """
    state = open_backup(root, fingerprint)
    if state.abandoned_run_id and tracking.end_run_as_killed(state.abandoned_run_id):
        log.info("ended MLflow run %s of the discarded state as KILLED", state.abandoned_run_id)
    if state.run_id and not tracking.run_exists(state.run_id):
        log.info("MLflow run %s of the saved state is gone; starting over", state.run_id)
        state.discard()
        state = open_backup(root, fingerprint)
    return state


def fingerprint_of(
    vcfg: VariantConfig,
    data: PreparedDataset,
    class_weight: dict[int, float] | None,
    builder_sha: str = "",
) -> dict[str, str]:
    """What a saved training state is only valid for (`builder_sha`: a user's builder
    file's content, so that editing it starts training afresh)."""
    weights = json.dumps(class_weight, sort_keys=True) if class_weight else "none"
    fingerprint = {
        "variant": vcfg.name,
        "variant_params_hash": vcfg.params_hash(),
        "data_version": str(data.meta.get("manifest_hash", "none")),
        "class_weight": hashlib.sha256(weights.encode()).hexdigest()[:12],
    }
    if builder_sha:
        fingerprint["builder_sha"] = builder_sha[:16]
    return fingerprint


def save_layer_weights(path: Path, weights: Sequence[np.ndarray]) -> None:
    """model.get_weights() -> .npz, atomically."""
    buffer = io.BytesIO()
    np.savez(buffer, *weights)
    write_bytes_atomic(path, buffer.getvalue())


def load_layer_weights(path: Path) -> list[np.ndarray]:
    """The weights `save_layer_weights` wrote, in model.set_weights() order."""
    with np.load(path) as archive:
        return [archive[f"arr_{i}"] for i in range(len(archive.files))]


def replay_callbacks(
    rows: Sequence[dict[str, float]], early_stopping: Any, reduce_lr: Any
) -> tuple[float, bool]:
    """Feed completed epochs' logs to fresh EarlyStopping / ReduceLROnPlateau.

    Uses the callbacks' own on_epoch_end against a stand-in model, so the
    replayed state follows Keras's exact rules. Either callback may be None.

    Returns:
        (the learning rate for the next epoch, whether early stopping ended training).
    """
    stand_in = SimpleNamespace(
        stop_training=False,
        optimizer=SimpleNamespace(learning_rate=rows[0]["learning_rate"]),
        # Not None, or EarlyStopping would move best_epoch on every epoch; the
        # real best weights are put in by callbacks.ResumePrimer.
        get_weights=lambda: [],
    )
    active = [cb for cb in (early_stopping, reduce_lr) if cb is not None]
    for callback in active:
        callback.set_model(stand_in)
        callback.on_train_begin()
    for row in rows:
        logs = {key: row[key] for key in METRIC_COLUMNS}
        stand_in.optimizer.learning_rate = row["learning_rate"]
        for callback in active:
            callback.on_epoch_end(row["epoch"] - 1, dict(logs))
    return float(stand_in.optimizer.learning_rate), bool(stand_in.stop_training)
