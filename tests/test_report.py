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
from markupsafe import escape  # what Jinja2 autoescape uses (&#39; for quotes)

from pipeline import assessment, figures, report, report_context, scoring, tables
from pipeline.catalog.training import TrainOutputs
from pipeline.catalog.validation import Validation
from pipeline.cli import StageError
from pipeline.config import parse_config
from pipeline.io import write_json_atomic
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
            "observed": {"classes": 3, "missing": {}, "unknown_label_images": 0},
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
    # The widening gap levels off, so long histories stay accuracies (unchanged for n <= 12).
    val_acc = acc - (np.minimum(0.02 * epochs, 0.3) if overfit else 0.03)
    return pd.DataFrame(
        {"epoch": epochs, "loss": loss, "accuracy": acc, "val_loss": val, "val_accuracy": val_acc}
    )


def synthetic_scores(rng, accuracy: float, n: int = 60, classes=CLASSES) -> dict:
    y = np.arange(n) % len(classes)
    proba = rng.dirichlet(np.ones(len(classes)), size=n) * 0.3
    right = rng.random(n) < accuracy
    target = np.where(right, y, (y + 1) % len(classes))
    proba[np.arange(n), target] += 0.7
    return scoring.split_scores(y, proba, len(classes))


# variant -> (overfits, train accuracy, val accuracy)
SPECS = {"baseline": (True, 1.0, 0.7), "dropout": (False, 0.93, 0.9)}


def build_inputs(
    paths: Paths, specs=SPECS, classes=CLASSES, epochs: int = 12, n_images: int = 60
) -> dict:
    """evaluation.json, comparison.csv, figures and validation.json like evaluate writes."""
    rng = np.random.default_rng(0)
    cfg = parse_config(small_params(variants={name: {} for name in specs}))
    artifacts, evaluations = {}, {}
    probe = rng.integers(0, 256, size=(2, 8, 8, 1), dtype=np.uint8)
    for name, (overfit, train_acc, val_acc) in specs.items():
        history = synthetic_history(epochs, overfit)
        artifacts[name] = TrainOutputs(
            name, Path("unused"), history, {"best_epoch": 5}, {"run_id": f"run-{name}"}
        )
        scores = {
            split: synthetic_scores(rng, acc, n_images, classes)
            for split, acc in (("train", train_acc), ("val", val_acc), ("test", val_acc))
        }
        maps = {"conv_1": rng.random((2, 8, 8, 4)), "conv_2": rng.random((2, 4, 4, 8))}
        evaluations[name] = scoring.VariantEvaluation(name, scores, maps)
    evaluation = assessment.build_evaluation(
        cfg, classes, artifacts, evaluations, Validation.from_payload(VALIDATION)
    )
    evaluation["registered"] = {"model_name": "m", "version": 3, "alias": "challenger"}
    histories = {n: a.history for n, a in artifacts.items()}
    figures.write_figures(paths.figures_dir, evaluation, histories, evaluations, probe)
    write_json_atomic(paths.evaluation_json, evaluation)
    paths.comparison_csv.write_text(tables.comparison_frame(evaluation).to_csv(index=False))
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
        'id="mitigations"',
        'id="curves-caveat"',
        'id="next-steps"',
        'class="verdict overfitting ',
        "mlflow ui",
    ):
        assert marker in html, marker
    assert evaluation["variants"]["baseline"]["verdict"] == "overfitting"
    # The answer comes first: headline, what works, table, curves; details after.
    order = [
        'id="headline"',
        'id="recommendations"',
        'id="comparison"',
        'id="all-curves"',
        'id="validation"',
        'id="variants"',
        'id="next-steps"',
    ]
    positions = [html.index(marker) for marker in order]
    assert positions == sorted(positions), order
    headline = html[positions[0] : positions[1]]
    assert "<code>baseline</code>" in headline and 'class="verdict overfitting ' in headline
    label = evaluation["variants"]["baseline"]["label"]
    assert label.startswith("overfitting (") and f">{label}</span>" in headline
    # One sentence answers the question for the reference model, before the evidence.
    assert evaluation["answer"].startswith("Yes, `baseline` overfits")
    assert report_context.code_spans(evaluation["answer"]) in headline
    assert "<code>baseline</code> overfits" in headline
    assert headline.index('id="answer"') < headline.index('class="evidence"')
    for line in evaluation["variants"]["baseline"]["evidence"]:
        assert escape(line) in headline
    what_works = html[positions[1] : positions[2]]
    assert 'id="best-variant">dropout<' in what_works
    assert escape(evaluation["best_variant_reason"]) in what_works
    delta = evaluation["effects"]["dropout"]["delta_val_accuracy"]
    assert f"{delta * 100:+.1f} pts" in what_works
    # Per-variant details are collapsed, one <details> each, with a modest confusion matrix.
    for name in evaluation["variants"]:
        assert f'<details class="variant" id="variant-{name}">' in html
    assert '<img class="confusion"' in html
    # Every figure is embedded; nothing points outside the file.
    srcs = re.findall(r'<img [^>]*src="([^"]*)"', html)
    # all-variant curves + gap, per variant 3 figures, and the best variant's per-class gaps
    assert len(srcs) == 2 + 3 * 2 + 1
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "<script" not in html
    assert not re.search(r'(src|href)="(https?:)?//', html)
    assert 'alt="learning curves of baseline"' in html
    assert 'alt="feature maps of dropout"' in html
    # The failed warning check is highlighted, the passed one is not.
    assert 'class="check failed warning" data-check="class_balance"' in html
    assert 'class="check passed" data-check="label_set"' in html
    # Each check in words (a sentence, or "key: value" for an observed dict of unknown shape).
    found = re.findall(r'<td class="found">([^<]*)</td>', html)
    assert found == ["All 3 classes appear in train, val and test.", "ratio: 4.2"]
    for rec in evaluation["recommendations"]:
        assert rec["action"].split("`")[0].strip() in html


def test_caveat_names_the_variants_trained_with_dropout_augmentation_or_l2(project, built):
    evaluation = write_inputs(project, built)
    caveat = _caveat(project)
    assert "dropout and augmentation" in caveat and "weight penalty" in caveat
    assert "here:" not in caveat  # no training_behaviour recorded: the general caveat only
    evaluation["variants"]["baseline"]["training_behaviour"] = {
        "dropout": False,
        "augmentation": False,
        "l2": False,
    }
    evaluation["variants"]["dropout"]["training_behaviour"] = {
        "dropout": True,
        "augmentation": False,
        "l2": True,
    }
    write_json_atomic(project.paths.evaluation_json, evaluation)
    caveat = _caveat(project)
    assert "(here: dropout), so" in caveat and "weight penalty (here: dropout)" in caveat
    assert "baseline" not in caveat


def _caveat(project) -> str:
    report.write_report(project.paths)
    html = project.paths.report_html.read_text()
    match = re.search(r'<p class="caveat" id="curves-caveat">(.*?)</p>', html, re.S)
    assert match, "caveat missing"
    return " ".join(match.group(1).split())


def _comparison_table(project) -> str:
    report.write_report(project.paths)
    html = project.paths.report_html.read_text()
    return html[html.index('id="comparison-table"') : html.index('id="all-curves"')]


def _row(table: str, variant: str) -> str:
    row = table[table.index(f'data-variant="{variant}"') :]
    return row[: row.index("</tr>")]


def test_intervals_and_within_noise_are_shown_when_evaluation_has_them(project, built):
    evaluation = write_inputs(project, built)
    effects = evaluation["effects"]
    for name in ("baseline", "dropout"):  # diagnosis.compare_to_baseline supplies them
        assert {"val_accuracy_ci95", "delta_val_ci95", "within_noise"} <= set(effects[name])
    effects["dropout"]["within_noise"] = True
    write_json_atomic(project.paths.evaluation_json, evaluation)
    table = _comparison_table(project)
    for name in ("baseline", "dropout"):
        assert f"±{effects[name]['val_accuracy_ci95'] * 100:.1f}" in _row(table, name)
    assert "within noise" in _row(table, "dropout")
    assert "within noise</span>" not in _row(table, "baseline")  # no effect vs itself
    html = project.paths.report_html.read_text()
    mitigation = _row(html[html.index('id="mitigations"') :], "dropout")
    assert f"±{effects['dropout']['delta_val_ci95'] * 100:.1f}" in mitigation
    assert "within noise" in mitigation

    effects["dropout"]["within_noise"] = False
    effects["dropout"]["val_accuracy_ci95"] = float("nan")  # sample size unknown
    write_json_atomic(project.paths.evaluation_json, evaluation)
    table = _comparison_table(project)
    assert "within noise</span>" not in table
    assert "±" not in _row(table, "dropout") and "nan" not in table


def test_a_mitigation_that_steadied_the_run_says_so_in_the_mitigations_table(project, built):
    evaluation = write_inputs(project, built)

    def mitigation_row() -> str:
        write_json_atomic(project.paths.evaluation_json, evaluation)
        report.write_report(project.paths)
        html = project.paths.report_html.read_text()
        return _row(html[html.index('id="mitigations"') :], "dropout")

    evaluation["effects"]["dropout"].update(helped=True, steadied=False)
    assert "helped" in mitigation_row() and "stopped diverging" not in mitigation_row()
    evaluation["effects"]["dropout"]["steadied"] = True
    assert "(its run stopped diverging)" in mitigation_row()


def test_evaluation_without_intervals_shows_none(project, built):
    """An evaluation.json from before intervals existed: nothing is invented."""
    evaluation = write_inputs(project, built)
    for effect in evaluation["effects"].values():
        for key in ("val_accuracy_ci95", "delta_val_ci95", "delta_gap_ci95", "within_noise"):
            effect.pop(key, None)
    write_json_atomic(project.paths.evaluation_json, evaluation)
    table = _comparison_table(project)
    assert "±" not in table and "within noise" not in table
    html = project.paths.report_html.read_text()
    mitigations = html[html.index('id="mitigations"') : html.index('id="recommendation-list"')]
    assert "within noise" not in mitigations and "±" not in mitigations


def test_seed_aggregate_shows_on_the_card_and_in_the_table_only_with_several_seeds(project, built):
    from pipeline import seeds

    evaluation = write_inputs(project, built)
    three = seeds.summarize_seeds([0.90, 0.92, 0.91], [0.04, 0.02, 0.03], ["overfitting"] * 3)
    evaluation["variants"]["dropout"]["seeds"] = {**three, "summary": seeds.describe(three)}
    one = seeds.summarize_seeds([0.9], [0.01], ["good_fit"])
    evaluation["variants"]["baseline"]["seeds"] = {**one, "summary": seeds.describe(one)}
    write_json_atomic(project.paths.evaluation_json, evaluation)
    table = _comparison_table(project)
    line = seeds.describe(three)
    assert line.startswith("gap 3.0 ± ") and line.endswith("overfitting in 3 of 3 seeds")
    assert "across seeds" in table and line in _row(table, "dropout")
    assert "1 seed" in _row(table, "baseline")
    html = project.paths.report_html.read_text()
    card = html[html.index('id="variant-dropout"') :]
    assert line in card[: card.index("</summary>")]

    evaluation["variants"]["dropout"]["seeds"] = evaluation["variants"]["baseline"]["seeds"]
    write_json_atomic(project.paths.evaluation_json, evaluation)
    assert "across seeds" not in _comparison_table(project)  # one seed: today's page


def test_ci_halfwidth_takes_the_number_diagnosis_writes_or_nothing():
    assert report_context.ci_halfwidth(0.02) == 0.02
    assert report_context.ci_halfwidth(None) is None
    assert report_context.ci_halfwidth(float("nan")) is None
    assert report_context.ci_halfwidth("wide") is None
    assert report_context.ci_halfwidth(True) is None


def test_report_escapes_untrusted_text(project, built):
    evaluation = write_inputs(project, built)
    evaluation["variants"]["baseline"]["evidence"].append('<script>alert("x")</script>')
    write_json_atomic(project.paths.evaluation_json, evaluation)
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


@pytest.mark.slow
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


@pytest.mark.slow
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


def test_more_data_section_shows_the_learning_curve_sentence_and_figure(project, built):
    from pipeline import plots
    from pipeline.learning_curve import CurvePoint

    evaluation = write_inputs(project, built)
    points = [
        CurvePoint(300, 1.0, 0.90, 270),
        CurvePoint(600, 1.0, 0.93, 270),
        CurvePoint(1200, 0.99, 0.97, 270, n_train_scored=270),
    ]
    n_recs = len(evaluation["recommendations"])
    assessment.add_learning_curve(evaluation, points, "baseline")
    assert evaluation["recommendations"][-2]["action"] == "Get more training data"
    assert len(evaluation["recommendations"]) == n_recs + 1
    write_json_atomic(project.paths.evaluation_json, evaluation)
    plots.save_png(
        plots.learning_curve_figure(evaluation["learning_curve"]),
        project.paths.figures_dir / plots.LEARNING_CURVE,
    )
    assert report.main([]) == 0
    html = project.paths.report_html.read_text()
    section = html[html.index('id="more-data"') : html.index('id="all-curves"')]
    assert "Would more data help?" in section
    assert "rising: +4.0 points of val accuracy from 50% to 100%" in section
    assert "more data of the same kind is likely to help" in section
    assert 'alt="learning curve of baseline' in section
    assert section.count("<tr>") == 1 + 3  # header + one row per point
    assert "Get more training data" in html


def test_no_more_data_section_without_a_learning_curve(project, built):
    write_inputs(project, built)
    assert report.main([]) == 0
    assert 'id="more-data"' not in project.paths.report_html.read_text()


def test_code_spans_escape_first_then_mark_backticked_names():
    html = str(report_context.code_spans("Adopt `dropout` <script>x</script> & `l2`"))
    assert html == (
        "Adopt <code>dropout</code> &lt;script&gt;x&lt;/script&gt; &amp; <code>l2</code>"
    )
    assert str(report_context.code_spans("no ticks")) == "no ticks"


def test_per_class_table_gives_each_class_its_figure_index(project, built):
    """Figures show a class the font cannot draw by its index; the table maps it back."""
    evaluation = write_inputs(project, built)
    report.write_report(project.paths)
    html = project.paths.report_html.read_text()
    name = next(iter(evaluation["variants"]))
    card = html[html.index(f'id="variant-{name}"') :]
    table = card[card.index('class="per-class"') : card.index("</table>")]
    rows = re.findall(r'<tr[^>]*><td class="num">(\d+)</td><td>([^<]*)</td>', table)
    classes = [c["class"] for c in evaluation["variants"][name]["per_class"]]
    assert rows == [(str(i), c) for i, c in enumerate(classes)]


# The page must stay small enough to mail and to open quickly: every figure is inline.
REPORT_BUDGET_BYTES = 3_000_000


def test_report_of_the_seven_shipped_variants_stays_under_the_size_budget(tmp_path):
    """The shipped pipeline's shape: 7 variants, 10 classes, 100-epoch histories (the
    epoch cap; early stopping ends sooner), the images of the digits' splits."""
    from .conftest import real_params

    names = list(real_params()["variants"])
    assert len(names) == 7
    specs = {n: (i % 2 == 0, 1.0 - 0.01 * i, 0.9 - 0.01 * i) for i, n in enumerate(names)}
    paths = Paths(tmp_path)
    build_inputs(paths, specs, [str(c) for c in range(10)], epochs=100, n_images=270)
    report.write_report(paths)
    size = paths.report_html.stat().st_size
    assert size < REPORT_BUDGET_BYTES, f"report.html is {size:,} bytes"
    # The figures are the page: a budget met by dropping them would be no achievement.
    assert len(
        re.findall(r'<img [^>]*src="data:image/png;base64,', paths.report_html.read_text())
    ) == (2 + 3 * 7 + 1)
