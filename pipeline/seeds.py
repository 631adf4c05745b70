"""Training seeds: how each seed is derived, and the aggregation across them.

Derivation (the one place every seed of a training run comes from):

- `training_seed`: seed i of `train.seeds` is train.seed + i (i = 0 is the
  variant's own run);
- `layer_seed`: a layer's initializer/dropout/augmentation seed, from the
  training seed and the layer's name (pipeline.models);
- `epoch_stream_seed`: the state every random stream (dropout, augmentation)
  is reset to at the start of an epoch, so a resumed run draws the same
  masks (pipeline.callbacks.EpochSeeder).

The two hashed formulas differ (byte order, reduction to 31 bits) for
historical reasons; they are kept exactly, since recorded results (README's
digits evidence, existing models) depend on their values.

Aggregation: pure, over one variant's runs across training seeds (`train.seeds`).
No TensorFlow, no files, no MLflow. Inputs are per-seed numbers that evaluate
measured on each seed's saved model (val accuracy, gap = train - val accuracy)
and each seed's verdict from `diagnosis.diagnose`; outputs are plain dicts that
evaluate writes into reports/evaluation.json under `variants.<v>.seeds`.

Definitions:

- mean and sample standard deviation (n - 1 in the denominator) across seeds;
- 95% interval of the mean: mean ± t(0.975, n - 1) * sd / sqrt(n) (Student t,
  since a handful of seeds gives a poor estimate of sd). With one seed there is
  no spread to measure, so sd and the interval are None, not zero;
- verdict agreement: how many seeds gave each verdict, and the majority (None
  when the top count is tied).

`seed_variance_of_difference` is the part of the variance of a difference
between two variants' mean val accuracies that comes from seed-to-seed spread
(sd_a² / n_a + sd_b² / n_b); it adds to the binomial noise of the validation
set that `diagnosis.compare_to_baseline` already accounts for.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

CONFIDENCE = 0.95


# ------------------------------------------------------------------ derivation


def training_seed(base: int, index: int) -> int:
    """The seed of training run `index` of a variant whose train.seed is `base`."""
    return int(base) + int(index)


def _sha256_uint32(*parts: object, byteorder: str) -> int:
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:4], byteorder)


def layer_seed(base: int, layer_name: str) -> int:
    """A layer's seed: depends on the base seed and the layer's name only."""
    return _sha256_uint32(int(base), layer_name, byteorder="big") % (2**31 - 1)


def epoch_stream_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of a model's `index`-th random stream at the start of (0-based) `epoch`."""
    return _sha256_uint32(int(seed), int(epoch), int(index), byteorder="little") & 0x7FFFFFFF


# ------------------------------------------------------------------ aggregation


def t_quantile(df: int, confidence: float = CONFIDENCE) -> float:
    """The two-sided Student t critical value for `df` degrees of freedom."""
    from scipy.stats import t

    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    return float(t.ppf(0.5 + confidence / 2, df))


def spread(values: Sequence[float]) -> dict[str, float | None]:
    """mean, sd (n - 1), the 95% interval's half-width and bounds of `values`.

    Raises:
        ValueError: no values, or a non-finite one.
    """
    values = [float(v) for v in values]
    if not values:
        raise ValueError("no values: at least one seed is needed")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"non-finite value among {values}")
    n = len(values)
    mean = math.fsum(values) / n
    if n == 1:
        return {"mean": mean, "sd": None, "ci95": None, "low": None, "high": None}
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile(n - 1) * sd / math.sqrt(n)
    return {"mean": mean, "sd": sd, "ci95": half, "low": mean - half, "high": mean + half}


def verdict_agreement(verdicts: Sequence[str]) -> dict[str, Any]:
    """Counts per verdict, the majority verdict and a sentence saying how many seeds agree.

    Raises:
        ValueError: no verdicts.
    """
    if not verdicts:
        raise ValueError("no verdicts: at least one seed is needed")
    counts = Counter(verdicts)
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    n = len(verdicts)
    top, top_count = ranked[0]
    tied = len(ranked) > 1 and ranked[1][1] == top_count
    if tied:
        parts = ", ".join(f"{verdict} in {count}" for verdict, count in ranked)
        return {
            "counts": dict(ranked),
            "majority": None,
            "agreement": f"no majority: {parts} of {n} seeds",
        }
    return {
        "counts": dict(ranked),
        "majority": top,
        "agreement": f"{top} in {top_count} of {n} seed{'s' if n > 1 else ''}",
    }


def summarize_seeds(
    val_accuracy: Sequence[float], gap: Sequence[float], verdicts: Sequence[str]
) -> dict[str, Any]:
    """One variant's aggregate over its seeds (lists in the same seed order).

    Returns:
        {"n_seeds", "val_accuracy": spread(), "gap": spread(), "counts",
        "majority", "agreement"}.

    Raises:
        ValueError: empty input or lists of different lengths.
    """
    lengths = {len(val_accuracy), len(gap), len(verdicts)}
    if len(lengths) != 1:
        raise ValueError(
            f"one value per seed expected: {len(val_accuracy)} val accuracies, "
            f"{len(gap)} gaps, {len(verdicts)} verdicts"
        )
    return {
        "n_seeds": len(verdicts),
        "val_accuracy": spread(val_accuracy),
        "gap": spread(gap),
        **verdict_agreement(verdicts),
    }


def seed_variance_of_difference(a: Mapping[str, Any], b: Mapping[str, Any]) -> float:
    """sd_a²/n_a + sd_b²/n_b for the val accuracy of two `summarize_seeds` results.

    A variant with one seed has no measured spread and contributes 0, so with
    `train.seeds: 1` the comparison's noise is the binomial term alone, as before.
    """
    total = 0.0
    for summary in (a, b):
        sd = summary["val_accuracy"]["sd"]
        if sd is not None:
            total += sd**2 / summary["n_seeds"]
    return total


def describe(summary: Mapping[str, Any]) -> str:
    """'gap 3.1 ± 0.8 points over 3 seeds (val 97.2 ± 0.4%); overfitting in 3 of 3 seeds'."""
    n = summary["n_seeds"]

    def mean_ci(spread: Mapping[str, Any]) -> str:
        text = f"{spread['mean'] * 100:.1f}"
        return text + (f" ± {spread['ci95'] * 100:.1f}" if spread["ci95"] is not None else "")

    return (
        f"gap {mean_ci(summary['gap'])} points over {n} seed{'s' if n > 1 else ''} "
        f"(val {mean_ci(summary['val_accuracy'])}%); {summary['agreement']}"
    )
