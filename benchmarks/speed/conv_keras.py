"""Speed worker: the Keras blog's conv MNIST autoencoder, verbatim, on TensorFlow.

Measures training samples/s per epoch (the ``fit`` pass only) and the test MSE
after each epoch. The model and the MNIST reader are those of
``benchmarks/keras_reference.py``, imported from there. Runs in the Keras
environment (``requirements-keras.txt``); ``suite.py`` starts it:

    benchmarks/.venvs/keras/bin/python benchmarks/speed/conv_keras.py \
        --config '{"epochs": 1, "seed": 0, "threads": 2, "train_limit": 6000}' --out /tmp/keras.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import statistics
import time
from pathlib import Path

DEFAULTS = {"epochs": 3, "seed": 0, "threads": 2, "batch_size": 128, "lr": 1e-3, "l1": 1e-4, "mnist": None}


def load_reference():  # noqa: ANN201 - a module
    """benchmarks/keras_reference.py as a module (it imports only numpy at the top)."""
    path = Path(__file__).resolve().parents[1] / "keras_reference.py"
    spec = importlib.util.spec_from_file_location("keras_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="JSON object, see DEFAULTS")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    cfg = {**DEFAULTS, **json.loads(args.config)}
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
    steady = [e["samples_per_s"] for e in epochs[1:]] or [epochs[0]["samples_per_s"]]
    result = {
        "contender": "keras",
        "version": f"keras {keras.__version__}, tensorflow {tf.__version__}",
        "epochs": epochs,
        "steady_samples_per_s": statistics.median(steady),
        "test_mse": epochs[-1]["test_mse"],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "threads": threads,
        "train_samples": len(x_train),
        "notes": "benchmarks/keras_reference.py's build(); model.fit per epoch on in-memory NHWC arrays; "
        f"TF intra/inter-op threads {threads}/{threads}; keras {keras.backend.backend()} backend",
    }
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
