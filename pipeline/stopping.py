"""Stop training once its overfitting is clear: the evidence is in, more epochs add none.

Patience (Keras EarlyStopping) waits a fixed number of epochs after the best
one, whatever the split sizes. On thousands of validation images a divergence
is established beyond noise in a few epochs, and every epoch after that costs
time without changing the verdict. `ClearOverfitStop` reads the run as
evaluate will (pipeline.trajectory.run_trajectory, with params.yaml `evaluate`
thresholds) and stops training once the run's overfitting score has been 1 or
more (clear overfitting: the val loss's rise after its minimum, or the gap's
widening, each beyond the noise of the split sizes) at each of the last
CONFIRM_EPOCHS epochs. The best epoch's weights are kept, as with patience.

A rule that looks at every epoch gets many chances to be fooled by noise, and
a stop cannot be undone: the verdict would then read the very curve that
stopped it. So the stop asks more than the verdict does: the reading must hold
for CONFIRM_EPOCHS epochs in a row, and a val-loss rise must stand
NOISE_FACTOR times `min_noise_z` above the epoch-to-epoch noise. On 100
simulated flat val curves with 0.1-nat noise it stopped 2 (the single reading
at 4 noise units stopped 55); on the recorded real runs it never stops before
the best epoch (tests/test_stopping.py). A plateau with no divergence still
ends by patience: a noise-aware plateau rule stopped slowly improving
regularized runs before their best epoch, by up to 8 standard errors of
val accuracy (docs/performance.md).

Pure arithmetic on the history rows, no Keras: the decision for epoch e depends
only on epochs 1..e, so a resumed run replays it exactly, and recorded
histories replay it in tests.

Inputs: history rows (dicts or a DataFrame with epoch, loss, accuracy,
val_loss, val_accuracy), the split sizes, an EvaluateConfig. Outputs: none.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pandas as pd

from pipeline.config import EvaluateConfig
from pipeline.trajectory import LOSS_RISE, RunFacts, run_trajectory

CLEAR = 1.0  # the overfitting score of clear overfitting
CONFIRM_EPOCHS = 3  # the reading is clear at each of this many last epochs
NOISE_FACTOR = 2.0  # a val-loss rise stands this many times min_noise_z above its noise


@dataclass(frozen=True)
class ClearOverfitStop:
    """The rule for one fit: evaluate's thresholds and the fit's split sizes."""

    evaluate: EvaluateConfig
    n_train: int
    n_val: int

    @property
    def min_epochs(self) -> int:
        """No reading before one full smoothing window after the first epoch."""
        return self.evaluate.smoothing_window + 1

    def clear(self, rows: Sequence[Mapping[str, float]] | pd.DataFrame) -> bool:
        """Whether the run over these epochs reads as clear overfitting, by the stop's
        stricter noise margin for a val-loss rise."""
        frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
        if len(frame) < self.min_epochs:
            return False
        facts = RunFacts(best_epoch=None, stopped_early=True, n_train=self.n_train)
        t = run_trajectory(frame.reset_index(drop=True), facts, self.n_val, self.evaluate)
        margin = NOISE_FACTOR * self.evaluate.min_noise_z
        return t.score >= CLEAR and (t.reading != LOSS_RISE or t.noise_z >= margin)

    def fires(self, rows: Sequence[Mapping[str, float]] | pd.DataFrame) -> bool:
        """Whether training stops after the last of these epochs."""
        frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
        n = len(frame)
        return n >= self.min_epochs + CONFIRM_EPOCHS - 1 and all(
            self.clear(frame.iloc[: n - k]) for k in range(CONFIRM_EPOCHS)
        )

    def first_epoch(self, history: pd.DataFrame) -> int | None:
        """The 1-based epoch this rule stops a recorded history at, None if it never does."""
        for end in range(self.min_epochs, len(history) + 1):
            if self.fires(history.iloc[:end]):
                return int(history["epoch"].iloc[end - 1])
        return None
