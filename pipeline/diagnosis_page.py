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

from pipeline.cli import UserError
from pipeline.diagnosis import Diagnosis
from pipeline.io import write_text_atomic

TEMPLATE = "diagnosis.html.j2"
# Where pages go unless a path is given; `overfit report` looks here.
PAGES_DIR = Path("overfit_reports")


def run_facts(
    result: Diagnosis, n_train: int, n_val: int, n_classes: int | None, scored: bool
) -> dict[str, Any]:
    """The page's table of the run (`scored`: the kept model's own train/val scores)."""
    return {
        "train images": n_train,
        "validation images": n_val,
        "classes": n_classes,
        "epochs run": result.epochs_run,
        "kept epoch": result.best_epoch,
        "onset of overfitting": result.onset_epoch or "none",
        "scores": "the kept model's (model.evaluate)"
        if scored
        else "the history's at the kept epoch",
    }


def render_page(
    result: Diagnosis, history: pd.DataFrame, facts: Mapping[str, Any], source: str, thresholds: str
) -> str:
    """The page's HTML.

    Args:
        facts: name -> value rows of the run's table (run_facts).
        source: where the history came from, in words.
        thresholds: which params file judged it.
    """
    from pipeline import plots
    from pipeline.report_context import template_env

    fig = plots.learning_curves(
        history, result.variant, result.best_epoch, result.onset_epoch, result.label
    )
    try:
        png = plots.png_bytes(fig)
    finally:
        plots.plt.close(fig)
    return (
        template_env()
        .get_template(TEMPLATE)
        .render(
            d=result,
            curves_uri="data:image/png;base64," + base64.b64encode(png).decode("ascii"),
            facts=[(name, value) for name, value in facts.items() if value is not None],
            source=source,
            thresholds=thresholds,
            written=dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        )
    )


def default_page_path(name: str) -> Path:
    """overfit_reports/<name>-<timestamp>.html (a name safe on every file system)."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:60] or "model"
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return PAGES_DIR / f"{safe}-{stamp}.html"


def write_page(html: str, path: Path, name: str = "model") -> Path:
    """Write the page atomically, creating its folder; a folder given as `path` gets the
    default file name inside it.

    Raises:
        UserError: the page cannot be written there (one line naming the path).
    """
    if path.is_dir():
        path = path / default_page_path(name).name
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, html)
    except OSError as exc:
        raise UserError(f"cannot write the page to {path}: {exc.strerror or exc}") from None
    return path


def latest_page(root: Path = Path(".")) -> Path | None:
    """The newest report under `root`: the pipeline's reports/report.html or a page in
    overfit_reports/."""
    candidates = [root / "reports" / "report.html", *sorted((root / PAGES_DIR).glob("*.html"))]
    existing = [p for p in candidates if p.is_file()]
    return max(existing, key=lambda p: p.stat().st_mtime) if existing else None
