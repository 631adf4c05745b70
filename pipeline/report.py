"""Stage `report`: one self-contained HTML page that answers "is it overfitting?".

Inputs: reports/evaluation.json, reports/validation.json,
reports/comparison.csv, reports/figures/*.png, and the Jinja2 template
pipeline/templates/report.html.j2.

Output: reports/report.html. Figures are embedded as base64 data URIs and the
CSS is inline; there is no JavaScript and nothing is fetched from the network,
so the file opens from disk, from an e-mail attachment or an artifact store.

The page answers first, details later, in this order: #headline (#answer:
one sentence answering the question for the reference variant, then its
verdict, the saved model's own verdict and the evidence behind them), #recommendations
(the best variant, which mitigation moved val accuracy and the gap by how
much, the ranked advice), #comparison (the table), #all-curves (with the
caveat about train curves measured with dropout/augmentation/L2 active),
#more-data (the learning curve: would more data help? when it ran),
#validation, then #variants with one collapsed <details id="variant-<name">
per variant, and #next-steps.

Element ids and classes tests and readers rely on: #headline with a .verdict
badge, #best-variant, #mitigations, #recommendation-list, #comparison-table,
#curves-caveat, #validation (failed checks carry class "failed"),
#variant-<name> with a .verdict badge and .evidence list, #next-steps; every
figure's alt text names the variant and the plot. When evaluation.json carries
`val_accuracy_ci95` (per variant) and `within_noise` (per effect), the table
shows the interval and marks effects within noise. When a variant trained
more than one seed (`variants.<v>.seeds` in evaluation.json), its card and the
table's "across seeds" column (.seeds) give the gap's mean ± 95% interval and
the verdict agreement, e.g. "gap 3.1 ± 0.8 points over 3 seeds; overfitting in
3 of 3 seeds".
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.catalog.evaluation import read_evaluation
from pipeline.catalog.validation import read_validation
from pipeline.cli import StageError, run_stage
from pipeline.io import write_text_atomic
from pipeline.paths import Paths
from pipeline.report_context import build_context, template_env

TEMPLATE = "report.html.j2"


def render_report(context: Mapping[str, Any]) -> str:
    return template_env().get_template(TEMPLATE).render(**context)


def write_report(paths: Paths) -> Path:
    evaluation = read_evaluation(paths)
    validation = read_validation(paths)
    if not paths.comparison_csv.exists():
        raise StageError(f"{paths.comparison_csv} is missing; run the evaluate stage first")
    comparison = pd.read_csv(paths.comparison_csv)
    html = render_report(build_context(evaluation, validation, comparison, paths.figures_dir))
    write_text_atomic(paths.report_html, html)
    return paths.report_html


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.report", description=__doc__.split("\n")[0]
    )
    parser.parse_args(argv)
    out = write_report(Paths.here())
    print(f"report written: {out} (open it in a browser; no server needed)")
    return 0


if __name__ == "__main__":
    run_stage(main)
