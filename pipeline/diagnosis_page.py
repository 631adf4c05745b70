"""A one-page HTML answer for one diagnosed run (the public API's, not the pipeline's).

Inputs: a `Diagnosis`, the history it read (pipeline.api.history_frame) and a
few facts about the run. Output: one self-contained HTML file (the curves as
an embedded PNG, inline CSS, no script, nothing fetched), written atomically;
`OverfittingMonitor` writes it at the end of `fit`, `overfit diagnose` for a
history file or an MLflow run. The pipeline's own page is pipeline.report.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.diagnosis import Diagnosis
from pipeline.io import write_text_atomic

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
TEMPLATE = "diagnosis.html.j2"
# Where pages go unless a path is given; `overfit report` looks here.
PAGES_DIR = Path("overfit_reports")


def render_page(
    result: Diagnosis, history: pd.DataFrame, facts: Mapping[str, Any], source: str, thresholds: str
) -> str:
    """The page's HTML.

    Args:
        facts: name -> value rows of the run's table (sizes, epochs, ...).
        source: where the history came from, in words.
        thresholds: which params file judged it.
    """
    import jinja2

    from pipeline import plots
    from pipeline.report_context import code_spans

    fig = plots.learning_curves(
        history, result.variant, result.best_epoch, result.onset_epoch, result.label
    )
    try:
        png = plots.png_bytes(fig)
    finally:
        plots.plt.close(fig)
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE_DIR),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["code_spans"] = code_spans
    return env.get_template(TEMPLATE).render(
        d=result,
        curves_uri="data:image/png;base64," + base64.b64encode(png).decode("ascii"),
        facts=[(name, value) for name, value in facts.items() if value is not None],
        source=source,
        thresholds=thresholds,
        written=dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
    )


def default_page_path(name: str) -> Path:
    """overfit_reports/<name>-<timestamp>.html (a name safe on every file system)."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:60] or "model"
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return PAGES_DIR / f"{safe}-{stamp}.html"


def write_page(html: str, path: Path) -> Path:
    """Write the page atomically, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, html)
    return path


def latest_page(root: Path = Path(".")) -> Path | None:
    """The newest report under `root`: the pipeline's reports/report.html or a page in
    overfit_reports/."""
    candidates = [root / "reports" / "report.html", *sorted((root / PAGES_DIR).glob("*.html"))]
    existing = [p for p in candidates if p.is_file()]
    return max(existing, key=lambda p: p.stat().st_mtime) if existing else None
