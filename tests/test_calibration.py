"""The verdict sweep (tests/sweep.py): its truth rules, and every recorded cell replayed.

The truth of a cell comes from outcomes (docs/calibration.md, "Truth"); these
tests pin that definition on made-up outcomes, replay every recorded cell
through today's diagnosis, and keep docs/calibration.md's table in step with
what the replays say.
"""

from __future__ import annotations

import functools
import math
import statistics

import pytest

from pipeline.config import parse_config
from pipeline.diagnosis import GOOD_FIT, OVERFITTING, UNDERFITTING

from . import known_truth as kt
from . import sweep
from .conftest import REPO, load_benchmark, real_params

CFG = parse_config(real_params()).evaluate

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
    assert len([c for c in plain if c.variant in sweep.NETWORKS]) == 6 * 3 * 2
    # The regularization ladder's middle rung, at the extras' size.
    ladder = [c for c in plain if c.variant not in sweep.NETWORKS]
    assert {(c.variant, c.per_class) for c in ladder} == {("dropout25", sweep.EXTRAS_SIZE)}
    assert len(ladder) == len(sweep.SEEDS)
    assert {c.family for c in cells} - {"plain"} == {
        "shuffled", "flipped30", "tiny", "epochs2", "no_es40"
    }  # fmt: skip
    assert len({c.key for c in cells}) == len(cells)
    # Cheapest first, so a session's budget fills the small sizes first.
    assert [c.per_class for c in cells] == sorted(c.per_class for c in cells)


RECORDED = [c for c in sweep.grid() if (c.path / "case.json").is_file()]


@functools.cache
def replayed() -> dict[str, dict]:
    """Every recorded cell replayed with its group (sweep.replay_all), once per session."""
    return sweep.replay_all(sweep.grid())


@functools.cache
def truths() -> dict[str, sweep.Truth]:
    outcomes = sweep.recorded_outcomes(sweep.grid())
    return {c.key: sweep.truth(c, outcomes) for c in RECORDED}


@pytest.mark.parametrize("cell", RECORDED, ids=lambda c: c.key)
def test_every_recorded_cell_replays_to_a_verdict(cell):
    v = replayed()[cell.key]
    assert v["verdict"] in (OVERFITTING, UNDERFITTING, GOOD_FIT)
    assert v["evidence"] and v["label"]


# --------------------------------------------------------------------------- targets

RIGHT = {  # truth -> what the replayed verdict must say
    "overfitting": lambda v: v["verdict"] == OVERFITTING,
    "underfitting": lambda v: v["verdict"] == UNDERFITTING,
    "good_fit": lambda v: v["verdict"] == GOOD_FIT and v["grade"] == "clear",
    "too_early": lambda v: v["label"] == "too early to tell",
}


def clear_truth() -> list[sweep.Cell]:
    return [c for c in RECORDED if truths()[c.key].label in RIGHT]


@pytest.mark.parametrize("cell", clear_truth(), ids=lambda c: c.key)
def test_every_cell_with_a_clear_truth_is_right(cell):
    """Issue 24's target: 100% of the cells with a clear truth right (and so none called
    good_fit where the truth is overfitting)."""
    truth, v = truths()[cell.key], replayed()[cell.key]
    assert RIGHT[truth.label](v), (truth, v["label"], v["evidence"])


def test_the_plain_cnn_overfits_at_every_size_up_to_800_per_class():
    cells = [c for c in RECORDED if c.name.startswith("plain-baseline-") and c.per_class <= 800]
    assert cells
    wrong = {c.key: replayed()[c.key]["label"] for c in cells}
    assert all(label.startswith("overfitting") for label in wrong.values()), wrong


def test_where_the_truth_is_clear_at_least_two_of_three_seeds_agree_with_it():
    by_name: dict[str, list[bool]] = {}
    for cell in clear_truth():
        truth = truths()[cell.key]
        by_name.setdefault(f"{cell.name}:{truth.label}", []).append(
            RIGHT[truth.label](replayed()[cell.key])
        )
    for name, agree in by_name.items():
        assert sum(agree) >= min(2, len(agree)), name


# --------------------------------------------------------------------------- invariants

RANK = {"overfitting (clear)": 2, "overfitting (mild)": 1}


def rank(v: dict) -> int:
    """How overfit a replay reads: 2 clear, 1 mild, 0 anything else."""
    return RANK.get(v["label"], 0)


def score_noise(v: dict) -> float:
    """One standard error of a cell's saved-gap score from the split sizes alone."""
    return v["gap"]["effect_noise"] / CFG.noise_z / CFG.clear_overfit_effect


def seed_spread(cell: sweep.Cell) -> float:
    """The standard deviation of the saved-gap score over the recorded seeds of the same
    network and size: where early stopping happens to restore moves the saved gap by more
    than the split sizes do (dropout at 200 per class: 0.86, 1.43 and 1.33)."""
    scores = [
        replayed()[c.key]["gap"]["score"]
        for c in RECORDED
        if (c.family, c.variant, c.per_class) == (cell.family, cell.variant, cell.per_class)
    ]
    return statistics.stdev(scores) if len(scores) > 1 else 0.0


def reads_no_less_overfit(more: sweep.Cell, less: sweep.Cell) -> bool:
    """`more` reads at least as overfit as `less`, or the difference of their scores is
    within noise: `noise_z` standard errors of the split sizes and of the seed-to-seed
    spread of each configuration, as measured on the sweep."""
    a, b = replayed()[more.key], replayed()[less.key]
    if rank(a) >= rank(b):
        return True
    se = math.sqrt(
        score_noise(a) ** 2 + score_noise(b) ** 2 + seed_spread(more) ** 2 + seed_spread(less) ** 2
    )
    return b["score"] - a["score"] <= CFG.noise_z * se


def pairs(key) -> list[tuple[sweep.Cell, sweep.Cell]]:
    """Recorded (a, b) of the plain family with key(a, b) true."""
    plain = [c for c in RECORDED if c.family == "plain"]
    return [(a, b) for a in plain for b in plain if key(a, b)]


def test_less_data_never_reads_as_less_overfit():
    """Same network and seed: a smaller training set never gets a lower grade beyond noise."""
    found = pairs(
        lambda a, b: (a.variant, a.seed) == (b.variant, b.seed) and a.per_class < b.per_class
    )
    assert found
    for small, large in found:
        assert reads_no_less_overfit(small, large), (small.key, large.key)


LADDER = ("baseline", "dropout25", "dropout")  # dropout 0 -> 0.25 -> 0.5


def test_stronger_regularization_never_reads_as_more_overfit():
    found = pairs(
        lambda a, b: (
            (a.per_class, a.seed) == (b.per_class, b.seed)
            and LADDER.index(a.variant) < LADDER.index(b.variant)
        )
    )
    assert found
    for weaker, stronger in found:
        assert reads_no_less_overfit(weaker, stronger), (weaker.key, stronger.key)


def every_replayed_evaluation() -> list[dict]:
    """The known-truth recordings and the sweep's groups, each a whole evaluation."""
    evaluations = [kt.replay(kt.read_recording(p)) for p in kt.recordings()]
    seen = set()
    for v in replayed().values():
        if id(v["_evaluation"]) not in seen:
            seen.add(id(v["_evaluation"]))
            evaluations.append(v["_evaluation"])
    return evaluations


def test_a_material_gap_is_never_underfitting_just_for_being_behind():
    """Underfitting means it cannot fit its training data: a variant whose own gap is
    material is called underfitting only when what it lacks on train is larger still, and
    only an underfitting variant is told to regularize less."""
    for evaluation in every_replayed_evaluation():
        for name, v in evaluation["variants"].items():
            if v["verdict"] == UNDERFITTING and v["gap"]["material"]:
                best_train = max(o["train"]["accuracy"] for o in evaluation["variants"].values())
                assert best_train - v["train"]["accuracy"] > v["gap"]["accuracy"], name
                assert any("overfit as well" in e for e in v["evidence"]), v["evidence"]
        for rec in evaluation["recommendations"]:
            if rec["action"].startswith("Regularize"):
                name = rec["action"].split("`")[1]
                assert evaluation["variants"][name]["verdict"] == UNDERFITTING, rec


def test_too_early_is_not_an_answer():
    """The 2-epoch cells: the headline says it is too early and to train longer; nothing is
    called underfit for converging slowly; no "get more data" from unsettled curves."""
    early = [c for c in RECORDED if c.family == "epochs2"]
    assert early
    for cell in early:
        evaluation = replayed()[cell.key]["_evaluation"]
        assert evaluation["answer"].startswith("Too early to tell"), evaluation["answer"]
        actions = [r["action"] for r in evaluation["recommendations"]]
        assert actions[0].startswith("Train longer"), actions
        assert not any(a.startswith(("Adopt", "Consider", "No mitigation")) for a in actions)
        assert not any("more training data" in a for a in actions)
        assert all(v["verdict"] != UNDERFITTING for v in evaluation["variants"].values())


def test_the_calibration_table_is_what_the_replays_say():
    """docs/calibration.md's table is regenerated whenever a rule or a cell changes."""
    module = load_benchmark("sweep_verdicts")
    doc = (REPO / "docs" / "calibration.md").read_text()
    written = doc.split(module.BEGIN, 1)[1].split(module.END, 1)[0].strip()
    assert written == module.table().strip(), "run: python benchmarks/sweep_verdicts.py --table"
