"""A network under 100K parameters for 28x28 grey images such as Fashion-MNIST, as a
`model.builder` a variant can name (the README's recommended settings at that size).

Two 3x3 convolutions per block (VGG-style: the receptive field of a 5x5 at two
thirds of the weights), BatchNorm before each ReLU, two blocks of 32 and 64
filters down to 7x7, flattened straight into the softmax layer (most of a
dense layer's weights would go to the 3,136 features). Dropout before the head
and the augmentation come from the variant's own knobs, as for any builder.

    variants:
      compact:
        model:
          builder: examples/compact_fashion.py:build
          dropout: 0.3
          augmentation: {enabled: true, rotation: 0.0, zoom: 0.0, translation: 0.0, flip: true}

examples/params-fashion.yaml has it with the rest of the recommended settings. On
all of Fashion-MNIST it scored 0.931 on the test images in a full `dvc repro`
(96,938 parameters, 17 minutes on 2 cores; docs/performance.md).
"""

import keras


def build(input_shape, n_classes, seed):
    init = keras.initializers.HeNormal(seed=seed)
    inputs = keras.Input(shape=input_shape)
    x = keras.layers.Rescaling(1.0 / 255)(inputs)
    for filters in (32, 64):
        for _ in range(2):
            x = keras.layers.Conv2D(
                filters, 3, padding="same", use_bias=False, kernel_initializer=init
            )(x)
            x = keras.layers.BatchNormalization()(x)
            x = keras.layers.Activation("relu")(x)
        x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(n_classes, activation="softmax", kernel_initializer=init)(x)
    return keras.Model(inputs, outputs, name="compact_fashion")
