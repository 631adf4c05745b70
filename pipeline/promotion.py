"""Judge the challenger against the champion, then promote it or keep the champion.

The challenger (alias ``challenger`` of ``registry.model_name``, registered by
evaluate) and the champion (alias ``champion``) are scored on the same, current
test split of data/prepared/. The caller resolves the aliases once to version
numbers and the versions are loaded by number, so an alias moved mid-run
cannot mix two models. The challenger becomes the champion only when every
gate passes (`pipeline.gates`); either way the decision is remembered on the
challenger's model version (`pipeline.judgement`).

Inputs: data/prepared/ (test split), reports/evaluation.json,
reports/validation.json, the registry. Outputs: the fields of an `Outcome`,
the ``champion`` alias, the challenger's decision tags.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd

from pipeline import tracking, trained_on
from pipeline.catalog.evaluation import read_evaluation
from pipeline.catalog.validation import read_validation
from pipeline.cli import StageError
from pipeline.config import Config
from pipeline.gates import (
    ModelFacts,
    TestSetFacts,
    ValidationFacts,
    decide,
    gates,
    version_facts,
)
from pipeline.judgement import judgement_tags
from pipeline.outcome import Outcome, RetrainError, now
from pipeline.paths import Paths
from pipeline.prepared import load_prepared, predict_in_batches
from pipeline.scoring import accuracy

log = logging.getLogger(__name__)


def judge(
    paths: Paths,
    cfg: Config,
    challenger: Any,
    champion_version: str | None,
    outcome: Outcome,
    accept_new_schema: bool = False,
) -> None:
    """Score both models on the test split and apply the gates, into `outcome`.

    Args:
        challenger: the challenger's registry ModelVersion.
        champion_version: the champion's version, None when there is none yet.
        accept_new_schema: a challenger whose input shape or classes differ from the
            champion's may be promoted (retrain --accept-new-schema).

    Raises:
        RetrainError: the test split is empty, or a model does not load or predict,
            or the challenger cannot read the current test set.
    """
    prepared = load_prepared(paths.prepared_dir)
    x, y = prepared.x("test"), prepared.y("test")
    if len(y) == 0:
        raise RetrainError(f"the test split in {paths.prepared_dir} is empty")
    outcome.data_version = current = tracking.data_version(paths)
    _quiet_keras()

    name = cfg.registry.model_name
    champion_mv = tracking.model_version(name, champion_version) if champion_version else None
    rows = trained_on.rows_of_test_split(prepared.manifest)
    if len(rows) != len(y):
        raise RetrainError(
            f"{paths.prepared_dir}: the manifest lists {len(rows)} test images, test_x.npy "
            f"holds {len(y)}; rerun prepare (dvc repro prepare)"
        )
    clean, unknown = clean_test_images(rows, [challenger, champion_mv], current)
    outcome.test_set_size = int(clean.sum())
    outcome.test_images_excluded = int(len(y) - clean.sum())
    test_set = TestSetFacts(
        int(len(y)), int(clean.sum()), cfg.retrain.min_clean_test_images, tuple(unknown)
    )
    if clean.any():
        x, y = np.asarray(x)[clean], y[clean]

    evaluation = evaluation_or_none(paths)
    facts = _scored(version_facts(challenger, evaluation), name, x, y)
    if facts.test_accuracy is None:
        raise RetrainError(f"challenger cannot score the current test set: {facts.note}")
    outcome.challenger = facts
    if champion_mv is not None:
        outcome.champion = _scored(version_facts(champion_mv, evaluation), name, x, y)
    validation = validation_facts(paths)
    outcome.gates = gates(
        cfg.retrain,
        facts,
        outcome.champion,
        validation,
        accept_new_schema=accept_new_schema,
        test_set=test_set,
    )
    outcome.decision, outcome.reasons = decide(outcome.gates)


def clean_test_images(
    rows: pd.DataFrame, versions: list[Any], data_version: str
) -> tuple[np.ndarray, list[str]]:
    """(mask of the test rows no model trained or validated on, models that cannot tell).

    A version's record (tag `trained_on`) lists its train and val images. A version
    without one (registered before records) counts as clean only when it was trained
    on the current data version, whose test split it never saw; else it is unknown.
    """
    records, unknown = [], []
    for version in versions:
        if version is None:
            continue
        tags = dict(version.tags or {})
        uri = tags.get(trained_on.TAG)
        if uri:
            try:
                records.append(trained_on.from_bytes(tracking.read_artifact_bytes(uri)))
                continue
            except Exception as exc:
                unknown.append(f"v{version.version}: its record {uri} cannot be read ({exc})")
                continue
        if tags.get("data_version") != data_version:
            unknown.append(
                f"v{version.version} has no record of its training images and was trained on "
                f"data version {tags.get('data_version', 'unknown')}, not the current "
                f"{data_version}"
            )
    return trained_on.unseen(rows, records), unknown


def _scored(facts: ModelFacts, name: str, x: np.ndarray, y: np.ndarray) -> ModelFacts:
    """The facts with the test accuracy, and the schema the model itself declares
    where the version's tags do not (versions registered before the tags)."""
    acc, note, (shape, width) = _score(f"models:/{name}/{facts.version}", x, y)
    return replace(
        facts,
        test_accuracy=acc,
        note=note,
        input_shape=facts.input_shape or shape,
        n_classes=facts.n_classes or width,
    )


def promote_or_keep(
    cfg: Config, champion_version: str | None, fingerprint: str, outcome: Outcome
) -> None:
    """Move alias ``champion`` to a promoted challenger; remember the decision on it."""
    name, challenger = cfg.registry.model_name, outcome.challenger.version
    extra = {}
    if outcome.decision == "promoted":
        tracking.set_registered_alias(name, tracking.CHAMPION, challenger)
        outcome.champion_version_after = challenger
        previous = f" (was v{champion_version})" if champion_version else ""
        outcome.reasons = [f"every gate passed; v{challenger} is the champion{previous}"]
        extra = {"promoted_at": now(), "promoted_by_repro_id": outcome.repro_id}
    # Remembered on the version itself (not in reports/retrain.json) so that a
    # fresh CI checkout sharing the registry knows it too.
    tags = judgement_tags(
        outcome.decision, outcome.reasons, champion_version, fingerprint, outcome.repro_id
    )
    tag_version(name, challenger, {**tags, **extra})


def tag_version(name: str, version: str, tags: dict[str, str]) -> None:
    """Best effort: the decision is already made; a missing tag costs one re-judgement."""
    try:
        tracking.set_model_version_tags(name, version, tags)
    except Exception as exc:
        log.warning("could not tag %s v%s with the retrain decision: %s", name, version, exc)


def score(model_uri: str, x: np.ndarray, y: np.ndarray) -> tuple[float | None, str]:
    """(test accuracy, note); accuracy None when the model's input shape differs from x's.

    Raises:
        RetrainError: the model does not load or predict.
    """
    acc, note, _ = _score(model_uri, x, y)
    return acc, note


Schema = tuple[tuple[int, ...] | None, int | None]  # (input shape, output width)


def _score(model_uri: str, x: np.ndarray, y: np.ndarray) -> tuple[float | None, str, Schema]:
    """`score`, plus the schema the model's signature declares."""
    try:
        model = tracking.load_model(model_uri)
    except Exception as exc:
        raise RetrainError(f"cannot load {model_uri}: {type(exc).__name__}: {exc}") from exc
    wanted = tracking.model_input_shape(model)
    schema = (wanted, tracking.model_output_width(model))
    if wanted is not None and all(d > 0 for d in wanted) and wanted != tuple(x.shape[1:]):
        return (
            None,
            f"{model_uri} expects images of shape {wanted}, the current test set "
            f"has {tuple(x.shape[1:])}",
            schema,
        )
    try:
        return accuracy(predict_in_batches(model.predict, x), y), "", schema
    except Exception as exc:
        raise RetrainError(f"cannot score {model_uri}: {type(exc).__name__}: {exc}") from exc


def _quiet_keras() -> None:
    """Keras's progress bar per predict() call, with colour codes, on a terminal only.

    Cron and systemd keep retrain's output as its log. Keras's non-interactive
    mode sends the bars to absl logging instead of stdout; at INFO they would
    still reach that log, so absl's INFO is dropped too.
    """
    if sys.stdout.isatty():
        return
    with contextlib.suppress(ImportError):
        import keras

        keras.utils.disable_interactive_logging()
        logging.getLogger("absl").setLevel(logging.WARNING)


# The lead replaces these with one typed reader per file; they read as before.


def validation_facts(paths: Paths) -> ValidationFacts:
    """reports/validation.json's gate facts; success None when missing or unreadable.

    Unlike a stage, retrain records a decision either way: an unreadable report
    fails the validation gate (when it is required) instead of stopping the job.
    """
    try:
        validation = read_validation(paths)
    except StageError:
        return ValidationFacts(success=None)
    return ValidationFacts(
        success=validation.success, errors=validation.errors, warnings=validation.warnings
    )


def evaluation_or_none(paths: Paths) -> dict[str, Any] | None:
    """reports/evaluation.json, or None when missing or unreadable (tags then decide)."""
    try:
        return read_evaluation(paths)
    except StageError:
        return None
