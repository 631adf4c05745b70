"""The real `mlflow ui` over the runs of a real `dvc repro`, in headless Chromium.

What a user sees after the README's first command and `mlflow ui`: the link
the README gives opens the experiment on its training runs (not MLflow 3's GenAI
overview), one
`dvc repro` is one parent run whose stage runs expand under it, and a chart of
val_loss compares the variants. Screenshots are kept in test-artifacts/.
"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest
import requests
import yaml

from .conftest import BIN, REPO

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO / "test-artifacts"


# The chart card titled exactly `metric`: the nearest ancestor of the title that holds
# one plotly chart; its text (title, axis ticks, legend) and how many lines it drew.
CHART_CARD = """metric => {
  for (const el of document.querySelectorAll('*')) {
    if (el.children.length || el.textContent.trim() !== metric) continue;
    let card = el;
    while (card && !card.querySelector('.js-plotly-plot')) card = card.parentElement;
    if (!card || card.querySelectorAll('.js-plotly-plot').length !== 1) continue;
    const lines = card.querySelectorAll('.scatterlayer .trace').length;
    if (lines) return {text: card.innerText, lines};
  }
  return null;
}"""


# The chart view's section headers in page order: [name, number of charts], read from
# headers such as "curves(7)Add chart".
SECTIONS = """() => {
  const found = [];
  for (const el of document.querySelectorAll('*')) {
    const m = el.textContent.trim().match(/^(.+?)\\((\\d+)\\)Add chart$/);
    if (!m || [...el.children].some(c => c.textContent.trim() === el.textContent.trim())) continue;
    if (!found.some(([name]) => name === m[1])) found.push([m[1], Number(m[2])]);
  }
  return found;
}"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_ui(pipeline_repo, tmp_path):
    """`mlflow ui` on the repro'd repo's sqlite store, on loopback; stopped afterwards."""
    root = pipeline_repo[0]
    port = free_port()
    log = (tmp_path / "mlflow-ui.log").open("w")
    server = subprocess.Popen(
        [str(BIN / "mlflow"), "ui", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                if requests.get(f"{url}/health", timeout=1).ok:
                    break
            except requests.RequestException:
                pass
            assert server.poll() is None, (tmp_path / "mlflow-ui.log").read_text()
            subprocess.run(["sleep", "0.25"], check=True)
        yield root, url
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


@pytest.mark.skipif(not CHROMIUM.exists(), reason="chromium not installed")
def test_the_mlflow_ui_lists_each_variant_and_charts_val_loss(mlflow_ui):
    from mlflow import MlflowClient
    from playwright.sync_api import sync_playwright

    root, url = mlflow_ui
    name = yaml.safe_load((root / "params.yaml").read_text())["mlflow"]["experiment"]
    experiment = MlflowClient(f"sqlite:///{root / 'mlflow.db'}").get_experiment_by_name(name)
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1200})
            # MLflow 3.17 picks the view from its GenAI / Model training switch (the URL's
            # workflowType, else the browser's last choice); the link the README gives
            # opens the training runs.
            page.goto(
                f"{url}/#/experiments/{experiment.experiment_id}?workflowType=machine_learning",
                wait_until="load",
            )
            page.get_by_text("pipeline · ").first.wait_for(timeout=60_000)
            assert f"/experiments/{experiment.experiment_id}/runs" in page.url, page.url
            assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
            # One parent per repro; its stage runs expand under it.
            name_cells = "[role=gridcell][col-id='attributes.`Run Name`']"
            for expand in page.locator(f"{name_cells} button").all():
                expand.click()
            for variant in ("baseline", "dropout"):
                page.get_by_text(f"train · {variant}", exact=True).first.wait_for(timeout=30_000)
            # a cell reads "<run colour>\n<run name>"
            cells = page.locator(name_cells).all_inner_texts()
            listed = {t.strip().splitlines()[-1].strip() for t in cells if t.strip()}
            assert {"validate", "train · baseline", "train · dropout", "evaluate"} <= listed
            page.screenshot(path=str(ARTIFACTS / "mlflow_ui_training_runs.png"))

            # The chart view opens on the per-epoch curves: MLflow lists named sections
            # alphabetically, and `curves` (7 charts) comes before every summary section.
            page.locator("label:has(input[name=runs-view-mode][value=CHART])").click()
            page.wait_for_function(f"() => ({SECTIONS})().length > 0", timeout=60_000)
            sections = page.evaluate(SECTIONS)
            assert sections[0] == ["curves", 7], sections
            names = [name for name, _ in sections]
            assert {"eval", "training", "validate", "pipeline"} <= set(names), sections
            assert dict(sections).get("Model metrics", 0) == 0  # every metric is in a section
            page.screenshot(path=str(ARTIFACTS / "mlflow_ui_chart_sections.png"))

            # Narrowed to val_loss: one chart with both variants' curves.
            page.get_by_placeholder("Search metric charts").fill("val_loss")
            found = page.wait_for_function(
                CHART_CARD, arg="curves/val_loss", timeout=60_000
            ).json_value()
            legend, lines = found["text"], found["lines"]
            assert "train · baseline (curves/val_loss)" in legend, legend
            assert "train · dropout (curves/val_loss)" in legend, legend
            assert lines >= 2  # drawn: one line per run
            page.screenshot(path=str(ARTIFACTS / "mlflow_ui_val_loss_chart.png"))
        finally:
            browser.close()
