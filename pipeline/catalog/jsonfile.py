"""The catalog's one policy for reading a stage's JSON output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.cli import StageError


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
