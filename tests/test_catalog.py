"""The stage files' one reader and writer each: one error policy, typed results."""

from __future__ import annotations

import json

import pytest

from pipeline.catalog import evaluation, validation
from pipeline.cli import StageError
from pipeline.paths import Paths

REPORT = {
    "success": True,
    "checks": [
        {"name": "label_set", "success": True, "severity": "error"},
        {"name": "class_balance", "success": False, "severity": "warning"},
    ],
    "warnings": ["class_balance"],
    "errors": [],
}


def test_validation_round_trip_and_the_flags_train_reads(tmp_path):
    paths = Paths(tmp_path)
    validation.write_validation(paths, REPORT)
    report = validation.read_validation(paths)
    assert report.success and report.failed_checks() == {"class_balance"}
    assert report.payload == REPORT
    # The flags file holds the one fact train needs, nothing that moves with a threshold.
    assert json.loads(paths.validation_flags_json.read_text()) == {"class_balance_failed": True}
    assert validation.read_validation_flags(paths) == validation.ValidationFlags(True)
    validation.write_validation(paths, {**REPORT, "checks": REPORT["checks"][:1], "warnings": []})
    assert validation.read_validation_flags(paths) == validation.ValidationFlags(False)


def test_failed_checks_come_from_checks_warnings_and_errors():
    v = validation.Validation.from_payload(
        {
            "success": False,
            "checks": [{"name": "duplicates", "success": False}, {"name": "ok", "success": True}],
            "warnings": ["class_balance"],
            "errors": ["split_leakage"],
        }
    )
    assert v.failed_checks() == {"duplicates", "class_balance", "split_leakage"}


def test_a_missing_file_names_the_stage_to_run_unless_it_is_optional(tmp_path):
    paths = Paths(tmp_path)
    with pytest.raises(StageError, match=r"validation\.json is missing; run the validate stage"):
        validation.read_validation(paths)
    assert validation.read_validation(paths, optional=True) is None
    assert validation.read_validation_flags(paths) is None  # train outside dvc repro
    with pytest.raises(StageError, match=r"evaluation\.json is missing; run the evaluate stage"):
        evaluation.read_evaluation(paths)


@pytest.mark.parametrize(
    ("name", "text", "reader", "message"),
    [
        ("validation.json", "{not json", validation.read_validation, "not valid JSON"),
        ("validation.json", "[1, 2]", validation.read_validation, "expected a JSON object"),
        (
            "validation_flags.json",
            "{}",
            validation.read_validation_flags,
            "no class_balance_failed",
        ),
        ("evaluation.json", '{"answer": "x"}', evaluation.read_evaluation, "no `variants` object"),
    ],
)
def test_an_unreadable_file_is_a_stage_error_naming_it(tmp_path, name, text, reader, message):
    paths = Paths(tmp_path)
    paths.reports_dir.mkdir()
    (paths.reports_dir / name).write_text(text)
    with pytest.raises(StageError, match=rf"{name}.*{message}.*rerun"):
        reader(paths)


def test_evaluation_round_trip(tmp_path):
    paths = Paths(tmp_path)
    evaluation.write_evaluation(paths, {"variants": {"baseline": {"verdict": "good_fit"}}})
    assert evaluation.read_evaluation(paths)["variants"]["baseline"]["verdict"] == "good_fit"
