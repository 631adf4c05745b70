"""What the train stages leave for evaluate (written by train and learning_curve).

- models/<variant>/: model.keras, history.csv (one row per epoch), metrics.json
  (best/stopped epoch, params, scores), run.json (MLflow run id, experiment id,
  model URI, variant) and seeds.json (every training seed's history and
  scores; absent for a model trained before `train.seeds`, meaning one seed).
- models/learning_curve/<fraction>/: history.csv and result.json.

A variant's files are written together into a staging folder that replaces the
old one only when all are there, so evaluate never reads a mix of two runs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.catalog.jsonfile import read_json
from pipeline.cli import StageError
from pipeline.io import write_json_atomic
from pipeline.paths import Paths, fraction_key
from pipeline.prepared import staging_dir


@dataclass(frozen=True)
class TrainOutputs:
    """What the train stage left for one variant (the model stays on disk)."""

    name: str
    model_path: Path
    history: pd.DataFrame
    train_metrics: dict[str, Any]
    run_info: dict[str, Any]


def write_train_outputs(
    paths: Paths,
    variant: str,
    *,
    save_model: Callable[[Path], None],
    history_csv: str,
    metrics: Mapping[str, Any],
    run_info: Mapping[str, Any],
    seeds_record: Mapping[str, Any] | None = None,
) -> None:
    """All of models/<variant>/ in a staging folder, swapped in together.

    `save_model(path)` writes the model file (Keras's `model.save`).
    """
    with staging_dir(paths.variant_dir(variant)) as tmp:
        save_model(tmp / paths.model_file(variant).name)
        (tmp / paths.history_csv(variant).name).write_text(history_csv)
        write_json_atomic(tmp / paths.train_metrics(variant).name, metrics)
        write_json_atomic(tmp / paths.run_info(variant).name, run_info)
        if seeds_record is not None:
            write_json_atomic(tmp / paths.seeds_json(variant).name, seeds_record)


def read_train_outputs(paths: Paths, variant: str) -> TrainOutputs:
    """models/<variant>/; StageError naming the variant and what is missing or unreadable."""
    needed = {
        "model": paths.model_file(variant),
        "history": paths.history_csv(variant),
        "metrics": paths.train_metrics(variant),
        "run": paths.run_info(variant),
    }
    missing = [str(p) for p in needed.values() if not p.exists()]
    if missing:
        raise StageError(
            f"variant {variant!r} has no trained model: missing {', '.join(missing)}. "
            f"Train it first (dvc repro train@{variant}) or remove it from params.yaml `variants`"
        )
    stage = f"train@{variant}"
    try:
        history = pd.read_csv(needed["history"])
    except (ValueError, OSError) as exc:
        raise StageError(f"variant {variant!r}: unreadable training output: {exc}") from None
    return TrainOutputs(
        variant,
        needed["model"],
        history,
        read_json(needed["metrics"], stage),
        read_json(needed["run"], stage),
    )


def read_seed_records(paths: Paths, variant: str) -> dict[str, Any] | None:
    """models/<variant>/seeds.json, or None for a model trained before train.seeds existed."""
    return read_json(paths.seeds_json(variant), f"train@{variant}", optional=True)


def write_fraction_outputs(
    paths: Paths, fraction: float, *, history_csv: str, result: Mapping[str, Any]
) -> None:
    """models/learning_curve/<fraction>/: history.csv and result.json, swapped in together."""
    with staging_dir(paths.fraction_dir(fraction)) as tmp:
        (tmp / paths.fraction_history(fraction).name).write_text(history_csv)
        write_json_atomic(tmp / paths.fraction_result(fraction).name, result)


def read_fraction_result(paths: Paths, fraction: float) -> dict[str, Any]:
    """models/learning_curve/<fraction>/result.json; StageError naming the stage to rerun."""
    stage = f"learning_curve@{fraction_key(fraction)}"
    return read_json(paths.fraction_result(fraction), stage)
