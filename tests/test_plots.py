"""pipeline.plots: figures a colour-blind reader can tell apart, the per-class gap chart, PNGs.

Each test inspects the matplotlib Figure the function returns, not a picture.
"""

from __future__ import annotations

import io

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline import plots


def history(n: int, shift: float = 0.0) -> pd.DataFrame:
    epochs = np.arange(1, n + 1)
    return pd.DataFrame(
        {
            "epoch": epochs,
            "loss": 1.0 / epochs,
            "val_loss": 1.1 / epochs + shift,
            "accuracy": 1 - 0.5 / epochs,
            "val_accuracy": 0.9 - 0.5 / epochs - shift,
        }
    )


def series(ax) -> list:
    """The labelled lines of an axes: the series and reference lines a legend names."""
    return [line for line in ax.get_lines() if not line.get_label().startswith("_")]


def assert_series_told_apart_without_colour(fig) -> None:
    """No two labelled lines of one axes share (linestyle, marker); each data series is
    labelled directly at its end, so neither the legend nor colour is needed."""
    for ax in fig.axes:
        lines = series(ax)
        pairs = [(line.get_linestyle(), line.get_marker()) for line in lines]
        assert len(set(pairs)) == len(pairs), f"{ax.get_title()!r}: shared styles {pairs}"
        texts = {t.get_text() for t in ax.texts}
        for line in lines:
            if len(set(np.asarray(line.get_xdata(), dtype=float))) > 1:  # not an axvline
                assert line.get_label() in texts, f"{line.get_label()} has no direct label"


SEVEN = ["baseline", "dropout", "l2", "augmentation", "combined", "small", "large"]


@pytest.mark.parametrize(
    "make",
    [
        lambda: plots.learning_curves(history(30), "v", best_epoch=12, onset_epoch=15),
        lambda: plots.all_val_curves(
            {n: history(30, 0.01 * i) for i, n in enumerate(SEVEN)},
            {n: (10, 14) for n in SEVEN},
        ),
        lambda: plots.gap_curves({n: history(30, 0.01 * i) for i, n in enumerate(SEVEN)}),
    ],
    ids=["train_vs_val", "all_variants", "gap"],
)
def test_multi_line_figures_tell_series_apart_by_style_and_direct_labels(make):
    fig = make()
    try:
        assert any(len(series(ax)) >= 2 for ax in fig.axes)
        assert_series_told_apart_without_colour(fig)
    finally:
        plt.close(fig)


def overlapping_end_labels(fig) -> list[tuple[str, str]]:
    """Pairs of line-end labels of one axes whose drawn boxes overlap."""
    renderer = fig.canvas.get_renderer()
    pairs = []
    for ax in fig.axes:
        boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in ax.texts
                 if t.get_gid() == plots.END_LABEL]  # fmt: skip
        for i, (a, box_a) in enumerate(boxes):
            pairs += [(a, b) for b, box_b in boxes[i + 1 :] if box_a.overlaps(box_b)]
    return pairs


@pytest.mark.parametrize(
    "make",
    [
        lambda h: plots.all_val_curves(h, {n: (10, 14) for n in h}),
        plots.gap_curves,
    ],
    ids=["all_variants", "gap"],
)
def test_end_labels_of_nearly_identical_curves_do_not_overlap(make):
    # Seven variants ending within 0.1 accuracy points of each other (digits: all ~0.98).
    fig = make({n: history(30, 0.0001 * i) for i, n in enumerate(SEVEN)})
    try:
        fig.canvas.draw()
        assert overlapping_end_labels(fig) == []
        for ax in fig.axes:  # each label still sits beside its own line's end
            for t in (t for t in ax.texts if t.get_gid() == plots.END_LABEL):
                assert abs(t.xyann[1]) < 4 * plots.END_LABEL_GAP
    finally:
        plt.close(fig)


def test_end_labels_overlap_without_the_spreading(monkeypatch):
    """The check above can fail: unspread, the same seven labels collide."""
    monkeypatch.setattr(plots, "_spread_end_labels", lambda fig: None)
    fig = plots.gap_curves({n: history(30, 0.0001 * i) for i, n in enumerate(SEVEN)})
    try:
        fig.canvas.draw()
        assert len(overlapping_end_labels(fig)) >= 6
    finally:
        plt.close(fig)


def test_end_labels_with_room_of_their_own_stay_at_their_lines_end():
    # Variants stopped early at different epochs: their labels are far apart sideways.
    ends = dict(zip(SEVEN, (10, 100, 91, 55, 99, 76, 30), strict=True))
    fig = plots.all_val_curves({n: history(e, 0.0001 * i) for i, (n, e) in enumerate(ends.items())})
    try:
        fig.canvas.draw()
        assert overlapping_end_labels(fig) == []
        for ax in fig.axes:
            moved = {t.get_text(): t.xyann[1] for t in ax.texts if t.get_gid() == plots.END_LABEL}
            for name in ("baseline", "l2", "augmentation", "large", "small"):
                assert moved[name] == 0, (name, moved)  # nothing ends near them
    finally:
        plt.close(fig)


def test_side_by_side_groups_only_labels_that_share_room():
    assert plots.side_by_side([0, 100, 5, 300], [20, 20, 20, 20]) == [[0, 2], [1], [3]]
    assert plots.side_by_side([0, 15, 30], [20, 20, 20]) == [[0, 1, 2]]  # a chain


def test_spread_positions_keep_order_and_gap_and_move_no_more_than_needed():
    gap = 8.0
    assert plots.spread_positions([0.0, 50.0, 100.0], gap).tolist() == [0.0, 50.0, 100.0]
    # two at one spot part symmetrically; input order is kept in the output
    assert plots.spread_positions([10.0, 10.0], gap).tolist() == [6.0, 14.0]
    placed = plots.spread_positions([5.0, 0.0, 1.0, 2.0, 40.0], gap)
    assert placed[4] == 40.0  # far enough away: untouched
    by_height = np.sort(placed[:4])
    assert np.all(np.diff(by_height) >= gap - 1e-9)
    assert placed[1] < placed[2] < placed[3] < placed[0]  # the order of the wanted heights
    assert np.mean(placed[:4]) == pytest.approx(np.mean([5.0, 0.0, 1.0, 2.0]))  # centred


def test_learning_curve_figure_uses_the_colour_blind_palette():
    points = [
        {"n_train": n, "fraction": f, "val_accuracy": v, "val_ci95": [v - 0.02, v + 0.02],
         "gap": 0.05, "gap_ci95": [0.03, 0.07]}
        for n, f, v in ((300, 0.25, 0.9), (600, 0.5, 0.93), (1200, 1.0, 0.95))
    ]  # fmt: skip
    curve = {"points": points, "variant": "v", "last_step": {"trend": "rising"},
             "gap_change": {"trend": "flat"}}  # fmt: skip
    fig = plots.learning_curve_figure(curve)
    try:
        colours = {line.get_color() for ax in fig.axes for line in ax.get_lines()[:1]}
        assert colours <= set(plots.PALETTE)
    finally:
        plt.close(fig)


def test_the_style_check_catches_default_matplotlib_lines():
    """Negative control: two plain ax.plot lines differ by colour only, and fail."""
    fig, ax = plt.subplots()
    ax.plot([1, 2], [1, 2], label="a")
    ax.plot([1, 2], [2, 1], label="b")
    with pytest.raises(AssertionError, match="shared styles"):
        assert_series_told_apart_without_colour(fig)
    plt.close(fig)


def test_series_styles_are_distinct_pairs_in_the_colour_blind_palette():
    import matplotlib.style

    styles = plots.series_styles(36)
    assert len({(s["linestyle"], s["marker"]) for s in styles}) == 36
    cycle = matplotlib.style.library["tableau-colorblind10"]["axes.prop_cycle"]
    assert [s["color"] for s in styles[:10]] == cycle.by_key()["color"]


def rows(gaps, material, noise=0.05, names=None):
    names = names or [f"c{i}" for i in range(len(gaps))]
    return [
        {"class": n, "accuracy_gap": g, "gap_noise": noise, "gap_material": m}
        for n, g, m in zip(names, gaps, material, strict=True)
    ]


def test_class_gap_chart_marks_memorized_classes_by_hatch_and_word():
    fig = plots.class_gap_figure(rows([0.30, 0.01, -0.02, 0.12], [True, False, False, True]), "v")
    try:
        ax = fig.axes[0]
        bars = ax.patches
        assert [round(b.get_width(), 6) for b in bars] == [30.0, 1.0, -2.0, 12.0]  # points
        assert [bool(b.get_hatch()) for b in bars] == [True, False, False, True]
        assert [t.get_text() for t in ax.texts] == ["memorized", "memorized"]
        assert [t.get_text() for t in ax.get_yticklabels()] == ["c0", "c1", "c2", "c3"]
        assert "2 classes memorized" in ax.get_title()
    finally:
        plt.close(fig)


def test_class_gap_chart_without_flags_or_noise_marks_nothing_and_draws_cjk_as_index():
    per_class = [{"class": "猫", "accuracy_gap": 0.3}, {"class": "dog", "accuracy_gap": 0.0}]
    fig = plots.class_gap_figure(per_class, "v")  # an evaluation.json from before the flags
    try:
        ax = fig.axes[0]
        assert not any(b.get_hatch() for b in ax.patches) and not ax.texts
        assert [t.get_text() for t in ax.get_yticklabels()] == ["0", "dog"]
    finally:
        plt.close(fig)


def test_saved_pngs_are_palette_images_of_the_full_figure():
    fig = plots.learning_curves(history(30), "v")
    rgba = io.BytesIO()
    fig.savefig(rgba, format="png", dpi=plots.DPI, bbox_inches="tight")
    data = plots.png_bytes(fig)
    plt.close(fig)
    with Image.open(io.BytesIO(data)) as small, Image.open(rgba) as full:
        assert small.mode == "P" and small.size == full.size
    assert len(data) < len(rgba.getvalue()) / 2
