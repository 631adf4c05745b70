"""Stage `evaluate`: score every variant, diagnose it, compare, register the best.

Inputs: params.yaml (`variants`, `evaluate`, `registry`, `learning_curve`),
data/prepared/, reports/validation.json, every variant's models/<variant>/
(the train stage's contract) and the learning_curve stages' results.

Outputs:
- reports/evaluation.json: scores, diagnosis, comparison and advice per
  variant (pipeline.assessment), plus the registered model version;
- reports/comparison.csv and comparison.md, reports/curves.csv and
  reports/metrics.json (pipeline.tables);
- reports/figures/ (pipeline.figures);
- MLflow: the variants' train runs annotated, an `evaluate` run, and the best
  variant's model registered with alias "challenger" (pipeline.publishing).

Every split is scored in inference mode by pipeline.scoring (train on a fixed
sample as large as val; plain cross-entropy without the L2 penalty).

MLflow is checked first: the stage configures tracking and confirms every
variant's train run exists before any inference or write, so an unreachable
server or a stale run.json leaves reports/ exactly as it was.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from pipeline import assessment, figures, progress, publishing, scoring, tables, tracking
from pipeline.builders import builder_kind, load_builder
from pipeline.catalog.evaluation import write_evaluation
from pipeline.catalog.training import TrainOutputs, read_seed_records
from pipeline.catalog.validation import read_validation
from pipeline.cli import StageError, run_stage
from pipeline.config import Config, load_config
from pipeline.io import write_json_atomic, write_text_atomic
from pipeline.paths import Paths
from pipeline.prepared import SPLITS, PreparedDataset, load_prepared
from pipeline.tracking import CHALLENGER

log = logging.getLogger(__name__)


def evaluate_variant(
    artifacts: TrainOutputs,
    data: PreparedDataset,
    indices: Mapping[str, np.ndarray],
    probe: figures.Probe,
    n_layers: int,
) -> scoring.VariantEvaluation:
    """Load one variant's saved model and measure it: scores, feature maps, behaviour."""
    import keras

    try:
        model = keras.saving.load_model(artifacts.model_path, compile=False)
    except Exception as exc:  # Keras reports a damaged archive as many different errors
        raise StageError(
            f"{artifacts.model_path} cannot be loaded ({type(exc).__name__}: "
            f"{str(exc)[:200]}); retrain it with `dvc repro -f train@{artifacts.name}`"
        ) from None
    scores, correct = scoring.score_model(model, data, indices)
    maps = figures.feature_maps(model, probe.images, n_layers)
    behaviour = scoring.training_behaviour(model)
    keras.backend.clear_session()
    return scoring.VariantEvaluation(artifacts.name, scores, maps, behaviour, correct)


def write_tables(
    paths: Paths, evaluation: Mapping[str, Any], histories: Mapping[str, pd.DataFrame]
) -> None:
    """comparison.csv and .md, curves.csv and the DVC metrics."""
    comparison, markdown = tables.comparison(evaluation)
    write_text_atomic(paths.comparison_csv, comparison.to_csv(index=False))
    write_text_atomic(paths.comparison_md, markdown)
    write_text_atomic(paths.curves_csv, tables.curves_frame(histories).to_csv(index=False))
    write_json_atomic(paths.evaluation_metrics, tables.flat_metrics(evaluation))


def run_evaluate(paths: Paths, cfg: Config) -> dict[str, Any]:
    """Everything the stage does; returns the evaluation payload it wrote."""
    # MLflow first: nothing is computed or written unless the results can be logged.
    tracking.configure(paths)
    validation = read_validation(paths)
    artifacts = {name: assessment.load_variant_artifacts(paths, name) for name in cfg.variants}
    publishing.require_variant_runs(
        paths, {n: a.run_info.get("run_id") for n, a in artifacts.items()}
    )
    if builder_kind(cfg.model.builder) == "user":
        # Its module registers any custom layers the saved models need to load.
        load_builder(cfg.model.builder, paths.root)
    data = load_prepared(paths.prepared_dir)
    probe = figures.select_probe(data, cfg.evaluate.feature_map_images)
    indices = scoring.evaluation_indices(data)
    evaluations = {}
    for name, art in progress.steps(
        list(artifacts.items()), "evaluate: scoring", "variant", label=lambda item: item[0]
    ):
        evaluations[name] = evaluate_variant(
            art, data, indices, probe, cfg.evaluate.feature_map_layers
        )
    evaluation = assessment.build_evaluation(
        cfg,
        data.classes,
        artifacts,
        evaluations,
        validation,
        n_train=len(data.y("train")),
        chance={split: assessment.majority_share(data.y(split)) for split in SPLITS},
        seed_records={name: read_seed_records(paths, name) for name in artifacts},
    )
    curve_variant = cfg.learning_curve.variant
    curve_points = assessment.learning_curve_points(
        paths,
        cfg,
        n_train=len(data.y("train")),
        full_scores=evaluations[curve_variant].scores,
        full_run_id=artifacts[curve_variant].run_info.get("run_id"),
        data_version=str(data.meta.get("manifest_hash", "none")),
    )
    assessment.add_learning_curve(evaluation, curve_points, curve_variant)
    histories = {name: art.history for name, art in artifacts.items()}

    log.info("writing figures to %s", paths.figures_dir)
    figures.write_figures(
        paths.figures_dir, evaluation, histories, evaluations, probe.images, probe.labels
    )
    write_tables(paths, evaluation, histories)

    log.info("logging to MLflow and registering %s", evaluation["best_variant"])
    publishing.log_to_variant_runs(evaluation, paths.figures_dir)
    publishing.log_seeds_to_variant_runs(evaluation)
    publishing.log_evaluate_run(paths, cfg, evaluation, validation, CHALLENGER)
    write_evaluation(paths, evaluation)
    return evaluation


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.evaluate", description=__doc__.split("\n")[0]
    )
    parser.parse_args(argv)
    paths = Paths.here()
    cfg = load_config(paths.params)
    evaluation = run_evaluate(paths, cfg)
    verdicts = ", ".join(f"{n}={v['verdict']}" for n, v in evaluation["variants"].items())
    reg = evaluation["registered"]
    where = (
        f"{reg['model_name']} v{reg['version']} @{reg['alias']}"
        if reg
        else evaluation.get("registration_skipped", "not registered")
    )
    print(
        f"evaluated {len(evaluation['variants'])} variants ({verdicts}); best: "
        f"{evaluation['best_variant']} -> {where}; "
        f"see {paths.evaluation_json} and {paths.comparison_md}"
    )
    return 0


if __name__ == "__main__":
    run_stage(main, tensorflow=True)
