"""The evaluation's tables: comparison.csv and .md, curves.csv, metrics.json.

Inputs: the evaluation payload (pipeline.assessment) and every variant's
history (models/<variant>/history.csv). Outputs: pandas frames and strings
the evaluate stage writes; nothing here touches files.

- comparison.csv and comparison.md: one row per variant with deltas against
  the reference variant (plus across-seed columns and a section when a
  variant trained more than one seed);
- curves.csv: long format (variant, epoch, loss, val_loss, accuracy,
  val_accuracy, gap) for dvc.yaml's top-level plots;
- metrics.json: flat DVC metrics ({variant: {test_accuracy, ...}}).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

CURVES_COLUMNS = ["variant", "epoch", "loss", "val_loss", "accuracy", "val_accuracy", "gap"]
COMPARISON_COLUMNS = [
    "variant",
    "verdict",
    "model_verdict",
    "diverged",
    "train_accuracy",
    "val_accuracy",
    "test_accuracy",
    "gap",
    "onset_epoch",
    "best_epoch",
    "epochs_run",
    "delta_val_accuracy",
    "delta_test_accuracy",
    "delta_gap",
    "delta_val_ci95",
    "delta_gap_ci95",
    "delta_gap_widening",
    "delta_gap_widening_ci95",
    "steadied",
    "helped",
    # The verdict as the page shows it (appended: readers of the older columns are unchanged).
    "grade",
    "label",
    "model_label",
]


def curves_frame(histories: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Long format: one row per variant and epoch (dvc plots colour by `variant`)."""
    frames = []
    for name, history in histories.items():
        frame = history.loc[:, ["epoch", "loss", "val_loss", "accuracy", "val_accuracy"]].copy()
        frame.insert(0, "variant", name)
        frame["gap"] = frame["accuracy"] - frame["val_accuracy"]
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)[CURVES_COLUMNS]


def comparison(evaluation: Mapping[str, Any]) -> tuple[pd.DataFrame, str]:
    """comparison.csv's frame (with seed columns when any) and comparison.md's text."""
    frame = with_seed_columns(comparison_frame(evaluation), evaluation)
    markdown = comparison_markdown(
        frame, evaluation["best_variant"], evaluation["reference_variant"]
    ) + seeds_markdown(evaluation)
    return frame, markdown


def comparison_frame(evaluation: Mapping[str, Any]) -> pd.DataFrame:
    """One row per variant: verdicts, scores, epochs and the effect against the reference."""
    rows = []
    for name, v in evaluation["variants"].items():
        eff = evaluation["effects"][name]
        rows.append(
            {
                "variant": name,
                "verdict": v["verdict"],
                "model_verdict": v["model_verdict"],
                "diverged": bool(v["training"]["diverged"]),
                "train_accuracy": v["train"]["accuracy"],
                "val_accuracy": v["val"]["accuracy"],
                "test_accuracy": v["test"]["accuracy"],
                "gap": v["gap"]["accuracy"],
                "onset_epoch": v["onset_epoch"],
                "best_epoch": v["best_epoch"],
                "epochs_run": v["epochs_run"],
                "delta_val_accuracy": eff["delta_val_accuracy"],
                "delta_test_accuracy": eff["delta_test_accuracy"],
                "delta_gap": eff["delta_gap"],
                "delta_val_ci95": eff["delta_val_ci95"],
                "delta_gap_ci95": eff["delta_gap_ci95"],
                "delta_gap_widening": eff["delta_gap_widening"],
                "delta_gap_widening_ci95": eff["delta_gap_widening_ci95"],
                "steadied": bool(eff["steadied"]),
                "helped": bool(eff["helped"]),
                "grade": v.get("grade"),
                "label": v.get("label", v["verdict"]),
                "model_label": v.get("model_label", v["model_verdict"]),
            }
        )
    frame = pd.DataFrame(rows, columns=COMPARISON_COLUMNS)
    frame["onset_epoch"] = frame["onset_epoch"].astype("Int64")
    return frame


def _pts(value: float) -> str:
    """A difference of accuracies in points: 0.052 -> '+5.2'."""
    return f"{value * 100:+.1f}"


def comparison_markdown(frame: pd.DataFrame, best: str, reference: str) -> str:
    """A GitHub-style table; deltas vs the reference variant. Accuracies in %, gaps and
    deltas (differences of accuracies) in points."""
    head = (
        "| variant | verdict | saved model | train acc | val acc | test acc | gap (pts) | onset | "
        f"Δ val acc (pts, ±95%) | Δ test acc (pts) | Δ gap (pts, ±95%) | helped |\n"
        f"|{'---|' * 12}\n"
    )
    lines = []
    for r in frame.itertuples(index=False):
        onset = "-" if pd.isna(r.onset_epoch) else str(int(r.onset_epoch))
        name = f"**{r.variant}** (best)" if r.variant == best else r.variant
        lines.append(
            f"| {name} | {r.label} | {r.model_label} | {r.train_accuracy:.1%} | "
            f"{r.val_accuracy:.1%} | {r.test_accuracy:.1%} | {_pts(r.gap)} | {onset} | "
            f"{_pts(r.delta_val_accuracy)} (±{r.delta_val_ci95 * 100:.1f}) | "
            f"{_pts(r.delta_test_accuracy)} | "
            f"{_pts(r.delta_gap)} (±{r.delta_gap_ci95 * 100:.1f}) | "
            f"{'yes' if r.helped else '-'} |"
        )
    return (
        f"# Variant comparison\n\nΔ columns are relative to `{reference}`.\n\n"
        + head
        + "\n".join(lines)
        + "\n"
    )


def flat_metrics(evaluation: Mapping[str, Any]) -> dict[str, Any]:
    """reports/metrics.json for `dvc metrics diff` and `dvc exp show`:
    {variant: {metric: value}}, the verdict a text column experiments sort by."""
    return {
        name: {
            "test_accuracy": v["test"]["accuracy"],
            "val_accuracy": v["val"]["accuracy"],
            "train_accuracy": v["train"]["accuracy"],
            "gap": v["gap"]["accuracy"],
            "verdict": v["verdict"],
            # The verdict as the report shows it, and the score behind its grade.
            "label": v.get("label", v["verdict"]),
            "overfit_score": v.get("score"),
        }
        for name, v in evaluation["variants"].items()
    }


def with_seed_columns(frame: pd.DataFrame, evaluation: Mapping[str, Any]) -> pd.DataFrame:
    """The comparison plus across-seed columns, when any variant trained more than one seed."""
    summaries = {n: v.get("seeds") for n, v in evaluation["variants"].items()}
    if not any(s and s["n_seeds"] > 1 for s in summaries.values()):
        return frame
    frame = frame.copy()

    def pick(name: str, *keys: str) -> Any:
        return _dig(summaries.get(name), keys)

    frame["n_seeds"] = [pick(n, "n_seeds") for n in frame["variant"]]
    for metric in ("val_accuracy", "gap"):
        for stat in ("mean", "ci95", "sd"):
            frame[f"seeds_{metric}_{stat}"] = [pick(n, metric, stat) for n in frame["variant"]]
    frame["verdict_agreement"] = [pick(n, "agreement") for n in frame["variant"]]
    return frame


def _dig(tree: Any, keys: Sequence[str]) -> Any:
    for key in keys:
        tree = tree.get(key) if isinstance(tree, Mapping) else None
    return tree


def seeds_markdown(evaluation: Mapping[str, Any]) -> str:
    """A section for comparison.md when any variant trained more than one seed, else ''."""
    rows = []
    for name, v in evaluation["variants"].items():
        s = v.get("seeds")
        if not s or s["n_seeds"] < 2:
            continue
        val, gap = s["val_accuracy"], s["gap"]
        rows.append(
            f"| {name} | {s['n_seeds']} | {val['mean']:.1%} ± {val['ci95'] * 100:.1f} pts | "
            f"{_pts(gap['mean'])} ± {gap['ci95'] * 100:.1f} | {s['agreement']} |"
        )
    if not rows:
        return ""
    return (
        "\n## Across training seeds\n\nMean ± 95% interval (Student t) over `train.seeds` "
        "seeds; the table above is seed 0.\n\n"
        "| variant | seeds | val acc | gap (pts) | verdicts |\n|---|---|---|---|---|\n"
        + "\n".join(rows)
        + "\n"
    )
