"""The files stages hand each other: one typed reader and one writer per file.

A small data catalog in the spirit of Kedro's: no stage opens another stage's
output with `json.loads` itself. Every reader has the same policy: a missing
file raises `StageError` naming the stage to rerun (or returns None where the
file is optional), and an unreadable one always raises `StageError`. Writers
are atomic (pipeline.io).

Files: reports/validation.json (+ reports/validation_flags.json, the part train
reads), reports/evaluation.json.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.cli import StageError
from pipeline.io import write_json_atomic
from pipeline.paths import Paths


def read_json(path: Path, stage: str, *, optional: bool = False) -> Any:
    """A JSON output of `stage`; None if it is missing and `optional`, else StageError."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        if optional:
            return None
        raise StageError(
            f"{path} is missing; run the {stage} stage first (dvc repro {stage})"
        ) from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise StageError(
            f"{path} is not valid JSON ({exc}); rerun the {stage} stage (dvc repro -f {stage})"
        ) from None


# --------------------------------------------------------------------------- validate


@dataclass(frozen=True)
class Validation:
    """reports/validation.json: did the data pass, and which checks failed."""

    success: bool
    checks: tuple[Mapping[str, Any], ...] = ()
    warnings: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()
    payload: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> Validation:
        return cls(
            success=bool(payload.get("success", False)),
            checks=tuple(c for c in payload.get("checks", []) if isinstance(c, Mapping)),
            warnings=tuple(payload.get("warnings") or ()),
            errors=tuple(payload.get("errors") or ()),
            payload=payload,
        )

    def failed_checks(self) -> frozenset[str]:
        """Names of the checks that failed, at either severity."""
        failed = {c["name"] for c in self.checks if not c.get("success", True) and "name" in c}
        return frozenset(failed | set(self.warnings) | set(self.errors))


@dataclass(frozen=True)
class ValidationFlags:
    """reports/validation_flags.json: the validation facts training depends on."""

    class_balance_failed: bool


def write_validation(paths: Paths, report: Mapping[str, Any]) -> None:
    """validation.json and, from it, the flags file train depends on."""
    write_json_atomic(paths.validation_json, report)
    flags = ValidationFlags(
        class_balance_failed="class_balance" in Validation.from_payload(report).failed_checks()
    )
    write_json_atomic(
        paths.validation_flags_json, {"class_balance_failed": flags.class_balance_failed}
    )


def read_validation(paths: Paths, *, optional: bool = False) -> Validation | None:
    payload = read_json(paths.validation_json, "validate", optional=optional)
    if payload is None:
        return None
    if not isinstance(payload, Mapping):
        raise StageError(f"{paths.validation_json}: expected a JSON object; rerun validate")
    return Validation.from_payload(payload)


def read_validation_flags(paths: Paths) -> ValidationFlags | None:
    """None when validate has not run (train alone, outside `dvc repro`)."""
    payload = read_json(paths.validation_flags_json, "validate", optional=True)
    if payload is None:
        return None
    try:
        return ValidationFlags(class_balance_failed=bool(payload["class_balance_failed"]))
    except (TypeError, KeyError):
        raise StageError(
            f"{paths.validation_flags_json}: no class_balance_failed; rerun the validate stage"
        ) from None


# --------------------------------------------------------------------------- evaluate


def write_evaluation(paths: Paths, evaluation: Mapping[str, Any]) -> None:
    write_json_atomic(paths.evaluation_json, evaluation)


def read_evaluation(paths: Paths) -> dict[str, Any]:
    """reports/evaluation.json (layout: README "evaluation.json"); needs `variants`."""
    payload = read_json(paths.evaluation_json, "evaluate")
    if not isinstance(payload, dict) or not isinstance(payload.get("variants"), dict):
        raise StageError(f"{paths.evaluation_json}: no `variants` object; rerun the evaluate stage")
    return payload
