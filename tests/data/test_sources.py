"""Every data source end to end (from Python and from the CLI), streaming, and the messages for bad input.

The data is made to be learnable: each row is a sparse, positive combination of a few random
unit atoms plus a little noise, so a TopK SAE that trains at all cuts its loss by a clear margin.
"""

from __future__ import annotations

import csv
import gzip
import json
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

import sparseae
from conftest import crash_in_epoch_two
from sparseae import DataConfig, SparseAEError, TrainConfig, build_preset, load_data, train
from sparseae.cli import main
from sparseae.data import RowStream, write_shards
from sparseae.data.arrays import NpyReader
from sparseae.data.split import holdout_rows
from sparseae.sparsity import build_sparsity
from sparseae.training import read_metrics

D, N_ROWS, N_ATOMS, PER_ROW = 32, 800, 12, 3
IMAGE_HW = (4, 8)  # 4 x 8 gray images: 32 pixels, like the flat rows
TRAIN = TrainConfig.for_preset("dense", epochs=3, batch_size=64, lr=1e-2, seed=0)
CLI_TRAIN = ["--model", "dense", "--sparsity", "topk", "--k", "4", "--n-latents", "32", "--epochs", "3",
             "--batch-size", "64", "--lr", "0.01", "--seed", "0", "--quiet"]  # fmt: skip
"""The CLI flags that give TRAIN (the dense preset's training defaults, lr 1e-2) and the model below."""


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def structured(n: int = N_ROWS, d: int = D, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``(n, d)`` float32 (sparse combinations of atoms + noise) and a class label per row (its strongest atom mod 3)."""
    rng = np.random.default_rng(seed)
    atoms = rng.normal(size=(N_ATOMS, d))
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    codes = np.zeros((n, N_ATOMS))
    for row in codes:
        row[rng.choice(N_ATOMS, PER_ROW, replace=False)] = rng.uniform(1, 2, PER_ROW)
    x = codes @ atoms + 0.01 * rng.normal(size=(n, d))
    return x.astype(np.float32), codes.argmax(1) % 3


def pixels(x: np.ndarray) -> np.ndarray:
    """Structured rows as 8-bit gray images ``(n, 4, 8)``."""
    return np.clip(np.round((0.5 + 0.2 * x) * 255), 0, 255).astype(np.uint8).reshape(len(x), *IMAGE_HW)


def model_for(data: sparseae.Dataset, **kwargs) -> sparseae.Autoencoder:
    return build_preset("dense", data.sample_shape, build_sparsity("topk", k=4), seed=0, n_latents=32, **kwargs)


def assert_learned(metrics: list[dict]) -> None:
    """Three epochs cut the training loss by a third and explain over half the test variance."""
    first, last = metrics[0], metrics[-1]
    assert len(metrics) == 3
    assert last["train_recon"] < 2 / 3 * first["train_recon"], [m["train_recon"] for m in metrics]
    assert last["test_fvu"] < 0.5, [m["test_fvu"] for m in metrics]


def whole(split) -> torch.Tensor:
    return split[:] if isinstance(split, RowStream) else split


def assert_rows_from(data: sparseae.Dataset, x: np.ndarray, y: np.ndarray | None) -> None:
    """Train and test hold every row of ``x`` once between them, with its own label."""
    loaded = torch.cat([whole(data.train), whole(data.test)]).flatten(1).double()
    expected = torch.from_numpy(x).flatten(1).double()
    distance = torch.cdist(loaded, expected, compute_mode="donot_use_mm_for_euclid_dist")
    nearest = distance.argmin(1)
    assert distance.min(1).values.max() < 1e-5
    assert sorted(nearest.tolist()) == list(range(len(expected)))
    if y is None:
        assert data.train_labels is None and data.test_labels is None
    else:
        labels = torch.cat([data.train_labels, data.test_labels])
        assert labels.tolist() == y[nearest.numpy()].tolist()


def idx_bytes(array: np.ndarray) -> bytes:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def save_png(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image, "L").save(path)


def write_csv(path: Path, rows: list, header: list[str] | None = None) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        if header:
            writer.writerow(header)
        writer.writerows(rows)
    return path


# --- every file source: what the file holds, and how to point sparseae at it --------------


@dataclass
class Written:
    path: Path
    x: np.ndarray
    """The samples the file holds, as sparseae should read them, ``(N, *shape)``."""
    y: np.ndarray | None
    config: dict = field(default_factory=dict)
    """DataConfig fields needed besides the source."""
    flags: list[str] = field(default_factory=list)
    """The same as CLI flags."""
    streamed: bool = False


def _npy(tmp: Path) -> Written:
    x, _ = structured()
    np.save(tmp / "rows.npy", x)
    return Written(tmp / "rows.npy", x, None)


def _npz(tmp: Path) -> Written:
    x, _ = structured()
    np.savez(tmp / "rows.npz", features=x)
    return Written(tmp / "rows.npz", x, None)


def _npz_keras(tmp: Path) -> Written:
    x, y = structured()
    np.savez(tmp / "keras.npz", x_train=x[:720], x_test=x[720:], y_train=y[:720], y_test=y[720:])
    return Written(tmp / "keras.npz", x, y)


def _safetensors(tmp: Path) -> Written:
    from safetensors.numpy import save_file

    x, _ = structured()
    save_file({"x": x}, str(tmp / "rows.safetensors"))
    return Written(tmp / "rows.safetensors", x, None)


def _pt_tensor(tmp: Path) -> Written:
    x, _ = structured()
    torch.save(torch.from_numpy(x), tmp / "rows.pt")
    return Written(tmp / "rows.pt", x, None)


def _pt_dict(tmp: Path) -> Written:
    x, y = structured()
    torch.save({"x": torch.from_numpy(x), "y": torch.from_numpy(y)}, tmp / "rows.pt")
    return Written(tmp / "rows.pt", x, y)


def _csv_header_label(tmp: Path) -> Written:
    x, y = structured()
    rows = [[*map(repr, row.tolist()), int(label)] for row, label in zip(x, y, strict=True)]
    write_csv(tmp / "rows.csv", rows, [f"f{i}" for i in range(D)] + ["label"])
    return Written(tmp / "rows.csv", x, y, {"label_column": "label"}, ["--label-column", "label"])


def _csv_no_header(tmp: Path) -> Written:
    x, _ = structured()
    write_csv(tmp / "rows.csv", [list(map(repr, row.tolist())) for row in x])
    return Written(tmp / "rows.csv", x, None)


def _parquet_columns_label(tmp: Path) -> Written:
    import pyarrow as pa
    import pyarrow.parquet as pq

    x, y = structured()
    table = pa.table({**{f"f{i}": x[:, i] for i in range(D)}, "label": y.astype(np.int64)})
    pq.write_table(table, tmp / "rows.parquet")
    return Written(tmp / "rows.parquet", x, y, {"label_column": "label"}, ["--label-column", "label"])


def _parquet_embedding(tmp: Path) -> Written:
    import pyarrow as pa
    import pyarrow.parquet as pq

    x, _ = structured()
    pq.write_table(pa.table({"embedding": pa.array(list(x), type=pa.list_(pa.float32()))}), tmp / "emb.parquet")
    return Written(tmp / "emb.parquet", x, None)


def _image_folder(tmp: Path) -> Written:
    x, y = structured()
    images = pixels(x)
    for i, (image, label) in enumerate(zip(images, y, strict=True)):
        save_png(tmp / "images" / f"class{label}" / f"{i:04d}.png", image)
    return Written(tmp / "images", images[:, None].astype(np.float32) / 255, y)


def _idx_directory(tmp: Path) -> Written:
    x, y = structured()
    images = pixels(x)
    directory = tmp / "idx"
    directory.mkdir()
    for name, array in (("train-images-idx3-ubyte", images[:720]), ("train-labels-idx1-ubyte", y[:720]),
                        ("t10k-images-idx3-ubyte", images[720:]), ("t10k-labels-idx1-ubyte", y[720:])):  # fmt: skip
        (directory / f"{name}.gz").write_bytes(gzip.compress(idx_bytes(array)))
    return Written(directory, images[:, None].astype(np.float32) / 255, y)


def _shards(tmp: Path) -> Written:
    x, _ = structured()
    rows = torch.from_numpy(x)
    write_shards([rows[:500], rows[500:]], tmp / "cache", rows_per_shard=300)  # 3 shards, the last one short
    return Written(tmp / "cache", x, None)


def _shards_streamed(tmp: Path) -> Written:
    written = _shards(tmp)
    return Written(written.path, written.x, None, {"load": "stream"}, ["--load", "stream"], streamed=True)


def _safetensors_streamed(tmp: Path) -> Written:
    written = _safetensors(tmp)
    return Written(written.path, written.x, None, {"load": "stream"}, ["--load", "stream"], streamed=True)


def _npy_streamed(tmp: Path) -> Written:
    written = _npy(tmp)
    config, flags = {"load": "stream", "shuffle_buffer": 64}, ["--load", "stream", "--shuffle-buffer", "64"]
    return Written(written.path, written.x, None, config, flags, streamed=True)


SOURCES: dict[str, Callable[[Path], Written]] = {
    "npy": _npy,
    "npz": _npz,
    "npz-keras": _npz_keras,
    "safetensors": _safetensors,
    "pt-tensor": _pt_tensor,
    "pt-dict": _pt_dict,
    "csv-header-label": _csv_header_label,
    "csv-no-header": _csv_no_header,
    "parquet-columns-label": _parquet_columns_label,
    "parquet-embedding": _parquet_embedding,
    "image-folder": _image_folder,
    "idx-directory": _idx_directory,
    "shards": _shards,
    "shards-streamed": _shards_streamed,
    "npy-streamed": _npy_streamed,
    "safetensors-streamed": _safetensors_streamed,
}


@pytest.mark.parametrize("kind", SOURCES)
def test_every_file_source_trains_a_dense_topk_sae_from_python_and_the_cli(kind, tmp_path, capsys):
    written = SOURCES[kind](tmp_path)
    shape = tuple(written.x.shape[1:])

    data = load_data(DataConfig(str(written.path), **written.config))
    assert data.sample_shape == shape and data.streamed == written.streamed
    assert_rows_from(data, written.x, written.y)
    result = train(model_for(data), data, TRAIN, tmp_path / "python", progress=False)
    assert_learned(result.metrics)

    run = tmp_path / "cli"
    assert main(["train", "--data", str(written.path), *CLI_TRAIN, *written.flags, "--out", str(run)]) == 0
    assert {"config.json", "metrics.jsonl", "model.safetensors", "cfg.json", "checkpoint.safetensors"} <= {
        p.name for p in run.iterdir()
    }
    assert json.loads((run / "config.json").read_text())["data"]["source"] == str(written.path.resolve())
    loaded = sparseae.load(run)
    assert loaded.input_shape == shape  # inferred from the data, no flag for it
    assert_learned(read_metrics(run))
    # The run records how to load its data again: eval recomputes the last test metrics from it.
    capsys.readouterr()
    assert main(["eval", str(run), "--quiet"]) == 0
    mse = next(line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("mse"))
    assert float(mse.split()[1]) == pytest.approx(read_metrics(run)[-1]["test_mse"], rel=1e-5)
    # The same settings from the CLI build and train the very same model.
    for (name, a), b in zip(result.model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_natural_image_patches_train_a_dense_topk_sae():
    data = load_data(DataConfig("patches", patch_size=6, n_patches=1000))
    assert data.sample_shape == (1, 6, 6) and len(data.train) + len(data.test) == 1000
    assert 0 <= float(data.train.min()) and float(data.train.max()) <= 1
    assert_learned(train(model_for(data), data, TRAIN, progress=False).metrics)


def test_natural_image_patches_from_the_cli_with_center_and_zca(tmp_path):
    run = tmp_path / "patches"
    argv = ["train", "--data", "patches", "--patch-size", "6", "--n-patches", "1000", "--model", "dense", "--sparsity", "topk",
            "--k", "4", "--n-latents", "32", "--epochs", "8", "--batch-size", "64", "--lr", "3e-3",
            "--preprocess", "center,zca", "--out", str(run), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    metrics = read_metrics(run)  # whitened patches are hard to compress: every direction has the same variance
    assert metrics[-1]["train_recon"] < 0.85 * metrics[0]["train_recon"]
    model = sparseae.load(run)
    assert model.input_shape == (1, 6, 6) and model.preprocess.steps == ("center", "zca")


# --- streaming ------------------------------------------------------------------------


def write_row_ids(path: Path, n: int, d: int = 4) -> Path:
    """A .npy file whose row i holds the value i everywhere, so batches show which rows they hold."""
    np.save(path, np.repeat(np.arange(n, dtype=np.float32)[:, None], d, axis=1))
    return path


def epoch_ids(stream, batch_size: int, seed: int, epoch: int) -> list[int]:
    return [int(v) for batch in stream.batches(batch_size, seed, epoch) for v in batch[:, 0]]


def test_row_stream_epoch_gives_every_train_row_exactly_once(tmp_path):
    reader = NpyReader(write_row_ids(tmp_path / "ids.npy", 1000))
    train_rows, _ = holdout_rows(1000, 0.1)
    stream = RowStream(reader, train_rows, chunk_rows=16, buffer_rows=64)  # many chunks, several buffers
    batches = list(stream.batches(10, seed=3, epoch=0))
    assert all(len(b) == 10 for b in batches[:-1]) and 0 < len(batches[-1]) <= 10
    ids = [int(v) for b in batches for v in b[:, 0]]
    assert sorted(ids) == train_rows.tolist()
    assert ids != sorted(ids)
    # The buffer mixes chunks: the first batch draws on rows from more than one chunk of 16.
    assert len({i // 16 for i in ids[:10]}) > 1


def test_row_stream_order_is_a_function_of_seed_and_epoch(tmp_path):
    stream = RowStream(NpyReader(write_row_ids(tmp_path / "ids.npy", 600)), chunk_rows=32, buffer_rows=64)
    once = epoch_ids(stream, 50, seed=1, epoch=2)
    assert epoch_ids(stream, 50, seed=1, epoch=2) == once
    assert epoch_ids(stream, 50, seed=1, epoch=3) != once
    assert epoch_ids(stream, 50, seed=2, epoch=2) != once
    assert sorted(epoch_ids(stream, 50, seed=1, epoch=3)) == sorted(once) == list(range(600))


def test_streamed_train_batches_never_hold_a_test_row(tmp_path):
    path = write_row_ids(tmp_path / "ids.npy", 5000)  # more than one 4096-row chunk
    data = load_data(DataConfig(str(path), load="stream", shuffle_buffer=64))
    assert data.streamed
    test_ids = {int(v) for v in data.test[:][:, 0]}
    train_ids = epoch_ids(data.train, 128, seed=0, epoch=0)
    assert len(train_ids) == len(set(train_ids)) == len(data.train)
    assert not test_ids & set(train_ids)
    assert test_ids | set(train_ids) == set(range(5000))


def test_streamed_and_in_memory_runs_of_one_file_hold_out_the_same_rows(tmp_path):
    path = write_row_ids(tmp_path / "ids.npy", 5000)
    streamed = load_data(DataConfig(str(path), load="stream"))
    memory = load_data(DataConfig(str(path), load="memory"))
    assert streamed.streamed and not memory.streamed
    assert torch.equal(streamed.test[:], memory.test)
    assert torch.equal(streamed.train[:], memory.train)


def test_auto_load_streams_files_larger_than_the_memory_limit(tmp_path):
    path = write_row_ids(tmp_path / "ids.npy", 1000)  # 16 kB as float32
    assert load_data(DataConfig(str(path), memory_limit_gb=1e-5)).streamed  # 10.7 kB limit
    assert not load_data(DataConfig(str(path), memory_limit_gb=2e-5)).streamed
    assert not load_data(DataConfig(str(path), memory_limit_gb=1e-5, load="memory")).streamed


def test_resumed_streamed_run_is_bit_identical_to_an_uninterrupted_one(tmp_path, monkeypatch):
    x, _ = structured(n=5000, d=16)  # more than one 4096-row chunk
    np.save(tmp_path / "rows.npy", x)
    data = load_data(DataConfig(str(tmp_path / "rows.npy"), load="stream", shuffle_buffer=1024))
    config = TrainConfig(epochs=3, batch_size=256, lr=1e-2, optimizer="adam", seed=5)
    full = train(model_for(data), data, config, tmp_path / "full", progress=False)

    crash_in_epoch_two(monkeypatch, lambda: train(model_for(data), data, config, tmp_path / "cut", progress=False))
    assert len(read_metrics(tmp_path / "cut")) == 1

    resumed = sparseae.resume(tmp_path / "cut", progress=False)  # reloads the streamed data from config.json
    assert [r["epoch"] for r in resumed.metrics] == [1, 2, 3]
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert resumed.metrics[-1]["test_mse"] == full.metrics[-1]["test_mse"]


# --- bad input --------------------------------------------------------------------------


def _write(name: str, text: str | bytes) -> Callable[[Path], Path]:
    def write(tmp: Path) -> Path:
        path = tmp / name
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return path

    return write


def _npy_of(name: str, array: np.ndarray) -> Callable[[Path], Path]:
    def write(tmp: Path) -> Path:
        np.save(tmp / name, array, allow_pickle=True)
        return tmp / name

    return write


def _with_bad_value(name: str, value: float, row: int) -> Callable[[Path], Path]:
    def write(tmp: Path) -> Path:
        x, _ = structured(n=50, d=4)
        x[row, 2] = value
        if name.endswith(".npy"):
            np.save(tmp / name, x)
        elif name.endswith(".csv"):
            write_csv(tmp / name, x.tolist())
        else:
            torch.save({"x": torch.from_numpy(x)}, tmp / name)
        return tmp / name

    return write


def _npz_of(**arrays: np.ndarray) -> Callable[[Path], Path]:
    def write(tmp: Path) -> Path:
        np.savez(tmp / "several.npz", **arrays)
        return tmp / "several.npz"

    return write


def _safetensors_of(**arrays: np.ndarray) -> Callable[[Path], Path]:
    def write(tmp: Path) -> Path:
        from safetensors.numpy import save_file

        save_file(arrays, str(tmp / "several.safetensors"))
        return tmp / "several.safetensors"

    return write


def _parquet_with_string(tmp: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"a": [1.0, 2.0, 3.0], "name": ["x", "y", "z"]}), tmp / "strings.parquet")
    return tmp / "strings.parquet"


def _pt_with_string(tmp: Path) -> Path:
    torch.save({"x": torch.ones(4, 3), "note": "hello"}, tmp / "mixed.pt")
    return tmp / "mixed.pt"


def _truncated_npy(tmp: Path) -> Path:
    np.save(tmp / "cut.npy", np.ones((100, 8), dtype=np.float32))
    data = (tmp / "cut.npy").read_bytes()
    (tmp / "cut.npy").write_bytes(data[: len(data) - 100])
    return tmp / "cut.npy"


def _mixed_image_sizes(tmp: Path) -> Path:
    save_png(tmp / "images" / "a" / "0.png", np.zeros((4, 8), dtype=np.uint8))
    save_png(tmp / "images" / "a" / "1.png", np.zeros((6, 6), dtype=np.uint8))
    save_png(tmp / "images" / "b" / "2.png", np.zeros((4, 8), dtype=np.uint8))
    return tmp / "images"


X = np.ones((5, 3), dtype=np.float32)
CSV_HEADER = "f0,f1,label\n1,2,0\n3,4,1\n"

BAD_INPUT = {
    "csv-non-numeric": (_write("bad.csv", "a,b,c\n1,2,3\n4,x,6\n"), {},
                        r"bad\.csv, line 3, column 'b': expected a number, got 'x'\. Drop the non-numeric columns"),
    "csv-non-numeric-no-header": (_write("bad.csv", "1,2,3\n4,5,6\n7,8,oops\n"), {},
                                  r"bad\.csv, line 3, column 2: expected a number, got 'oops'"),
    "csv-ragged": (_write("ragged.csv", "1,2,3\n4,5\n"), {},
                   r"ragged\.csv, line 2: expected 3 values, as on the first line, got 2 values\. Every row needs"),
    "csv-empty": (_write("empty.csv", ""), {}, r"empty\.csv: expected a file with data, got an empty file"),
    "npy-empty": (_write("empty.npy", b""), {}, r"empty\.npy: expected a file with data, got an empty file"),
    "npy-nan": (_with_bad_value("nan.npy", np.nan, 7), {}, r"nan\.npy, row 7: expected finite numbers, got NaN or infinity"),
    "npy-inf": (_with_bad_value("inf.npy", np.inf, 31), {}, r"inf\.npy, row 31: expected finite numbers, got NaN or infinity"),
    "csv-nan": (_with_bad_value("nan.csv", np.nan, 7), {},
                r"nan\.csv: expected finite numbers, got NaN or infinity in 1 row\(s\), the first at row 7\. Clean the data"),
    "pt-inf": (_with_bad_value("inf.pt", -np.inf, 12), {},
               r"inf\.pt: expected finite numbers, got NaN or infinity in 1 row\(s\), the first at row 12"),
    "npy-1d": (_npy_of("flat.npy", np.ones(10, dtype=np.float32)), {},
               r"flat\.npy: expected a 2-D \(or more\) array, one sample per row, got shape \(10,\)\. "
               r"Reshape it: x\.reshape\(-1, 1\)"),
    "npy-strings": (_npy_of("text.npy", np.array([["a", "b"], ["c", "d"]])), {},
                    r"text\.npy: expected numbers \(float, int or bool\), got dtype <U1\. Convert the data to numbers"),
    "npy-objects": (_npy_of("objects.npy", np.array([[{"a": 1}, None]], dtype=object)), {},
                    r"objects\.npy: expected numbers \(float, int or bool\), got dtype object"),
    "npz-no-key": (_npz_of(a=X, b=X), {},
                   r"several\.npz: expected one array, or arrays named x \(and y\), or x_train/x_test, got arrays a, b\. "
                   r"Pass --key NAME"),
    "npz-unknown-key": (_npz_of(a=X, b=X), {"key": "c"},
                        r"several\.npz key: expected one of a, b, got 'c'\. Pass --key with one of them"),
    "safetensors-unknown-key": (_safetensors_of(a=X, b=X), {"key": "c"},
                                r"several\.safetensors key: expected one of a, b, got 'c'\. Pass --key with one of them"),
    "csv-unknown-label": (_write("rows.csv", CSV_HEADER), {"label_column": "class"},
                          r"rows\.csv --label-column: expected a column name \(f0, f1, label\), got 'class'\. Name a column"),
    "csv-label-number-too-big": (_write("rows.csv", "1,2,0\n3,4,1\n"), {"label_column": "3"},
                                 r"rows\.csv --label-column: expected a column number below 3, got '3'"),
    "npz-unknown-label": (_npz_of(x=X, y=np.zeros(5)), {"label_column": "labels"},
                          r"several\.npz labels: expected one of x, y, got 'labels'\. Pass --label-column"),
    "parquet-unknown-label": (lambda tmp: _parquet_columns_label(tmp).path, {"label_column": "class"},
                              r"rows\.parquet --label-column: expected a column name \(f0, .*, f31, label\), got 'class'"),
    "pt-unknown-key": (lambda tmp: _pt_dict(tmp).path, {"key": "z"},
                       r"rows\.pt key: expected one of x, y, got 'z'\. Pass --key with one of them"),
    "npy-label-column": (_npy_of("x.npy", X), {"label_column": "y"},
                         r"x\.npy labels: expected labels in a file that can hold several arrays .*, "
                         r"got --label-column y with a \.npy file\. Save samples and labels together"),
    "parquet-string-column": (_parquet_with_string, {},
                              r"strings\.parquet: expected numeric columns \(or list columns of numbers\), "
                              r"got non-numeric column\(s\) name \(string\)\. Drop them"),
    "pt-dict-with-string": (_pt_with_string, {},
                            r"mixed\.pt: expected a tensor or a dict of tensors, got dict\. Save torch\.save\(x, path\)"),
    "npy-truncated": (_truncated_npy, {},
                      r"cut\.npy: expected 3328 bytes for shape \(100, 8\), got 3228 bytes \(truncated\)\. "
                      r"The file is incomplete"),
    "images-mixed-sizes": (_mixed_image_sizes, {},
                           r"images: expected images of one size, like a/0\.png \(4x8, height x width\), got a/1\.png at 6x6\. "
                           r"Pass size=\(height, width\) \(--image-size on the command line\)"),
    "no-such-directory": (lambda tmp: tmp / "nowhere", {},
                          r"--data: expected one of mnist, .*, got '.*nowhere' \(no such file or directory\)\. Check the path"),
    "no-such-array-file": (lambda tmp: tmp / "missing.npy", {},
                           r"missing\.npy: expected an array file \(\.npy, .*\), got no such file\. Check the path"),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD_INPUT)
def test_bad_input_is_refused_with_a_message_that_says_what_and_how_to_fix(case, tmp_path):
    write, config, message = BAD_INPUT[case]
    path = write(tmp_path)
    with pytest.raises(SparseAEError, match=message):
        load_data(DataConfig(str(path), **config))


CLI_CASES = ["csv-non-numeric", "npy-nan", "npy-1d", "npz-no-key", "pt-dict-with-string", "images-mixed-sizes",
             "no-such-directory"]  # fmt: skip


@pytest.mark.parametrize("case", CLI_CASES)
def test_bad_input_through_the_cli_exits_2_with_one_or_two_lines(case, tmp_path, capsys):
    write, _, message = BAD_INPUT[case]
    path = write(tmp_path)
    assert main(["train", "--data", str(path), *CLI_TRAIN, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sparseae: error: ") and "Traceback" not in err
    assert len(err.strip().splitlines()) <= 2
    assert re.search(message, err), err
    assert not (tmp_path / "run").exists()  # refused before a run directory was made


def test_mixed_image_sizes_load_once_an_image_size_is_given(tmp_path):
    data = load_data(DataConfig(str(_mixed_image_sizes(tmp_path)), image_size=5))
    assert data.sample_shape == (1, 5, 5) and data.label_names == ("a", "b")


def test_streamed_nan_names_the_file_and_the_row(tmp_path):
    x, _ = structured(n=300, d=8)
    train_rows, _ = holdout_rows(300, 0.1)
    bad = int(train_rows[100])
    x[bad, 3] = np.nan
    np.save(tmp_path / "nan.npy", x)
    data = load_data(DataConfig(str(tmp_path / "nan.npy"), load="stream", shuffle_buffer=64))  # nothing read yet
    assert data.streamed
    message = rf"nan\.npy, row {bad}: expected finite numbers, got NaN or infinity\. Clean the data first"
    with pytest.raises(SparseAEError, match=message):
        list(data.train.batches(64, seed=0, epoch=0))
    with pytest.raises(SparseAEError, match=message):
        train(model_for(data), data, TRAIN, progress=False)


def test_streamed_nan_through_the_cli_exits_2(tmp_path, capsys):
    x, _ = structured(n=300, d=8)
    x[int(holdout_rows(300, 0.1)[0][5]), 0] = np.inf
    np.save(tmp_path / "inf.npy", x)
    argv = ["train", "--data", str(tmp_path / "inf.npy"), *CLI_TRAIN, "--load", "stream", "--out", str(tmp_path / "run")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "inf.npy, row " in err and "expected finite numbers, got NaN or infinity" in err and "Traceback" not in err


class _RunsCode:
    """Unpickling this would create ``marker``: it stands for code hidden in a .pt file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pt_file_is_loaded_without_unpickling_arbitrary_objects(tmp_path):
    marker = tmp_path / "code-ran"
    torch.save({"x": torch.ones(4, 3), "payload": _RunsCode(marker)}, tmp_path / "evil.pt")
    with pytest.raises(
        SparseAEError,
        match=r"evil\.pt: expected tensors saved with torch\.save \(loaded with weights_only=True\), "
        r"got a file that cannot be loaded safely .*Save plain tensors",
    ):
        load_data(DataConfig(str(tmp_path / "evil.pt")))
    assert not marker.exists()
    torch.load(tmp_path / "evil.pt", weights_only=False)  # the payload is live: a full unpickle runs it
    assert marker.exists()


@pytest.fixture(scope="module")
def run_16(tmp_path_factory):
    """A dense model trained through the CLI on rows of 16 values."""
    tmp = tmp_path_factory.mktemp("width")
    x, _ = structured(n=300, d=16)
    np.save(tmp / "d16.npy", x)
    np.save(tmp / "d12.npy", structured(n=300, d=12)[0])
    assert main(["train", "--data", str(tmp / "d16.npy"), *CLI_TRAIN, "--epochs", "1", "--out", str(tmp / "run")]) == 0
    return tmp


def test_eval_on_data_of_another_width_names_both_widths(run_16, capsys):
    assert main(["eval", str(run_16 / "run"), "--data", str(run_16 / "d12.npy"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 2
    assert "expected samples of the model's input shape (16,) (16 values each), got shape (12,) (12 values each)" in err


def test_encode_of_inputs_of_another_width_names_both_widths(run_16, capsys):
    argv = ["encode", str(run_16 / "run"), "--input", str(run_16 / "d12.npy"), "--output", str(run_16 / "codes.npy")]
    assert main([*argv, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 2
    assert "d12.npy: expected samples of the model's input shape (16,) (16 values each), got shape (12,)" in err
    assert not (run_16 / "codes.npy").exists()


def test_encode_and_eval_of_the_right_width_work(run_16, capsys):
    assert main(["eval", str(run_16 / "run"), "--data", str(run_16 / "d16.npy"), "--quiet"]) == 0
    out = run_16 / "codes16.npy"
    assert main(["encode", str(run_16 / "run"), "--input", str(run_16 / "d16.npy"), "--output", str(out), "--quiet"]) == 0
    codes = np.load(out)
    assert codes.shape == (300, 32) and ((codes != 0).sum(1) <= 4).all()


def test_safetensors_labels_named_by_label_column(tmp_path):
    from safetensors.numpy import save_file

    x, y = structured(n=100, d=8)
    save_file({"x": x, "y": y.astype(np.int64)}, str(tmp_path / "labelled.safetensors"))
    data = load_data(DataConfig(str(tmp_path / "labelled.safetensors"), label_column="y"))
    assert_rows_from(data, x, y)


def test_safetensors_unknown_label_column_names_the_label_flag(tmp_path):
    from safetensors.numpy import save_file

    save_file({"x": np.ones((5, 3), np.float32), "y": np.zeros(5, np.int64)}, str(tmp_path / "l.safetensors"))
    with pytest.raises(SparseAEError, match=r"l\.safetensors labels: expected one of x, y, got 'labels'\. Pass --label-column"):
        load_data(DataConfig(str(tmp_path / "l.safetensors"), label_column="labels"))
