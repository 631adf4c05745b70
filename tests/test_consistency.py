"""One consistent answer on the page: a property of every diagnosis, recorded and synthetic.

Issue 24 found a page whose headline said "Cannot tell yet" next to a green good-fit
badge and a bullet saying the saved model generalizes; advice that said "No mitigation
measurably helped" and then "Use `dropout`"; and gaps in %. Every evaluation below (the
recorded known-truth runs, the sweep's groups, and synthetic variations of them: tiny
splits, runs cut early, thresholds moved) must say one thing about each model, from the
headline to the badge, evidence, recommendations, comparison table and MLflow tags.
"""

from __future__ import annotations

import dataclasses
import functools
import re

import pytest

from pipeline import publishing, report_context, tables
from pipeline.diagnosis import GOOD_FIT, OVERFITTING, UNDERFITTING

from . import known_truth as kt
from . import sweep

# Synthetic variations: thresholds moved both ways, so the rules' other branches are met.
THRESHOLDS = [
    {},
    {"clear_overfit_gap": 0.02, "clear_overfit_effect": 0.1, "mild_overfit_effect": 0.05},
    {"clear_overfit_gap": 0.3, "clear_overfit_effect": 0.8, "mild_overfit_effect": 0.2},
    {"noise_z": 6.0},
    {"min_noise_z": 0.5, "clear_loss_rise": 0.02},
    {"underfit_gap_to_best": 0.01},
]


def shrunk(recording: kt.Recording, n: int) -> kt.Recording:
    """The same run as if scored on `n` images per split: large gaps fall within noise."""
    evaluations = {}
    for name, ev in recording.inputs["evaluations"].items():
        scores = {split: {**s, "n": min(int(s["n"]), n)} for split, s in ev.scores.items()}
        evaluations[name] = dataclasses.replace(ev, scores=scores, correct=None)
    return dataclasses.replace(recording, inputs={**recording.inputs, "evaluations": evaluations})


@functools.cache
def evaluations() -> list[tuple[str, dict]]:
    """(label, evaluation) of every recorded run and group, and their variations."""
    recordings = [(p.name, kt.read_recording(p)) for p in kt.recordings()]
    recorded = {c.key for c in sweep.grid() if (c.path / "case.json").is_file()}
    seen: set[tuple[str, ...]] = set()
    for cell in sweep.grid():
        if cell.key not in recorded:
            continue
        members = sweep.group(cell, recorded)
        keys = tuple(c.key for c in members)
        if keys not in seen:
            seen.add(keys)
            joined = kt.join_recordings([kt.read_recording(c.path) for c in members])
            recordings.append(("+".join(keys), joined))
    out = []
    for name, rec in recordings:
        for i, update in enumerate(THRESHOLDS):
            cfg = rec.cfg.model_copy(
                update={"evaluate": rec.cfg.evaluate.model_copy(update=update)}
            )
            out.append((f"{name}/t{i}", kt.replay(dataclasses.replace(rec, cfg=cfg))))
        out.append((f"{name}/n20", kt.replay(shrunk(rec, 20))))
    return out


def texts_about(evaluation: dict, name: str) -> list[str]:
    v = evaluation["variants"][name]
    return [v["summary"], *v["evidence"], v["label"], v["model_label"]]


def all_texts(evaluation: dict) -> list[str]:
    texts = [evaluation["answer"], evaluation["best_variant_reason"]]
    for r in evaluation["recommendations"]:
        texts += [r["action"], r["reason"]]
    for name in evaluation["variants"]:
        texts += texts_about(evaluation, name)
    return texts


def test_the_property_covers_every_verdict_grade_and_label():
    """The variations are not idle: together they reach every verdict and every label."""
    labels = {v["label"] for _, e in evaluations() for v in e["variants"].values()}
    assert labels >= {
        "overfitting (clear)",
        "overfitting (mild)",
        "good fit",
        "cannot tell yet",
        "too early to tell",
        "underfitting",
    }, labels
    verdicts = {v["verdict"] for _, e in evaluations() for v in e["variants"].values()}
    assert verdicts == {OVERFITTING, UNDERFITTING, GOOD_FIT}


def test_no_page_says_helped_and_did_not_help_about_the_same_variant():
    for label, evaluation in evaluations():
        actions = [r["action"] for r in evaluation["recommendations"]]
        helped = {n for n, e in evaluation["effects"].items() if e.get("helped")}
        for action in actions:
            if action.startswith(("Adopt the `", "Consider the `")):
                assert action.split("`")[1] in helped, (label, action)
            if action.startswith("No mitigation measurably helped"):
                assert not helped, (label, actions)
                # ...and the variant to use is then the reference, not an unproven mitigation.
                assert evaluation["best_variant"] == evaluation["reference_variant"], (
                    label,
                    evaluation["best_variant_reason"],
                )


UNSETTLED = re.compile(r"cannot tell|too early", re.IGNORECASE)
SETTLED_FINE = re.compile(r"\bgood fit\b|\bgeneralizes\b")


def test_no_page_says_cannot_tell_and_good_fit_about_the_same_model():
    for label, evaluation in evaluations():
        for name in evaluation["variants"]:
            texts = texts_about(evaluation, name)
            if any(UNSETTLED.search(t) for t in texts):
                fine = [t for t in texts if SETTLED_FINE.search(t)]
                assert not fine, (label, name, fine)


HEADLINE = {  # label of the reference variant -> how the one-sentence answer starts
    "overfitting (clear)": ("Yes, ",),
    "overfitting (mild)": ("Yes, ",),
    "good fit": ("No, ", "`"),  # "`x`'s training is unstable" is a good fit's answer too
    "cannot tell yet": ("Cannot tell yet",),
    "too early to tell": ("Too early to tell",),
}


def test_the_headline_badge_table_and_tags_say_the_same_thing():
    for label, evaluation in evaluations():
        ref = evaluation["reference_variant"]
        v = evaluation["variants"][ref]
        if v["verdict"] != UNDERFITTING and not v["rules"]["memorization"]:
            assert evaluation["answer"].startswith(HEADLINE[v["label"]]), (label, v["label"])
        assert evaluation["answer"] == v["summary"]
        frame = tables.comparison_frame(evaluation)
        for row in frame.itertuples(index=False):
            shown = evaluation["variants"][row.variant]
            assert (row.label, row.model_label) == (shown["label"], shown["model_label"])
            badge = report_context.badge(shown)
            assert badge["label"] == shown["label"]
            assert ("tentative" in badge["badge"]) == (shown["grade"] == "tentative")
        assert {k: v[k] for k in publishing.DIAGNOSIS_KEYS}["label"] == v["label"]


POINTS_AS_PERCENT = re.compile(r"(gap|Δ|widened|moved)\s*[+-]?\d+(\.\d+)?%|[+-]\d+(\.\d+)?%")


def test_accuracy_differences_are_points_and_accuracies_percent():
    for label, evaluation in evaluations():
        for text in all_texts(evaluation):
            assert not POINTS_AS_PERCENT.search(text), (label, text)


@pytest.mark.parametrize("verdict", [OVERFITTING, UNDERFITTING, GOOD_FIT])
def test_each_verdict_reads_its_own_words(verdict):
    """A badge never contradicts its verdict: overfitting labels say overfitting, etc."""
    for _, evaluation in evaluations():
        for v in evaluation["variants"].values():
            if v["verdict"] != verdict:
                continue
            if verdict == GOOD_FIT:
                assert v["label"] in ("good fit", "cannot tell yet", "too early to tell")
            else:
                assert v["label"].startswith(verdict)
