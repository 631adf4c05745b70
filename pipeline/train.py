"""Stage `train`: fit one variant's CNN and record its curves.

    python -m pipeline.train --variant NAME
    python -m pipeline.train --variant NAME --fraction F   # stage learning_curve@F

The flags only select a variant of params.yaml `variants` (with --fraction,
one of `learning_curve.fractions`, for `learning_curve.variant` only); every
hyperparameter comes from the variant's effective `model` and `train` config.

Inputs: params.yaml, data/prepared/ (memory-mapped pixel arrays, meta.json),
reports/validation.json (for `train.class_weight: auto`).

Outputs, in models/<variant>/, swapped in together at the end (a failed or
killed run leaves the previous ones, and resumes from its last completed
epoch: pipeline.resume):
    model.keras   the best epoch's weights (lowest val_loss)
    history.csv   one row per epoch (pipeline.history)
    metrics.json  variant, best_epoch, stopped_epoch, epochs_run, train_seconds,
                  images_per_second, best_val_loss, best_val_accuracy, params
    run.json      run_id, experiment_id, model_uri, variant
    seeds.json    one entry per training seed of `train.seeds` (fitting.train_seeds)
plus an MLflow run with per-epoch metrics (step = epoch) and the logged model,
and one child run per extra seed (tags variant, seed). Under
`train.strategy: multi_worker_mirrored` only the chief writes them; the other
workers train with it and write nothing (pipeline.distribute).

With --fraction F, the same fit on a stratified, nested subset of the train
split (train_input.train_subset), validated on all of val, writes
models/learning_curve/<F>/: history.csv, and result.json (variant, fraction,
n_train, n_train_full, the best epoch's model's inference-mode accuracy/loss/n
on the subset and on val, training metrics, mlflow_run_id); its MLflow run is
tagged stage=learning_curve, train_fraction=F. No model file is kept: the
full-data point is the variant's own train stage.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from pipeline import distribute, fitting, tracking, train_input
from pipeline.catalog.training import write_fraction_outputs, write_train_outputs
from pipeline.cli import StageError, run_stage
from pipeline.config import Config, ConfigError, load_config
from pipeline.history import history_text
from pipeline.lock import LockHeldError, retrain_lock
from pipeline.paths import Paths, fraction_key
from pipeline.prepared import load_prepared

INPUT_EXAMPLE_IMAGES = 3  # logged with the model, to show its input
STOPPED_WHY = {
    fitting.STOPPED_BY_CLEAR_OVERFIT: " (stopped: its overfitting was clear)",
    fitting.STOPPED_BY_PATIENCE: " (stopped: no val-loss improvement within patience)",
}


def train_variant(paths: Paths, cfg: Config, name: str) -> dict[str, Any]:
    """The whole stage for one variant; returns metrics.json's content."""
    vcfg = cfg.variant(name)
    tracking.configure(paths)  # an unreachable server fails here, before any work
    data = load_prepared(paths.prepared_dir)
    seed_tags = {"seed": str(vcfg.train.seed), "seed_index": "0"} if vcfg.train.seeds > 1 else None
    with fitting.tracked_fit(
        paths,
        cfg,
        vcfg,
        data,
        stage="train",
        backup_root=paths.backup_dir(name),
        run_tags=seed_tags,
        # A new variant run: extra seeds' state from an earlier one would resume
        # into that run's children.
        on_new_run=lambda: fitting.discard_extra_seed_states(paths, name),
    ) as fit:
        model, run = fit.result.model, fit.run
        tracking.log_text(fitting.model_summary(model), "model_summary.txt")
        model_uri = tracking.log_keras_model(model, data.x("train")[:INPUT_EXAMPLE_IMAGES])
        run_info = {
            "run_id": run.info.run_id,
            "experiment_id": run.info.experiment_id,
            "model_uri": model_uri,
            "variant": name,
        }
        seeds_record = fitting.train_seeds(paths, cfg, vcfg, data, fit)
        write_train_outputs(
            paths,
            name,
            save_model=lambda path: fit.result.model.save(str(path)),
            history_csv=history_text(fit.result.rows),
            metrics=fit.metrics,
            run_info=run_info,
            seeds_record=seeds_record,
        )
    fitting.discard_extra_seed_states(paths, name)
    return fit.metrics


def train_fraction(paths: Paths, cfg: Config, name: str, fraction: float) -> dict[str, Any]:
    """Stage learning_curve@<fraction>: the variant on a nested subset; returns result.json."""
    if name != cfg.learning_curve.variant:
        raise ConfigError(
            f"--fraction trains params.yaml learning_curve.variant "
            f"({cfg.learning_curve.variant!r}), not {name!r}"
        )
    fraction, vcfg = cfg.learning_curve_fraction(fraction), cfg.variant(name)
    tracking.configure(paths)
    full = load_prepared(paths.prepared_dir)
    data = train_input.fraction_subset(full, fraction, cfg.data.seed)
    n_train, n_full, key = len(data.rows), len(full.y("train")), fraction_key(fraction)
    with fitting.tracked_fit(
        paths,
        cfg,
        vcfg,
        data,
        stage="learning_curve",
        backup_root=paths.fraction_backup_dir(fraction),
        run_params={
            "train_fraction": fraction,
            "n_train": n_train,
            "data.n_train": n_train,
            "data.n_train_full": n_full,
        },
        run_tags={"train_fraction": key},
        run_name=f"learning_curve · {vcfg.name} · {key}",
        fingerprint_extra={"train_fraction": key, "subset": data.subset_hash},
    ) as fit:
        result_json = {
            "variant": name,
            "fraction": fraction,
            "n_train": n_train,
            "n_train_full": n_full,
            "subset_hash": data.subset_hash,
            "data_version": str(full.meta.get("manifest_hash", "none")),
            "variant_params_hash": vcfg.params_hash(),
            **fitting.score_subset(fit.result.model, data),
            "training": fit.metrics,
            "mlflow_run_id": fit.run.info.run_id,
        }
        write_fraction_outputs(
            paths, fraction, history_csv=history_text(fit.result.rows), result=result_json
        )
    return result_json


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


def start_strategy(cfg: Config, name: str, fraction: float | None) -> None:
    """The variant's tf.distribute strategy, before TensorFlow runs anything.

    A learning-curve point (--fraction) of a multi-worker variant trains on one
    device: it is a DVC stage of its own, with no workers started for it.
    """
    tcfg = cfg.variant(name).train
    strategy = tcfg.strategy
    if strategy == "multi_worker_mirrored" and fraction is not None:
        strategy = "none"
    elif strategy == "multi_worker_mirrored" and tcfg.seeds > 1:
        raise ConfigError(
            f"variants.{name}: train.strategy multi_worker_mirrored trains one seed; set "
            f"train.seeds: 1 for it (now {tcfg.seeds}), or train.strategy: none to train "
            "several seeds on one machine"
        )
    distribute.set_threads(tcfg.threads.intra_op, tcfg.threads.inter_op)
    distribute.start(strategy)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    paths = Paths.here()
    cfg = load_config(paths.params)
    start_strategy(cfg, args.variant, args.fraction)
    if not distribute.is_chief():
        epochs = fitting.fit_as_worker(
            paths, cfg, cfg.variant(args.variant), load_prepared(paths.prepared_dir)
        )
        print(f"worker: trained {args.variant} with the chief for {epochs} epochs; the chief "
              "writes the outputs and the MLflow run")  # fmt: skip
        return 0
    stage = args.variant if args.fraction is None else f"learning_curve@{args.fraction:g}"
    try:
        with retrain_lock(
            paths.train_lock(stage), cfg.retrain.lock_stale_seconds, what=f"training of {stage}"
        ):
            return _train_as_chief(paths, cfg, args)
    except LockHeldError as exc:
        raise StageError(f"{exc}; wait for it to finish, or stop it first") from None


def _train_as_chief(paths: Paths, cfg: Config, args: argparse.Namespace) -> int:
    """The stage's work once this process holds the stage's lock."""
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
    why = STOPPED_WHY.get(metrics["stopped_by"], "")
    print(
        f"trained {args.variant}: best epoch {metrics['best_epoch']} of {metrics['epochs_run']}"
        f"{why}, "
        f"val_accuracy {metrics['best_val_accuracy']:.4f}{extra} -> "
        f"{paths.variant_dir(args.variant)}",
        file=sys.stdout,
    )
    return 0


if __name__ == "__main__":
    run_stage(main, tensorflow=True)
