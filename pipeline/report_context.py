"""The report page's content: evaluation.json and validation.json -> template context.

Pure apart from reading the figure PNGs it embeds (base64 data URIs): no
Jinja2, no MLflow, no TensorFlow. pipeline.report renders it.

Inputs: the evaluation payload (pipeline.catalog.evaluation), the validation
report (pipeline.catalog.validation), the comparison table, reports/figures/.
Output: the dict pipeline/templates/report.html.j2 renders.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline import check_sentences, plots
from pipeline.catalog.validation import Validation
from pipeline.cli import StageError


def png_data_uri(path: Path) -> str | None:
    """The PNG as a data: URI, or None when the file is absent."""
    if not path.exists():
        return None
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _sentence(text: str) -> str:
    """`text` ending in a full stop, so the next sentence on the line reads as one."""
    text = text.strip()
    return text if not text or text.endswith((".", "!", "?")) else text + "."


def validation_context(validation: Validation) -> dict[str, Any]:
    """The data-checks section: each check's result and what it found, in a sentence."""
    checks = []
    for check in validation.checks:
        name = check.get("name", "?")
        checks.append(
            {
                "name": name,
                "success": bool(check.get("success", False)),
                "severity": check.get("severity", ""),
                "found": check_sentences.describe(
                    name, check.get("observed", ""), check.get("limits")
                ),
                "examples": [str(e) for e in (check.get("examples") or [])[:5]],
            }
        )
    return {
        "success": validation.success,
        "checks": checks,
        "warnings": list(validation.warnings),
        "errors": list(validation.errors),
    }


def ci_halfwidth(value: Any) -> float | None:
    """A 95% interval's half-width as diagnosis writes it (a number), else None.

    None also for NaN and null: diagnosis's "sample size unknown".
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def noise_context(evaluation: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The variant's val-accuracy interval and whether its effect is within noise, if known.

    diagnosis.compare_to_baseline puts `val_accuracy_ci95`, `delta_val_ci95` (the
    interval of the difference to the reference) and `within_noise` in each effect.
    """
    effect = evaluation.get("effects", {}).get(name, {})
    ci = effect.get("val_accuracy_ci95")
    within = effect.get("within_noise")
    is_reference = name == evaluation.get("reference_variant")
    return {
        "val_ci95": ci_halfwidth(ci),
        "delta_ci95": None if is_reference else ci_halfwidth(effect.get("delta_val_ci95")),
        "within_noise": None if within is None or is_reference else bool(within),
    }


def mitigations_context(evaluation: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every non-reference variant's effect vs the reference, most val accuracy gained first."""
    ref = evaluation.get("reference_variant")
    rows = []
    for name, effect in evaluation.get("effects", {}).items():
        if name == ref or name not in evaluation["variants"]:
            continue
        rows.append(
            {
                "name": name,
                "verdict": evaluation["variants"][name]["verdict"],
                **badge(evaluation["variants"][name]),
                "delta_val_accuracy": effect.get("delta_val_accuracy"),
                "delta_test_accuracy": effect.get("delta_test_accuracy"),
                "delta_gap": effect.get("delta_gap"),
                "gap_ci95": ci_halfwidth(effect.get("delta_gap_ci95")),
                "helped": bool(effect.get("helped", False)),
                "steadied": bool(effect.get("steadied", False)),
                **noise_context(evaluation, name),
            }
        )
    return sorted(
        rows, key=lambda r: (-(r["delta_val_accuracy"] or 0.0), r["delta_gap"] or 0.0, r["name"])
    )


def caveat_context(evaluation: Mapping[str, Any]) -> dict[str, list[str]]:
    """Variants whose Keras train curves include dropout/augmentation, and those with L2."""
    out: dict[str, list[str]] = {"train_mode": [], "l2": []}
    for name, v in evaluation["variants"].items():
        behaviour = v.get("training_behaviour") or {}
        if behaviour.get("dropout") or behaviour.get("augmentation"):
            out["train_mode"].append(name)
        if behaviour.get("l2"):
            out["l2"].append(name)
    return out


def seeds_line(v: Mapping[str, Any]) -> str | None:
    """The variant's across-seed summary sentence, when it trained more than one seed."""
    summary = v.get("seeds") or {}
    return summary.get("summary") if summary.get("n_seeds", 1) > 1 else None


def badge(v: Mapping[str, Any]) -> dict[str, str]:
    """How a variant's verdict shows: its label ("overfitting (mild)", "cannot tell yet")
    and the badge's CSS classes (the verdict, and `tentative` for a good fit not established,
    so it is never drawn as a green good fit); the saved model's label likewise."""
    verdict = v["verdict"]
    label = v.get("label") or verdict.replace("_", " ")
    grade = v.get("grade") or "clear"
    model = v.get("model_verdict", verdict)
    return {
        "label": label,
        "badge": f"{verdict} {grade}",
        "model_label": v.get("model_label") or model.replace("_", " "),
    }


def variant_context(name: str, v: Mapping[str, Any], figures_dir: Path) -> dict[str, Any]:
    return {
        "seeds": seeds_line(v),
        "name": name,
        "verdict": v["verdict"],
        "model_verdict": v.get("model_verdict", v["verdict"]),
        **badge(v),
        "summary": v.get("summary", ""),
        "training": v.get("training"),
        "evidence": list(v.get("evidence", [])),
        "scores": {split: v[split] for split in ("train", "val", "test")},
        "gap": v["gap"],
        "best_epoch": v.get("best_epoch"),
        "epochs_run": v.get("epochs_run"),
        "onset_epoch": v.get("onset_epoch"),
        "mlflow_run_id": v.get("mlflow_run_id"),
        "per_class": v.get("per_class", []),
        "curves": png_data_uri(figures_dir / plots.curves_name(name)),
        "confusion": png_data_uri(figures_dir / plots.confusion_name(name)),
        "feature_maps": png_data_uri(figures_dir / plots.feature_maps_name(name)),
        "class_gaps": png_data_uri(figures_dir / plots.class_gaps_name(name)),
        # Classes whose own gap counts, named only on a variant that overfits: on a page that
        # says "good fit" or "too early to tell" a "memorized" class would contradict it.
        "memorized": [
            str(c["class"])
            for c in v.get("per_class", [])
            if c.get("gap_material") and v["verdict"] == "overfitting"
        ],
    }


def build_context(
    evaluation: Mapping[str, Any],
    validation: Validation,
    comparison: pd.DataFrame,
    figures_dir: Path,
) -> dict[str, Any]:
    """Everything the template shows, from the stage inputs (no I/O beyond the figures)."""
    if not evaluation.get("variants"):
        raise StageError("evaluation.json lists no variants; rerun the evaluate stage")
    rows = comparison.astype(object).where(comparison.notna(), None).to_dict("records")
    for row in rows:
        if row["variant"] in evaluation["variants"]:
            row.update(noise_context(evaluation, row["variant"]))
            row["seeds"] = seeds_line(evaluation["variants"][row["variant"]])
        else:
            row.update({"val_ci95": None, "delta_ci95": None, "within_noise": None})
            row["seeds"] = None
    variants = [variant_context(n, v, figures_dir) for n, v in evaluation["variants"].items()]
    reference = evaluation.get("reference_variant")
    headline = next((v for v in variants if v["name"] == reference), variants[0])
    reference = headline["name"]
    answer = evaluation.get("answer") or (
        f"The reference model {reference} is {str(headline['verdict']).replace('_', ' ')}."
    )
    return {
        "answer": answer,
        "validation": validation_context(validation),
        "variants": variants,
        "headline": headline,
        "mitigations": mitigations_context(evaluation),
        "caveat": caveat_context(evaluation),
        "show_ci": any(r["val_ci95"] is not None for r in rows),
        "show_noise": any(r["within_noise"] is not None for r in rows),
        "show_seeds": any(r["seeds"] for r in rows),
        "comparison": rows,
        "best_variant": evaluation.get("best_variant"),
        "best_variant_reason": _sentence(evaluation.get("best_variant_reason", "")),
        "reference_variant": reference,
        "recommendations": evaluation.get("recommendations", []),
        "registered": evaluation.get("registered"),
        "evaluate_run_id": evaluation.get("evaluate_run_id"),
        "val_curves": png_data_uri(figures_dir / plots.VAL_CURVES),
        "gap_curves": png_data_uri(figures_dir / plots.GAP_CURVES),
        "learning_curve": learning_curve_context(evaluation, figures_dir),
    }


def learning_curve_context(evaluation: Mapping[str, Any], figures_dir: Path) -> dict | None:
    """The "Would more data help?" section; None when the learning curve did not run."""
    curve = evaluation.get("learning_curve")
    if not curve:
        return None
    return {
        "variant": curve["variant"],
        "summary": _sentence(curve["summary"]),
        "gap_summary": _sentence(curve["gap_summary"]),
        "still_rising": curve["still_rising"],
        "points": curve["points"],
        "figure": png_data_uri(figures_dir / plots.LEARNING_CURVE),
    }


TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"


def template_env() -> Any:
    """The Jinja2 environment of the project's pages (report.html, the public API's one
    page): templates/, autoescaped, strict, with the number and code filters."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE_DIR),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["pct"] = lambda x: "–" if x is None else f"{float(x) * 100:.1f}%"
    # Differences of accuracies (gaps, deltas) are points; accuracies themselves are %.
    env.filters["signed_pts"] = lambda x: "–" if x is None else f"{float(x) * 100:+.1f} pts"
    env.filters["code_spans"] = code_spans
    return env


def code_spans(text: Any) -> Any:
    """Escape `text`, then show its `backticked` names as <code> (verdicts and advice use them)."""
    import re

    from markupsafe import Markup, escape

    return Markup(re.sub(r"`([^`]+)`", r"<code>\1</code>", str(escape(text))))
