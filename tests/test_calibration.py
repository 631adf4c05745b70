"""The verdict sweep (tests/sweep.py): its truth rules, and every recorded cell replayed.

The truth of a cell comes from outcomes (docs/calibration.md, "Truth"); these
tests pin that definition on made-up outcomes, replay every recorded cell
through today's diagnosis, and keep docs/calibration.md's table in step with
what the replays say.
"""

from __future__ import annotations

import importlib.util

import pytest

from pipeline.diagnosis import GOOD_FIT, OVERFITTING, UNDERFITTING

from . import known_truth as kt
from . import sweep
from .conftest import REPO

BASE = sweep.Cell("plain", "baseline", 200, 1)
BIGGER = sweep.Cell("plain", "baseline", 800, 1)
DROPOUT = sweep.Cell("plain", "dropout", 200, 1, model=kt.DROPOUT["model"])


def outcome(train: float, test: float, n: int = 2_000) -> sweep.Outcome:
    return sweep.Outcome(train=train, n_train=n, test=test, n_test=n)


@pytest.mark.parametrize("reference", [BIGGER, DROPOUT], ids=["4x_data", "dropout"])
def test_a_real_gap_that_more_data_or_dropout_closes_is_overfitting(reference):
    outcomes = {BASE.key: outcome(0.95, 0.80), reference.key: outcome(0.90, 0.86)}
    assert sweep.truth(BASE, outcomes).label == "overfitting"


def test_a_gap_that_costs_nothing_is_not_overfitting():
    """Gap beyond noise, but 4x the data tests no better: unclear, not overfitting."""
    outcomes = {BASE.key: outcome(0.95, 0.85), BIGGER.key: outcome(0.95, 0.855)}
    assert sweep.truth(BASE, outcomes).label == "unclear"


def test_no_gap_and_no_shortfall_is_a_good_fit():
    outcomes = {BASE.key: outcome(0.86, 0.85), BIGGER.key: outcome(0.87, 0.855)}
    assert sweep.truth(BASE, outcomes).label == "good_fit"


def test_without_a_reference_the_truth_is_unclear():
    assert sweep.truth(BASE, {BASE.key: outcome(0.99, 0.70)}).label == "unclear"


def test_far_below_what_the_family_fits_is_underfitting():
    tiny = sweep.Cell("tiny", "tiny", 200, 1)
    outcomes = {tiny.key: outcome(0.55, 0.54), BIGGER.key: outcome(0.93, 0.88)}
    assert sweep.truth(tiny, outcomes).label == "underfitting"
    # ...unless its own gap is as large as what it lacks: then it is not a fitting problem.
    outcomes[tiny.key] = outcome(0.75, 0.55)
    assert sweep.truth(tiny, outcomes).label != "underfitting"
    # Another seed's family does not count.
    other_seed = sweep.Cell("tiny", "tiny", 200, 2)
    outcomes = {other_seed.key: outcome(0.55, 0.54), BIGGER.key: outcome(0.93, 0.88)}
    assert sweep.truth(other_seed, outcomes).label == "unclear"


def test_constructions_set_their_own_truth():
    shuffled = sweep.Cell("shuffled", "baseline", 200, 1, shuffle_labels=True)
    assert sweep.truth(shuffled, {shuffled.key: outcome(0.3, 0.1)}).label == "overfitting"
    early = sweep.Cell("epochs2", "baseline", 200, 1)
    assert sweep.truth(early, {early.key: outcome(0.7, 0.7)}).label == "too_early"
    flipped = sweep.Cell("flipped30", "baseline", 200, 1, flip_labels=0.3)
    assert sweep.truth(flipped, {flipped.key: outcome(0.90, 0.60)}).label == "overfitting"
    assert sweep.truth(flipped, {flipped.key: outcome(0.66, 0.60)}).label == "unclear"


def test_the_grid_is_the_issues():
    cells = sweep.grid()
    plain = [c for c in cells if c.family == "plain"]
    assert {c.per_class for c in plain} == {50, 100, 200, 400, 800, 1_600}
    assert len(plain) == 6 * 3 * 2
    assert {c.family for c in cells} - {"plain"} == {
        "shuffled", "flipped30", "tiny", "epochs2", "no_es40"
    }  # fmt: skip
    assert len({c.key for c in cells}) == len(cells)
    # Cheapest first, so a session's budget fills the small sizes first.
    assert [c.per_class for c in cells] == sorted(c.per_class for c in cells)


RECORDED = [c for c in sweep.grid() if (c.path / "case.json").is_file()]


@pytest.mark.parametrize("cell", RECORDED, ids=lambda c: c.key)
def test_every_recorded_cell_replays_to_a_verdict(cell):
    evaluation = kt.replay(kt.read_recording(cell.path))
    v = evaluation["variants"][cell.variant]
    assert v["verdict"] in (OVERFITTING, UNDERFITTING, GOOD_FIT)
    assert v["evidence"]


def test_the_calibration_table_is_what_the_replays_say():
    """docs/calibration.md's table is regenerated whenever a rule or a cell changes."""
    spec = importlib.util.spec_from_file_location(
        "sweep_verdicts", REPO / "benchmarks" / "sweep_verdicts.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    doc = (REPO / "docs" / "calibration.md").read_text()
    written = doc.split(module.BEGIN, 1)[1].split(module.END, 1)[0].strip()
    assert written == module.table().strip(), "run: python benchmarks/sweep_verdicts.py --table"
