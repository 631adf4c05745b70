"""pipeline.models: every default variant builds from the real params.yaml."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from pipeline.config import parse_config
from pipeline.models import AUGMENTATION_LAYERS, build_model, conv_layer_names

from .conftest import real_params, shipped

SHAPE = (16, 16, 1)


@pytest.fixture(scope="module")
def variant_models() -> dict[str, keras.Model]:
    cfg = parse_config(real_params())
    return {
        name: build_model(cfg.variant(name).model, SHAPE, n_classes=10, seed=1)
        for name in cfg.variants
    }


def _layers_of(model: keras.Model, kind: type) -> list[keras.layers.Layer]:
    return [layer for layer in model.layers if isinstance(layer, kind)]


def test_every_default_variant_follows_the_layer_contract(variant_models):
    assert set(variant_models) >= {"baseline", "dropout", "l2", "augmentation", "combined"}
    for name, model in variant_models.items():
        assert model.input_shape == (None, *SHAPE), name
        assert model.output_shape == (None, 10), name
        assert isinstance(model.layers[1], keras.layers.Rescaling), name
        assert model.layers[1].scale == pytest.approx(1 / 255)
        assert conv_layer_names(model)[0] == "conv_1"
        assert model.layers[-1].activation.__name__ == "softmax"
        assert _layers_of(model, keras.layers.Flatten), name


def test_baseline_is_the_plain_tutorial_cnn(variant_models):
    kinds = [type(layer).__name__ for layer in variant_models["baseline"].layers]
    assert kinds == [
        "InputLayer",
        "Rescaling",
        "Conv2D",
        "MaxPooling2D",
        "Conv2D",
        "MaxPooling2D",
        "Flatten",
        "Dense",
        "Dense",
    ]


def test_regularisers_appear_only_in_their_variants(variant_models):
    for name, model in variant_models.items():
        has_dropout = bool(_layers_of(model, keras.layers.Dropout))
        assert has_dropout == (name in {"dropout", "combined"}), name
        conv = model.get_layer("conv_1")
        assert (conv.kernel_regularizer is not None) == (name in {"l2", "combined"}), name
        augmenting = [layer.name for layer in model.layers if layer.name in AUGMENTATION_LAYERS]
        assert bool(augmenting) == (name in {"augmentation", "combined"}), name
    combined = variant_models["combined"]
    # flip is off by default: a mirrored digit is a different digit.
    assert "augment_flip" not in [layer.name for layer in combined.layers]
    assert combined.get_layer("dense").kernel_regularizer.l2 == pytest.approx(0.001)


def test_parameter_counts_grow_with_width(variant_models):
    counts = {name: model.count_params() for name, model in variant_models.items()}
    assert counts["small"] < counts["baseline"] < counts["large"]


def test_augmentation_acts_in_training_only(variant_models):
    model = variant_models["augmentation"]
    x = np.random.default_rng(0).integers(0, 256, size=(4, *SHAPE)).astype("float32")
    first = np.asarray(model(x, training=False))
    second = np.asarray(model(x, training=False))
    np.testing.assert_array_equal(first, second)
    last_aug = [layer for layer in model.layers if layer.name in AUGMENTATION_LAYERS][-1]
    augment = keras.Model(model.input, last_aug.output)
    np.testing.assert_allclose(np.asarray(augment(x, training=False)), x / 255.0, rtol=1e-6)
    assert not np.allclose(np.asarray(augment(x, training=True)), x / 255.0)


def test_same_seed_same_weights_other_seed_other_weights():
    cfg = shipped("model", conv_filters=[4], dense_units=8, dropout=0.5)
    a = build_model(cfg, (8, 8, 1), 3, seed=7)
    b = build_model(cfg, (8, 8, 1), 3, seed=7)
    c = build_model(cfg, (8, 8, 1), 3, seed=8)
    for wa, wb in zip(a.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_array_equal(wa, wb)
    assert not np.array_equal(a.get_weights()[0], c.get_weights()[0])


def test_tiny_images_are_never_pooled_below_one_pixel():
    cfg = shipped("model", conv_filters=[2, 2, 2, 2], dense_units=4, conv_dropout=0.1)
    model = build_model(cfg, (4, 4, 1), 2, seed=0)
    assert conv_layer_names(model) == ["conv_1", "conv_2", "conv_3", "conv_4"]
    assert len(_layers_of(model, keras.layers.MaxPooling2D)) == 2
    assert model.get_layer("conv_4").output.shape[1:3] == (1, 1)
    out = model(np.zeros((2, 4, 4, 1), dtype="float32"), training=False)
    assert out.shape == (2, 2)


def test_flip_is_added_when_configured():
    cfg = shipped("model", conv_filters=[2], augmentation={"enabled": True, "flip": True})
    names = [layer.name for layer in build_model(cfg, (8, 8, 3), 2, seed=0).layers]
    assert "augment_flip" in names


def test_a_single_class_is_rejected():
    cfg = shipped("model", conv_filters=[2])
    with pytest.raises(ValueError, match="n_classes"):
        build_model(cfg, (8, 8, 1), 1, seed=0)


def test_mitigations_start_from_the_baselines_initial_weights(variant_models):
    """Adding dropout or augmentation layers must not re-seed the shared layers."""
    baseline = variant_models["baseline"]
    for name in ("dropout", "augmentation", "combined", "l2"):
        other = variant_models[name]
        for layer in ("conv_1", "conv_2", "dense", "output"):
            for a, b in zip(
                baseline.get_layer(layer).get_weights(),
                other.get_layer(layer).get_weights(),
                strict=True,
            ):
                np.testing.assert_array_equal(a, b, err_msg=f"{name}.{layer}")


def test_batch_norm_goes_between_each_conv_and_its_relu():
    cfg = shipped("model", conv_filters=[4, 8], dense_units=8, batch_norm=True)
    model = build_model(cfg, (16, 16, 1), 3, seed=0)
    names = [layer.name for layer in model.layers]
    for i in (1, 2):
        conv = model.get_layer(f"conv_{i}")
        assert conv.activation.__name__ == "linear" and not conv.use_bias
        at = names.index(f"conv_{i}")
        assert names[at + 1 : at + 3] == [f"batch_norm_{i}", f"relu_{i}"]
    plain = build_model(shipped("model", conv_filters=[4, 8], dense_units=8), (16, 16, 1), 3, 0)
    assert not _layers_of(plain, keras.layers.BatchNormalization)


def test_a_global_average_head_keeps_a_capable_network_under_100k_parameters():
    wide = shipped("model", conv_filters=[32, 64, 64], dense_units=128)
    flat = build_model(wide, (28, 28, 1), 10, seed=0)
    pooled = build_model(
        shipped("model", conv_filters=[32, 64, 64], dense_units=128, head="global_average"),
        (28, 28, 1),
        10,
        seed=0,
    )
    assert _layers_of(pooled, keras.layers.GlobalAveragePooling2D)
    assert not _layers_of(pooled, keras.layers.Flatten)
    assert pooled.count_params() < 100_000 < flat.count_params()
    assert pooled.output_shape == (None, 10)


def test_the_softmax_stays_float32_under_mixed_precision():
    from pipeline import precision

    try:
        assert precision.apply("mixed_bfloat16") == "mixed_bfloat16"
        model = build_model(shipped("model", conv_filters=[4], dense_units=8), SHAPE, 3, seed=0)
        assert model.get_layer("conv_1").compute_dtype == "bfloat16"
        assert model.get_layer("output").compute_dtype == "float32"
        out = model(np.zeros((2, *SHAPE), dtype="float32"), training=False)
        assert np.asarray(out).dtype == np.float32
    finally:
        precision.apply("float32")
    model = build_model(shipped("model", conv_filters=[4], dense_units=8), SHAPE, 3, seed=0)
    assert model.get_layer("conv_1").compute_dtype == "float32"


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ("fpu sse avx512f avx512_bf16", "mixed_bfloat16"),
        ("fpu sse amx_tile amx_bf16 avx512f", "mixed_bfloat16"),
        ("fpu sse avx2 avx512f", "float32"),
    ],
)
def test_auto_precision_follows_the_cpu_flags(tmp_path, flags, expected):
    from pipeline import precision

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: X\nflags\t\t: {flags}\n")
    assert precision.resolve("auto", cpuinfo) == expected
    assert precision.resolve("float32", cpuinfo) == "float32"
    assert precision.resolve("auto", tmp_path / "missing") == "float32"
