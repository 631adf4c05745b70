"""pipeline.report: a self-contained HTML page, checked in headless Chromium.

The inputs are built from synthetic predictions and histories through the same
functions the evaluate stage uses (no TensorFlow needed).
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline import evaluate as ev
from pipeline import report
from pipeline.cli import StageError
from pipeline.config import parse_config
from pipeline.paths import Paths

from .conftest import small_params

CHROMIUM = Path("/usr/bin/chromium")
CLASSES = ["cat", "dog", "owl"]
VALIDATION = {
    "success": True,
    "checks": [
        {
            "name": "label_set",
            "success": True,
            "severity": "error",
            "observed": {"classes": 3},
            "examples": [],
        },
        {
            "name": "class_balance",
            "success": False,
            "severity": "warning",
            "observed": {"ratio": 4.2},
            "examples": ["train: owl has 12 images, cat 50"],
        },
    ],
    "warnings": ["class_balance"],
    "errors": [],
}


def synthetic_history(n: int, overfit: bool) -> pd.DataFrame:
    epochs = np.arange(1, n + 1)
    loss = 1.2 * np.exp(-epochs / 3)
    val = 1.3 * np.exp(-epochs / 4) + (0.04 * np.maximum(epochs - 4, 0) if overfit else 0.0)
    acc = 1 - 0.6 * np.exp(-epochs / 3)
    val_acc = acc - (0.02 * epochs if overfit else 0.03)
    return pd.DataFrame(
        {"epoch": epochs, "loss": loss, "accuracy": acc, "val_loss": val, "val_accuracy": val_acc}
    )


def synthetic_scores(rng, accuracy: float, n: int = 60) -> dict:
    y = np.arange(n) % len(CLASSES)
    proba = rng.dirichlet(np.ones(len(CLASSES)), size=n) * 0.3
    right = rng.random(n) < accuracy
    target = np.where(right, y, (y + 1) % len(CLASSES))
    proba[np.arange(n), target] += 0.7
    return ev.split_scores(y, proba, len(CLASSES))


def build_inputs(paths: Paths) -> dict:
    """evaluation.json, comparison.csv, figures and validation.json like evaluate writes."""
    rng = np.random.default_rng(0)
    cfg = parse_config(small_params())  # variants baseline, dropout
    specs = {"baseline": (True, 1.0, 0.7), "dropout": (False, 0.93, 0.9)}
    artifacts, evaluations = {}, {}
    probe = rng.integers(0, 256, size=(2, 8, 8, 1), dtype=np.uint8)
    for name, (overfit, train_acc, val_acc) in specs.items():
        history = synthetic_history(12, overfit)
        artifacts[name] = ev.VariantArtifacts(
            name, Path("unused"), history, {"best_epoch": 5}, {"run_id": f"run-{name}"}
        )
        scores = {
            "train": synthetic_scores(rng, train_acc),
            "val": synthetic_scores(rng, val_acc),
            "test": synthetic_scores(rng, val_acc),
        }
        maps = {"conv_1": rng.random((2, 8, 8, 4)), "conv_2": rng.random((2, 4, 4, 8))}
        evaluations[name] = ev.VariantEvaluation(name, scores, maps)
    evaluation = ev.build_evaluation(cfg, CLASSES, artifacts, evaluations, VALIDATION)
    evaluation["registered"] = {"model_name": "m", "version": 3, "alias": "challenger"}
    histories = {n: a.history for n, a in artifacts.items()}
    ev.write_figures(paths.figures_dir, evaluation, histories, evaluations, probe)
    ev.write_json_atomic(paths.evaluation_json, evaluation)
    paths.comparison_csv.write_text(ev.comparison_frame(evaluation).to_csv(index=False))
    paths.validation_json.write_text(json.dumps(VALIDATION))
    return evaluation


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, dict]:
    """The inputs, built once per module (figures take seconds)."""
    root = tmp_path_factory.mktemp("report-inputs")
    evaluation = build_inputs(Paths(root))
    return root, evaluation


def write_inputs(project, built) -> dict:
    root, evaluation = built
    shutil.copytree(root / "reports", project.paths.reports_dir, dirs_exist_ok=True)
    return copy.deepcopy(evaluation)


def test_report_is_self_contained_and_complete(project, built):
    evaluation = write_inputs(project, built)
    assert report.main([]) == 0
    html = project.paths.report_html.read_text()

    for marker in (
        'id="validation"',
        'id="comparison"',
        'id="recommendations"',
        'id="next-steps"',
        'class="verdict overfitting"',
        "mlflow ui",
    ):
        assert marker in html, marker
    assert evaluation["variants"]["baseline"]["verdict"] == "overfitting"
    # Every figure is embedded; nothing points outside the file.
    srcs = re.findall(r'<img src="([^"]*)"', html)
    assert len(srcs) == 2 + 3 * 2  # all-variant curves + gap, and per variant 3 figures
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "<script" not in html
    assert not re.search(r'(src|href)="(https?:)?//', html)
    assert 'alt="learning curves of baseline"' in html
    assert 'alt="feature maps of dropout"' in html
    # The failed warning check is highlighted, the passed one is not.
    assert 'class="check failed warning" data-check="class_balance"' in html
    assert 'class="check passed" data-check="label_set"' in html
    for rec in evaluation["recommendations"]:
        assert rec["action"].split("`")[0].strip() in html


def test_report_escapes_untrusted_text(project, built):
    evaluation = write_inputs(project, built)
    evaluation["variants"]["baseline"]["evidence"].append('<script>alert("x")</script>')
    ev.write_json_atomic(project.paths.evaluation_json, evaluation)
    report.write_report(project.paths)
    html = project.paths.report_html.read_text()
    assert "<script>" not in html and "&lt;script&gt;" in html


def test_report_without_evaluation_is_a_stage_error(project):
    with pytest.raises(StageError, match=r"evaluation\.json is missing"):
        report.write_report(project.paths)


def test_report_with_no_variants_is_a_stage_error(project, built):
    write_inputs(project, built)
    project.paths.evaluation_json.write_text(json.dumps({"variants": {}}))
    with pytest.raises(StageError, match="no variants"):
        report.write_report(project.paths)


def test_missing_figure_is_left_out_not_broken(project, built):
    write_inputs(project, built)
    (project.paths.figures_dir / "feature_maps_dropout.png").unlink()
    report.write_report(project.paths)
    html = project.paths.report_html.read_text()
    assert 'alt="feature maps of dropout"' not in html
    assert 'alt="feature maps of baseline"' in html


def _chromium(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ]
    return subprocess.run(
        [str(CHROMIUM), *flags, *args], capture_output=True, text=True, timeout=120, check=False
    )


@pytest.mark.skipif(not CHROMIUM.exists(), reason="chromium not installed")
def test_report_renders_in_headless_chromium(project, built, tmp_path):
    from PIL import Image, ImageStat

    write_inputs(project, built)
    report.write_report(project.paths)
    url = project.paths.report_html.resolve().as_uri()

    dom = _chromium(["--dump-dom", url], tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    rendered = dom.stdout
    assert 'id="comparison-table"' in rendered
    assert rendered.count('class="verdict ') >= 4  # table badges and section badges
    assert 'id="recommendation-list"' in rendered
    assert 'alt="learning curves of baseline"' in rendered

    shot = tmp_path / "report.png"
    result = _chromium(
        [f"--screenshot={shot}", "--window-size=1200,1600", "--hide-scrollbars", url], tmp_path
    )
    assert result.returncode == 0 and shot.exists(), result.stderr[-2000:]
    with Image.open(shot) as image:
        stat = ImageStat.Stat(image.convert("L"))
    assert stat.var[0] > 100, f"screenshot looks blank (variance {stat.var[0]:.1f})"


def test_blank_page_fails_the_screenshot_check(tmp_path):
    """The variance threshold does catch an empty page (negative control)."""
    if not CHROMIUM.exists():
        pytest.skip("chromium not installed")
    from PIL import Image, ImageStat

    blank = tmp_path / "blank.html"
    blank.write_text("<!DOCTYPE html><html><body></body></html>")
    shot = tmp_path / "blank.png"
    _chromium([f"--screenshot={shot}", "--window-size=800,600", blank.as_uri()], tmp_path)
    with Image.open(shot) as image:
        assert ImageStat.Stat(image.convert("L")).var[0] <= 100
