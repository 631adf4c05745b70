"""The one CNN builder: a variant's `ModelConfig` -> an uncompiled Keras 3 model.

Variants are data: dropout, weight decay, augmentation and width all come from
the config, so there is no per-variant code. The baseline (no regularisation)
is the classic tutorial CNN: Conv-MaxPool blocks, Flatten, Dense, softmax.

Layer order (the contract evaluate relies on):
    Input float32 raw pixels in [0, 255], shape (h, w, c)
    Rescaling(1/255)
    augmentation layers, only when model.augmentation.enabled (Keras
        preprocessing layers: they act in training and pass inputs through
        unchanged at inference)
    per conv_filters entry i (1-based): Conv2D "conv_<i>" + MaxPooling2D
        (skipped once the feature map is smaller than 2x2) + Dropout when
        conv_dropout > 0 (named so that only Conv2D layers start with "conv_")
    Flatten, Dense(dense_units, relu), Dropout when dropout > 0,
    Dense(n_classes, softmax)

Inputs: a ModelConfig and the data's shape. Outputs: a keras.Model; no I/O.
"""

from __future__ import annotations

import keras

from pipeline.config import AugmentationConfig, ModelConfig
from pipeline.seeds import layer_seed

# Layer names other stages look up.
CONV_PREFIX = "conv_"
OUTPUT_LAYER = "output"
AUGMENTATION_LAYERS = ("augment_rotation", "augment_zoom", "augment_translation", "augment_flip")


def build_model(
    model_cfg: ModelConfig, input_shape: tuple[int, int, int], n_classes: int, seed: int
) -> keras.Model:
    """Build the CNN a variant describes.

    Every random part (initializers, dropout, augmentation) gets its own seed
    derived from `seed`, so two builds with the same arguments are identical
    whatever the global random state.

    Args:
        input_shape: (height, width, channels) of the raw images.
        n_classes: size of the softmax output.
        seed: base seed for initializers, dropout and augmentation.
    """
    if n_classes < 2:
        raise ValueError(f"n_classes must be at least 2, got {n_classes}")
    seeds = _SeedSequence(seed)
    regularizer = keras.regularizers.L2(model_cfg.l2) if model_cfg.l2 > 0 else None

    inputs = keras.Input(shape=tuple(input_shape), dtype="float32", name="pixels")
    x = keras.layers.Rescaling(1.0 / 255.0, name="rescale")(inputs)
    if model_cfg.augmentation.enabled:
        for layer in augmentation_layers(model_cfg.augmentation, seeds):
            x = layer(x)
    x = _conv_blocks(x, model_cfg, input_shape, seeds, regularizer)
    outputs = _classifier_head(x, model_cfg, n_classes, seeds, regularizer)
    return keras.Model(inputs=inputs, outputs=outputs, name="cnn")


def _conv_blocks(
    x: keras.KerasTensor,
    model_cfg: ModelConfig,
    input_shape: tuple[int, int, int],
    seeds: _SeedSequence,
    regularizer: keras.regularizers.Regularizer | None,
) -> keras.KerasTensor:
    """One Conv2D "conv_<i>" block per conv_filters entry: conv, pooling, dropout."""
    height, width = int(input_shape[0]), int(input_shape[1])
    for i, filters in enumerate(model_cfg.conv_filters, start=1):
        x = keras.layers.Conv2D(
            filters,
            model_cfg.kernel_size,
            padding="same",
            # With batch_norm the ReLU comes after the normalization (and the
            # normalization's shift stands in for the conv's bias).
            activation=None if model_cfg.batch_norm else "relu",
            use_bias=not model_cfg.batch_norm,
            kernel_initializer=keras.initializers.GlorotUniform(seed=seeds.of(f"{CONV_PREFIX}{i}")),
            kernel_regularizer=regularizer,
            name=f"{CONV_PREFIX}{i}",
        )(x)
        if model_cfg.batch_norm:
            x = keras.layers.BatchNormalization(name=f"batch_norm_{i}")(x)
            x = keras.layers.Activation("relu", name=f"relu_{i}")(x)
        # Tiny images (8x8 digits with several blocks) would pool to 0x0.
        if height >= 2 and width >= 2:
            x = keras.layers.MaxPooling2D(pool_size=2, name=f"pool_{i}")(x)
            height, width = height // 2, width // 2
        if model_cfg.conv_dropout > 0:
            x = keras.layers.Dropout(
                model_cfg.conv_dropout,
                seed=seeds.of(f"dropout_after_conv{i}"),
                name=f"dropout_after_conv{i}",
            )(x)
    return x


def _classifier_head(
    x: keras.KerasTensor,
    model_cfg: ModelConfig,
    n_classes: int,
    seeds: _SeedSequence,
    regularizer: keras.regularizers.Regularizer | None,
) -> keras.KerasTensor:
    """Flatten (or global average pooling), Dense(dense_units, relu), Dropout when
    dropout > 0, softmax output."""
    if model_cfg.head == "global_average":
        x = keras.layers.GlobalAveragePooling2D(name="global_average")(x)
    else:
        x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(
        model_cfg.dense_units,
        activation="relu",
        kernel_initializer=keras.initializers.GlorotUniform(seed=seeds.of("dense")),
        kernel_regularizer=regularizer,
        name="dense",
    )(x)
    if model_cfg.dropout > 0:
        x = keras.layers.Dropout(model_cfg.dropout, seed=seeds.of("dropout"), name="dropout")(x)
    return keras.layers.Dense(
        n_classes,
        activation="softmax",
        kernel_initializer=keras.initializers.GlorotUniform(seed=seeds.of(OUTPUT_LAYER)),
        # float32 whatever the policy: a softmax in bf16 rounds small probabilities to 0.
        dtype="float32",
        name=OUTPUT_LAYER,
    )(x)


def augmentation_layers(aug: AugmentationConfig, seeds: _SeedSequence) -> list[keras.layers.Layer]:
    """Random geometric augmentation; zero-strength transforms are left out."""
    layers: list[keras.layers.Layer] = []
    if aug.rotation > 0:
        layers.append(
            keras.layers.RandomRotation(
                aug.rotation,
                fill_mode="constant",
                seed=seeds.of(AUGMENTATION_LAYERS[0]),
                name=AUGMENTATION_LAYERS[0],
            )
        )
    if aug.zoom > 0:
        layers.append(
            keras.layers.RandomZoom(
                aug.zoom,
                fill_mode="constant",
                seed=seeds.of(AUGMENTATION_LAYERS[1]),
                name=AUGMENTATION_LAYERS[1],
            )
        )
    if aug.translation > 0:
        layers.append(
            keras.layers.RandomTranslation(
                aug.translation,
                aug.translation,
                fill_mode="constant",
                seed=seeds.of(AUGMENTATION_LAYERS[2]),
                name=AUGMENTATION_LAYERS[2],
            )
        )
    if aug.flip:
        layers.append(
            keras.layers.RandomFlip(
                "horizontal", seed=seeds.of(AUGMENTATION_LAYERS[3]), name=AUGMENTATION_LAYERS[3]
            )
        )
    return layers


def conv_layer_names(model: keras.Model) -> list[str]:
    """The conv_<i> layers in order (evaluate draws their feature maps); for a model
    the built-in builder did not make (model.builder), its Conv2D layers in order."""
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    names = [layer.name for layer in convs if layer.name.startswith(CONV_PREFIX)]
    if not names:
        return [layer.name for layer in convs]
    return sorted(names, key=lambda name: int(name.removeprefix(CONV_PREFIX)))


class _SeedSequence:
    """Distinct, reproducible per-layer seeds from one base seed.

    A layer's seed depends only on the base seed and the layer's name, not on
    which layers come before it: adding dropout or augmentation to a variant
    leaves every other layer's initial weights exactly as in the baseline, so
    a comparison measures the mitigation and not a different initialisation.
    """

    def __init__(self, base: int) -> None:
        self._base = int(base)

    def of(self, layer_name: str) -> int:
        return layer_seed(self._base, layer_name)
