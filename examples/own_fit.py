"""Your own `model.fit`, diagnosed: the classic first Keras CNN with two lines added.

The model is the one the project started from (Conv2D 32 -> MaxPool -> Flatten
-> Dense 128 -> Dense 10 on 64x64x3 images), trained with a plain `model.fit`.
The two lines marked "added" are all it takes to get the pipeline's verdict:
the callback logs the curves to MLflow (./mlflow.db unless MLFLOW_TRACKING_URI
says otherwise), prints the verdict when training ends and writes a one-page
answer into overfit_reports/.

    pip install .            # or the project's .venv
    python examples/own_fit.py
    mlflow ui                # the run, its curves, and the verdict as tags

The images are scikit-learn's bundled digits, enlarged to 64x64 RGB so that the
model runs as written; use your own arrays instead.
"""

import keras
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from pipeline.keras import OverfittingMonitor  # added

digits = load_digits()
# 8x8 grey levels 0-16 -> 64x64x3 in 0-255, like photos.
images = np.kron(digits.images, np.ones((8, 8)))[..., None].repeat(3, axis=-1) * (255 / 16)
x_train, x_val, y_train, y_val = train_test_split(
    images.astype("float32"), digits.target, train_size=600, stratify=digits.target, random_state=0
)

keras.utils.set_random_seed(0)
model = keras.Sequential(
    [
        keras.Input(shape=(64, 64, 3)),
        keras.layers.Rescaling(1.0 / 255),
        keras.layers.Conv2D(32, (3, 3), activation="relu"),
        keras.layers.MaxPooling2D((2, 2)),
        keras.layers.Flatten(),
        keras.layers.Dense(128, activation="relu"),
        keras.layers.Dense(10, activation="softmax"),
    ]
)
model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
history = model.fit(
    x_train,
    y_train,
    validation_data=(x_val, y_val),
    epochs=15,
    batch_size=32,
    callbacks=[OverfittingMonitor(n_train=len(x_train), n_val=len(x_val), mlflow=True)],  # added
)
