"""Great Expectations plumbing: an ephemeral context, one suite per table, Data Docs.

Inputs: named pandas tables and `Spec`s (an expectation, the table it runs on,
the check it belongs to). Outputs: GX's result per spec and, when asked, the
Data Docs site in a directory. Nothing here knows what the checks are.

GX is imported inside the functions: importing it takes seconds, and modules
that only need the specs' shape (tests, the benchmark) should not pay that.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline import progress
from pipeline.config import Severity


@dataclass(frozen=True)
class Spec:
    """One GX expectation, the table it runs on and the check it belongs to."""

    check: str
    table: str
    expectation: Any  # a gx Expectation


def make_spec(
    check: str, severity: Severity, table: str, kind: type, description: str, **kwargs: Any
) -> Spec:
    """A `kind` expectation tagged with its check (meta) and GX failure severity."""
    from great_expectations.expectations.metadata_types import FailureSeverity

    level = FailureSeverity.CRITICAL if severity == "error" else FailureSeverity.WARNING
    expectation = kind(meta={"check": check}, description=description, severity=level, **kwargs)
    return Spec(check, table, expectation)


def _context(docs_dir: Path | None) -> Any:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    sites = {}
    if docs_dir is not None:
        sites["local_site"] = {
            "class_name": "SiteBuilder",
            "show_how_to_buttons": False,
            "store_backend": {
                "class_name": "TupleFilesystemStoreBackend",
                "base_directory": str(docs_dir),
            },
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        }
    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
        data_docs_sites=sites,
    )
    return gx.get_context(mode="ephemeral", project_config=config)


def run_suite(
    tables: dict[str, pd.DataFrame], specs: list[Spec], max_examples: int, docs_dir: Path | None
) -> list[tuple[Spec, Any]]:
    """Validate each table with GX; optionally build Data Docs into docs_dir.

    Returns (spec, ExpectationValidationResult) in spec order.
    """
    import great_expectations as gx
    from great_expectations.core.run_identifier import RunIdentifier

    context = _context(docs_dir)
    run_id = RunIdentifier(run_name="validate")  # one run: Data Docs group the tables
    source = context.data_sources.add_pandas("prepared")
    by_table: dict[str, list[Spec]] = {}
    for s in specs:
        by_table.setdefault(s.table, []).append(s)
    for position, s in enumerate(specs):
        s.expectation.meta = {**(s.expectation.meta or {}), "spec": position}
    outcome: dict[int, Any] = {}
    for table, table_specs in progress.steps(
        list(by_table.items()), "validate: checking", "table", label=lambda item: item[0]
    ):
        batch = source.add_dataframe_asset(table).add_batch_definition_whole_dataframe(table)
        suite = context.suites.add(gx.ExpectationSuite(name=table))
        for s in table_specs:
            suite.add_expectation(s.expectation)
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=table, data=batch, suite=suite)
        )
        index_columns = [c for c in ("path", "split", "label") if c in tables[table].columns][:2]
        result = definition.run(
            batch_parameters={"dataframe": tables[table]},
            run_id=run_id,
            result_format={
                "result_format": "SUMMARY",
                "unexpected_index_column_names": index_columns,
                "partial_unexpected_count": max_examples,
                "return_unexpected_index_query": False,
            },
        )
        # GX reorders results: match them to specs by the position in meta
        for r in result.results:
            outcome[int(r.expectation_config.meta["spec"])] = r
    if docs_dir is not None:
        context.build_data_docs()
    return [(s, outcome[int(s.expectation.meta["spec"])]) for s in specs]


def data_docs_artifacts(docs_dir: Path) -> list[tuple[Path, str]]:
    """(file, artifact folder) of the Data Docs pages worth keeping per run.

    GX's static images and fonts (4 MB of logos, GIFs and fonts) are left out
    of MLflow: the pages read fine without them, and every run would store them.
    """
    files = []
    for file in sorted(docs_dir.rglob("*")):
        rel = file.relative_to(docs_dir)
        if file.is_file() and rel.parts[:2] not in (("static", "images"), ("static", "fonts")):
            files.append((file, str(Path("data_docs") / rel.parent).rstrip("/.")))
    return files
