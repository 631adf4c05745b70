"""The validate stage's checks: one `Check` object per check.

Inputs: the derived tables (`ValidationTables`, pipeline/validation_tables.py),
params.yaml `validate`, and GX's result per expectation (pipeline/gx_suite.py).
Outputs: the validation.json payload (`summarise`; each check's entry holds its
`observed` facts and the `limits`, the params it was judged against), its MLflow metrics
(`numeric_observations`) and a few lines for stderr (`failure_summary`);
nothing is written here.

A check holds everything about itself: its name (the key in validation.json
and in params `validate.severity`), its GX expectations, the facts it observes
and the sentence that says what it found when it fails without offending
files. Adding a check is one subclass here and its entry in `CHECKS`, plus its
severity default in `SeverityConfig`.

Every expectation carries `meta.check`; a check succeeds iff all of its
expectations do. Examples are GX's unexpected rows' `path`, capped at
validate.max_examples. GX is imported inside `expectations`: importing it
takes seconds.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from pipeline.config import Severity, ValidateConfig
from pipeline.gx_suite import Spec, make_spec
from pipeline.leakage import EVAL_SPLITS
from pipeline.prepared import SPLITS, STATUS_OK
from pipeline.validation_tables import ValidationTables

_METRIC_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-/ ]")


class Check(ABC):
    """One check: name, GX expectations, observed facts and failure sentence."""

    name: ClassVar[str]
    # observed keys logged as MLflow metrics; None: every numeric value
    metric_keys: ClassVar[tuple[str, ...] | None] = None
    # params `validate` knobs this check is judged against, recorded with its result
    # so the report can say "allowed up to 3.0" without reading params.yaml itself
    limit_keys: ClassVar[tuple[str, ...]] = ()

    def severity(self, vcfg: ValidateConfig) -> Severity:
        """params `validate.severity.<name>`: does a failure stop the pipeline."""
        return getattr(vcfg.severity, self.name)

    @abstractmethod
    def expectations(self, vcfg: ValidateConfig, classes: list[str]) -> list[Spec]:
        """The GX expectations, each on the table it runs on."""

    @abstractmethod
    def observe(self, tables: ValidationTables, vcfg: ValidateConfig) -> dict[str, Any]:
        """The observed values reported for this check (facts, not verdicts)."""

    def summary(self, observed: dict[str, Any]) -> str:
        """What a failure without offending files found, in a few words."""
        return "dataset-level"

    def limits(self, vcfg: ValidateConfig) -> dict[str, Any]:
        """The thresholds of `limit_keys`, as validation.json records them."""
        return {key: getattr(vcfg, key) for key in self.limit_keys}

    def expect(
        self, vcfg: ValidateConfig, table: str, kind: type, description: str, **kwargs: Any
    ) -> Spec:
        """A `kind` expectation of this check, at this check's severity."""
        return make_spec(
            self.name, self.severity(vcfg), table, kind, f"{self.name}: {description}", **kwargs
        )


def _fraction(part: int, whole: int) -> float:
    return round(part / whole, 6) if whole else 0.0


def _counts(series: pd.Series, top: int = 10) -> dict[str, int]:
    counts = series.value_counts()
    counts = counts.sort_index(kind="stable").sort_values(ascending=False, kind="stable")
    return {str(k): int(v) for k, v in counts.head(top).items()}


def _mostly(max_fraction: float) -> float:
    """GX's `mostly` (share that must pass) from an allowed failing share."""
    return round(1.0 - max_fraction, 12)


# --------------------------------------------------------------------------
# The checks, in validation.json order


class LabelSet(Check):
    name = "label_set"

    def expectations(self, vcfg: ValidateConfig, classes: list[str]) -> list[Spec]:
        import great_expectations.expectations as gxe

        return [
            self.expect(vcfg, "split_classes", gxe.ExpectColumnValuesToBeBetween,
                        "every split holds every class", column="count", min_value=1),
            self.expect(vcfg, "images", gxe.ExpectColumnValuesToBeInSet,
                        "labels are the dataset's classes", column="label", value_set=classes),
            self.expect(vcfg, "class_folders", gxe.ExpectColumnValuesToBeInSet,
                        "one folder per class, none that look alike", column="clash",
                        value_set=[0]),
        ]  # fmt: skip

    def observe(self, tables: ValidationTables, vcfg: ValidateConfig) -> dict[str, Any]:
        sc = tables.split_classes
        missing = {
            s: sc.loc[(sc["split"] == s) & (sc["count"] == 0), "label"].astype(str).tolist()
            for s in SPLITS
        }
        cf = tables.class_folders
        clashes = [
            f"{', '.join(group['path'])} {'give class' if why == 'same class' else 'look like'} "
            f"{label!r}"
            for (label, why), group in cf[cf["clash"] == 1].groupby(["label", "why"], sort=False)
        ]
        return {
            "classes": len(tables.classes),
            "missing": {s: v for s, v in missing.items() if v},
            "unknown_label_images": int((~tables.images["label"].isin(tables.classes)).sum()),
            "class_clashes": clashes,
        }

    def summary(self, observed: dict[str, Any]) -> str:
        parts = []
        if observed.get("class_clashes"):
            parts.append(
                "class folders clash: "
                + "; ".join(observed["class_clashes"])
                + " (names are compared after Unicode NFC and stripping spaces; "
                "rename or merge the folders)"
            )
        if observed["missing"]:
            missing = "; ".join(f"{s}: {', '.join(v)}" for s, v in observed["missing"].items())
            parts.append(f"classes missing from {missing}")
        return "; ".join(parts) or "labels outside the dataset's classes"


class ClassBalance(Check):
    name = "class_balance"
    limit_keys = ("max_imbalance_ratio", "max_label_divergence", "min_class_share")

    def expectations(self, vcfg: ValidateConfig, classes: list[str]) -> list[Spec]:
        import great_expectations.expectations as gxe

        return [
            self.expect(vcfg, "split_classes", gxe.ExpectColumnValuesToBeBetween,
                        "each class's share of its split", column="share",
                        min_value=vcfg.min_class_share),
            self.expect(vcfg, "splits", gxe.ExpectColumnValuesToBeBetween,
                        "largest / smallest class per split", column="imbalance_ratio",
                        max_value=vcfg.max_imbalance_ratio),
            self.expect(vcfg, "splits", gxe.ExpectColumnValuesToBeBetween,
                        "Jensen-Shannon distance to train's labels", column="js_distance",
                        max_value=vcfg.max_label_divergence),
        ]  # fmt: skip

    def observe(self, tables: ValidationTables, vcfg: ValidateConfig) -> dict[str, Any]:
        observed = {}
        for row in tables.splits.itertuples():
            ratio = row.imbalance_ratio
            observed[f"{row.split}_imbalance_ratio"] = None if pd.isna(ratio) else round(ratio, 4)
        for row in tables.splits.itertuples():
            if row.split != "train":
                observed[f"{row.split}_js_distance"] = row.js_distance
        shares = tables.split_classes.groupby("split")["share"].min()
        for split in SPLITS:
            observed[f"{split}_min_class_share"] = round(float(shares.get(split, 0.0)), 6)
        return observed

    def summary(self, observed: dict[str, Any]) -> str:
        shown = {k: v for k, v in observed.items() if k != "offending_files" and v is not None}
        return ", ".join(f"{k} {v:g}" for k, v in shown.items() if "share" not in k)


class MinImagesPerClass(Check):
    name = "min_images_per_class"
    limit_keys = ("min_images_per_class",)

    def expectations(self, vcfg: ValidateConfig, classes: list[str]) -> list[Spec]:
        import great_expectations.expectations as gxe
        from great_expectations.expectations.row_conditions import Column

        return [
            self.expect(vcfg, "split_classes", gxe.ExpectColumnValuesToBeBetween,
                        "training images per class", column="count",
                        min_value=vcfg.min_images_per_class,
                        row_condition=Column("split") == "train"),
        ]  # fmt: skip

    def observe(self, tables: ValidationTables, vcfg: ValidateConfig) -> dict[str, Any]:
        train = tables.split_classes[tables.split_classes["split"] == "train"]
        below = train[train["count"] < vcfg.min_images_per_class]
        return {
            "train_min_count": int(train["count"].min()) if len(train) else 0,
            "classes_below": {str(r.label): int(r.count) for r in below.itertuples()},
        }

    def summary(self, observed: dict[str, Any]) -> str:
        below = ", ".join(f"{k} ({v})" for k, v in observed["classes_below"].items())
        return f"train images per class: {below}"


class CorruptImages(Check):
    name = "corrupt_images"
    # `reasons` and `by_status` are keyed by path and status: not metric names
    metric_keys = ("unusable", "fraction")
    limit_keys = ("max_corrupt_fraction",)

    def expectations(self, vcfg: ValidateConfig, classes: list[str]) -> list[Spec]:
        import great_expectations.expectations as gxe

        return [
            self.expect(vcfg, "manifest", gxe.ExpectColumnValuesToBeInSet,
                        "files prepare could decode", column="status",
                        value_set=[STATUS_OK], mostly=_mostly(vcfg.max_corrupt_fraction)),
        ]  # fmt: skip

    def observe(self, tables: ValidationTables, vcfg: ValidateConfig) -> dict[str, Any]:
        manifest = tables.manifest
        bad = manifest[manifest["status"] != STATUS_OK]
        return {
            "unusable": len(bad),
            "fraction": _fraction(len(bad), len(manifest)),
            "by_status": _counts(bad["status"]),
            "reasons": {
                str(r.path): f"{r.status}: {r.error}".rstrip(": ")
                for r in bad.head(vcfg.max_examples).itertuples()
            },
        }


class ImageProperties(Check):
    name = "image_properties"
    limit_keys = ("blank_std_threshold", "max_blank_fraction")

    def expectations(self, vcfg: ValidateConfig, classes: list[str]) -> list[Spec]:
        import great_expectations.expectations as gxe

        return [
            self.expect(vcfg, "images", gxe.ExpectColumnValuesToBeBetween,
                        "pixel std (below = blank / near-constant image)",
                        column="pixel_std", min_value=vcfg.blank_std_threshold,
                        mostly=_mostly(vcfg.max_blank_fraction)),
            # Informational: images are resized and converted, mixed originals are fine.
            self.expect(vcfg, "images", gxe.ExpectColumnUniqueValueCountToBeBetween,
                        "distinct original sizes (informational)", column="size", min_value=0),
            self.expect(vcfg, "images", gxe.ExpectColumnUniqueValueCountToBeBetween,
                        "distinct original modes (informational)", column="mode", min_value=0),
        ]  # fmt: skip

    def observe(self, tables: ValidationTables, vcfg: ValidateConfig) -> dict[str, Any]:
        images = tables.images
        blank = int((images["pixel_std"] < vcfg.blank_std_threshold).sum())
        return {
            "blank": blank,
            "blank_fraction": _fraction(blank, len(images)),
            "sizes": _counts(images["size"]),
            "modes": _counts(images["mode"]),
        }


class Duplicates(Check):
    name = "duplicates"
    limit_keys = ("max_duplicate_fraction",)

    def expectations(self, vcfg: ValidateConfig, classes: list[str]) -> list[Spec]:
        import great_expectations.expectations as gxe

        return [
            self.expect(vcfg, "images", gxe.ExpectColumnValuesToBeUnique,
                        "identical pixels within a split", column="duplicate_key",
                        mostly=_mostly(vcfg.max_duplicate_fraction)),
            self.expect(vcfg, "images", gxe.ExpectColumnValuesToBeBetween,
                        "identical pixels under different labels", column="hash_label_count",
                        max_value=1),
        ]  # fmt: skip

    def observe(self, tables: ValidationTables, vcfg: ValidateConfig) -> dict[str, Any]:
        key = tables.images["duplicate_key"]
        dup = key.duplicated(keep=False)
        extra = key.duplicated(keep="first")
        conflicts = tables.images["hash_label_count"] > 1
        return {
            "duplicate_images": int(dup.sum()),
            "redundant_copies": int(extra.sum()),
            "duplicate_fraction": _fraction(int(dup.sum()), len(tables.images)),
            "label_conflict_images": int(conflicts.sum()),
        }


class SplitLeakage(Check):
    name = "split_leakage"
    limit_keys = ("near_duplicate_distance", "near_duplicate_max_pixel_diff")

    def expectations(self, vcfg: ValidateConfig, classes: list[str]) -> list[Spec]:
        import great_expectations.expectations as gxe

        return [
            self.expect(vcfg, "images", gxe.ExpectColumnValuesToBeNull,
                        "val/test images that duplicate a train image", column="leaked_from"),
        ]  # fmt: skip

    def observe(self, tables: ValidationTables, vcfg: ValidateConfig) -> dict[str, Any]:
        leaking = tables.images[tables.images["leaked_from"].notna()]
        return {
            "leaking_images": len(leaking),
            **{f"{s}_leaking": int((leaking["split"] == s).sum()) for s in EVAL_SPLITS},
            "exact": int((leaking["leak_pixel_diff"] == 0).sum()),
            "near": int((leaking["leak_pixel_diff"] != 0).sum()),
            "pixel_comparisons": tables.leaks.pixel_comparisons,
            "skipped_comparisons": tables.leaks.skipped_comparisons,
            "pairs": [
                {
                    "path": str(r.path),
                    "train_path": str(r.leaked_from),
                    "phash_distance": int(r.leak_phash_distance),
                    "pixel_diff": float(r.leak_pixel_diff),
                }
                for r in leaking.head(vcfg.max_examples).itertuples()
            ],
        }


CHECKS: tuple[Check, ...] = (
    LabelSet(),
    ClassBalance(),
    MinImagesPerClass(),
    CorruptImages(),
    ImageProperties(),
    Duplicates(),
    SplitLeakage(),
)
CHECK_NAMES = tuple(check.name for check in CHECKS)
_BY_NAME = {check.name: check for check in CHECKS}


# --------------------------------------------------------------------------
# GX results -> validation.json, metrics, stderr


def all_expectations(vcfg: ValidateConfig, classes: list[str]) -> list[Spec]:
    """Every check's expectations, in check order."""
    return [spec for check in CHECKS for spec in check.expectations(vcfg, classes)]


def _unexpected(result: Any) -> list[dict[str, Any]]:
    return list(result.result.get("partial_unexpected_index_list") or [])


def _paths(results: list[Any], cap: int) -> list[str]:
    paths: list[str] = []
    for r in results:
        for row in _unexpected(r):
            p = row.get("path")
            if p is not None and p not in paths:
                paths.append(str(p))
    return paths[:cap]


def _entry(
    check: Check,
    outcomes: list[tuple[Spec, Any]],
    tables: ValidationTables,
    vcfg: ValidateConfig,
) -> dict[str, Any]:
    """One check's validation.json entry."""
    mine = [(s, r) for s, r in outcomes if s.check == check.name]
    results = [r for _, r in mine]
    observed = check.observe(tables, vcfg)
    # files GX found offending (row-level tables; the same file counted once per expectation)
    observed["offending_files"] = sum(
        int(r.result.get("unexpected_count") or 0)
        for s, r in mine
        if s.table in ("manifest", "images")
    )
    return {
        "name": check.name,
        "success": all(bool(r.success) for r in results),
        "severity": check.severity(vcfg),
        "observed": observed,
        "limits": check.limits(vcfg),
        "examples": _paths(results, vcfg.max_examples),
    }


def summarise(
    outcomes: list[tuple[Spec, Any]], tables: ValidationTables, vcfg: ValidateConfig
) -> dict[str, Any]:
    """GX results -> the validation.json payload (deterministic: no times or ids)."""
    checks = [_entry(check, outcomes, tables, vcfg) for check in CHECKS]
    failed = [c for c in checks if not c["success"]]
    errors = [c["name"] for c in failed if c["severity"] == "error"]
    return {
        "success": not errors,
        "checks": checks,
        "warnings": [c["name"] for c in failed if c["severity"] == "warning"],
        "errors": errors,
    }


def numeric_observations(report: dict[str, Any]) -> dict[str, float]:
    """<check>.success and every numeric observed value (<check>.<key>), for MLflow."""
    metrics: dict[str, float] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, bool):
            metrics[prefix] = float(value)
        elif isinstance(value, (int, float, np.integer, np.floating)):
            if np.isfinite(value):
                metrics[prefix] = float(value)
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}.{_METRIC_UNSAFE.sub('_', str(key))}", item)

    for entry in report["checks"]:
        name, observed = entry["name"], entry["observed"]
        keys = _BY_NAME[name].metric_keys
        metrics[f"{name}.success"] = float(entry["success"])
        walk(name, observed if keys is None else {k: observed[k] for k in keys})
    return metrics


def failure_summary(report: dict[str, Any], where: Path) -> str:
    """A few lines for stderr: failed checks, how many files each, the report."""
    lines = []
    for entry in report["checks"]:
        if entry["success"]:
            continue
        n = entry["observed"].get("offending_files", 0)
        what = (
            f"{n} file(s), e.g. {entry['examples'][0]}"
            if n
            else _BY_NAME[entry["name"]].summary(entry["observed"])
        )
        lines.append(f"  {entry['severity']}: {entry['name']} failed ({what})")
    lines.append(f"details: {where}")
    return "\n".join(lines)
