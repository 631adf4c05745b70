"""reports/validation.json and reports/validation_flags.json (written by validate).

The flags file holds the one fact train reads (did class_balance fail?), so a
validate knob that only moves a number in validation.json retrains nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pipeline.catalog.jsonfile import read_json
from pipeline.cli import StageError
from pipeline.io import write_json_atomic
from pipeline.paths import Paths


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
