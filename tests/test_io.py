"""pipeline.io: the one atomic JSON writer writes strict JSON."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from pipeline.io import write_json_atomic


def test_non_finite_numbers_become_null_so_strict_readers_can_parse(tmp_path):
    path = tmp_path / "out.json"
    write_json_atomic(
        path,
        {
            "share": math.inf,  # a rise over a loss that never fell
            "ci": float("nan"),  # an interval of unknown size
            "np": [np.float64("nan"), np.float32(2.5), np.int64(3)],
            "array": np.array([1.0, -np.inf]),
        },
    )
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text

    def strict(token: str):
        raise ValueError(f"non-standard JSON constant {token}")

    data = json.loads(text, parse_constant=strict)
    assert data == {"share": None, "ci": None, "np": [None, 2.5, 3], "array": [1.0, None]}


def test_unserialisable_values_still_raise(tmp_path):
    with pytest.raises(TypeError, match="not JSON serialisable: object"):
        write_json_atomic(tmp_path / "x.json", {"x": object()})
    assert not (tmp_path / "x.json").exists()
