"""Build the network a variant trains, whoever wrote it (model.builder; pipeline.builders
documents the contract).

- builtin: pipeline.models.build_model.
- keras_applications:<name>: the backbone without its top, on inputs resized to at
  least 32x32 and 3 channels, global average pooling, a softmax head; weights
  none or a local file (never downloaded); `freeze_backbone` trains the head only.
- a user's function: called with the knobs it declares; the others among
  augmentation, l2 and dropout are put on the model it returns.

Inputs: a variant's ModelConfig, the image shape, the class count, the seed and
a BuildContext (params.yaml's own `model` section, the project root). Output:
an uncompiled keras.Model on float32 pixels in 0-255.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
import numpy as np

from pipeline import keras_private
from pipeline.builders import (
    BACKBONE_MIN_SIZE,
    BuildContext,
    BuilderError,
    builder_kind,
    check_variant,
    declared_knobs,
    load_builder,
)
from pipeline.config import ModelConfig
from pipeline.models import augmentation_layers, build_model, layer_seed

HEAD_DROPOUT = "dropout_before_head"


def build_any(
    model_cfg: ModelConfig,
    variant: str,
    input_shape: tuple[int, int, int],
    n_classes: int,
    seed: int,
    context: BuildContext | None = None,
) -> keras.Model:
    """The variant's network (see the module docstring).

    Raises:
        BuilderError: the builder cannot be found or imported, returns something that
            is not a fitting keras.Model, or the variant cannot be applied to it.
    """
    context = context or BuildContext(model_cfg, Path.cwd())
    kind = builder_kind(model_cfg.builder)
    if kind == "builtin":
        return build_model(model_cfg, input_shape, n_classes, seed)
    if kind == "keras_applications":
        model, declared = backbone_model(model_cfg, input_shape, n_classes, seed), {"dropout"}
    else:
        fn = load_builder(model_cfg.builder, context.root)
        declared = declared_knobs(fn)
        check_variant(variant, model_cfg, context.base, declared)
        knobs = {k: _knob_value(model_cfg, k) for k in declared}
        try:
            model = fn(tuple(input_shape), n_classes, seed, **knobs)
        except Exception as exc:  # noqa: BLE001 - the user's code: report, don't crash
            raise BuilderError(
                f"model.builder {model_cfg.builder!r} failed for variant {variant!r} on "
                f"input {tuple(input_shape)}: {type(exc).__name__}: {exc}"
            ) from None
        check_model(model, model_cfg.builder, input_shape, n_classes)
    return apply_knobs(model, model_cfg, declared, variant, input_shape, seed)


def _knob_value(model_cfg: ModelConfig, knob: str) -> Any:
    value = getattr(model_cfg, knob)
    return value.model_dump() if hasattr(value, "model_dump") else value


def check_model(model: Any, spec: str, input_shape: tuple[int, ...], n_classes: int) -> None:
    """A builder's return value fits the data: a built keras.Model, this input, n outputs."""
    if not isinstance(model, keras.Model):
        raise BuilderError(
            f"model.builder {spec!r} returned {type(model).__name__}, not a keras.Model"
        )
    try:
        expects, gives = tuple(model.input_shape[1:]), model.output_shape
    except (AttributeError, ValueError):
        raise BuilderError(
            f"model.builder {spec!r} returned a model without a defined input: start it "
            "with keras.Input(shape=input_shape) (a subclassed keras.Model: call it once on "
            "keras.Input(shape=input_shape) and return keras.Model(inputs, outputs))"
        ) from None
    if any(e is not None and e != d for e, d in zip(expects, input_shape, strict=False)) or (
        len(expects) != len(input_shape)
    ):
        raise BuilderError(
            f"model.builder {spec!r} returned a model for inputs {expects}, but the images "
            f"are {tuple(input_shape)}: build it on the input_shape argument"
        )
    if gives[-1] != n_classes:
        raise BuilderError(
            f"model.builder {spec!r} returned a model with {gives[-1]} outputs for "
            f"{n_classes} classes: end it with Dense(n_classes, activation='softmax')"
        )
    # The pipeline's loss takes probabilities: logits would train, badly, and silently.
    probe = np.random.default_rng(0).uniform(0, 255, (2, *input_shape)).astype("float32")
    out = np.asarray(model(probe, training=False), dtype="float64")
    if not (np.all(out >= -1e-6) and np.allclose(out.sum(axis=-1), 1.0, atol=1e-3)):
        raise BuilderError(
            f"model.builder {spec!r} returned a model whose outputs are not probabilities "
            "(they do not sum to 1): end it with activation='softmax' (the pipeline's loss "
            "is sparse categorical cross-entropy on probabilities, not logits)"
        )


def apply_knobs(
    model: keras.Model,
    cfg: ModelConfig,
    declared: set[str],
    variant: str,
    input_shape: tuple[int, int, int],
    seed: int,
) -> keras.Model:
    """Put the generic knobs the builder did not take on its model.

    A Sequential model is rebuilt flat, layer by layer, with the new layers in
    place; a functional one gets its head dropout in its own graph and the
    augmentation in front of it as a nested model (dropout after conv blocks
    needs the layer order, so only a Sequential model takes it).
    """
    wanted = {k for k in ("l2", "dropout", "conv_dropout") if getattr(cfg, k) > 0}
    if cfg.augmentation.enabled:
        wanted.add("augmentation")
    wanted -= declared
    if not wanted:
        return model
    if "l2" in wanted:
        add_l2(model, cfg.l2, variant)
    if isinstance(model, keras.Sequential):
        return rebuilt(model, cfg, wanted, variant, input_shape, seed)
    if "conv_dropout" in wanted:
        raise BuilderError(
            f"variant {variant!r}: conv_dropout goes after each conv block, which only a "
            "Sequential model's layer order shows; take a `conv_dropout` keyword in the "
            "builder, or remove it from the variant"
        )
    if "dropout" in wanted:
        model = dropout_before_head(model, cfg.dropout, seed, variant)
    if "augmentation" in wanted:
        inputs, x = augmentation_input(cfg, input_shape, seed)
        model = keras.Model(inputs, model(x), name=model.name)
    return model


def add_l2(model: keras.Model, l2: float, variant: str) -> None:
    """An L2 penalty on every Conv2D and Dense kernel, nested models' included."""
    kernels = [
        layer
        for layer in keras_private.all_layers(model)
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense))
    ]
    if not kernels:
        raise BuilderError(f"variant {variant!r}: l2 needs Conv2D or Dense layers; found none")
    for layer in kernels:
        keras_private.set_kernel_l2(layer, l2)


def head_index(layers: list[Any], variant: str) -> int:
    """Where the classifier head is: the last Dense layer, with only activations after it."""
    dense = [i for i, layer in enumerate(layers) if isinstance(layer, keras.layers.Dense)]
    after = layers[dense[-1] + 1 :] if dense else []
    if not dense or any(
        not isinstance(layer, (keras.layers.Activation, keras.layers.Softmax)) for layer in after
    ):
        raise BuilderError(
            f"variant {variant!r}: dropout goes before the classifier head, the last Dense "
            "layer with only activations after it, and this model has "
            + ("no Dense layer" if not dense else f"{after[0].name!r} after it")
            + "; take a `dropout` keyword in the builder to place it yourself"
        )
    return dense[-1]


def head_dropout(rate: float, seed: int) -> keras.layers.Dropout:
    """The Dropout in front of a classifier head, seeded by its name like every layer."""
    return keras.layers.Dropout(rate, seed=layer_seed(seed, HEAD_DROPOUT), name=HEAD_DROPOUT)


def dropout_before_head(model: keras.Model, rate: float, seed: int, variant: str) -> keras.Model:
    """A functional model with Dropout(rate) in front of its classifier head."""
    layers = list(model.layers)
    head = head_index(layers, variant)
    x = head_dropout(rate, seed)(layers[head].input)
    for layer in layers[head:]:
        x = layer(x)
    return keras.Model(model.inputs, x, name=model.name)


def rebuilt(
    model: keras.Sequential,
    cfg: ModelConfig,
    wanted: set[str],
    variant: str,
    input_shape: tuple[int, int, int],
    seed: int,
) -> keras.Model:
    """A Sequential model's layers replayed on a new input with the wanted knobs' layers:
    augmentation first, dropout after each conv block (its pooling layer, or the conv
    when none follows) and before the head."""
    layers: list[Any] = list(model.layers)
    if "dropout" in wanted:
        layers.insert(head_index(layers, variant), head_dropout(cfg.dropout, seed))
    if "conv_dropout" in wanted:
        layers = with_conv_dropout(layers, cfg.conv_dropout, seed, variant)
    if "augmentation" in wanted:
        inputs, x = augmentation_input(cfg, input_shape, seed)
    else:
        inputs = x = keras.Input(shape=tuple(input_shape), dtype="float32", name="pixels")
    for layer in layers:
        x = layer(x)
    return keras.Model(inputs, x, name=model.name)


POOLING = (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D)
# What may follow a conv inside its block (before the pooling).
BLOCK_TAIL = (keras.layers.BatchNormalization, keras.layers.Activation, keras.layers.ReLU)


def with_conv_dropout(layers: list[Any], rate: float, seed: int, variant: str) -> list[Any]:
    """`layers` with a Dropout after each conv block: after the pooling that follows a
    Conv2D, or after the Conv2D (and its normalization/activation) when none does."""
    out: list[Any] = []
    pending = 0
    for layer in layers:
        if pending and not isinstance(layer, (*POOLING, *BLOCK_TAIL)):
            out.append(_conv_dropout(rate, seed, pending))
            pending = 0
        out.append(layer)
        if isinstance(layer, keras.layers.Conv2D):
            pending = sum(isinstance(x, keras.layers.Conv2D) for x in out)
        elif isinstance(layer, POOLING) and pending:
            out.append(_conv_dropout(rate, seed, pending))
            pending = 0
    if not any(isinstance(x, keras.layers.Conv2D) for x in layers):
        raise BuilderError(f"variant {variant!r}: conv_dropout needs Conv2D layers; found none")
    return out


def _conv_dropout(rate: float, seed: int, index: int) -> keras.layers.Dropout:
    name = f"dropout_after_conv{index}"
    return keras.layers.Dropout(rate, seed=layer_seed(seed, name), name=name)


def augmentation_input(
    cfg: ModelConfig, input_shape: tuple[int, int, int], seed: int
) -> tuple[Any, Any]:
    """A new input and the augmentation layers applied to it (active only in fit)."""
    from pipeline.models import _SeedSequence

    inputs = keras.Input(shape=tuple(input_shape), dtype="float32", name="pixels")
    x = inputs
    for layer in augmentation_layers(cfg.augmentation, _SeedSequence(seed)):
        x = layer(x)
    return inputs, x


def backbone_model(
    cfg: ModelConfig, input_shape: tuple[int, int, int], n_classes: int, seed: int
) -> keras.Model:
    """A Keras Applications backbone with global average pooling and a softmax head."""
    name = cfg.builder.partition(":")[2]
    height, width, channels = (int(d) for d in input_shape)
    size = (max(height, BACKBONE_MIN_SIZE), max(width, BACKBONE_MIN_SIZE))
    weights = None if cfg.weights == "none" else Path(cfg.weights)
    if weights is not None and not weights.is_file():
        raise BuilderError(
            f"model.weights {cfg.weights!r}: file not found. Nothing is downloaded: put "
            f"the {name} weights without the top (Keras Applications' *_notop.h5 file) "
            "there, or set model.weights: none"
        )
    inputs = keras.Input(shape=tuple(input_shape), dtype="float32", name="pixels")
    x = inputs
    if size != (height, width):
        x = keras.layers.Resizing(*size, name="resize_for_backbone")(x)
    if channels == 1:  # the backbones take colour: grey in all three channels
        x = keras.layers.Concatenate(name="grey_to_rgb")([x, x, x])
    elif channels != 3:
        raise BuilderError(f"{name} takes 1 or 3 channels; the images have {channels}")
    application = getattr(keras.applications, name)
    options: dict[str, Any] = {"include_top": False, "pooling": "avg", "input_shape": (*size, 3)}
    if name in ("MobileNetV3Small", "ConvNeXtTiny"):
        options["include_preprocessing"] = True  # they take pixels in 0-255 as given
    try:
        backbone = application(weights=str(weights) if weights else None, **options)
    except (ValueError, OSError) as exc:
        raise BuilderError(f"model.weights {cfg.weights!r} for {name}: {exc}") from None
    backbone.trainable = not cfg.freeze_backbone
    if name == "ResNet50":  # caffe-style input: pixels minus the ImageNet mean
        x = keras.layers.Normalization(
            mean=[123.68, 116.779, 103.939], variance=[1.0, 1.0, 1.0], name="imagenet_mean"
        )(x)
    # training=False keeps a frozen backbone's BatchNorm statistics fixed (Keras's
    # transfer-learning guide); a trained one updates them.
    x = backbone(x, training=False) if cfg.freeze_backbone else backbone(x)
    if cfg.dropout > 0:
        x = head_dropout(cfg.dropout, seed)(x)
    outputs = keras.layers.Dense(
        n_classes,
        activation="softmax",
        kernel_initializer=keras.initializers.GlorotUniform(seed=layer_seed(seed, "head")),
        name="head",
    )(x)
    return keras.Model(inputs, outputs, name=name.lower())
