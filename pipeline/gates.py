"""Promotion gates: may the challenger replace the champion? Pure, no I/O.

`gates(cfg, challenger, champion, validation)` applies every gate of
params.yaml ``retrain`` in a fixed order, and `decide` turns the results into
``promoted`` or ``rejected`` with every failed gate's reason and numbers:

- ``validation``: reports/validation.json passed (``require_validation_success``);
- ``not_overfitting``: the saved model is not diagnosed as overfitting
  (``reject_overfitting``);
- ``accuracy_vs_champion``: test accuracy at least the champion's minus
  ``accuracy_tolerance``, both scored on the same current test split;
- ``gap``: the train-val accuracy gap is at most ``max_gap``;
- ``schema``: the challenger reads the champion's inputs and answers with its
  classes (input shape, number of classes, class names in label order); a new
  schema is promoted only when the user passes ``--accept-new-schema``.

Unknown facts (no verdict, no gap, no validation report) fail their gate: a
model is promoted on evidence, never on its absence.

Inputs: `ModelFacts` (from a registry model version's tags and
reports/evaluation.json, see `version_facts`), `ValidationFacts`, the
``retrain`` config. Outputs: `GateResult`s and a decision.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.config import RetrainConfig


@dataclass(frozen=True)
class ModelFacts:
    """What the gates need to know about one registered model version."""

    version: str
    variant: str | None = None
    test_accuracy: float | None = None  # on the current test split; None: cannot be scored
    gap_accuracy: float | None = None  # train - val accuracy, from evaluate
    verdict: str | None = None  # the saved model's: overfitting | underfitting | good_fit
    run_id: str | None = None
    note: str = ""  # why test_accuracy is None
    # The schema: what the model reads and answers. None when unknown.
    input_shape: tuple[int, ...] | None = None
    n_classes: int | None = None
    classes: tuple[str, ...] | None = None  # class names in label order


@dataclass(frozen=True)
class ValidationFacts:
    """reports/validation.json, reduced to what the validation gate needs."""

    success: bool | None  # None: the report is missing or unreadable
    errors: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class TestSetFacts:
    """The current test split, as far as the comparison may use it."""

    total: int  # images in the test split
    clean: int  # of them, in neither model's train or val images
    minimum: int  # retrain.min_clean_test_images
    unknown: tuple[str, ...] = ()  # models whose training images cannot be known, and why


@dataclass(frozen=True)
class GateResult:
    name: str
    passed: bool
    reason: str
    observed: float | str | bool | None = None
    limit: float | str | bool | None = None
    applied: bool = True  # False: switched off in params.yaml or not applicable


def gates(
    cfg: RetrainConfig,
    challenger: ModelFacts,
    champion: ModelFacts | None,
    validation: ValidationFacts,
    accept_new_schema: bool = False,
    test_set: TestSetFacts | None = None,
) -> list[GateResult]:
    """Every promotion gate of params.yaml `retrain`, in a fixed order.

    Unknown facts (no verdict, no gap, no validation report) fail their gate:
    a model is promoted on evidence, never on its absence.
    """
    return [
        *([_clean_test_gate(test_set)] if test_set is not None else []),
        _validation_gate(cfg, validation),
        _overfitting_gate(cfg, challenger),
        _accuracy_gate(cfg, challenger, champion),
        _gap_gate(cfg, challenger),
        _schema_gate(challenger, champion, accept_new_schema),
    ]


def schema_differences(challenger: ModelFacts, champion: ModelFacts) -> list[str]:
    """How the challenger's schema differs from the champion's, where both are known."""
    found = []
    ours, theirs = challenger.input_shape, champion.input_shape
    if ours and theirs and tuple(ours) != tuple(theirs):
        found.append(f"input shape {tuple(ours)} vs the champion's {tuple(theirs)}")
    if challenger.n_classes and champion.n_classes and challenger.n_classes != champion.n_classes:
        found.append(f"{challenger.n_classes} classes vs the champion's {champion.n_classes}")
    elif challenger.classes and champion.classes and challenger.classes != champion.classes:
        changed = [
            f"label {i}: {old!r} -> {new!r}"
            for i, (old, new) in enumerate(zip(champion.classes, challenger.classes, strict=False))
            if old != new
        ]
        found.append("class names differ (" + "; ".join(changed[:5]) + ")")
    return found


def _schema_gate(
    challenger: ModelFacts, champion: ModelFacts | None, accept_new_schema: bool
) -> GateResult:
    name = "schema"
    if champion is None:
        return GateResult(name, True, "no champion yet: any schema", None, None, applied=False)
    found = schema_differences(challenger, champion)
    if not found:
        return GateResult(name, True, "same input shape and classes as the champion", True, True)
    what = "; ".join(found)
    if accept_new_schema:
        return GateResult(name, True, f"new schema accepted (--accept-new-schema): {what}", what)
    return GateResult(
        name,
        False,
        f"challenger v{challenger.version} is incompatible with champion "
        f"v{champion.version}: {what}. Clients of the champion would break; pass "
        "--accept-new-schema to promote it anyway",
        what,
        None,
    )


def _clean_test_gate(test_set: TestSetFacts) -> GateResult:
    """The comparison is fair: both models are scored on images neither trained on."""
    name = "clean_test_set"
    if test_set.unknown:
        return GateResult(
            name,
            False,
            "cannot tell which test images a model trained on: "
            + "; ".join(test_set.unknown)
            + ". Retrain the champion on the current data (dvc repro) to record them",
            None,
            test_set.minimum,
        )
    excluded = test_set.total - test_set.clean
    numbers = (
        f"{test_set.clean} of {test_set.total} test images were in neither model's train or "
        f"val split ({excluded} excluded)"
    )
    if test_set.clean < test_set.minimum:
        return GateResult(
            name,
            False,
            f"too few images to compare on: {numbers}; retrain.min_clean_test_images = "
            f"{test_set.minimum}. Restore the split the champion was trained on (data.seed, "
            "fractions), or add test images",
            test_set.clean,
            test_set.minimum,
        )
    return GateResult(name, True, numbers, test_set.clean, test_set.minimum)


def _not_required(name: str, switch: str, observed: float | str | bool | None) -> GateResult:
    """A gate switched off in params.yaml: passed, but marked as not applied."""
    return GateResult(
        name, True, f"not required (retrain.{switch}: false)", observed, None, applied=False
    )


def _validation_gate(cfg: RetrainConfig, validation: ValidationFacts) -> GateResult:
    name = "validation"
    if not cfg.require_validation_success:
        return _not_required(name, "require_validation_success", validation.success)
    if validation.success is None:
        return GateResult(
            name, False, "reports/validation.json is missing or unreadable", None, True
        )
    if validation.success:
        return GateResult(name, True, "data validation passed", True, True)
    parts = [
        f"{kind}: {', '.join(names)}"
        for kind, names in (("errors", validation.errors), ("warnings", validation.warnings))
        if names
    ]
    detail = f" ({'; '.join(parts)})" if parts else ""
    return GateResult(name, False, f"data validation failed{detail}", False, True)


def _overfitting_gate(cfg: RetrainConfig, challenger: ModelFacts) -> GateResult:
    name = "not_overfitting"
    if not cfg.reject_overfitting:
        return _not_required(name, "reject_overfitting", challenger.verdict)
    if challenger.verdict is None:
        return GateResult(
            name,
            False,
            f"no verdict recorded for challenger v{challenger.version}",
            None,
            "not overfitting",
        )
    if challenger.verdict == "overfitting":
        return GateResult(
            name,
            False,
            f"challenger v{challenger.version} ({challenger.variant}): its saved model is "
            "diagnosed as overfitting",
            challenger.verdict,
            "not overfitting",
        )
    return GateResult(
        name, True, f"verdict {challenger.verdict}", challenger.verdict, "not overfitting"
    )


def _accuracy_gate(
    cfg: RetrainConfig, challenger: ModelFacts, champion: ModelFacts | None
) -> GateResult:
    name = "accuracy_vs_champion"
    tol = cfg.accuracy_tolerance
    if challenger.test_accuracy is None:
        return GateResult(
            name, False, f"challenger v{challenger.version} has no test accuracy", None, None
        )
    if champion is None:
        return GateResult(
            name,
            True,
            "no champion yet: nothing to compare against",
            challenger.test_accuracy,
            None,
            applied=False,
        )
    if champion.test_accuracy is None:
        # The champion cannot read today's data (e.g. data.image_size changed):
        # the comparison is impossible, not lost, so the other gates decide.
        return GateResult(
            name,
            True,
            f"champion v{champion.version} cannot be compared: {champion.note}",
            challenger.test_accuracy,
            None,
            applied=False,
        )
    limit = champion.test_accuracy - tol
    numbers = (
        f"challenger v{challenger.version} test accuracy {challenger.test_accuracy:.4f} "
        f"vs champion v{champion.version} {champion.test_accuracy:.4f} "
        f"- tolerance {tol:g} = {limit:.4f}"
    )
    if challenger.test_accuracy >= limit:
        return GateResult(name, True, numbers, challenger.test_accuracy, limit)
    return GateResult(
        name, False, f"accuracy below champion: {numbers}", challenger.test_accuracy, limit
    )


def _gap_gate(cfg: RetrainConfig, challenger: ModelFacts) -> GateResult:
    name = "gap"
    if challenger.gap_accuracy is None:
        return GateResult(
            name,
            False,
            f"no train-val accuracy gap recorded for challenger v{challenger.version}",
            None,
            cfg.max_gap,
        )
    numbers = (
        f"train-val accuracy gap {challenger.gap_accuracy:.4f} "
        f"(limit retrain.max_gap = {cfg.max_gap:g})"
    )
    if challenger.gap_accuracy <= cfg.max_gap:
        return GateResult(name, True, numbers, challenger.gap_accuracy, cfg.max_gap)
    return GateResult(
        name, False, f"gap too large: {numbers}", challenger.gap_accuracy, cfg.max_gap
    )


def decide(results: Sequence[GateResult]) -> tuple[str, list[str]]:
    """("promoted", []) when every gate passed, else ("rejected", failed gates' reasons)."""
    failed = [f"{r.name}: {r.reason}" for r in results if not r.passed]
    return ("rejected", failed) if failed else ("promoted", [])


def _float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def version_facts(version: Any, evaluation: dict[str, Any] | None) -> ModelFacts:
    """Facts of a registry ModelVersion; tags first, then evaluation.json's entry.

    The model-version tags belong to exactly this version; evaluation.json only
    describes the latest evaluate run, so it only fills what the tags lack.
    """
    tags = dict(version.tags or {})
    variant = tags.get("variant")
    classes = _json_list(tags.get("classes"))
    entry = ((evaluation or {}).get("variants") or {}).get(variant or "", {}) or {}
    gap = _float(tags.get("gap_accuracy"))
    if gap is None:
        gap = _float((entry.get("gap") or {}).get("accuracy"))
    return ModelFacts(
        version=str(version.version),
        variant=variant,
        gap_accuracy=gap,
        # The gate judges the served weights: the saved model's own verdict
        # (older versions carry only the overall one).
        verdict=tags.get("model_verdict")
        or tags.get("verdict")
        or entry.get("model_verdict")
        or entry.get("verdict"),
        run_id=version.run_id,
        input_shape=_shape(tags.get("input_shape")),
        n_classes=int(tags["n_classes"]) if str(tags.get("n_classes", "")).isdigit() else None,
        classes=tuple(classes) if classes is not None else None,
    )


def _shape(text: Any) -> tuple[int, ...] | None:
    """ "16x16x1" -> (16, 16, 1); None when absent or malformed."""
    try:
        return tuple(int(d) for d in str(text).split("x")) if text else None
    except ValueError:
        return None


def _json_list(text: Any) -> list[str] | None:
    import json

    try:
        value = json.loads(text) if text else None
    except (TypeError, ValueError):
        return None
    return [str(v) for v in value] if isinstance(value, list) else None
