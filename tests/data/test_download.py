"""Named MNIST-layout data sets: download from a local HTTP server, verify, cache, fail cleanly."""

from __future__ import annotations

import gzip
import hashlib
import re
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from sparseae.data import download as dl
from sparseae.errors import SparseAEError

N_TRAIN, N_TEST = 5, 3
LABEL_NAMES = tuple(f"class {i}" for i in range(10))


def idx_bytes(array: np.ndarray) -> bytes:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def make_files() -> tuple[dict[str, bytes], np.ndarray, np.ndarray]:
    """Four small, valid MNIST-layout .gz files; returns them with the train and test labels."""
    rng = np.random.default_rng(0)
    train_labels, test_labels = rng.integers(0, 10, N_TRAIN), rng.integers(0, 10, N_TEST)
    raw = {
        "train-images-idx3-ubyte.gz": idx_bytes(rng.integers(0, 256, (N_TRAIN, 28, 28))),
        "train-labels-idx1-ubyte.gz": idx_bytes(train_labels),
        "t10k-images-idx3-ubyte.gz": idx_bytes(rng.integers(0, 256, (N_TEST, 28, 28))),
        "t10k-labels-idx1-ubyte.gz": idx_bytes(test_labels),
    }
    return {name: gzip.compress(data, mtime=0) for name, data in raw.items()}, train_labels, test_labels


FILES, TRAIN_LABELS, TEST_LABELS = make_files()


@dataclass
class Server:
    """A local HTTP server. ``routes[path]`` is bytes to serve, or ``"drop"`` / ``"reset"`` / ``"stall"``."""

    port: int
    routes: dict[str, bytes | str] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    released: threading.Event = field(default_factory=threading.Event)
    """Set when the test ends: a stalled response stays silent until then, however slow the machine."""

    def url(self, prefix: str) -> str:
        return f"http://127.0.0.1:{self.port}/{prefix}/"

    def serve(self, prefix: str, **replace: bytes | str) -> str:
        """Serve the four files under ``/<prefix>/`` (``replace`` overrides some); returns the base URL."""
        for name, body in FILES.items():
            self.routes[f"/{prefix}/{name}"] = replace.get("_".join(name.split("-")[:2]), body)
        return self.url(prefix)


@pytest.fixture
def server() -> Iterator[Server]:
    state = Server(port=0)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.requests.append(self.path)
            body = state.routes.get(self.path)
            if body is None:
                self.send_error(404)
                return
            # The misbehaving modes announce the length of the real file (or of 5000 bytes), then fail.
            full = FILES.get(self.path.rsplit("/", 1)[1], bytes(5000)) if isinstance(body, str) else body
            self.send_response(200)
            self.send_header("Content-Length", str(len(full)))
            self.end_headers()
            if body == "stall":  # headers and a few bytes, then silence: the client's read times out
                self.wfile.write(full[:10])
                self.wfile.flush()
                state.released.wait(600)  # not a sleep: a loaded machine could outlast any fixed silence
            elif body == "reset":  # half the body, then a TCP reset instead of a clean close
                self.wfile.write(full[: len(full) // 2])
                self.wfile.flush()
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            elif body == "drop":  # half the body, then a clean close: shorter than Content-Length
                self.wfile.write(full[: len(full) // 2])
            else:
                self.wfile.write(full)
            self.close_connection = True

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    state.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield state
    state.released.set()
    httpd.shutdown()
    httpd.server_close()


def register(monkeypatch: pytest.MonkeyPatch, *mirrors: str, name: str = "tiny") -> dl.NamedDataset:
    files = tuple(dl.RemoteFile(n, hashlib.sha256(b).hexdigest(), len(b)) for n, b in FILES.items())
    spec = dl.NamedDataset(name, tuple(mirrors), files, LABEL_NAMES, "test data, no license", "http://example.invalid/")
    monkeypatch.setitem(dl.DATASETS, name, spec)
    return spec


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def test_load_named_downloads_into_the_cache_and_loads(server, monkeypatch, tmp_path):
    monkeypatch.setenv("SPARSEAE_CACHE", str(tmp_path / "cache"))
    register(monkeypatch, server.serve("a"))
    data = dl.load_named("tiny")  # progress bar on: it writes to stderr, which pytest captures
    assert data.train.shape == (N_TRAIN, 1, 28, 28) and data.test.shape == (N_TEST, 1, 28, 28)
    assert data.train_labels.tolist() == TRAIN_LABELS.tolist() and data.test_labels.tolist() == TEST_LABELS.tolist()
    assert data.name == "tiny" and data.label_names == LABEL_NAMES
    assert data.config.source == "tiny"
    assert leftovers(tmp_path / "cache" / "tiny") == sorted(FILES)


def test_second_load_makes_no_request_and_a_wrong_cached_file_is_replaced(server, monkeypatch, tmp_path):
    register(monkeypatch, server.serve("a"))
    dl.load_named("tiny", tmp_path, progress=False)
    assert len(server.requests) == 4
    dl.load_named("tiny", tmp_path, progress=False)
    assert len(server.requests) == 4
    (tmp_path / "tiny" / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not the file")
    assert dl.fetch("tiny", tmp_path, progress=False) == tmp_path / "tiny"
    assert server.requests[4:] == ["/a/t10k-labels-idx1-ubyte.gz"]


@pytest.mark.parametrize(
    "bad, message",
    [
        (bytes(len(FILES["train-labels-idx1-ubyte.gz"])), r"sha256 mismatch \(expected [0-9a-f]{64}, received [0-9a-f]{64}\)"),
        (FILES["train-labels-idx1-ubyte.gz"] + b"extra", r"size mismatch \(expected \d+ bytes, announced \d+\)"),
    ],
    ids=["wrong-bytes", "wrong-size"],
)
def test_corrupted_file_is_rejected_and_not_kept(server, monkeypatch, tmp_path, bad, message):
    register(monkeypatch, server.serve("a", train_labels=bad))
    with pytest.raises(SparseAEError, match=message) as error:
        dl.fetch("tiny", tmp_path, progress=False)
    assert "other bytes than the published file" in str(error.value)
    assert "train-labels-idx1-ubyte.gz" not in leftovers(tmp_path / "tiny")
    assert not [name for name in leftovers(tmp_path / "tiny") if name.endswith(".part")]


def test_download_names_url_and_both_digests(server, tmp_path):
    server.routes["/x.gz"] = b"some other bytes"
    url, expected = server.url("x").rstrip("/") + ".gz", "0" * 64
    with pytest.raises(
        dl.ChecksumError, match=rf"{re.escape(url)}: expected a file with sha256 {expected}, got sha256 [0-9a-f]{{64}}"
    ):
        dl.download(url, tmp_path / "x.gz", sha256=expected, progress=False)
    assert leftovers(tmp_path) == []


def test_dropped_connection_falls_back_to_the_next_mirror(server, monkeypatch, tmp_path):
    first, second = server.serve("a", train_images="drop"), server.serve("b")
    del server.routes["/a/train-labels-idx1-ubyte.gz"]  # a 404 also moves on to the next mirror
    register(monkeypatch, first, second)
    data = dl.load_named("tiny", tmp_path, progress=False)
    assert data.train.shape == (N_TRAIN, 1, 28, 28)
    assert [r for r in server.requests if r.startswith("/b/")] == [
        "/b/train-images-idx3-ubyte.gz",
        "/b/train-labels-idx1-ubyte.gz",
    ]
    assert len(server.requests) == 6


@pytest.mark.parametrize(
    "mode, message, timeout",
    [
        # The server answers at once and then drops: a timeout would only hide a slow server thread, so
        # it is a safety deadline here. Only the stall is ended by the client's timeout (the server stays
        # silent until the test ends), so a short one is safe however busy the machine is.
        ("drop", r"connection dropped after \d+ of \d+ bytes", 600),
        ("reset", r"connection dropped", 600),
        ("stall", r"timed out", 0.3),
    ],
)
def test_dropped_connection_with_no_other_mirror_keeps_nothing(server, tmp_path, mode, message, timeout):
    server.routes["/a/big.gz"] = mode
    with pytest.raises(dl.DownloadError, match=message):
        dl.download(server.url("a") + "big.gz", tmp_path / "big.gz", sha256="0" * 64, progress=False, timeout=timeout)
    assert leftovers(tmp_path) == []


def test_dropped_connection_through_fetch_explains_and_keeps_nothing(server, monkeypatch, tmp_path):
    register(monkeypatch, server.serve("a", t10k_images="drop"))
    with pytest.raises(SparseAEError, match=r"downloading tiny \(t10k-images-idx3-ubyte.gz\).*connection dropped"):
        dl.fetch("tiny", tmp_path, progress=False)
    assert leftovers(tmp_path / "tiny") == ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]


def test_offline_error_lists_the_urls_and_the_directory(monkeypatch, tmp_path):
    port = closed_port()
    spec = register(monkeypatch, f"http://127.0.0.1:{port}/a/", f"http://127.0.0.1:{port}/b/")
    with pytest.raises(
        SparseAEError, match=r"/a/train-images-idx3-ubyte.gz: connection refused.*No mirror could be reached"
    ) as error:
        dl.fetch("tiny", tmp_path, progress=False)
    message = str(error.value)
    for file in spec.files:
        assert f"http://127.0.0.1:{port}/a/{file.name}" in message
    assert f"(or from http://127.0.0.1:{port}/b/)" in message
    assert f"\n  {tmp_path / 'tiny'}\n" in message
    assert leftovers(tmp_path / "tiny") == []


def test_unknown_name_lists_the_valid_ones(tmp_path):
    with pytest.raises(SparseAEError, match=r"expected one of 'fashion-mnist', 'kmnist' .* or 'mnist' \(shipped.*got 'cifar'"):
        dl.load_named("cifar", tmp_path)
    assert dl.list_named() == ["fashion-mnist", "kmnist", "mnist"]
    assert dl.fetch("mnist") == dl.SHIPPED


def test_default_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SPARSEAE_CACHE", str(tmp_path))
    assert dl.default_cache_dir() == tmp_path
    monkeypatch.delenv("SPARSEAE_CACHE")
    assert dl.default_cache_dir() == Path.home() / ".cache" / "sparseae"


@pytest.mark.parametrize("name", ["fashion-mnist", "kmnist"])
def test_real_registry_entries_are_well_formed(name):
    spec = dl.DATASETS[name]
    assert spec.name == name and len(spec.mirrors) >= 1
    assert all(m.startswith(("http://", "https://")) and m.endswith("/") for m in spec.mirrors)
    names = [f.name for f in spec.files]
    assert names == [
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ]
    assert all(re.fullmatch(r"[0-9a-f]{64}", f.sha256) and f.size > 0 for f in spec.files)
    assert len({f.sha256 for f in spec.files}) == 4
    # Label files: 8 header bytes + one byte per label, gzip-compressed: a few kB, far below the image files.
    assert spec.files[0].size > 1_000_000 and spec.files[1].size < 100_000
    assert len(spec.label_names) == 10 and len(set(spec.label_names)) == 10
    assert spec.license and spec.homepage.startswith("http")


def test_a_named_set_trains_end_to_end_from_python_and_the_cli(server, monkeypatch, tmp_path):
    import sparseae
    from sparseae.cli import main
    from sparseae.training import read_metrics

    monkeypatch.setenv("SPARSEAE_CACHE", str(tmp_path / "cache"))
    register(monkeypatch, server.serve("a"), name="fashion-mnist")  # the real name, served locally
    data = sparseae.load_data(sparseae.DataConfig("fashion-mnist"))
    assert data.label_names == LABEL_NAMES and data.config.source == "fashion-mnist"
    model = sparseae.build_preset("dense", data.sample_shape, sparseae.build_sparsity("topk", k=4), seed=0, n_latents=16)
    result = sparseae.train(model, data, sparseae.TrainConfig(epochs=30, batch_size=5, lr=1e-2), progress=False)
    # The reconstruction term: the dense preset's AuxK adds a loss of its own once latents go quiet.
    assert result.metrics[-1]["train_recon"] < 0.5 * result.metrics[0]["train_recon"]

    run = tmp_path / "run"
    argv = ["train", "--data", "fashion-mnist", "--model", "dense", "--k", "4", "--n-latents", "16", "--epochs", "2",
            "--out", str(run), "--quiet"]  # fmt: skip
    assert main(argv) == 0 and len(server.requests) == 4  # downloaded once, by the first load
    assert len(read_metrics(run)) == 2 and sparseae.load(run).input_shape == (1, 28, 28)
