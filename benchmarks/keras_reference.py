"""The Keras blog's convolutional sparse autoencoder, verbatim, on TensorFlow.

Runs in its own environment (``pip install tensorflow-cpu``; sparseae is not
needed), reads the MNIST files shipped with sparseae, and prints one JSON line
per epoch with test MSE, L0 and dead code units, measured as sparseae measures
them.

    python benchmarks/keras_reference.py --epochs 1 --seed 0
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from pathlib import Path

import numpy as np

MNIST = Path(__file__).resolve().parents[1] / "src" / "sparseae" / "data" / "mnist_files"


def read_images(name: str) -> np.ndarray:
    raw = gzip.decompress((MNIST / f"{name}-images-idx3-ubyte.gz").read_bytes())
    return np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 28, 28, 1).astype("float32") / 255.0


def build(keras):  # noqa: ANN001 - keras module
    from keras import layers, regularizers

    inputs = keras.Input(shape=(28, 28, 1))
    x = layers.Conv2D(16, (3, 3), activation="relu", padding="same")(inputs)
    x = layers.MaxPooling2D((2, 2), padding="same")(x)
    x = layers.Conv2D(32, (3, 3), activation="relu", padding="same")(x)
    x = layers.MaxPooling2D((2, 2), padding="same")(x)
    x = layers.Flatten()(x)
    code = layers.Dense(32, activation="relu", activity_regularizer=regularizers.l1(10e-5), name="code")(x)
    x = layers.Dense(7 * 7 * 32, activation="relu")(code)
    x = layers.Reshape((7, 7, 32))(x)
    x = layers.Conv2D(32, (3, 3), activation="relu", padding="same")(x)
    x = layers.Conv2DTranspose(32, 3, strides=2, activation="relu", padding="same")(x)
    x = layers.Conv2DTranspose(16, 3, strides=2, activation="relu", padding="same")(x)
    outputs = layers.Conv2DTranspose(1, 3, activation="relu", padding="same")(x)
    return keras.Model(inputs, outputs), keras.Model(inputs, code)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--codes", help="After the last epoch, save the train and test codes to this .npz file.")
    args = parser.parse_args()
    import keras

    keras.utils.set_random_seed(args.seed)
    x_train, x_test = read_images("train"), read_images("t10k")
    autoencoder, encoder = build(keras)
    assert autoencoder.count_params() == 130_017
    autoencoder.compile(optimizer="adam", loss="mse")
    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()
        autoencoder.fit(x_train, x_train, epochs=1, batch_size=128, shuffle=True, verbose=0)
        elapsed = time.perf_counter() - start
        recon = autoencoder.predict(x_test, batch_size=1000, verbose=0)
        code = encoder.predict(x_test, batch_size=1000, verbose=0)
        print(json.dumps({
            "seed": args.seed, "epoch": epoch, "epoch_time_s": round(elapsed, 2), "samples_per_s": round(60000 / elapsed),
            "test_mse": float(np.mean((x_test - recon) ** 2)), "test_l0": float((code != 0).sum(1).mean()),
            "test_dead_units": int(((code != 0).sum(0) == 0).sum()),
        }), flush=True)  # fmt: skip
    if args.codes:
        train_code = encoder.predict(x_train, batch_size=1000, verbose=0)
        np.savez(args.codes, train=train_code, test=code)


if __name__ == "__main__":
    main()
