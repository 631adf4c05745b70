"""Matplotlib figures for the evaluation (Agg backend, no display, no TensorFlow).

Inputs: histories (DataFrames as in models/<variant>/history.csv), confusion
matrices and feature-map activations as numpy arrays. Outputs: PNG files,
written atomically by `save_png`; evaluate puts them in reports/figures/.

File names (the report looks for these): `curves_<variant>.png`,
`val_curves_all.png`, `gap_all.png`, `confusion_<variant>.png`,
`feature_maps_<variant>.png`, `class_gaps_<variant>.png` (the best variant's
per-class train - val gap), `learning_curve.png`.

Class names are drawn only when the figure font has every glyph (matplotlib's
bundled DejaVu Sans lacks CJK, for one): otherwise a class is shown by its index,
and the report's per-class table maps index to name (`drawable`).

Loss axes are logarithmic: cross-entropy falls from about 2 to below 0.05, and
on a linear axis the late-epoch rise of the val loss that decides the verdict
is a flat line at the bottom.

A reader who cannot tell colours apart can still tell the series apart: every
figure with several lines gives each its own (line style, marker) pair
(`series_styles`) and labels it at its last point, and colours come from
matplotlib's colour-blind-safe `tableau-colorblind10` style. The per-class gap
chart marks memorized classes by hatching and a word, not by colour alone.
"""

from __future__ import annotations

import functools
import io
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

# Files only, no display. Unless pyplot is already in use: in a notebook calling the
# public API (pipeline.diagnose, the Keras callback), switching its backend would
# break the user's own plots; figures here are closed as soon as they are saved.
if "matplotlib.pyplot" not in sys.modules:
    matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.font_manager import FontProperties, findfont  # noqa: E402
from matplotlib.ft2font import FT2Font  # noqa: E402

from pipeline.io import write_bytes_atomic  # noqa: E402

DPI = 90
PNG_COLOURS = 256  # palette size of the saved PNGs (png_bytes)
# Feature maps: at most this many channels per layer, so a 128-filter layer stays legible.
MAX_CHANNELS = 8

# Tableau's colour-blind-safe ten colours, as matplotlib ships them (a style, not our list).
PALETTE: tuple[str, ...] = tuple(
    matplotlib.style.library["tableau-colorblind10"]["axes.prop_cycle"].by_key()["color"]
)
LINESTYLES = ("-", "--", "-.", ":")
# 4 line styles x 9 markers, coprime: the first 36 series all get distinct pairs.
# "o" and "X" are left out: all_val_curves marks the best epoch and the onset with them.
MARKERS = ("s", "^", "D", "v", "P", "<", ">", "*", "h")
MARKS_PER_LINE = 10  # about this many markers per line, so long histories stay legible
HATCH = "///"  # what marks a memorized class's bar, besides the word


def series_styles(n: int) -> list[dict[str, str]]:
    """Plot keyword arguments (color, linestyle, marker) for `n` series on one axes.

    No two of the first 36 share a (linestyle, marker) pair, so series stay
    apart in greyscale and for colour-blind readers; colours repeat after 10.
    """
    return [
        {
            "color": PALETTE[i % len(PALETTE)],
            "linestyle": LINESTYLES[i % len(LINESTYLES)],
            "marker": MARKERS[i % len(MARKERS)],
        }
        for i in range(n)
    ]


def _plot_series(ax, x, y, label: str, style: Mapping[str, str]) -> None:
    """One styled line, markers spread along it, labelled directly at its last point."""
    x, y = np.asarray(x), np.asarray(y)
    ax.plot(x, y, label=label, markersize=4, markevery=max(1, len(x) // MARKS_PER_LINE), **style)
    if len(x):
        ax.annotate(
            label,
            (x[-1], y[-1]),
            xytext=(3, 0),
            textcoords="offset points",
            fontsize=END_LABEL_SIZE,
            va="center",
            color=style["color"],
            gid=END_LABEL,
        )


END_LABEL = "end-label"  # the gid of a line's direct label (_plot_series)
END_LABEL_SIZE = 7
END_LABEL_GAP = END_LABEL_SIZE * 1.2  # points between the baselines of stacked labels


def spread_positions(wanted: Sequence[float], gap: float) -> np.ndarray:
    """Positions as close to `wanted` as they can be while at least `gap` apart.

    Keeps the order of `wanted` and minimises the squared shifts: labels that
    would overlap form a group, stacked `gap` apart and centred on where its
    members want to be, and a group that then overlaps its neighbour merges with
    it (the pool-adjacent-violators algorithm of isotonic regression).
    """
    order = np.argsort(wanted, kind="stable")
    groups: list[list[float]] = []  # each: the wanted positions of its members, in order

    def start(group: list[float]) -> float:
        return float(np.mean([w - i * gap for i, w in enumerate(group)]))

    for w in np.asarray(wanted, dtype=float)[order]:
        groups.append([float(w)])
        while len(groups) > 1 and start(groups[-2]) + len(groups[-2]) * gap > start(groups[-1]):
            last = groups.pop()
            groups[-1].extend(last)
    placed = [start(g) + i * gap for g in groups for i in range(len(g))]
    result = np.empty(len(placed))
    result[order] = placed
    return result


def side_by_side(xs: Sequence[float], widths: Sequence[float]) -> list[list[int]]:
    """Groups of labels (indices) that share horizontal room: label i spans
    [xs[i], xs[i] + widths[i]], and a group is a run of overlapping spans."""
    groups: list[list[int]] = []
    right = -np.inf
    for i in sorted(range(len(xs)), key=lambda i: xs[i]):
        if groups and xs[i] < right:
            groups[-1].append(i)
        else:
            groups.append([i])
            right = -np.inf
        right = max(right, xs[i] + widths[i])
    return groups


def _spread_end_labels(fig: Figure) -> None:
    """Move each axes' line-end labels apart vertically where they would overlap, so
    the labels of nearly identical curves (seven variants at 0.98 val accuracy) stay
    legible; a label with room of its own stays at its line's end."""
    to_points = 72 / fig.dpi
    for ax in fig.axes:
        labels = [t for t in ax.texts if t.get_gid() == END_LABEL]
        if len(labels) < 2:
            continue
        ax.get_ylim()  # settles autoscaling, so transData maps the final limits
        anchors = [ax.transData.transform(label.xy) * to_points for label in labels]
        # A label's width from its length: about 0.6 em per character.
        widths = [3 + 0.6 * END_LABEL_SIZE * len(label.get_text()) for label in labels]
        for group in side_by_side([a[0] for a in anchors], widths):
            wanted = [anchors[i][1] for i in group]
            for i, w, y in zip(group, wanted, spread_positions(wanted, END_LABEL_GAP), strict=True):
                labels[i].xyann = (labels[i].xyann[0], y - w)


def _layout(fig: Figure) -> None:
    """tight_layout, then the end labels spread at the final axes size."""
    fig.tight_layout()
    _spread_end_labels(fig)


@functools.cache
def _figure_font() -> FT2Font:
    return FT2Font(findfont(FontProperties()))


def literal(text: str) -> str:
    """`text` as matplotlib draws it literally: every `$` escaped, so no part of a
    name such as "$5_to_$10" or "$\\alpha$" is read as mathtext (TeX is off)."""
    return text.replace("$", r"\$")


def drawable(text: str, fallback: str) -> str:
    """`text`, drawn literally, if the figure font has a glyph for each character;
    else `fallback`.

    Missing glyphs would print as empty boxes (and warn once per character).
    """
    font = _figure_font()
    if all(font.get_char_index(ord(c)) for c in text if not c.isspace()):
        return literal(text)
    return fallback


def curves_name(variant: str) -> str:
    return f"curves_{variant}.png"


def class_gaps_name(variant: str) -> str:
    return f"class_gaps_{variant}.png"


def confusion_name(variant: str) -> str:
    return f"confusion_{variant}.png"


def feature_maps_name(variant: str) -> str:
    return f"feature_maps_{variant}.png"


VAL_CURVES = "val_curves_all.png"
GAP_CURVES = "gap_all.png"
LEARNING_CURVE = "learning_curve.png"


def png_bytes(fig: Figure) -> bytes:
    """`fig` as a 256-colour PNG at DPI.

    The report embeds every figure, so bytes count: a palette PNG is a third
    of matplotlib's RGBA one (line plots use a few colours plus anti-aliasing,
    viridis is itself 256 colours) and looks the same; SVG was larger still
    for every figure here. Pillow, matplotlib's own dependency, quantizes.
    """
    from PIL import Image

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    with Image.open(buffer) as image:
        palette = image.convert("RGB").quantize(PNG_COLOURS, method=Image.Quantize.MEDIANCUT)
    out = io.BytesIO()
    palette.save(out, format="PNG", optimize=True)
    return out.getvalue()


def save_png(fig: Figure, path: Path) -> Path:
    """Render `fig` to PNG at `path` atomically and free it."""
    data = png_bytes(fig)
    plt.close(fig)
    write_bytes_atomic(path, data)
    return path


def _mark_epochs(ax, best_epoch: int | None, onset_epoch: int | None) -> None:
    # Told apart by line style and label; grey and black, not the usual green and red.
    if best_epoch is not None:
        ax.axvline(
            best_epoch, color="0.4", linestyle="--", linewidth=1, label=f"best epoch {best_epoch}"
        )
    if onset_epoch is not None:
        ax.axvline(
            onset_epoch, color="black", linestyle=":", linewidth=1.5, label=f"onset {onset_epoch}"
        )


def _log_loss_axis(ax) -> None:
    # Cross-entropy is > 0; clip rather than drop a (theoretical) zero.
    ax.set_yscale("log", nonpositive="clip")
    ax.grid(alpha=0.3, which="both")


def learning_curves(
    history: pd.DataFrame,
    variant: str,
    best_epoch: int | None = None,
    onset_epoch: int | None = None,
    verdict: str | None = None,
) -> Figure:
    """Train and val loss (left, log scale) and accuracy (right), best and onset marked."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.4), sharex=True)
    epochs = history["epoch"]
    train_style, val_style = series_styles(2)
    for ax, metric, label in ((ax_loss, "loss", "loss"), (ax_acc, "accuracy", "accuracy")):
        _plot_series(ax, epochs, history[metric], f"train {label}", train_style)
        _plot_series(ax, epochs, history[f"val_{metric}"], f"val {label}", val_style)
        _mark_epochs(ax, best_epoch, onset_epoch)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    ax_loss.set_ylabel("loss (log scale)")
    _log_loss_axis(ax_loss)
    title = f"{variant}: train vs validation"
    if verdict:
        title += f" ({verdict})"
    fig.suptitle(title)
    _layout(fig)
    return fig


def all_val_curves(
    histories: Mapping[str, pd.DataFrame],
    marks: Mapping[str, tuple[int | None, int | None]] | None = None,
) -> Figure:
    """Every variant's val loss (log scale) and val accuracy on shared axes.

    Args:
        marks: variant -> (best epoch, onset epoch); the best epoch is drawn as
            a filled circle and the onset as an x on that variant's curves.
    """
    marks = marks or {}
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8), sharex=True)
    for (name, history), style in zip(
        histories.items(), series_styles(len(histories)), strict=True
    ):
        _plot_series(ax_loss, history["epoch"], history["val_loss"], name, style)
        _plot_series(ax_acc, history["epoch"], history["val_accuracy"], name, style)
        best, onset = marks.get(name, (None, None))
        by_epoch = history.set_index("epoch")
        for epoch, marker, size in ((best, "o", 6), (onset, "X", 8)):
            if epoch is None or epoch not in by_epoch.index:
                continue
            for ax, col in ((ax_loss, "val_loss"), (ax_acc, "val_accuracy")):
                ax.plot(
                    [epoch],
                    [by_epoch.loc[epoch, col]],
                    marker=marker,
                    markersize=size,
                    color=style["color"],
                    markeredgecolor="black",
                    linestyle="none",
                )
    for ax, label in ((ax_loss, "val loss (log scale)"), (ax_acc, "val accuracy")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    _log_loss_axis(ax_loss)
    if marks:
        # Legend entries for the two marker kinds, in neutral grey.
        for marker, size, text in (("o", 6, "best epoch"), ("X", 8, "overfitting onset")):
            ax_acc.plot(
                [],
                [],
                marker=marker,
                markersize=size,
                color="grey",
                linestyle="none",
                markeredgecolor="black",
                label=text,
            )
    ax_acc.legend(fontsize=7)
    fig.suptitle("Validation curves, all variants")
    _layout(fig)
    return fig


def gap_curves(histories: Mapping[str, pd.DataFrame]) -> Figure:
    """Train minus val accuracy per epoch for every variant."""
    fig, ax = plt.subplots(figsize=(6, 3.4))
    for (name, history), style in zip(
        histories.items(), series_styles(len(histories)), strict=True
    ):
        _plot_series(
            ax, history["epoch"], history["accuracy"] - history["val_accuracy"], name, style
        )
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xlabel("epoch")
    ax.set_ylabel("train - val accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("Generalization gap per epoch")
    _layout(fig)
    return fig


def _error_bars(points: Sequence[Mapping], value: str, interval: str) -> np.ndarray:
    """(2, n) distances below and above each value, for errorbar's yerr."""
    values = np.array([p[value] for p in points])
    bounds = np.array([p[interval] for p in points])
    return np.vstack([values - bounds[:, 0], bounds[:, 1] - values]).clip(min=0)


def learning_curve_figure(curve: Mapping) -> Figure:
    """Val accuracy and train - val gap against training-set size, 95% error bars.

    `curve` is evaluation.json's `learning_curve` block (pipeline.learning_curve.analyse).
    """
    points = curve["points"]
    n = [p["n_train"] for p in points]
    fig, (ax_val, ax_gap) = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, value, interval, label in (
        (ax_val, "val_accuracy", "val_ci95", "val accuracy"),
        (ax_gap, "gap", "gap_ci95", "train - val accuracy"),
    ):
        ax.errorbar(
            n,
            [p[value] for p in points],
            yerr=_error_bars(points, value, interval),
            capsize=4,
            **series_styles(1)[0],
        )
        ax.set_xlabel("training images")
        ax.set_ylabel(label)
        ax.set_xticks(n, [f"{k}\n({p['fraction']:.0%})" for k, p in zip(n, points, strict=True)])
        ax.grid(alpha=0.3)
    ax_gap.axhline(0, color="black", linewidth=0.8)
    ax_val.set_title(f"{curve['last_step']['trend']}: val accuracy vs data")
    gap_trend = curve["gap_change"]["trend"]
    ax_gap.set_title("gap: no change beyond noise" if gap_trend == "flat" else f"gap {gap_trend}")
    fig.suptitle(f"Learning curve of {curve['variant']} (95% intervals)")
    fig.tight_layout()
    return fig


def class_gap_figure(per_class: Sequence[Mapping], variant: str) -> Figure:
    """Train - val accuracy per class as horizontal bars, in points, memorized classes marked.

    `per_class` is a variant's evaluation.json `per_class` rows: `accuracy_gap`,
    and when known `gap_noise` (drawn as a whisker) and `gap_material` (the
    class is memorized: hatched bar and the word "memorized", not colour alone).
    A class the font cannot draw is shown by its index (`drawable`).
    """
    n = len(per_class)
    names = [drawable(str(row["class"]), str(i)) for i, row in enumerate(per_class)]
    gaps = np.array([row["accuracy_gap"] for row in per_class], dtype=float) * 100
    noise = [row.get("gap_noise") for row in per_class]
    flagged = [bool(row.get("gap_material")) for row in per_class]
    fig, ax = plt.subplots(figsize=(5.5, min(0.8 + 0.26 * n, 14)))
    bars = ax.barh(
        range(n),
        gaps,
        xerr=None if None in noise else np.array(noise, dtype=float) * 100,
        color=[PALETTE[1] if f else PALETTE[0] for f in flagged],
        edgecolor="black",
        linewidth=0.5,
        error_kw={"elinewidth": 0.8, "capsize": 2, "ecolor": "0.3"},
    )
    for bar, gap, memorized in zip(bars, gaps, flagged, strict=True):
        if memorized:
            bar.set_hatch(HATCH)
            ax.annotate(
                "memorized",
                (max(gap, 0.0), bar.get_y() + bar.get_height() / 2),
                xytext=(4, 0),
                textcoords="offset points",
                fontsize=7,
                va="center",
                fontweight="bold",
            )
    ax.set_yticks(range(n), labels=names, fontsize=7)
    ax.invert_yaxis()  # class 0 on top, as in the per-class table
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel("train − val accuracy (points); whisker: noise")
    ax.grid(alpha=0.3, axis="x")
    ax.margins(x=0.25)  # room for the "memorized" labels
    count = sum(flagged)
    ax.set_title(
        f"{variant}: per-class gap, {count} class{'es' if count != 1 else ''} memorized"
        + (" (hatched)" if count else ""),
        fontsize=9,
    )
    fig.tight_layout()
    return fig


def confusion_figure(matrix: np.ndarray, classes: Sequence[str], title: str) -> Figure:
    """A confusion matrix (rows: true class, columns: predicted) with counts."""
    matrix = np.asarray(matrix)
    n = len(classes)
    size = min(2.5 + 0.45 * n, 9)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    names = [drawable(str(c), str(i)) for i, c in enumerate(classes)]
    ax.set_xticks(range(n), labels=names, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(n), labels=names, fontsize=7)
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
    images: np.ndarray,
    activations: Mapping[str, np.ndarray],
    variant: str,
    labels: Sequence[str] | None = None,
) -> Figure:
    """Input images and the first MAX_CHANNELS channels of each conv layer's output.

    One row per (image, layer): the input on the left, the layer's channels as
    a strip on the right (a few axes instead of one per channel keeps it fast).

    Args:
        images: (n, h, w, c) uint8 or float inputs.
        activations: layer name -> (n, h', w', channels) outputs, in layer order.
        labels: each image's class name, shown above it (default "image <i>").
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
                title = f"image {i + 1}"
                if labels is not None:
                    title = drawable(str(labels[i]), title)
                axes[row, 0].set_title(title, fontsize=7)
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
