"""reports/evaluation.json (written by evaluate; layout in the README)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipeline.catalog.jsonfile import read_json
from pipeline.cli import StageError
from pipeline.io import write_json_atomic
from pipeline.paths import Paths


def write_evaluation(paths: Paths, evaluation: Mapping[str, Any]) -> None:
    write_json_atomic(paths.evaluation_json, evaluation)


def read_evaluation(paths: Paths) -> dict[str, Any]:
    """reports/evaluation.json (layout: README "evaluation.json"); needs `variants`."""
    payload = read_json(paths.evaluation_json, "evaluate")
    if not isinstance(payload, dict) or not isinstance(payload.get("variants"), dict):
        raise StageError(f"{paths.evaluation_json}: no `variants` object; rerun the evaluate stage")
    return payload
