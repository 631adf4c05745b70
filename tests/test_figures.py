"""pipeline.figures: probe images, feature maps of the builder's conv layers, reports/figures/."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from pipeline import figures, plots
from pipeline.config import parse_config
from pipeline.scoring import VariantEvaluation

from .conftest import small_params


def test_select_probe_is_one_val_image_per_class_with_its_name(digits_prepared):
    from pipeline.prepared import load_prepared

    data = load_prepared(digits_prepared.paths.prepared_dir)
    probe = figures.select_probe(data, 4)
    assert probe.labels == ["0", "1", "2", "3"]
    assert probe.images.shape == (4, 8, 8, 1)
    rows = figures.probe_indices(data.y("val"), 4)
    assert np.array_equal(probe.images, data.x("val")[rows])


@pytest.fixture
def two_conv_model():
    import keras

    from pipeline.models import build_model

    cfg = parse_config(small_params(model={"conv_filters": [4, 8]}))
    yield build_model(cfg.variant("baseline").model, (8, 8, 1), 3, seed=0)
    keras.backend.clear_session()


def test_feature_maps_are_the_builders_conv_layers(two_conv_model):
    images = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 1)).astype(np.uint8)
    maps = figures.feature_maps(two_conv_model, images, 5)
    assert list(maps) == ["conv_1", "conv_2"]  # capped at the layers the model has
    assert maps["conv_1"].shape == (2, 8, 8, 4) and maps["conv_2"].shape == (2, 4, 4, 8)
    only_first = figures.feature_maps(two_conv_model, images, 1)
    assert list(only_first) == ["conv_1"]
    np.testing.assert_allclose(only_first["conv_1"], maps["conv_1"], rtol=1e-6)


def test_feature_maps_of_a_sequential_model_without_input_walk_its_layers():
    import keras

    model = keras.Sequential(
        [
            keras.layers.Conv2D(2, 3, padding="same", name="conv_1"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Conv2D(3, 3, padding="same", name="conv_2"),
        ]
    )
    maps = figures.feature_maps(model, np.zeros((1, 8, 8, 1)), 2)
    assert {n: m.shape for n, m in maps.items()} == {"conv_1": (1, 8, 8, 2), "conv_2": (1, 4, 4, 3)}
    keras.backend.clear_session()


def test_a_model_without_conv_layers_has_no_feature_maps(caplog):
    import keras

    inputs = keras.Input((8, 8, 1))
    model = keras.Model(inputs, keras.layers.Dense(2, name="conv_dense")(inputs))
    with caplog.at_level(logging.WARNING, logger="pipeline.figures"):
        assert figures.feature_maps(model, np.zeros((1, 8, 8, 1)), 2) == {}
    assert "model has no Conv2D layers" in caplog.text
    keras.backend.clear_session()


def entry(verdict: str) -> dict:
    return {
        "best_epoch": 2,
        "onset_epoch": None,
        "verdict": verdict,
        "confusion": {"test": [[3, 1], [0, 4]]},
        "test": {"accuracy": 0.875},
    }


def test_write_figures_replaces_the_folder_whole(tmp_path):
    history = pd.DataFrame(
        {
            "epoch": [1, 2, 3],
            "loss": [1.0, 0.5, 0.4],
            "val_loss": [1.1, 0.7, 0.8],
            "accuracy": [0.5, 0.8, 0.9],
            "val_accuracy": [0.4, 0.7, 0.7],
        }
    )
    figures_dir = tmp_path / "figures"
    figures_dir.mkdir()
    (figures_dir / "curves_removed_variant.png").write_bytes(b"stale")
    evaluation = {
        "variants": {"a": entry("good_fit"), "b": entry("overfitting")},
        "classes": ["x", "y"],
    }
    maps = {"conv_1": np.random.default_rng(0).random((2, 8, 8, 4))}
    evaluations = {"a": VariantEvaluation("a", {}, maps), "b": VariantEvaluation("b", {}, {})}
    figures.write_figures(
        figures_dir,
        evaluation,
        {"a": history, "b": history},
        evaluations,
        np.zeros((2, 8, 8, 1), dtype=np.uint8),
        ["x", "y"],
    )
    assert {p.name for p in figures_dir.iterdir()} == {
        plots.curves_name("a"),
        plots.curves_name("b"),
        plots.confusion_name("a"),
        plots.confusion_name("b"),
        plots.feature_maps_name("a"),  # b has no maps: no figure
        plots.VAL_CURVES,
        plots.GAP_CURVES,  # no learning_curve in the evaluation: no learning_curve.png
    }
    assert (figures_dir / plots.curves_name("a")).read_bytes().startswith(b"\x89PNG")


def test_class_names_the_figure_font_cannot_draw_become_their_index():
    """CJK class names would print as empty boxes: the figures show the class index (the
    report's per-class table maps index to name), and no glyph goes missing."""
    import warnings

    assert plots.drawable("T-shirt/top", "0") == "T-shirt/top"
    assert plots.drawable("猫", "1") == "1"
    classes = ["cat", "猫", "犬"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib warns "Glyph ... missing from font(s)"
        fig = plots.confusion_figure(np.eye(3, dtype=int), classes, "test")
        fig.canvas.draw()
        ticks = [t.get_text() for t in fig.axes[0].get_xticklabels()]
        assert ticks == ["cat", "1", "2"]
        maps = plots.feature_maps_figure(
            np.zeros((1, 8, 8, 1), np.uint8), {"conv_1": np.ones((1, 4, 4, 2))}, "v", ["猫"]
        )
        maps.canvas.draw()
    titles = [ax.get_title() for ax in maps.axes if ax.get_title()]
    assert "image 1" in titles and "猫" not in titles


def test_write_figures_draws_the_per_class_gap_chart_of_the_best_variant_only(tmp_path):
    history = pd.DataFrame(
        {
            "epoch": [1, 2],
            "loss": [1.0, 0.5],
            "val_loss": [1.1, 0.7],
            "accuracy": [0.5, 0.8],
            "val_accuracy": [0.4, 0.7],
        }
    )
    per_class = [
        {"class": "x", "accuracy_gap": 0.3, "gap_noise": 0.05, "gap_material": True},
        {"class": "y", "accuracy_gap": 0.0, "gap_noise": 0.05, "gap_material": False},
    ]
    evaluation = {
        "variants": {
            "a": {**entry("good_fit"), "per_class": per_class},
            "b": {**entry("overfitting"), "per_class": per_class},
        },
        "classes": ["x", "y"],
        "best_variant": "a",
    }
    evaluations = {n: VariantEvaluation(n, {}, {}) for n in ("a", "b")}
    figures_dir = tmp_path / "figures"
    figures.write_figures(
        figures_dir,
        evaluation,
        {"a": history, "b": history},
        evaluations,
        np.zeros((2, 8, 8, 1), dtype=np.uint8),
    )
    names = {p.name for p in figures_dir.iterdir()}
    assert plots.class_gaps_name("a") in names and plots.class_gaps_name("b") not in names
