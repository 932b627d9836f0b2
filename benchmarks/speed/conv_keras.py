"""Speed worker: the Keras blog's conv MNIST autoencoder, verbatim, on TensorFlow.

Measures training samples/s per epoch (the ``fit`` pass only) and the test MSE
after each epoch. The model and the MNIST reader are those of
``benchmarks/keras_reference.py``, imported from there. Runs in the Keras
environment (``requirements-keras.txt``); ``suite.py`` starts it:

    benchmarks/.venvs/keras/bin/python benchmarks/speed/conv_keras.py \
        --config '{"epochs": 1, "seed": 0, "threads": 2, "train_limit": 6000}' --out /tmp/keras.json
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
from pathlib import Path

from protocol import conv_result, read_config, write_result

DEFAULTS = {"epochs": 3, "seed": 0, "threads": 2, "batch_size": 128, "lr": 1e-3, "l1": 1e-4, "mnist": None}


def load_reference():  # noqa: ANN201 - a module
    """benchmarks/keras_reference.py as a module (it imports only numpy at the top)."""
    path = Path(__file__).resolve().parents[1] / "keras_reference.py"
    spec = importlib.util.spec_from_file_location("keras_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    cfg, out = read_config(__doc__.splitlines()[0], DEFAULTS)
    threads = int(cfg["threads"])
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf

    # What TensorFlow picks by itself on a machine with `threads` cores.
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    import keras

    ref = load_reference()
    if cfg["mnist"]:
        ref.MNIST = Path(cfg["mnist"])
    keras.utils.set_random_seed(int(cfg["seed"]))
    x_train, x_test = ref.read_images("train"), ref.read_images("t10k")
    if cfg.get("train_limit"):
        x_train = x_train[: int(cfg["train_limit"])]
    autoencoder, encoder = ref.build(keras)
    # The blog's regularizers.l1(10e-5) and Adam's default learning rate: the protocol's l1 and lr.
    assert abs(autoencoder.get_layer("code").activity_regularizer.l1 - cfg["l1"]) < 1e-12
    autoencoder.compile(optimizer=keras.optimizers.Adam(learning_rate=cfg["lr"]), loss="mse")
    epochs = []
    for epoch in range(1, int(cfg["epochs"]) + 1):
        start = time.perf_counter()
        autoencoder.fit(x_train, x_train, epochs=1, batch_size=int(cfg["batch_size"]), shuffle=True, verbose=0)
        elapsed = time.perf_counter() - start
        recon = autoencoder.predict(x_test, batch_size=1000, verbose=0)
        code = encoder.predict(x_test, batch_size=1000, verbose=0)
        active = code != 0
        epochs.append({
            "epoch": epoch, "epoch_time_s": elapsed, "samples_per_s": len(x_train) / elapsed,
            "test_mse": float(np.mean((x_test - recon) ** 2)), "test_l0": float(active.sum(1).mean()),
            "test_dead_units": int((active.sum(0) == 0).sum()),
        })  # fmt: skip
        print(json.dumps(epochs[-1]), flush=True)
    version = f"keras {keras.__version__}, tensorflow {tf.__version__}"
    notes = (
        "benchmarks/keras_reference.py's build(); model.fit per epoch on in-memory NHWC arrays; "
        f"TF intra/inter-op threads {threads}/{threads}; keras {keras.backend.backend()} backend"
    )
    write_result(out, conv_result("keras", version, epochs, threads, len(x_train), notes))


if __name__ == "__main__":
    main()
