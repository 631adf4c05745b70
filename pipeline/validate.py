"""Validate stage: a Great Expectations suite over the prepared dataset.

Inputs: data/prepared/ (manifest.parquet, meta.json, <split>_x.npy) and
params.yaml `validate`.
Outputs: reports/validation.json (contract: success, checks[name, success,
severity, observed, examples], warnings, errors; no timestamps, so it is
byte-identical when nothing changed), reports/validation_flags.json (the one
fact train reads: did class_balance fail), reports/data_docs/ (GX Data Docs; open
index.html) and an MLflow run tagged stage=validate. Exit code 1 when an
error-severity check fails (the JSON is still written).

The MLflow run is opened before anything is written, so an unreachable
tracking server fails the stage with its outputs untouched.

Where the work is:

- pipeline/validation_tables.py: the tables GX checks (derived columns).
- pipeline/leakage.py: val/test images that are train images (exact or near).
- pipeline/checks.py: the checks, one object each (expectations, observed
  facts, failure sentence) and the validation.json payload.
- pipeline/gx_suite.py: GX context, suites and Data Docs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pipeline import tracking
from pipeline.catalog.validation import write_validation
from pipeline.checks import all_expectations, failure_summary, numeric_observations, summarise
from pipeline.config import Config, ValidateConfig, load_config
from pipeline.gx_suite import data_docs_artifacts, run_suite
from pipeline.paths import Paths
from pipeline.prepared import PreparedDataset, load_prepared, staging_dir
from pipeline.validation_tables import build_tables


def validate_dataset(
    dataset: PreparedDataset, vcfg: ValidateConfig, docs_dir: Path | None = None
) -> dict[str, Any]:
    """Run every check on a prepared dataset; returns the validation.json payload."""
    tables = build_tables(dataset, vcfg)
    specs = all_expectations(vcfg, tables.classes)
    outcomes = run_suite(tables.frames(), specs, vcfg.max_examples, docs_dir)
    return summarise(outcomes, tables, vcfg)


def log_report(paths: Paths, report: dict[str, Any]) -> None:
    """The written report, its numbers and the Data Docs pages into the active run."""
    tracking.set_tags({"validation_success": str(report["success"]).lower()})
    numbers = numeric_observations(report)
    tracking.log_metrics(tracking.sectioned(tracking.SECTION_VALIDATE, numbers))
    tracking.log_artifact(paths.validation_json)
    for file, folder in data_docs_artifacts(paths.data_docs_dir):
        tracking.log_artifact(file, folder)


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    paths = Paths.here()
    cfg: Config = load_config(paths.params)
    dataset = load_prepared(paths.prepared_dir)

    with tracking.stage_run(paths, cfg, stage="validate"):
        with staging_dir(paths.data_docs_dir) as docs_tmp:
            report = validate_dataset(dataset, cfg.validate_, docs_dir=docs_tmp)
        write_validation(paths, report)
        log_report(paths, report)

    docs = paths.data_docs_dir / "index.html"
    if report["errors"]:
        print(
            f"validate: FAILED ({', '.join(report['errors'])})\n"
            + failure_summary(report, paths.validation_json),
            file=sys.stderr,
        )
        return 1
    warned = f"; warnings: {', '.join(report['warnings'])}" if report["warnings"] else ""
    print(f"validate: passed{warned}. Report {paths.validation_json}, Data Docs {docs}")
    return 0


if __name__ == "__main__":
    from pipeline.cli import run_stage

    run_stage(main)
