"""Matplotlib figures for the evaluation (Agg backend, no display, no TensorFlow).

Inputs: histories (DataFrames as in models/<variant>/history.csv), confusion
matrices and feature-map activations as numpy arrays. Outputs: PNG files,
written atomically by `save_png`; evaluate puts them in reports/figures/.

File names (the report looks for these): `curves_<variant>.png`,
`val_curves_all.png`, `gap_all.png`, `confusion_<variant>.png`,
`feature_maps_<variant>.png`.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from pipeline.io import write_bytes_atomic  # noqa: E402

DPI = 90
# Feature maps: at most this many channels per layer, so a 128-filter layer stays legible.
MAX_CHANNELS = 8


def curves_name(variant: str) -> str:
    return f"curves_{variant}.png"


def confusion_name(variant: str) -> str:
    return f"confusion_{variant}.png"


def feature_maps_name(variant: str) -> str:
    return f"feature_maps_{variant}.png"


VAL_CURVES = "val_curves_all.png"
GAP_CURVES = "gap_all.png"


def save_png(fig: Figure, path: Path) -> Path:
    """Render `fig` to PNG at `path` atomically and free it."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    write_bytes_atomic(path, buffer.getvalue())
    return path


def _mark_epochs(ax, best_epoch: int | None, onset_epoch: int | None) -> None:
    if best_epoch is not None:
        ax.axvline(
            best_epoch,
            color="tab:green",
            linestyle="--",
            linewidth=1,
            label=f"best epoch {best_epoch}",
        )
    if onset_epoch is not None:
        ax.axvline(
            onset_epoch, color="tab:red", linestyle=":", linewidth=1.5, label=f"onset {onset_epoch}"
        )


def learning_curves(
    history: pd.DataFrame,
    variant: str,
    best_epoch: int | None = None,
    onset_epoch: int | None = None,
    verdict: str | None = None,
) -> Figure:
    """Train and val loss (left) and accuracy (right) over epochs, best and onset marked."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.4), sharex=True)
    epochs = history["epoch"]
    for ax, metric, label in ((ax_loss, "loss", "loss"), (ax_acc, "accuracy", "accuracy")):
        ax.plot(epochs, history[metric], marker="o", markersize=3, label=f"train {label}")
        ax.plot(epochs, history[f"val_{metric}"], marker="o", markersize=3, label=f"val {label}")
        _mark_epochs(ax, best_epoch, onset_epoch)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    title = f"{variant}: train vs validation"
    if verdict:
        title += f" ({verdict})"
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def all_val_curves(histories: Mapping[str, pd.DataFrame]) -> Figure:
    """Every variant's val loss and val accuracy on shared axes."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.4), sharex=True)
    for name, history in histories.items():
        ax_loss.plot(history["epoch"], history["val_loss"], label=name)
        ax_acc.plot(history["epoch"], history["val_accuracy"], label=name)
    for ax, label in ((ax_loss, "val loss"), (ax_acc, "val accuracy")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    ax_acc.legend(fontsize=7)
    fig.suptitle("Validation curves, all variants")
    fig.tight_layout()
    return fig


def gap_curves(histories: Mapping[str, pd.DataFrame]) -> Figure:
    """Train minus val accuracy per epoch for every variant."""
    fig, ax = plt.subplots(figsize=(6, 3.4))
    for name, history in histories.items():
        ax.plot(history["epoch"], history["accuracy"] - history["val_accuracy"], label=name)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xlabel("epoch")
    ax.set_ylabel("train - val accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("Generalization gap per epoch")
    fig.tight_layout()
    return fig


def confusion_figure(matrix: np.ndarray, classes: Sequence[str], title: str) -> Figure:
    """A confusion matrix (rows: true class, columns: predicted) with counts."""
    matrix = np.asarray(matrix)
    n = len(classes)
    size = min(2.5 + 0.45 * n, 9)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(n), labels=list(classes), rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(n), labels=list(classes), fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 20:
        threshold = matrix.max() / 2 if matrix.size else 0
        for i in range(n):
            for j in range(n):
                ax.text(
                    j,
                    i,
                    str(int(matrix[i, j])),
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="white" if matrix[i, j] > threshold else "black",
                )
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def channel_mosaic(maps: np.ndarray, channels: int = MAX_CHANNELS) -> np.ndarray:
    """(h, w, c) activations -> one (h, k*(w+1)-1) strip of the first k channels.

    Each channel is scaled to [0, 1] on its own so weak channels stay visible;
    NaN separators show as gaps.
    """
    h, w = maps.shape[:2]
    k = min(channels, maps.shape[-1])
    strip = np.full((h, k * (w + 1) - 1), np.nan)
    for ch in range(k):
        m = maps[..., ch].astype(float)
        span = m.max() - m.min()
        strip[:, ch * (w + 1) : ch * (w + 1) + w] = (m - m.min()) / span if span > 0 else 0.0
    return strip


def feature_maps_figure(
    images: np.ndarray, activations: Mapping[str, np.ndarray], variant: str
) -> Figure:
    """Input images and the first MAX_CHANNELS channels of each conv layer's output.

    One row per (image, layer): the input on the left, the layer's channels as
    a strip on the right (a few axes instead of one per channel keeps it fast).

    Args:
        images: (n, h, w, c) uint8 or float inputs.
        activations: layer name -> (n, h', w', channels) outputs, in layer order.
    """
    n = len(images)
    layers = list(activations) or [None]
    rows = n * len(layers)
    fig, axes = plt.subplots(
        rows,
        2,
        figsize=(8, 0.9 * rows + 0.4),
        squeeze=False,
        gridspec_kw={"width_ratios": [1, MAX_CHANNELS]},
    )
    for ax in axes.ravel():
        ax.axis("off")
    for i in range(n):
        image = np.asarray(images[i])
        for k, layer in enumerate(layers):
            row = i * len(layers) + k
            if k == 0:
                shown = image[..., 0] if image.shape[-1] == 1 else image.astype(np.uint8)
                axes[row, 0].imshow(shown, cmap="gray")
                axes[row, 0].set_title(f"image {i + 1}", fontsize=7)
            if layer is None:
                continue
            axes[row, 1].imshow(
                channel_mosaic(activations[layer][i]),
                cmap="viridis",
                vmin=0,
                vmax=1,
                interpolation="nearest",
            )
            axes[row, 1].set_title(layer, fontsize=7, loc="left")
    fig.suptitle(f"{variant}: feature maps (first {MAX_CHANNELS} channels)", fontsize=9)
    fig.tight_layout()
    return fig
