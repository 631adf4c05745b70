"""pipeline.assessment: the evaluation payload from histories and scores, without TensorFlow."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline import assessment
from pipeline.catalog.training import TrainOutputs, read_seed_records
from pipeline.catalog.validation import Validation
from pipeline.cli import StageError
from pipeline.config import parse_config
from pipeline.diagnosis import OVERFITTING
from pipeline.scoring import VariantEvaluation, split_scores

from .conftest import REPO, small_params

N_CLASSES = 3


def history(train_acc: list[float], val_acc: list[float]) -> pd.DataFrame:
    """A plausible history: losses fall as accuracies rise."""
    epochs = len(train_acc)
    return pd.DataFrame(
        {
            "epoch": range(1, epochs + 1),
            "loss": [1.2 - a for a in train_acc],
            "accuracy": train_acc,
            "val_loss": [1.2 - a for a in val_acc],
            "val_accuracy": val_acc,
        }
    )


def scores_with_accuracy(accuracy: float, n: int = 300) -> dict:
    """split_scores of a model that is right on the first `accuracy` share of balanced rows."""
    y = np.arange(n) % N_CLASSES
    right = int(round(accuracy * n))
    pred = np.where(np.arange(n) < right, y, (y + 1) % N_CLASSES)
    proba = np.full((n, N_CLASSES), 0.05)
    proba[np.arange(n), pred] = 0.9
    return split_scores(y, proba, N_CLASSES)


def evaluated(name: str, train: float, val: float, test: float) -> VariantEvaluation:
    scores = {
        "train": scores_with_accuracy(train),
        "val": scores_with_accuracy(val),
        "test": scores_with_accuracy(test),
    }
    return VariantEvaluation(name, scores, {}, {"dropout": False}, None)


def artifacts(name: str, hist: pd.DataFrame, **run_info) -> TrainOutputs:
    info = {"run_id": f"run-{name}", "model_uri": f"models:/{name}", **run_info}
    best = int(hist["val_loss"].idxmin()) + 1
    return TrainOutputs(
        name, Path("unused.keras"), hist, {"best_epoch": best, "stopped_epoch": 0}, info
    )


def two_variants():
    cfg = parse_config(small_params())  # variants baseline and dropout
    overfit = history([0.6, 0.9, 0.99, 1.0, 1.0], [0.55, 0.6, 0.6, 0.6, 0.6])
    steady = history([0.6, 0.75, 0.85, 0.9, 0.9], [0.58, 0.72, 0.82, 0.86, 0.87])
    arts = {"baseline": artifacts("baseline", overfit), "dropout": artifacts("dropout", steady)}
    evals = {
        "baseline": evaluated("baseline", 1.0, 0.6, 0.6),
        "dropout": evaluated("dropout", 0.9, 0.87, 0.86),
    }
    return cfg, arts, evals


def test_build_evaluation_diagnoses_compares_and_keeps_the_file_layout():
    cfg, arts, evals = two_variants()
    evaluation = assessment.build_evaluation(
        cfg, ["a", "b", "c"], arts, evals, Validation(success=True), n_train=300
    )
    assert list(evaluation) == [
        "answer",
        "variants",
        "best_variant",
        "best_variant_reason",
        "reference_variant",
        "effects",
        "recommendations",
        "validation_success",
        "classes",
    ]
    base = evaluation["variants"]["baseline"]
    assert list(base)[:4] == ["train", "val", "test", "gap"]
    assert "_per_class" not in base["train"] and base["train"]["n"] == 300
    assert base["verdict"] == OVERFITTING, base["evidence"]
    assert evaluation["answer"] == base["summary"]
    assert evaluation["reference_variant"] == "baseline"
    assert evaluation["best_variant"] == "dropout"
    assert base["mlflow_run_id"] == "run-baseline" and base["model_uri"] == "models:/baseline"
    assert base["confusion"]["labels"] == ["a", "b", "c"]
    assert len(base["per_class"]) == 3
    # One seed: no across-seed line in the evidence, no spread.
    assert base["seeds"]["n_seeds"] == 1 and base["seeds"]["val_accuracy"]["sd"] is None
    assert not any(e.startswith("across training seeds") for e in base["evidence"])
    assert evaluation["effects"]["dropout"]["delta_gap"] < 0


def test_extra_seeds_are_diagnosed_and_summarized():
    cfg, arts, evals = two_variants()
    hist = history([0.6, 0.9, 0.99, 1.0, 1.0], [0.55, 0.62, 0.63, 0.62, 0.62])
    record = {
        "seeds": [
            {"index": 0, "seed": 42},  # seed 0 is the variant's own run: not re-read
            {
                "index": 1,
                "seed": 43,
                "history": hist.to_dict("list"),
                "scores": {
                    "train": {"accuracy": 1.0, "loss": 0.01, "n": 300},
                    "val": {"accuracy": 0.62, "loss": 0.9, "n": 300},
                },
                "best_epoch": 3,
                "stopped_epoch": 0,
                "mlflow_run_id": "run-seed-1",
            },
        ]
    }
    evaluation = assessment.build_evaluation(
        cfg,
        ["a", "b", "c"],
        arts,
        evals,
        Validation(success=True),
        seed_records={"baseline": record},
    )
    seeds = evaluation["variants"]["baseline"]["seeds"]
    assert seeds["n_seeds"] == 2
    assert [(p["index"], p["seed"]) for p in seeds["per_seed"]] == [(0, 42), (1, 43)]
    assert seeds["per_seed"][1]["val_accuracy"] == 0.62
    assert seeds["per_seed"][1]["mlflow_run_id"] == "run-seed-1"
    assert seeds["per_seed"][1]["gap"] == pytest.approx(0.38)
    assert seeds["val_accuracy"]["sd"] > 0
    evidence = evaluation["variants"]["baseline"]["evidence"]
    assert evidence[-1] == f"across training seeds: {seeds['summary']}"


def test_an_unusable_seed_entry_names_the_variant_and_seed():
    cfg, arts, evals = two_variants()
    record = {"seeds": [{"index": 1, "seed": 43, "history": [], "scores": {}}]}
    with pytest.raises(StageError, match=r"variant 'dropout' seed 43: unusable seeds\.json"):
        assessment.build_evaluation(
            cfg,
            ["a", "b", "c"],
            arts,
            evals,
            Validation(success=True),
            seed_records={"dropout": record},
        )


def test_run_facts_keep_only_epochs_the_history_has():
    hist = history([0.5, 0.6], [0.5, 0.6])
    facts = assessment.run_facts(hist, {"best_epoch": 2, "stopped_epoch": 5}, 100)
    assert facts.best_epoch == 2 and facts.stopped_early is True and facts.n_train == 100
    facts = assessment.run_facts(hist, {"best_epoch": 7, "stopped_epoch": 0}, 100)
    assert facts.best_epoch is None and facts.stopped_early is False
    assert assessment.run_facts(hist, {}, 100).stopped_early is None


def test_chance_comes_from_the_full_split_or_the_scored_rows():
    scores = {"accuracy": 0.5, "loss": 1.0, "n": 4, "_per_class": {"support": [3, 1]}}
    assert assessment.split_facts(scores).chance == 0.75
    assert assessment.split_facts(scores, chance=0.5).chance == 0.5
    assert assessment.chance_accuracy({"_per_class": {"support": []}}) is None
    assert assessment.majority_share(np.array([0, 1, 1, 1])) == 0.75
    assert assessment.majority_share(np.array([], dtype=int)) is None


def test_seed_records_missing_is_one_seed_and_corrupt_is_an_error(project):
    paths = project.paths
    assert read_seed_records(paths, "baseline") is None
    paths.variant_dir("baseline").mkdir(parents=True)
    paths.seeds_json("baseline").write_text(json.dumps({"seeds": []}))
    assert read_seed_records(paths, "baseline") == {"seeds": []}
    paths.seeds_json("baseline").write_text("{not json")
    with pytest.raises(
        StageError, match=r"seeds\.json is not valid JSON .*rerun the train@baseline"
    ):
        read_seed_records(paths, "baseline")


def test_importing_assessment_and_tables_loads_neither_tensorflow_nor_mlflow():
    code = (
        "import sys, pipeline.assessment, pipeline.tables; "
        "print(sorted(m for m in ('tensorflow', 'keras', 'mlflow') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
