"""What the train stage feeds model.fit: tf.data pipelines, subsets, class weights.

- `train_dataset` / `eval_dataset`: batches gathered from the prepared
  memory-mapped uint8 arrays (only a batch's rows are read), cast to float32.
  The training order of each epoch is `epoch_order(n, seed, epoch)`, a pure
  function of (seed, epoch), so a resumed run sees exactly the batches an
  uninterrupted one would.
- `train_subset` / `fraction_subset`: the learning curve's stratified, nested
  subset of the train split (per class a fixed shuffle seeded by data.seed,
  cut at the fraction, so a smaller fraction's subset lies inside a larger
  one's); val and test stay whole.
- `resolve_class_weights`: `train.class_weight` off | on | auto, where auto
  follows validate's class_balance check (catalog.ValidationFlags).

Inputs: numpy arrays, a PreparedDataset, the validation flags. Outputs:
tf.data datasets, index arrays, Keras class_weight dicts; nothing is written.
TensorFlow is imported only when a dataset is built.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass, field

import numpy as np

from pipeline.catalog.validation import ValidationFlags
from pipeline.prepared import PreparedDataset

log = logging.getLogger(__name__)

# Separates the subset's random stream from every other use of data.seed.
SUBSET_STREAM = 7


# --------------------------------------------------------------------- datasets


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The training-set order of one (0-based) epoch: a pure function of (seed, epoch).

    A resumed run therefore sees exactly the batches an uninterrupted run would.
    """
    return np.random.default_rng([int(seed), int(epoch)]).permutation(n)


def _gather(x: np.ndarray):
    def gather(indices: np.ndarray) -> np.ndarray:
        # Only this batch's rows are read from the memory map.
        return np.ascontiguousarray(x[indices])

    return gather


def _batch_pipeline(indices, x: np.ndarray, y: np.ndarray, image_shape):
    """index batches -> (float32 images, int64 labels), gathered from the memmap."""
    import tensorflow as tf

    labels = tf.constant(np.asarray(y, dtype=np.int64))
    gather = _gather(x)

    def load(batch):
        images = tf.numpy_function(gather, [batch], tf.uint8, stateful=False)
        images.set_shape((None, *image_shape))
        return tf.cast(images, tf.float32), tf.gather(labels, batch)

    return indices.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def train_dataset(
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    seed: int,
    first_epoch: int,
    epochs: int,
):
    """Batches for epochs first_epoch..epochs-1 in one stream (use steps_per_epoch).

    Each epoch is shuffled by `epoch_order(seed, epoch)` and batched on its own,
    so no batch straddles two epochs and a resumed run continues the sequence.
    """
    import tensorflow as tf

    n = len(y)

    def order(epoch: np.int64) -> np.ndarray:
        return epoch_order(n, seed, int(epoch)).astype(np.int64)

    def one_epoch(epoch):
        perm = tf.numpy_function(order, [epoch], tf.int64, stateful=False)
        perm.set_shape((n,))
        return tf.data.Dataset.from_tensor_slices(perm).batch(batch_size)

    epochs_ds = tf.data.Dataset.range(first_epoch, epochs).flat_map(one_epoch)
    return _batch_pipeline(epochs_ds, x, y, x.shape[1:]).prefetch(tf.data.AUTOTUNE)


def eval_dataset(x: np.ndarray, y: np.ndarray, batch_size: int):
    """The split in file order, batched, gathered from the memmap."""
    import tensorflow as tf

    indices = tf.data.Dataset.from_tensor_slices(np.arange(len(y), dtype=np.int64))
    return _batch_pipeline(indices.batch(batch_size), x, y, x.shape[1:]).prefetch(tf.data.AUTOTUNE)


# ---------------------------------------------------------------------- subsets


def train_subset(y: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted train-split rows kept at `fraction`: stratified and nested.

    Each class's rows are shuffled once by a generator seeded with (seed,
    class), and the first round(fraction * count) of them (at least one) are
    kept, so every class keeps its share and a smaller fraction's subset is a
    prefix of, hence inside, a larger one's.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    y = np.asarray(y, dtype=np.int64)
    keep = []
    for label in np.unique(y):
        rows = np.flatnonzero(y == label)
        order = np.random.default_rng([int(seed), SUBSET_STREAM, int(label)]).permutation(rows)
        keep.append(order[: max(1, math.floor(fraction * len(rows) + 0.5))])
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=np.int64)


@dataclass(frozen=True)
class TrainSubset(PreparedDataset):
    """A prepared dataset whose train split is cut to `rows`; val and test stay whole.

    The subset's pixels are read into memory (a fraction of the train split).
    """

    rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def x(self, split: str) -> np.ndarray:
        x = super().x(split)
        return np.asarray(x[self.rows]) if split == "train" else x

    def y(self, split: str) -> np.ndarray:
        y = super().y(split)
        return y[self.rows] if split == "train" else y

    @property
    def subset_hash(self) -> str:
        """Which rows were kept: part of the resume fingerprint and of result.json."""
        return hashlib.sha256(self.rows.tobytes()).hexdigest()[:12]


def fraction_subset(full: PreparedDataset, fraction: float, seed: int) -> TrainSubset:
    """`full` with its train split cut to `train_subset(..., fraction, seed)`."""
    rows = train_subset(full.y("train"), fraction, seed)
    return TrainSubset(root=full.root, manifest=full.manifest, meta=full.meta, rows=rows)


# ---------------------------------------------------------------- class weights


def balanced_class_weights(y: np.ndarray, n_classes: int) -> dict[int, float]:
    """n / (k * count_c) per class (scikit-learn's "balanced"); absent classes get 1."""
    counts = np.bincount(np.asarray(y, dtype=np.int64), minlength=n_classes)
    present = counts > 0
    k = int(present.sum())
    total = float(counts.sum())
    return {c: (total / (k * float(counts[c])) if present[c] else 1.0) for c in range(n_classes)}


def resolve_class_weights(
    mode: str, y: np.ndarray, n_classes: int, flags: ValidationFlags | None
) -> dict[int, float] | None:
    """train.class_weight off | on | auto -> Keras class_weight (or None).

    `auto` follows validate's class_balance check (`flags`; None: validate has not run).
    """
    if mode == "off":
        return None
    if mode == "auto":
        if flags is None:
            log.info("no validation flags (validate has not run): class weights off (auto)")
            return None
        if not flags.class_balance_failed:
            log.info("class_balance check passed: class weights off (class_weight: auto)")
            return None
        log.info("class_balance check failed: balanced class weights on (class_weight: auto)")
    return balanced_class_weights(y, n_classes)
