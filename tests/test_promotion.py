"""pipeline.promotion: its inputs read as before, and a model that cannot load.

Scoring, gating and promoting real registered models run in test_retrain.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline import promotion
from pipeline.gates import ValidationFacts
from pipeline.outcome import RetrainError
from pipeline.paths import Paths


def test_validation_facts_keep_the_check_names_and_tolerate_a_bad_report(tmp_path):
    paths = Paths(tmp_path)
    path = paths.validation_json
    assert promotion.validation_facts(paths) == ValidationFacts(success=None)
    path.parent.mkdir()
    path.write_text("{not json")
    assert promotion.validation_facts(paths) == ValidationFacts(success=None)
    report = {"success": False, "checks": [], "errors": ["split_leakage"], "warnings": None}
    path.write_text(json.dumps(report))
    assert promotion.validation_facts(paths) == ValidationFacts(False, ("split_leakage",), ())
    path.write_text(json.dumps({"checks": []}))
    assert promotion.validation_facts(paths) == ValidationFacts(success=False)


def test_evaluation_is_none_when_missing_or_invalid(tmp_path):
    paths = Paths(tmp_path)
    path = paths.evaluation_json
    assert promotion.evaluation_or_none(paths) is None
    path.parent.mkdir()
    path.write_text("[1,")
    assert promotion.evaluation_or_none(paths) is None
    path.write_text('{"variants": {}}')
    assert promotion.evaluation_or_none(paths) == {"variants": {}}


def test_a_model_that_does_not_load_is_a_retrain_error(project):
    x, y = np.zeros((2, 8, 8, 1), dtype=np.uint8), np.zeros(2, dtype=int)
    missing = project.root / "no-such-model"
    with pytest.raises(RetrainError, match=f"cannot load {missing}"):
        promotion.score(str(missing), x, y)
