"""The verdict sweep: a grid of real training runs on Fashion-MNIST, and their truth.

Each cell is one network trained once (one variant, one training-set size, one
seed), recorded like a known-truth run (tests/known_truth.py) under
tests/data/sweep/ by `benchmarks/sweep_verdicts.py`, and replayed by the suite.
Cells of the same size and seed share their images and split, so the
variants of one size and seed can be replayed together as one evaluation.

The truth of a cell comes from outcomes, never from the rule under test
(docs/calibration.md, "Truth"): from how the cell was built (shuffled labels,
an epoch budget too short to converge) or from the saved models' test scores
across cells (the same network with 4x the data, or with dropout).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Collection, Mapping
from pathlib import Path

from . import known_truth as kt

SIZES = (50, 100, 200, 400, 800, 1_600)  # training images per class
SEEDS = (1, 2, 3)
VAL, TEST = 2_000, 2_000  # the same for every size: the noise of a score stays put
N_CLASSES = 10
# The family's networks: the plain CNN params.yaml ships and its dropout variant.
NETWORKS = {"baseline": {}, "dropout": kt.DROPOUT}
# The middle rung of the regularization ladder (dropout 0 -> 0.25 -> 0.5: baseline,
# this, dropout), recorded at EXTRAS_SIZE for the "stronger regularization never reads
# as more overfit" invariant.
DROPOUT25 = {"model": {"dropout": 0.25, "conv_dropout": 0.125}}
EXTRAS_SIZE = 200  # the construction cases, at the size the issue found the cliff
Z = 2.0  # noise: this many binomial standard errors (about 95 %)
MATERIAL = 0.02  # a test-accuracy shortfall counts from 2 points, beyond its noise
FAR_BELOW = 0.10  # underfit: train accuracy 10 points under the family's best


@dataclasses.dataclass(frozen=True)
class Cell:
    """One recorded run of the sweep."""

    family: str  # plain | shuffled | flipped30 | tiny | epochs2 | no_es40
    variant: str
    per_class: int
    seed: int
    model: Mapping = dataclasses.field(default_factory=dict)
    train: Mapping = dataclasses.field(default_factory=dict)
    shuffle_labels: bool = False
    flip_labels: float = 0.0

    @property
    def name(self) -> str:
        return f"{self.family}-{self.variant}-n{self.per_class}"

    @property
    def key(self) -> str:
        """The recording's folder name: name and seed."""
        return f"{self.name}-seed{self.seed}"

    def case(self) -> kt.Case:
        n_train = self.per_class * N_CLASSES
        total = n_train + VAL + TEST
        return kt.Case(
            self.name,
            {self.variant: {"model": dict(self.model)} if self.model else {}},
            seeds=(self.seed,),
            train_size=n_train / total,
            val_size=VAL / total,
            shuffle_labels=self.shuffle_labels,
            flip_labels=self.flip_labels,
            train=dict(self.train),
            fashion_images=total,
            truth=f"{self.family}: see docs/calibration.md",
            root=kt.SWEEP,
        )

    @property
    def path(self) -> Path:
        return self.case().recording(self.seed)


def grid() -> list[Cell]:
    """Every cell, cheapest first (so a session's budget fills the small sizes first)."""
    cells = [
        Cell("plain", variant, n, seed, model=cfg.get("model", {}))
        for n in SIZES
        for seed in SEEDS
        for variant, cfg in NETWORKS.items()
    ]
    n = EXTRAS_SIZE
    for seed in SEEDS:
        cells += [
            Cell("plain", "dropout25", n, seed, model=DROPOUT25["model"]),
            Cell("shuffled", "baseline", n, seed, shuffle_labels=True),
            Cell("flipped30", "baseline", n, seed, flip_labels=0.3),
            Cell("tiny", "tiny", n, seed, model=kt.TINY["model"]),
            Cell("epochs2", "baseline", n, seed, train={"epochs": 2}),
            Cell(
                "no_es40",
                "baseline",
                n,
                seed,
                train={"epochs": 40, "early_stopping": {"enabled": False}},
            ),
        ]
    return sorted(cells, key=lambda c: (c.per_class, c.family != "plain", c.seed))


# --------------------------------------------------------------------------- truth


@dataclasses.dataclass(frozen=True)
class Outcome:
    """A recorded cell's saved-model scores: what the truth is read from."""

    train: float
    n_train: int
    test: float
    n_test: int


@dataclasses.dataclass(frozen=True)
class Truth:
    label: str  # overfitting | underfitting | good_fit | too_early | unclear
    reason: str


def read_outcome(path: Path, variant: str) -> Outcome:
    scores = json.loads((path / variant / "record.json").read_text())["scores"]
    return Outcome(
        scores["train"]["accuracy"],
        scores["train"]["n"],
        scores["test"]["accuracy"],
        scores["test"]["n"],
    )


def noise(p: float, n: int, q: float, m: int) -> float:
    """Z standard errors of a difference of two accuracies measured on n and m images."""
    return Z * math.hypot(math.sqrt(p * (1 - p) / n), math.sqrt(q * (1 - q) / m))


def truth(cell: Cell, outcomes: Mapping[str, Outcome]) -> Truth:
    """The cell's truth from its construction or from the outcomes of other cells."""
    own = outcomes[cell.key]
    gap = own.train - own.test
    gap_noise = noise(own.train, own.n_train, own.test, own.n_test)
    if cell.family == "shuffled":
        return Truth("overfitting", "labels carry no signal: anything fitted is memorized")
    if cell.family == "epochs2":
        return Truth("too_early", "2 epochs: the curves have not settled")
    if cell.family == "flipped30":
        fits_noise = own.train - 0.7 > noise(own.train, own.n_train, 0.7, 10**9)
        if fits_noise and gap > gap_noise:
            return Truth("overfitting", f"train {own.train:.3f} > 0.70: it fits flipped labels")
        return Truth("unclear", f"train {own.train:.3f} does not exceed the 70 % clean share")
    seed = f"-seed{cell.seed}"
    best_train = max(
        (o.train for k, o in outcomes.items() if k.startswith("plain-") and k.endswith(seed)),
        default=None,
    )
    if best_train is not None and best_train - own.train > max(FAR_BELOW, 2 * gap):
        return Truth(
            "underfitting",
            f"train {own.train:.3f}, the family reaches {best_train:.3f} (gap {gap:+.3f})",
        )
    refs = reference_cells(cell)
    ref = max((outcomes[r.key].test for r in refs if r.key in outcomes), default=None)
    if ref is None:
        return Truth("unclear", "no 4x-data or dropout cell recorded yet")
    shortfall = ref - own.test
    short_noise = noise(ref, own.n_test, own.test, own.n_test)
    words = f"gap {gap:+.3f} (±{gap_noise:.3f}); test {own.test:.3f} vs {ref:.3f}"
    if gap > gap_noise and shortfall > max(short_noise, MATERIAL):
        return Truth("overfitting", words)
    if gap <= gap_noise and shortfall <= short_noise:
        return Truth("good_fit", words)
    return Truth("unclear", words)


def reference_cells(cell: Cell) -> list[Cell]:
    """What the cell is measured against: the same network with 4x the data, and (for a
    network without dropout) dropout on the same data."""
    network = "baseline" if cell.family == "no_es40" else cell.variant
    refs = []
    if cell.per_class * 4 in SIZES and network in NETWORKS:
        model = NETWORKS[network].get("model", {})
        refs.append(Cell("plain", network, cell.per_class * 4, cell.seed, model=model))
    if network in ("baseline", "dropout25"):
        refs.append(Cell("plain", "dropout", cell.per_class, cell.seed, model=kt.DROPOUT["model"]))
    return refs


def recorded_outcomes(cells: list[Cell]) -> dict[str, Outcome]:
    """cell key -> Outcome of every recorded cell."""
    return {
        c.key: read_outcome(c.path, c.variant) for c in cells if (c.path / "case.json").is_file()
    }


# --------------------------------------------------------------------------- replay

# The families replayed together: the plain networks and the tiny model of one size and
# seed share their images, split and training params, so they are one evaluation of several
# variants, as a user's would be (the tiny model is only "behind the best" next to them).
TOGETHER = ("plain", "tiny")


def group(cell: Cell, recorded: Collection[str]) -> tuple[Cell, ...]:
    """The recorded cells replayed as one evaluation with `cell` (itself included)."""
    if cell.family not in TOGETHER:
        return (cell,)
    return tuple(
        c
        for c in grid()
        if c.family in TOGETHER
        and (c.per_class, c.seed) == (cell.per_class, cell.seed)
        and c.key in recorded
    )


def replay_all(cells: list[Cell]) -> dict[str, dict]:
    """cell key -> its variant's block of evaluation.json, every recorded cell replayed with
    its group (one replay per group)."""
    recorded = {c.key for c in cells if (c.path / "case.json").is_file()}
    verdicts: dict[str, dict] = {}
    for cell in cells:
        if cell.key not in recorded or cell.key in verdicts:
            continue
        members = group(cell, recorded)
        evaluation = kt.replay(kt.join_recordings([kt.read_recording(c.path) for c in members]))
        for member in members:
            verdicts[member.key] = {
                **evaluation["variants"][member.variant],
                "_evaluation": evaluation,
            }
    return verdicts
