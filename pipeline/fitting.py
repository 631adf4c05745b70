"""Fitting a variant: one resumable fit, its tracked MLflow run, extra seeds, subsets.

- `fit_variant`: build, compile and fit (or resume) one variant's model on a
  PreparedDataset with the callbacks of pipeline.callbacks; returns the
  history rows and the best epoch's model (lowest val_loss).
- `tracked_fit`: fit_variant inside a resumable, tagged MLflow run (a killed
  run resumes into the same run), left open for the caller to write outputs.
- `train_seeds`: seeds.json's content; seed i of `train.seeds` (seed
  train.seed + i, pipeline.seeds) trains in a child run of the variant's run
  and is scored (pipeline.scoring) before its weights are dropped.
- `score_subset`: the learning curve's scores of a subset-trained model.

Inputs: Config, VariantConfig, PreparedDataset, resume state under
`.pipeline_state/`. Outputs: TrainResult and plain dicts, the resume state and
MLflow runs (through pipeline.tracking); the stage files are pipeline.train's.
TensorFlow and Keras are imported only when a model is fitted.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import distribute, history, precision, scoring, tracking, train_input
from pipeline.builders import BuildContext, source_sha
from pipeline.catalog.validation import read_validation_flags
from pipeline.cli import StageError
from pipeline.config import Config, EvaluateConfig, VariantConfig
from pipeline.paths import Paths
from pipeline.prepared import PreparedDataset
from pipeline.resume import (
    BackupState,
    fingerprint_of,
    load_layer_weights,
    open_backup,
    open_run_backup,
    replay_callbacks,
)
from pipeline.seeds import training_seed
from pipeline.stopping import ClearOverfitStop

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    rows: list[dict[str, float]]
    model: Any
    stopped_epoch: int
    stopped_by: str = ""  # STOPPED_BY_*: what ended training early ("" = the epoch limit)


# ---------------------------------------------------------------------- one fit


def set_determinism(seed: int) -> None:
    """Same params and data -> same history (on CPU)."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def compile_model(model: Any, learning_rate: float) -> None:
    """Adam on sparse categorical cross-entropy, reporting accuracy."""
    import keras

    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )


def stop_rule(
    vcfg: VariantConfig, data: PreparedDataset, evaluate: EvaluateConfig | None
) -> ClearOverfitStop | None:
    """The clear-overfitting stop for this fit (pipeline.stopping); None when early
    stopping or `stop_on_clear_overfit` is off, or without evaluate's thresholds."""
    es = vcfg.train.early_stopping
    if evaluate is None or not (es.enabled and es.stop_on_clear_overfit):
        return None
    return ClearOverfitStop(evaluate, len(data.y("train")), len(data.y("val")))


STOPPED_BY_PATIENCE = "patience"
STOPPED_BY_CLEAR_OVERFIT = "clear_overfitting"


def stop_reason(
    rows: Sequence[dict[str, float]], vcfg: VariantConfig, rule: ClearOverfitStop | None = None
) -> str:
    """What early stopping ended training with at the last completed epoch: clear
    overfitting (`rule`), patience, or "" (it did not)."""
    from pipeline.callbacks import make_early_stopping

    early_stopping = make_early_stopping(vcfg)
    if not rows or early_stopping is None:
        return ""
    if rule is not None and rule.fires(rows):
        return STOPPED_BY_CLEAR_OVERFIT
    return STOPPED_BY_PATIENCE if replay_callbacks(rows, early_stopping, None)[1] else ""


def stopped_early(
    rows: Sequence[dict[str, float]], vcfg: VariantConfig, rule: ClearOverfitStop | None = None
) -> bool:
    """Whether early stopping (patience, or `rule`) ended training at the last completed epoch."""
    return bool(stop_reason(rows, vcfg, rule))


def fit_variant(
    vcfg: VariantConfig,
    data: PreparedDataset,
    state: BackupState,
    class_weight: dict[int, float] | None,
    log_to_mlflow: bool = True,
    evaluate: EvaluateConfig | None = None,
    context: BuildContext | None = None,
) -> TrainResult:
    """Train (or resume) one variant; returns the history rows and the best model.

    With `evaluate` (params.yaml's thresholds), training also stops once its
    overfitting is clear (`stop_rule`). `context` says where a user's builder is
    (model.builder; None: the working directory, the variant's settings as the base).

    Raises:
        StageError: an empty train or val split, or a NaN or infinite loss.
    """
    from pipeline.own_models import build_any

    tcfg = vcfg.train
    set_determinism(tcfg.seed)
    precision.apply(tcfg.precision)
    n_train, n_val = len(data.y("train")), len(data.y("val"))
    if n_train == 0 or n_val == 0:
        raise StageError(
            f"{data.root}: train has {n_train} and val {n_val} images; both must be "
            "non-empty (check data.val_fraction and data.train_fraction in params.yaml)"
        )
    strategy = distribute.active_name()
    with distribute.scope():
        model = build_any(
            vcfg.model, vcfg.name, data.image_shape, len(data.classes), tcfg.seed, context
        )
        compile_model(model, tcfg.learning_rate)
        if strategy != "none":
            from pipeline.keras_private import average_logs_across_workers, build_compiled_state

            example = data.x("train")[:1].astype(np.float32), data.y("train")[:1]
            build_compiled_state(model, *example)
            average_logs_across_workers()

    first_epoch = state.completed_epochs
    if strategy != "none" and first_epoch and not state.fit_done:
        raise StageError(
            f"variant {vcfg.name!r}: its training was interrupted after epoch {first_epoch}, "
            f"and a run under train.strategy {strategy!r} does not resume (its checkpoint "
            f"is per device). Remove {state.root} to train it again from epoch 1"
        )
    rule = stop_rule(vcfg, data, evaluate)
    already_stopped = stopped_early(state.rows, vcfg, rule)
    if state.fit_done or first_epoch >= tcfg.epochs or already_stopped:
        # A kill after the last epoch but before the outputs were written.
        log.info("training of %s already complete (%d epochs)", vcfg.name, first_epoch)
        stopped_epoch = first_epoch if already_stopped else 0
        # As after fit, so model.keras has the same optimizer layout either way.
        model.optimizer.build(model.trainable_variables)
    else:
        stopped_epoch = _fit(model, vcfg, data, state, class_weight, log_to_mlflow, rule)

    _check_rows(vcfg, state)
    state.fit_done = True
    state.save()
    if state.best_weights.exists():
        model.set_weights(load_layer_weights(state.best_weights))
    stopped_by = stop_reason(state.rows, vcfg, rule) if stopped_epoch else ""
    return TrainResult(list(state.rows), model, stopped_epoch, stopped_by)


def _fit(
    model: Any,
    vcfg: VariantConfig,
    data: PreparedDataset,
    state: BackupState,
    class_weight: dict[int, float] | None,
    log_to_mlflow: bool,
    rule: ClearOverfitStop | None,
) -> int:
    """model.fit from the state's next epoch; the 1-based early-stopping epoch (0: none)."""
    import keras

    from pipeline import callbacks as cb
    from pipeline.keras_private import AtomicBackupAndRestore

    tcfg = vcfg.train
    early_stopping, reduce_lr = cb.make_early_stopping(vcfg), cb.make_reduce_lr(vcfg)
    clear_stop = cb.StopWhenClear(state, rule) if rule is not None else None
    best = history.best_row(state.rows)["val_loss"] if state.rows else math.inf
    callbacks = [
        keras.callbacks.TerminateOnNaN(),
        cb.EpochSeeder(tcfg.seed),
        *(c for c in (early_stopping, reduce_lr) if c is not None),
        cb.HistoryRows(state),
        cb.BestWeights(state.best_weights, best),
        *([clear_stop] if clear_stop is not None else []),
        # After the history row and best weights, so a checkpoint never
        # claims an epoch whose row is missing.
        AtomicBackupAndRestore(str(state.checkpoint_dir), delete_checkpoint=False),
        cb.ResumePrimer(list(state.rows), early_stopping, reduce_lr, state.best_weights),
    ]
    if log_to_mlflow:
        callbacks.append(cb.MlflowEpochs(state))
    x_train, y_train = data.x("train"), data.y("train")
    model.fit(
        train_input.train_dataset(
            x_train, y_train, tcfg.batch_size, tcfg.seed, state.completed_epochs, tcfg.epochs
        ),
        validation_data=train_input.eval_dataset(data.x("val"), data.y("val"), tcfg.batch_size),
        epochs=tcfg.epochs,
        steps_per_epoch=math.ceil(len(y_train) / tcfg.batch_size),
        class_weight=class_weight,
        callbacks=callbacks,
        shuffle=False,  # the dataset is shuffled per epoch by epoch_order
        verbose=0,
    )
    if early_stopping is not None and early_stopping.stopped_epoch > 0:
        return early_stopping.stopped_epoch + 1
    if clear_stop is not None and clear_stop.stopped_epoch > 0:
        return clear_stop.stopped_epoch
    return 0


def _check_rows(vcfg: VariantConfig, state: BackupState) -> None:
    """StageError (and the state dropped) when the loss diverged or no epoch completed."""
    bad = history.first_non_finite(state.rows)
    if bad is not None:
        state.discard()
        raise StageError(
            f"variant {vcfg.name!r}: the loss became {bad['loss']} (val_loss {bad['val_loss']}) "
            f"at epoch {bad['epoch']}; training stopped and no model was written. Lower "
            f"train.learning_rate (now {vcfg.train.learning_rate:g}) for this variant in "
            f"params.yaml (variants.{vcfg.name}.train.learning_rate)"
        )
    if not state.rows:
        raise StageError(f"variant {vcfg.name!r}: no epoch completed")


def summarize(
    vcfg: VariantConfig,
    rows: Sequence[dict[str, float]],
    stopped_epoch: int,
    n_train: int,
    n_params: int,
    stopped_by: str = "",
) -> dict[str, Any]:
    """metrics.json: best epoch (1-based), stopping, speed and size."""
    best = history.best_row(rows)
    train_seconds = float(sum(row["epoch_seconds"] for row in rows))
    speed = n_train * len(rows) / train_seconds if train_seconds > 0 else 0.0
    return {
        "variant": vcfg.name,
        "best_epoch": int(best["epoch"]),
        # 1-based epoch at which early stopping ended training; 0 = ran all epochs.
        "stopped_epoch": int(stopped_epoch),
        # What stopped it: "clear_overfitting" (pipeline.stopping), "patience", or "".
        "stopped_by": stopped_by,
        "epochs_run": len(rows),
        "train_seconds": round(train_seconds, 3),
        "images_per_second": round(speed, 1),
        "best_val_loss": float(best["val_loss"]),
        "best_val_accuracy": float(best["val_accuracy"]),
        "params": int(n_params),
        # The dtype policy train.precision resolved to on this machine.
        "precision": precision.resolve(vcfg.train.precision),
    }


def model_summary(model: Any) -> str:
    """Keras's layer-by-layer summary as text."""
    lines: list[str] = []
    model.summary(print_fn=lambda line, **_: lines.append(line), line_length=100)
    return "\n".join(lines) + "\n"


# -------------------------------------------------------------------- tracking


def run_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """metrics.json's numbers as MLflow run metrics, in the `training/` section of the
    chart view ("params" is the parameter count)."""
    renamed = {"params": "param_count"}
    return tracking.sectioned(
        tracking.SECTION_TRAINING,
        {
            renamed.get(key, key): value
            for key, value in metrics.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)
        },
    )


def data_params(cfg: Config, data: PreparedDataset) -> dict[str, Any]:
    """The run's data.* parameters."""
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


def backfill_epochs(run_id: str, rows: Sequence[dict[str, float]]) -> None:
    """Log epochs whose rows exist but whose metrics a killed run never sent."""
    logged = tracking.logged_epochs(run_id)
    for row in rows:
        if row["epoch"] not in logged:
            tracking.log_epoch(history.epoch_metrics(row), int(row["epoch"]))


@contextlib.contextmanager
def resumable_run(
    paths: Paths,
    cfg: Config,
    variant: str,
    state: BackupState,
    params: dict[str, Any],
    **run_options: Any,
) -> Iterator[Any]:
    """tracking.stage_run continuing the state's run, its id saved, missing epochs backfilled.

    `params` are logged unless the fit was done before (they are logged already).
    """
    with tracking.stage_run(
        paths,
        cfg,
        variant=variant,
        resume_run_id=state.run_id,
        system_metrics=True,
        **run_options,
    ) as run:
        state.run_id = run.info.run_id
        state.save()
        if not state.fit_done:
            tracking.log_params(params)
        backfill_epochs(run.info.run_id, state.rows)
        yield run


@dataclass(frozen=True)
class TrackedFit:
    """A finished fit inside its still-open MLflow run."""

    run: Any
    result: TrainResult
    metrics: dict[str, Any]  # metrics.json's content
    class_weight: dict[int, float] | None


def class_weights_for(
    paths: Paths, vcfg: VariantConfig, data: PreparedDataset
) -> dict[int, float] | None:
    """The variant's class weights (train.class_weight; `auto` reads validate's flags)."""
    mode = vcfg.train.class_weight
    flags = read_validation_flags(paths) if mode == "auto" else None
    return train_input.resolve_class_weights(mode, data.y("train"), len(data.classes), flags)


def fit_as_worker(paths: Paths, cfg: Config, vcfg: VariantConfig, data: PreparedDataset) -> int:
    """A non-chief multi-worker task: the same fit in lockstep with the chief, writing
    nothing that lasts (its state goes to a temporary folder). Returns epochs run."""
    import tempfile

    class_weight = class_weights_for(paths, vcfg, data)
    context = BuildContext(cfg.model, paths.root)
    sha = source_sha(vcfg.model.builder, paths.root)
    with tempfile.TemporaryDirectory(prefix=f"worker-{vcfg.name}-") as scratch:
        state = open_backup(Path(scratch), fingerprint_of(vcfg, data, class_weight, sha))
        result = fit_variant(
            vcfg, data, state, class_weight, False, evaluate=cfg.evaluate, context=context
        )
    return len(result.rows)


@contextlib.contextmanager
def tracked_fit(
    paths: Paths,
    cfg: Config,
    vcfg: VariantConfig,
    data: PreparedDataset,
    *,
    stage: str,
    backup_root: Path,
    run_params: dict[str, Any] | None = None,
    run_tags: dict[str, str] | None = None,
    run_name: str | None = None,
    fingerprint_extra: dict[str, str] | None = None,
    on_new_run: Callable[[], None] | None = None,
) -> Iterator[TrackedFit]:
    """Fit `vcfg` on `data` inside a resumable, tagged MLflow run, then yield it.

    Shared by the variant stage and the learning curve. The caller writes its
    outputs inside the `with` block, so the run is still open; the resume state
    is dropped only when the block completes. `on_new_run()` runs when no
    earlier run is being resumed.
    """
    class_weight = class_weights_for(paths, vcfg, data)
    context = BuildContext(cfg.model, paths.root)
    fingerprint = {
        **fingerprint_of(vcfg, data, class_weight, source_sha(vcfg.model.builder, paths.root)),
        **(fingerprint_extra or {}),
    }
    state = open_run_backup(backup_root, fingerprint)
    if state.run_id is None and on_new_run is not None:
        on_new_run()
    params = {
        **vcfg.flat(),
        **data_params(cfg, data),
        "train.class_weight_applied": class_weight is not None,
        **(run_params or {}),
    }
    with resumable_run(
        paths, cfg, vcfg.name, state, params, stage=stage, extra_tags=run_tags, run_name=run_name
    ) as run:
        result = fit_variant(
            vcfg, data, state, class_weight, evaluate=cfg.evaluate, context=context
        )
        n_train = len(data.y("train"))
        metrics = summarize(
            vcfg,
            result.rows,
            result.stopped_epoch,
            n_train,
            result.model.count_params(),
            result.stopped_by,
        )
        tracking.log_metrics(run_metrics(metrics))
        yield TrackedFit(run, result, metrics, class_weight)
    state.discard()


# ------------------------------------------------------------------ extra seeds


def seed_config(vcfg: VariantConfig, index: int) -> VariantConfig:
    """The variant trained with seed train.seed + index (index 0 is the variant itself)."""
    if index == 0:
        return vcfg
    train = vcfg.train.model_copy(update={"seed": training_seed(vcfg.train.seed, index)})
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


def train_seeds(
    paths: Paths, cfg: Config, vcfg: VariantConfig, data: PreparedDataset, fit: TrackedFit
) -> dict[str, Any]:
    """seeds.json's content: seed 0 (`fit`) and each extra seed, trained here.

    One entry per seed (seed i is train.seed + i; seed 0 is the variant's own
    run): seed, history rows, best/stopped epoch, epochs run, MLflow run id and
    `scores`, the saved (best-epoch) model's inference-mode accuracy, loss and
    n on evaluate's train sample and the val split. Extra seeds are scored here
    since they keep no model file; with one seed, seed 0's scores are null
    (evaluate scores model.keras anyway).
    """
    n_seeds, run_id = vcfg.train.seeds, fit.run.info.run_id
    entries = [seed_entry(0, vcfg.train.seed, fit.result.rows, fit.metrics, run_id, None)]
    if n_seeds > 1:
        indices = scoring.evaluation_indices(data)
        entries[0]["scores"] = scoring.score_splits(fit.result.model, data, indices)
        for index in range(1, n_seeds):
            entries.append(
                train_extra_seed(paths, cfg, vcfg, index, data, fit.class_weight, indices, run_id)
            )
    return {"variant": vcfg.name, "n_seeds": n_seeds, "seeds": entries}


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
    svcfg = seed_config(vcfg, index)
    seed = svcfg.train.seed
    context = BuildContext(cfg.model, paths.root)
    state = open_run_backup(
        paths.backup_dir(vcfg.name, index),
        fingerprint_of(svcfg, data, class_weight, source_sha(svcfg.model.builder, paths.root)),
    )
    with resumable_run(
        paths,
        cfg,
        vcfg.name,
        state,
        {**svcfg.flat(), **data_params(cfg, data)},
        stage="train",
        extra_tags={"seed": str(seed), "seed_index": str(index)},
        parent_run_id=parent_run_id,
        run_name=f"train · {vcfg.name} · seed {seed}",
    ) as run:
        log.info(
            "training %s with seed %d (%d of %d)", vcfg.name, seed, index + 1, vcfg.train.seeds
        )
        result = fit_variant(
            svcfg, data, state, class_weight, evaluate=cfg.evaluate, context=context
        )
        n_train, n_params = len(data.y("train")), result.model.count_params()
        metrics = summarize(
            svcfg, result.rows, result.stopped_epoch, n_train, n_params, result.stopped_by
        )
        scores = scoring.score_splits(result.model, data, indices)
        # The same names evaluate logs on the variant's run, so the UI compares them.
        eval_metrics = tracking.sectioned(
            tracking.SECTION_EVAL,
            {f"{split}_{m}": s[m] for split, s in scores.items() for m in ("accuracy", "loss")},
        )
        tracking.log_metrics({**run_metrics(metrics), **eval_metrics})
    return seed_entry(index, seed, result.rows, metrics, run.info.run_id, scores)


def discard_extra_seed_states(paths: Paths, name: str) -> None:
    """Remove every extra seed's resume state of the variant (also of a larger train.seeds)."""
    for root in paths.backup_dir(name).parent.glob(f"{name}.seed-*"):
        shutil.rmtree(root, ignore_errors=True)


# ------------------------------------------------------------------- subsets


def score_subset(model: Any, data: PreparedDataset) -> dict[str, dict[str, Any]]:
    """The model's inference-mode scores on the (subset) train split and val, logged."""
    scores = {
        split: scoring.model_accuracy_and_loss(model, data.x(split), data.y(split))
        for split in ("train", "val")
    }
    tracking.log_metrics(
        tracking.sectioned(
            tracking.SECTION_SUBSET,
            {f"{split}_{m}": v[m] for split, v in scores.items() for m in v},
        )
    )
    return scores
