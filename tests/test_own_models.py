"""model.builder: the user's own architecture and Keras Applications backbones in the
pipeline (pipeline.builders, pipeline.own_models, the model_source stage).

Models are built, not trained, except in the slow tests, which train the seed's
model and a MobileNetV3Small (weights none) on the digits through the pipeline.
"""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest

from pipeline import builders, model_source
from pipeline.builders import BuildContext, BuilderError
from pipeline.config import BACKBONES, ConfigError, parse_config

from .conftest import real_params, small_params

REPO = Path(__file__).resolve().parents[1]
SEED_MODEL = "examples/seed_model.py:build"


def model_cfg(builder: str = SEED_MODEL, variant: dict | None = None, **model):
    """A variant's ModelConfig and the base one, as params.yaml would give them."""
    shipped = real_params()["model"]  # the seed's sizes: conv_filters [32, ...], dense 128
    sizes = {k: shipped[k] for k in ("conv_filters", "dense_units")}
    params = small_params(model={"builder": builder, **sizes, **model})
    params["variants"] = {"v": variant or {}}
    params["learning_curve"]["variant"] = "v"
    cfg = parse_config(params)
    return cfg.variant("v").model, cfg.model


def build(builder: str = SEED_MODEL, variant: dict | None = None, root: Path = REPO, **model):
    from pipeline.own_models import build_any

    cfg, base = model_cfg(builder, variant, **model)
    return build_any(cfg, "v", (8, 8, 1), 10, 0, BuildContext(base, root))


def layers(model) -> list:
    return [layer for layer in model.layers if type(layer).__name__ != "InputLayer"]


def layer_types(model) -> list[str]:
    return [type(layer).__name__ for layer in layers(model)]


def write_builder(root: Path, body: str, name: str = "mine.py") -> str:
    (root / name).write_text(textwrap.dedent(body))
    return f"{name}:build"


FUNCTIONAL = """
import keras
def build(input_shape, n_classes, seed):
    inputs = keras.Input(shape=input_shape)
    x = keras.layers.Conv2D(4, 3, activation="relu", name="c1")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(n_classes)(x)
    return keras.Model(inputs, keras.layers.Softmax()(x))
"""


def test_the_seed_model_is_built_as_written():
    model = build()
    assert layer_types(model) == [
        "Rescaling", "Conv2D", "MaxPooling2D", "Flatten", "Dense", "Dense",
    ]  # fmt: skip
    assert layers(model)[1].filters == 32 and layers(model)[4].units == 128
    assert model.output_shape == (None, 10)


def test_a_builder_taking_a_knob_gets_the_variants_value():
    small = build(variant={"model": {"conv_filters": [8], "dense_units": 16}})
    assert layers(small)[1].filters == 8 and layers(small)[4].units == 16


def test_dropout_goes_after_the_conv_block_and_before_the_head():
    model = build(variant={"model": {"dropout": 0.5, "conv_dropout": 0.25}})
    names = [layer.name for layer in layers(model)]
    assert layer_types(model) == [
        "Rescaling", "Conv2D", "MaxPooling2D", "Dropout", "Flatten", "Dense", "Dropout", "Dense",
    ]  # fmt: skip
    assert names[3] == "dropout_after_conv1" and names[6] == "dropout_before_head"
    assert layers(model)[6].rate == 0.5 and layers(model)[3].rate == 0.25


def test_l2_goes_on_every_conv_and_dense_kernel():
    model = build(variant={"model": {"l2": 0.01}})
    kernels = [layer for layer in model.layers if layer.name.startswith(("conv", "dense"))]
    assert len(kernels) == 3
    assert len(model.losses) == 3  # one penalty per kernel, computed from the weights
    assert all(layer.kernel_regularizer.l2 == pytest.approx(0.01) for layer in kernels)


def test_augmentation_goes_in_front_and_is_off_in_inference():
    model = build(variant={"model": {"augmentation": {"enabled": True, "flip": True}}})
    assert layer_types(model)[:5] == [
        "RandomRotation", "RandomZoom", "RandomTranslation", "RandomFlip", "Rescaling",
    ]  # fmt: skip
    x = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 1)).astype("float32")
    plain = build()
    plain.set_weights(model.get_weights())
    np.testing.assert_allclose(model(x, training=False), plain(x, training=False), rtol=1e-5)


def test_a_functional_model_takes_dropout_and_augmentation_nested(tmp_path):
    from pipeline import figures

    spec = write_builder(tmp_path, FUNCTIONAL)
    model = build(
        spec,
        variant={"model": {"dropout": 0.3, "augmentation": {"enabled": True}}},
        root=tmp_path,
    )
    inner = [layer for layer in model.layers if hasattr(layer, "layers")]
    assert len(inner) == 1 and "dropout_before_head" in [x.name for x in inner[0].layers]
    maps = figures.feature_maps(model, np.zeros((2, 8, 8, 1), "float32"), 2)
    assert list(maps) == ["c1"] and maps["c1"].shape == (2, 6, 6, 4)


def test_a_functional_model_refuses_conv_dropout_naming_the_variant(tmp_path):
    spec = write_builder(tmp_path, FUNCTIONAL)
    with pytest.raises(BuilderError, match=r"variant 'v': conv_dropout .* Sequential"):
        build(spec, variant={"model": {"conv_dropout": 0.2}}, root=tmp_path)


def test_a_builtin_only_knob_the_builder_does_not_take_fails_before_training(tmp_path):
    spec = write_builder(tmp_path, FUNCTIONAL)
    with pytest.raises(BuilderError) as err:
        build(spec, variant={"model": {"conv_filters": [8]}}, root=tmp_path)
    assert "variant 'v' sets model.conv_filters = (8,)" in str(err.value)
    assert "does not take a 'conv_filters' keyword" in str(err.value)


def test_a_builder_that_places_dropout_itself_gets_the_rate(tmp_path):
    spec = write_builder(
        tmp_path,
        """
        import keras
        def build(input_shape, n_classes, seed, dropout):
            return keras.Sequential([
                keras.Input(input_shape), keras.layers.Flatten(),
                keras.layers.Dropout(dropout, name="mine"),
                keras.layers.Dense(n_classes, activation="softmax"),
            ])
        """,
    )
    model = build(spec, variant={"model": {"dropout": 0.4}}, root=tmp_path)
    drops = [layer for layer in model.layers if type(layer).__name__ == "Dropout"]
    assert [(d.name, d.rate) for d in drops] == [("mine", 0.4)]


def test_a_module_importable_from_the_root(tmp_path):
    (tmp_path / "models_pkg").mkdir()
    (tmp_path / "models_pkg" / "__init__.py").write_text("")
    write_builder(tmp_path / "models_pkg", FUNCTIONAL, "nets.py")
    assert layer_types(build("models_pkg.nets:build", root=tmp_path))[-1] == "Softmax"


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ("import keras\n", "has no function 'build'"),
        ("raise RuntimeError('boom')\n", "importing .* failed: RuntimeError: boom"),
        ("def build(input_shape, n_classes, seed):\n    return 3\n", "returned int, not a"),
        (
            "import keras\ndef build(input_shape, n_classes, seed):\n"
            "    return keras.Sequential([keras.Input((64, 64, 3)), keras.layers.Flatten(),"
            " keras.layers.Dense(n_classes)])\n",
            r"a model for inputs \(64, 64, 3\), but the images are \(8, 8, 1\)",
        ),
        (
            "import keras\ndef build(input_shape, n_classes, seed):\n"
            "    return keras.Sequential([keras.Input(input_shape), keras.layers.Flatten(),"
            " keras.layers.Dense(3)])\n",
            "with 3 outputs for 10 classes",
        ),
        (
            "def build(input_shape, n_classes, seed):\n    return undefined_name\n",
            "failed for variant 'v' on input .*NameError",
        ),
    ],
    ids=["no-function", "import-error", "not-a-model", "wrong-input", "wrong-outputs", "raises"],
)  # fmt: skip
def test_a_broken_builder_is_one_clear_error(tmp_path, body, says):
    spec = write_builder(tmp_path, body)
    with pytest.raises(BuilderError, match=says):
        build(spec, root=tmp_path)


def test_a_missing_file_or_module_is_named(tmp_path):
    with pytest.raises(BuilderError, match=r"file .*nowhere.py not found"):
        builders.source_file("nowhere.py:build", tmp_path)
    with pytest.raises(BuilderError, match="no module 'no_such_module' importable"):
        builders.source_file("no_such_module:build", tmp_path)


@pytest.mark.parametrize(
    ("model", "says"),
    [
        ({"builder": "keras_applications:VGG16"}, "the Keras Applications backbones here are"),
        ({"builder": "rm -rf /"}, "must be builtin, keras_applications:<backbone>"),
        ({"weights": "w.h5"}, "apply to a keras_applications:<name> builder only"),
    ],
)
def test_bad_builder_settings_are_config_errors(model, says):
    with pytest.raises(ConfigError, match=says):
        parse_config(small_params(model=model))


@pytest.mark.parametrize("name", BACKBONES)
def test_each_backbone_builds_on_small_grey_images(name):
    model = build(f"keras_applications:{name}")
    assert model.input_shape == (None, 8, 8, 1) and model.output_shape == (None, 10)
    assert "resize_for_backbone" in [layer.name for layer in model.layers]
    x = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 1)).astype("float32")
    probabilities = np.asarray(model(x, training=False))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-4)


def test_a_frozen_backbone_trains_only_its_head():
    frozen = build("keras_applications:MobileNetV3Small", freeze_backbone=True)
    tuned = build("keras_applications:MobileNetV3Small")
    head = frozen.get_layer("head")
    assert sum(int(np.prod(w.shape)) for w in frozen.trainable_weights) == head.count_params()
    assert len(tuned.trainable_weights) > len(frozen.trainable_weights)


def test_backbone_weights_are_never_downloaded(tmp_path):
    missing = tmp_path / "mobilenet_v3_small_notop.h5"
    with pytest.raises(BuilderError) as err:
        build("keras_applications:MobileNetV3Small", weights=str(missing))
    assert str(missing) in str(err.value) and "Nothing is downloaded" in str(err.value)


def test_local_backbone_weights_are_loaded(tmp_path):
    import keras

    first = build("keras_applications:MobileNetV3Small")
    backbone = next(layer for layer in first.layers if isinstance(layer, keras.Model))
    saved = tmp_path / "backbone.weights.h5"
    backbone.save_weights(saved)
    again = build("keras_applications:MobileNetV3Small", weights=str(saved))
    loaded = next(layer for layer in again.layers if isinstance(layer, keras.Model))
    for a, b in zip(backbone.get_weights(), loaded.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_model_source_records_every_builders_file(project):
    params = small_params(model={"builder": "nets.py:build"})
    params["variants"]["compact"] = {"model": {"builder": "other.py:build"}}
    project.write_params(params)
    (project.root / "nets.py").write_text(FUNCTIONAL)
    (project.root / "other.py").write_text(FUNCTIONAL)
    assert model_source.main([]) == 0
    first = json.loads(project.paths.model_source_json.read_text())["builders"]
    assert list(first) == ["nets.py:build", "other.py:build"]
    assert first["nets.py:build"]["file"] == "nets.py"
    assert len(first["nets.py:build"]["sha256"]) == 64
    (project.root / "other.py").write_text(FUNCTIONAL + "# tuned\n")
    model_source.main([])
    again = json.loads(project.paths.model_source_json.read_text())["builders"]
    assert again["nets.py:build"] == first["nets.py:build"]
    assert again["other.py:build"]["sha256"] != first["other.py:build"]["sha256"]
    project.write_params(small_params())
    model_source.main([])
    builtin = json.loads(project.paths.model_source_json.read_text())
    assert builtin == {"builders": {"builtin": {"file": None, "sha256": None}}}


@pytest.mark.slow
def test_the_seed_model_runs_through_dvc_and_editing_it_retrains(own_repo):
    """The seed's network as model.builder in the real pipeline: every variant trains it,
    evaluate draws its feature maps, a second repro does nothing, and editing the
    builder's file (only that) retrains the variants."""
    import yaml

    from .conftest import dvc, ran_stages

    root = own_repo
    (root / "examples").mkdir()
    shutil.copy2(REPO / "examples" / "seed_model.py", root / "examples" / "seed_model.py")
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["model"]["builder"] = SEED_MODEL
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    ran = ran_stages(dvc(root, "repro").stdout)
    assert {"train@baseline", "train@dropout", "evaluate", "report"} <= ran
    evaluation = json.loads((root / "reports" / "evaluation.json").read_text())
    assert set(evaluation["variants"]) == {"baseline", "dropout"}
    assert (root / "reports" / "figures" / "feature_maps_baseline.png").is_file()
    run = json.loads((root / "models" / "baseline" / "run.json").read_text())
    assert run["run_id"]
    assert ran_stages(dvc(root, "repro").stdout) == set()
    with open(root / "examples" / "seed_model.py", "a") as f:
        f.write("\n# tuned\n")
    again = ran_stages(dvc(root, "repro").stdout)
    assert {"train@baseline", "train@dropout"} <= again


@pytest.mark.slow
def test_a_backbone_trains_on_small_data_through_the_train_stage(digits_prepared):
    """MobileNetV3Small, weights none, on the 8x8 digits (resized to 32x32x3): the train
    stage runs it end to end and writes its history."""
    import pandas as pd

    from pipeline import train

    project = digits_prepared
    params = small_params(data={"image_size": [8, 8]})
    params["model"]["builder"] = "keras_applications:MobileNetV3Small"
    params["train"]["epochs"] = 2
    project.write_params(params)
    assert train.main(["--variant", "dropout"]) == 0
    history = pd.read_csv(project.paths.history_csv("dropout"))
    assert history["epoch"].tolist() == [1, 2]
    metrics = json.loads(project.paths.train_metrics("dropout").read_text())
    assert metrics["params"] > 900_000  # the backbone's, not the built-in network's


def test_the_backbone_example_params_differ_from_params_yaml_only_in_model_and_variants():
    """examples/params-backbone.yaml is a whole params.yaml to copy over the project's:
    every other section must stay the project's own, so it cannot drift."""
    import yaml

    ours = yaml.safe_load((REPO / "params.yaml").read_text())
    example = yaml.safe_load((REPO / "examples" / "params-backbone.yaml").read_text())
    cfg = parse_config(example)
    assert {k: v for k, v in example.items() if k not in ("model", "variants")} == {
        k: v for k, v in ours.items() if k not in ("model", "variants")
    }
    assert cfg.variant("frozen").model.freeze_backbone
    assert not cfg.variant("baseline").model.freeze_backbone  # fine-tuned
    assert cfg.model.builder.startswith("keras_applications:")


def test_model_source_refuses_a_variant_the_builder_cannot_take_before_training(project):
    """Read from the builder's signature in its source, nothing imported: the capacity
    variants need a builder that takes conv_filters / dense_units."""
    from pipeline.cli import StageError

    (project.root / "nets.py").write_text(FUNCTIONAL)
    params = small_params(model={"builder": "nets.py:build"})
    params["variants"] = {"baseline": {}, "small": {"model": {"conv_filters": [2]}}}
    project.write_params(params)
    with pytest.raises(StageError, match="variant 'small' sets model.conv_filters"):
        model_source.main([])
    assert not project.paths.model_source_json.exists()
    (project.root / "nets.py").write_text(FUNCTIONAL.replace("seed):", "seed, conv_filters):"))
    assert model_source.main([]) == 0


def test_a_builder_giving_logits_is_refused(tmp_path):
    spec = write_builder(tmp_path, FUNCTIONAL.replace("keras.layers.Softmax()(x)", "x"))
    with pytest.raises(BuilderError, match="not probabilities .* activation='softmax'"):
        build(spec, root=tmp_path)


def test_a_helper_beside_the_builder_file_imports(tmp_path):
    sub = tmp_path / "nets"
    sub.mkdir()
    (sub / "widths.py").write_text("FILTERS = 6\n")
    spec = write_builder(
        sub,
        FUNCTIONAL.replace("import keras", "import keras\nfrom widths import FILTERS").replace(
            "Conv2D(4,", "Conv2D(FILTERS,"
        ),
    )
    model = build(f"nets/{spec}", root=tmp_path)
    assert model.get_layer("c1").filters == 6


def test_the_compact_example_is_under_100k_parameters_at_fashion_mnists_size():
    """examples/compact_fashion.py, the README's network under 100K parameters (0.931 on
    Fashion-MNIST's test images in a full `dvc repro`, docs/performance.md), builds as a
    variant with flips."""
    from pipeline.own_models import build_any

    flips = {"enabled": True, "rotation": 0.0, "zoom": 0.0, "translation": 0.0, "flip": True}
    cfg, base = model_cfg(
        "examples/compact_fashion.py:build",
        {"model": {"dropout": 0.3, "augmentation": flips}},
    )
    model = build_any(cfg, "v", (28, 28, 1), 10, 0, BuildContext(base, REPO))
    assert model.count_params() == 96_938
    assert "dropout_before_head" in [layer.name for layer in keras_layers(model)]


def keras_layers(model) -> list:
    inner = [layer for layer in model.layers if hasattr(layer, "layers")]
    return model.layers + [x for m in inner for x in m.layers]


def test_the_fashion_example_params_differ_from_params_yaml_only_where_it_says():
    """examples/params-fashion.yaml is the README's recommended settings for data of
    Fashion-MNIST's size plus the compact variant: every other key is the project's own,
    and its compact variant is the one README "Performance" shows."""
    import re

    import yaml

    ours = yaml.safe_load((REPO / "params.yaml").read_text())
    example = yaml.safe_load((REPO / "examples" / "params-fashion.yaml").read_text())
    cfg = parse_config(example)
    changed = {
        ("data", "source"): "/usr/share/datasets/fashion-mnist",
        ("data", "format"): "idx",
        ("data", "image_size"): [28, 28],
        ("validate", "severity", "split_leakage"): "warning",
        ("train", "precision"): "auto",
        ("train", "batch_size"): 256,
        ("train", "learning_rate"): 0.002,
        ("train", "early_stopping", "patience"): 5,
    }
    for keys, value in changed.items():
        node, mine = example, ours
        for key in keys[:-1]:
            node, mine = node[key], mine[key]
        assert node[keys[-1]] == value, keys
        node[keys[-1]] = mine[keys[-1]]
    compact = example["variants"].pop("compact")
    assert example == ours

    readme = (REPO / "README.md").read_text()
    block = re.search(r"```yaml\n(variants:\n  compact:\n.*?)```", readme, re.S)
    assert block, "README shows the compact variant's YAML"
    assert yaml.safe_load(block.group(1))["variants"]["compact"] == compact
    assert cfg.variant("compact").model.builder == "examples/compact_fashion.py:build"
    assert cfg.variant("compact").train.early_stopping.patience == 10
