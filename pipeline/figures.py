"""What the evaluate stage draws: feature-map probes and activations, and reports/figures/.

Inputs: the evaluation payload (pipeline.assessment.build_evaluation), every
variant's history (models/<variant>/history.csv), what evaluate measured on
its saved model (pipeline.scoring.VariantEvaluation, holding the
`feature_maps` on the probe) and the probe images.
Outputs: the PNGs of reports/figures/ (learning curves, all-variant curves,
gaps, confusion matrices, feature maps, the best variant's per-class gaps,
the learning curve; file names in
pipeline.plots), replaced as a whole so no stale variant's figure survives.

Feature-map probes are one validation image per class (the first
`feature_map_images` classes, cycling when there are more images than
classes), each picked with a fixed seed, so the figure shows what the filters
respond to across classes rather than N images of the sorted split's first class.
The layers drawn are the builder's conv layers (pipeline.models names them).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline import plots
from pipeline.prepared import PreparedDataset, staging_dir
from pipeline.scoring import VariantEvaluation, dense_confusion

log = logging.getLogger(__name__)

# Like the train-split sample (scoring.TRAIN_SAMPLE_SEED), the probe images are fixed.
PROBE_SEED = 0


@dataclass(frozen=True)
class Probe:
    """The validation images whose feature maps are drawn, and their class names."""

    images: np.ndarray
    labels: list[str]


def probe_indices(labels: np.ndarray, n: int, seed: int = PROBE_SEED) -> np.ndarray:
    """`n` row indices, one per class in class order, cycling over classes when `n` exceeds them.

    Each class's image is drawn at random with a fixed seed, so the probe is the
    same in every run yet not always the first (often atypical) image of a class.
    """
    labels = np.asarray(labels)
    if n < 1 or len(labels) == 0:
        return np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng(seed)
    pools = {c: rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)}
    classes = sorted(pools)
    picked: list[int] = []
    round_ = 0
    while len(picked) < min(n, len(labels)):
        for c in classes:
            if round_ < len(pools[c]) and len(picked) < n:
                picked.append(int(pools[c][round_]))
        round_ += 1
    return np.asarray(picked, dtype=np.int64)


def select_probe(data: PreparedDataset, n: int) -> Probe:
    """`n` validation images (probe_indices) and their class names."""
    rows = probe_indices(data.y("val"), n)
    labels = [data.classes[int(c)] for c in data.y("val")[rows]]
    return Probe(np.asarray(data.x("val")[rows]), labels)


def feature_maps(model: Any, images: np.ndarray, n_layers: int) -> dict[str, np.ndarray]:
    """Outputs of the model's first `n_layers` conv layers on `images`, by layer name."""
    # Imported here: pipeline.models imports Keras, which the figure writing does not need.
    from pipeline.models import CONV_PREFIX, conv_layer_names

    names = conv_layer_names(model)[:n_layers]
    if not names:
        # A user's functional model behind augmentation layers is nested in the one
        # trained (pipeline.own_models); augmentation is off in inference anyway.
        inner = [layer for layer in model.layers if hasattr(layer, "layers")]
        if inner and conv_layer_names(inner[0]):
            return feature_maps(inner[0], images, n_layers)
        log.warning("model has no Conv2D layers (%s<i>); no feature maps", CONV_PREFIX)
        return {}
    x = np.asarray(images, dtype=np.float32)
    try:
        import keras

        inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
        probe = keras.Model(inputs, [model.get_layer(n).output for n in names])
        outputs = probe(x, training=False)
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        return {n: np.asarray(o) for n, o in zip(names, outputs, strict=True)}
    except (AttributeError, ValueError, TypeError):
        return _walk_layers(model, x, names)


def _walk_layers(model: Any, x: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
    """feature_maps of a Sequential model loaded without a defined input: call layer by layer."""
    found: dict[str, np.ndarray] = {}
    out = x
    for layer in model.layers:
        out = layer(out, training=False)
        if layer.name in names:
            found[layer.name] = np.asarray(out)
        if len(found) == len(names):
            break
    return found


def write_figures(
    figures_dir: Path,
    evaluation: Mapping[str, Any],
    histories: Mapping[str, pd.DataFrame],
    evaluations: Mapping[str, VariantEvaluation],
    probe_images: np.ndarray,
    probe_labels: Sequence[str] | None = None,
) -> None:
    """All PNGs into a fresh figures dir, swapped in whole (no stale variants).

    A variant's feature maps (its evaluation's, measured on `probe_images`) are
    drawn when it has any; the per-class gap chart only for the best variant
    (the one the report recommends), when its evaluation has per-class rows.
    """
    marks = {
        name: (v["best_epoch"], v["onset_epoch"]) for name, v in evaluation["variants"].items()
    }
    with staging_dir(figures_dir) as tmp:
        for name, history in histories.items():
            write_variant_figures(
                tmp, name, evaluation["variants"][name], evaluation["classes"], history
            )
            maps = evaluations[name].feature_maps
            if maps:
                plots.save_png(
                    plots.feature_maps_figure(probe_images, maps, name, probe_labels),
                    tmp / plots.feature_maps_name(name),
                )
        best = evaluation.get("best_variant")
        per_class = evaluation["variants"].get(best, {}).get("per_class")
        if per_class:
            plots.save_png(
                plots.class_gap_figure(per_class, best), tmp / plots.class_gaps_name(best)
            )
        plots.save_png(plots.all_val_curves(histories, marks), tmp / plots.VAL_CURVES)
        plots.save_png(plots.gap_curves(histories), tmp / plots.GAP_CURVES)
        if evaluation.get("learning_curve"):
            plots.save_png(
                plots.learning_curve_figure(evaluation["learning_curve"]),
                tmp / plots.LEARNING_CURVE,
            )


def write_variant_figures(
    out_dir: Path,
    name: str,
    variant: Mapping[str, Any],
    classes: Sequence[str],
    history: pd.DataFrame,
) -> None:
    """One variant's learning curves and test confusion matrix, from its evaluation entry."""
    plots.save_png(
        plots.learning_curves(
            history, name, variant["best_epoch"], variant["onset_epoch"], variant["verdict"]
        ),
        out_dir / plots.curves_name(name),
    )
    plots.save_png(
        plots.confusion_figure(
            np.asarray(dense_confusion(variant["confusion"], "test")),
            classes,
            f"{name}: test confusion (acc {variant['test']['accuracy']:.1%})",
        ),
        out_dir / plots.confusion_name(name),
    )
