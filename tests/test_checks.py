"""Tests for pipeline/checks.py: the Check objects, the validation.json payload
built from GX results, the MLflow metrics of a report and the stderr summary.

GX results are stood in for by tiny objects with GX's two attributes the
payload reads (`success`, `result`); the real GX runs in tests/test_validate.py.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from pipeline import checks
from pipeline.config import SeverityConfig
from pipeline.gx_suite import Spec
from pipeline.leakage import find_leaks
from pipeline.validation_tables import (
    ValidationTables,
    class_folders_table,
    class_tables,
    images_table,
)

from .conftest import shipped

# The output contract (ARCHITECTURE.md): these names, in this order.
CONTRACT = (
    "label_set",
    "class_balance",
    "min_images_per_class",
    "corrupt_images",
    "image_properties",
    "duplicates",
    "split_leakage",
)


def test_check_names_are_the_contract_and_each_has_a_severity() -> None:
    assert checks.CHECK_NAMES == CONTRACT
    assert set(SeverityConfig.model_fields) == set(CONTRACT)


def test_severity_comes_from_params_by_check_name() -> None:
    vcfg = shipped("validate", severity={"duplicates": "error"})
    by_name = {c.name: c for c in checks.CHECKS}
    assert by_name["duplicates"].severity(vcfg) == "error"
    assert by_name["class_balance"].severity(vcfg) == "warning"


def test_every_expectation_is_tagged_with_its_check_and_severity() -> None:
    from great_expectations.expectations.metadata_types import FailureSeverity

    vcfg = shipped("validate", severity={"class_balance": "error"})
    specs = checks.all_expectations(vcfg, ["a", "b"])
    names = [s.check for s in specs]
    assert names == sorted(names, key=CONTRACT.index)  # grouped in check order
    assert set(names) == set(CONTRACT)
    severity = vcfg.severity.model_dump()
    for spec in specs:
        assert spec.table in {"manifest", "images", "split_classes", "splits", "class_folders"}
        assert spec.expectation.meta == {"check": spec.check}
        assert spec.expectation.description.startswith(f"{spec.check}: ")
        error = severity[spec.check] == "error"
        wanted = FailureSeverity.CRITICAL if error else FailureSeverity.WARNING
        assert spec.expectation.severity == wanted


# ---------------------------------------------------------------- summarise


def tiny_tables() -> ValidationTables:
    """Two train images per class, one val, one unreadable file."""
    images = pd.DataFrame(
        {
            "path": ["t0", "t1", "t2", "t3", "v0"],
            "split": ["train", "train", "train", "train", "val"],
            "label": ["a", "a", "b", "b", "a"],
            "pixel_hash": ["h0", "h1", "h2", "h3", "h4"],
            "phash": ["0000000000000000", "00000000ffffffff", "ffffffff00000000",
                      "ffffffffffffffff", "0f0f0f0f0f0f0f0f"],
            "pixel_std": [10.0, 10.0, 0.5, 10.0, 10.0],
            "mode": ["L"] * 5,
            "width": [8] * 5,
            "height": [8] * 5,
        }
    )  # fmt: skip
    manifest = pd.DataFrame(
        {
            "path": [*images["path"], "bad"],
            "status": ["ok"] * 5 + ["truncated"],
            "error": [""] * 5 + ["cut short"],
            "split": [*images["split"], ""],
        }
    )
    leaks = find_leaks(images, shipped("validate"), pixels=None)
    split_classes, splits = class_tables(images, ["a", "b"])
    return ValidationTables(
        manifest=manifest,
        images=images_table(images, leaks),
        split_classes=split_classes,
        splits=splits,
        classes=["a", "b"],
        leaks=leaks,
        class_folders=class_folders_table(["a", "b"], []),
    )


def result(success: bool, paths: list[str] = ()) -> SimpleNamespace:
    """A stand-in for GX's ExpectationValidationResult."""
    rows = [{"path": p} for p in paths]
    return SimpleNamespace(
        success=success,
        result={"unexpected_count": len(rows), "partial_unexpected_index_list": rows},
    )


def outcomes(failing: dict[tuple[str, str], list[str]]) -> list[tuple[Spec, SimpleNamespace]]:
    """One spec per (check, table); those in `failing` fail with those paths."""
    pairs = [(c, "images") for c in CONTRACT] + [("label_set", "split_classes")]
    return [
        (Spec(c, t, None), result((c, t) not in failing, failing.get((c, t), []))) for c, t in pairs
    ]


def test_summarise_payload_shape_success_and_severity_lists() -> None:
    vcfg = shipped("validate")
    failing = {("image_properties", "images"): ["t2"], ("label_set", "split_classes"): []}
    report = checks.summarise(outcomes(failing), tiny_tables(), vcfg)
    assert set(report) == {"success", "checks", "warnings", "errors"}
    assert [c["name"] for c in report["checks"]] == list(CONTRACT)
    assert report["errors"] == ["label_set"] and report["success"] is False
    assert report["warnings"] == ["image_properties"]
    entry = next(c for c in report["checks"] if c["name"] == "image_properties")
    assert entry["examples"] == ["t2"] and entry["observed"]["offending_files"] == 1
    assert entry["observed"]["blank"] == 1


def test_summarise_counts_offending_files_on_row_tables_only_and_caps_examples() -> None:
    vcfg = shipped("validate", max_examples=2)
    failing = {("label_set", "images"): ["x", "y", "z"], ("label_set", "split_classes"): ["w"]}
    report = checks.summarise(outcomes(failing), tiny_tables(), vcfg)
    entry = report["checks"][0]
    assert entry["observed"]["offending_files"] == 3  # split_classes rows are not files
    assert entry["examples"] == ["x", "y"]


def test_observations_of_the_tiny_tables() -> None:
    tables, vcfg = tiny_tables(), shipped("validate", min_images_per_class=3)
    observed = {c.name: c.observe(tables, vcfg) for c in checks.CHECKS}
    assert observed["label_set"]["missing"] == {"val": ["b"], "test": ["a", "b"]}
    assert observed["min_images_per_class"]["classes_below"] == {"a": 2, "b": 2}
    assert observed["corrupt_images"]["reasons"] == {"bad": "truncated: cut short"}
    assert observed["corrupt_images"]["fraction"] == pytest.approx(1 / 6, abs=1e-6)
    assert observed["duplicates"]["duplicate_images"] == 0
    assert observed["split_leakage"]["leaking_images"] == 0


# ---------------------------------------------------------------- metrics and stderr


def entry(name: str, success: bool, observed: dict, examples: list[str] = ()) -> dict:
    severity = "error" if name == "label_set" else "warning"
    return {
        "name": name,
        "success": success,
        "severity": severity,
        "observed": observed,
        "examples": list(examples),
    }


def test_numeric_observations_walks_numbers_and_skips_text_and_nan() -> None:
    report = {
        "checks": [
            entry("class_balance", False, {"train_ratio": 2.5, "odd key!": {"x": 1}, "n": np.nan}),
            entry(
                "corrupt_images",
                True,
                {"unusable": 0, "fraction": 0.0, "by_status": {"a": 1}, "reasons": {"p": "r"}},
            ),
        ]
    }
    assert checks.numeric_observations(report) == {
        "class_balance.success": 0.0,
        "class_balance.train_ratio": 2.5,
        "class_balance.odd key_.x": 1.0,
        # only the counts: by_status and reasons are keyed by data, not names
        "corrupt_images.success": 1.0,
        "corrupt_images.unusable": 0.0,
        "corrupt_images.fraction": 0.0,
    }


def test_failure_summary_names_files_or_what_the_check_found() -> None:
    report = {
        "checks": [
            entry("label_set", False, {"missing": {"test": ["c", "d"]}, "offending_files": 0}),
            entry("min_images_per_class", False, {"classes_below": {"b": 4}}),
            entry("class_balance", False, {"train_imbalance_ratio": 3.5,
                                           "train_min_class_share": 0.1, "offending_files": 0}),
            entry("duplicates", False, {"offending_files": 2}, ["/d/1.png", "/d/2.png"]),
            entry("image_properties", False, {"offending_files": 0}),
            entry("split_leakage", True, {"offending_files": 0}),
        ]
    }  # fmt: skip
    lines = checks.failure_summary(report, Path("reports/validation.json")).splitlines()
    assert lines == [
        "  error: label_set failed (classes missing from test: c, d)",
        "  warning: min_images_per_class failed (train images per class: b (4))",
        "  warning: class_balance failed (train_imbalance_ratio 3.5)",
        "  warning: duplicates failed (2 file(s), e.g. /d/1.png)",
        "  warning: image_properties failed (dataset-level)",
        "details: reports/validation.json",
    ]
