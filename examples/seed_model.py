"""The project's first model as a `model.builder`: your own architecture in the pipeline.

Conv2D 32 -> MaxPool -> Flatten -> Dense 128 -> Dense n_classes, the network the
project started from (on 64x64x3 images there), written as the function the
pipeline calls:

    # params.yaml
    model:
      builder: examples/seed_model.py:build

    dvc repro        # every variant trains this network; editing this file retrains

The pipeline passes float32 pixels in 0-255 of the data's `input_shape`
(height, width, channels), hence the Rescaling layer, and puts the variants'
knobs on the returned model: augmentation layers in front, an L2 penalty on the
Conv and Dense kernels, dropout after the conv block and before the last Dense
layer. A builder that takes one of those as a keyword (`dropout`, say) places
it itself. The built-in network's capacity knobs (conv_filters, dense_units)
apply only to a builder that takes them, as this one does.
"""

import keras


def build(input_shape, n_classes, seed, conv_filters, dense_units):
    """The seed's network. It takes the width a variant asks for (the first
    conv_filters entry and dense_units: 32 and 128 with params.yaml's own `model`
    section, the seed's sizes), so the small and large variants apply to it too."""
    init = keras.initializers.GlorotUniform(seed=seed)
    return keras.Sequential(
        [
            keras.Input(shape=input_shape),
            keras.layers.Rescaling(1.0 / 255),
            keras.layers.Conv2D(
                conv_filters[0], (3, 3), activation="relu", kernel_initializer=init
            ),
            keras.layers.MaxPooling2D((2, 2)),
            keras.layers.Flatten(),
            keras.layers.Dense(dense_units, activation="relu", kernel_initializer=init),
            keras.layers.Dense(n_classes, activation="softmax", kernel_initializer=init),
        ],
        name="seed_model",
    )
