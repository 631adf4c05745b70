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

from pipeline import tracking
from pipeline.catalog.evaluation import read_evaluation
from pipeline.catalog.validation import read_validation
from pipeline.cli import StageError
from pipeline.config import Config
from pipeline.gates import ModelFacts, ValidationFacts, decide, gates, version_facts
from pipeline.judgement import judgement_tags
from pipeline.outcome import Outcome, RetrainError, now
from pipeline.paths import Paths
from pipeline.prepared import load_prepared, predict_in_batches
from pipeline.scoring import accuracy

log = logging.getLogger(__name__)


def judge(
    paths: Paths, cfg: Config, challenger: Any, champion_version: str | None, outcome: Outcome
) -> None:
    """Score both models on the test split and apply the gates, into `outcome`.

    Args:
        challenger: the challenger's registry ModelVersion.
        champion_version: the champion's version, None when there is none yet.

    Raises:
        RetrainError: the test split is empty, or a model does not load or predict,
            or the challenger cannot read the current test set.
    """
    prepared = load_prepared(paths.prepared_dir)
    x, y = prepared.x("test"), prepared.y("test")
    if len(y) == 0:
        raise RetrainError(f"the test split in {paths.prepared_dir} is empty")
    outcome.test_set_size = int(len(y))
    outcome.data_version = tracking.data_version(paths)
    _quiet_keras()

    name = cfg.registry.model_name
    evaluation = evaluation_or_none(paths)
    facts = _scored(version_facts(challenger, evaluation), name, x, y)
    if facts.test_accuracy is None:
        raise RetrainError(f"challenger cannot score the current test set: {facts.note}")
    outcome.challenger = facts
    if champion_version is not None:
        champion = version_facts(tracking.model_version(name, champion_version), evaluation)
        outcome.champion = _scored(champion, name, x, y)
    validation = validation_facts(paths)
    outcome.gates = gates(cfg.retrain, facts, outcome.champion, validation)
    outcome.decision, outcome.reasons = decide(outcome.gates)


def _scored(facts: ModelFacts, name: str, x: np.ndarray, y: np.ndarray) -> ModelFacts:
    acc, note = score(f"models:/{name}/{facts.version}", x, y)
    return replace(facts, test_accuracy=acc, note=note)


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
    try:
        model = tracking.load_model(model_uri)
    except Exception as exc:
        raise RetrainError(f"cannot load {model_uri}: {type(exc).__name__}: {exc}") from exc
    wanted = tracking.model_input_shape(model)
    if wanted is not None and all(d > 0 for d in wanted) and wanted != tuple(x.shape[1:]):
        return None, (
            f"{model_uri} expects images of shape {wanted}, the current test set "
            f"has {tuple(x.shape[1:])}"
        )
    try:
        return accuracy(predict_in_batches(model.predict, x), y), ""
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
