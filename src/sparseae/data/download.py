"""MNIST-layout data sets by name (Fashion-MNIST, KMNIST), downloaded on first use and verified.

``load_named("fashion-mnist")`` fetches the four ``.gz`` IDX files into a cache directory
(``$SPARSEAE_CACHE`` or ``~/.cache/sparseae``, then ``/<name>``), checks each file's size and
sha256, and loads them with `load_mnist`. The standard library's urllib, not requests or
pooch: four files over HTTPS with a checksum each need no dependency, and the tests serve them
from a local HTTP server either way. Files already in the cache
and verified are never downloaded again, so a machine that is offline can be seeded by hand:
the error raised when every mirror fails lists the URLs and the directory to put them in.

The shipped MNIST (``"mnist"``) is never downloaded.

Checksums and sizes are those of the ``.gz`` files as served, taken from tensorflow/datasets
(``tensorflow_datasets/url_checksums/fashion_mnist.txt`` and ``.../kmnist.txt``) and matching
the sha256 values torchvision's dataset definitions publish for the same files.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path

from sparseae.data.dataset import DataConfig, Dataset
from sparseae.data.mnist import SHIPPED, load_mnist
from sparseae.errors import SparseAEError

_CHUNK = 1 << 20  # 1 MiB: few syscalls, and the progress bar still moves on slow links


@dataclass(frozen=True)
class RemoteFile:
    """One file of a named data set, as its mirrors serve it."""

    name: str
    """File name, the same on every mirror and in the cache, e.g. ``train-images-idx3-ubyte.gz``."""
    sha256: str
    """sha256 of the file as downloaded (the compressed bytes), 64 lowercase hex digits."""
    size: int
    """Size in bytes of the file as downloaded."""


@dataclass(frozen=True)
class NamedDataset:
    """A data set in the MNIST IDX layout that sparseae can download by name."""

    name: str
    """The name users pass, e.g. ``"fashion-mnist"``; also the cache sub-directory."""
    mirrors: tuple[str, ...]
    """Base URLs ending in ``/``, tried in order for each file."""
    files: tuple[RemoteFile, ...]
    """The four IDX files: train and t10k images and labels."""
    label_names: tuple[str, ...]
    """A name per label value (label i is called label_names[i])."""
    license: str
    """License and citation to credit when using the data."""
    homepage: str
    """Where the data set is described."""


# Size and sha256 of each .gz as served: tensorflow/datasets, tensorflow_datasets/url_checksums/{fashion_mnist,kmnist}.txt.
_FASHION_MNIST_FILES = (
    RemoteFile("train-images-idx3-ubyte.gz", "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84", 26421880),
    RemoteFile("train-labels-idx1-ubyte.gz", "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845", 29515),
    RemoteFile("t10k-images-idx3-ubyte.gz", "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073", 4422102),
    RemoteFile("t10k-labels-idx1-ubyte.gz", "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5", 5148),
)

_KMNIST_FILES = (
    RemoteFile("train-images-idx3-ubyte.gz", "51467d22d8cc72929e2a028a0428f2086b092bb31cfb79c69cc0a90ce135fde4", 18165135),
    RemoteFile("train-labels-idx1-ubyte.gz", "e38f9ebcd0f3ebcdec7fc8eabdcdaef93bb0df8ea12bee65224341c8183d8e17", 29497),
    RemoteFile("t10k-images-idx3-ubyte.gz", "edd7a857845ad6bb1d0ba43fe7e794d164fe2dce499a1694695a792adfac43c5", 3041136),
    RemoteFile("t10k-labels-idx1-ubyte.gz", "20bb9a0ef54c7db3efc55a92eef5582c109615df22683c380526788f98e42a1c", 5120),
)

DATASETS: dict[str, NamedDataset] = {
    "fashion-mnist": NamedDataset(
        name="fashion-mnist",
        mirrors=(
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            # The authors' repository keeps the same four files in git (same sha256).
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        ),
        files=_FASHION_MNIST_FILES,
        label_names=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        license=(
            "MIT License, Copyright (c) 2017 Zalando SE. Cite: Han Xiao, Kashif Rasul, Roland Vollgraf, "
            "'Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine Learning Algorithms', arXiv:1708.07747 (2017)."
        ),
        homepage="https://github.com/zalandoresearch/fashion-mnist",
    ),
    "kmnist": NamedDataset(
        name="kmnist",
        mirrors=(
            "http://codh.rois.ac.jp/kmnist/dataset/kmnist/",
            # Same server over TLS, for networks that block plain HTTP.
            "https://codh.rois.ac.jp/kmnist/dataset/kmnist/",
        ),
        files=_KMNIST_FILES,
        # The ten hiragana of KMNIST's classmap.csv, romanised: お き す つ な は ま や れ を.
        label_names=("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
        license=(
            "CC BY-SA 4.0. 'KMNIST Dataset' (created by CODH), adapted from 'Kuzushiji Dataset' (created by NIJL and others), "
            "doi:10.20676/00000341. Cite: Tarin Clanuwat et al., 'Deep Learning for Classical Japanese Literature', "
            "arXiv:1812.01718 (2018)."
        ),
        homepage="http://codh.rois.ac.jp/kmnist/",
    ),
}
"""Every data set `fetch` can download, by name. Tests add entries with ``monkeypatch.setitem``."""


class DownloadError(SparseAEError):
    """A download that did not complete: no connection, an HTTP error, a timeout or a dropped connection."""

    def __init__(self, url: str, reason: str):
        self.url, self.reason = url, reason
        super().__init__(
            url,
            expected="a complete download",
            got=reason,
            fix="Nothing was kept. Check the network connection and try again.",
        )


class ChecksumError(SparseAEError):
    """A download that completed but is not the published file (wrong size or sha256)."""

    def __init__(self, url: str, reason: str, *, expected: str, got: str):
        self.url, self.reason = url, reason
        super().__init__(
            url,
            expected=expected,
            got=got,
            fix="The server sent other bytes than the published file (corrupted, changed upstream, or rewritten by a proxy); "
            "nothing was kept. Try another mirror, or download the file yourself and compare its sha256 (sha256sum).",
        )


def list_named() -> list[str]:
    """The names `load_named` accepts: ``"mnist"`` (shipped) and every downloadable data set, sorted."""
    return sorted({"mnist", *DATASETS})


def get_named(name: str) -> NamedDataset:
    """The registry entry for ``name``; raises `SparseAEError` listing the valid names when unknown."""
    if name not in DATASETS:
        valid = ", ".join(repr(n) for n in sorted(DATASETS))
        raise SparseAEError(
            "data set name",
            expected=f"one of {valid} (downloaded on first use) or 'mnist' (shipped with sparseae)",
            got=repr(name),
            fix="Use one of these names, or pass a directory of MNIST-layout IDX files to load_mnist().",
        )
    return DATASETS[name]


def default_cache_dir() -> Path:
    """The cache root: ``$SPARSEAE_CACHE`` when set and non-empty, else ``~/.cache/sparseae``."""
    env = os.environ.get("SPARSEAE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "sparseae"


def download(
    url: str,
    dest: str | Path,
    *,
    sha256: str,
    size: int | None = None,
    progress: bool = True,
    timeout: float = 30,
) -> Path:
    """Download ``url`` to ``dest``, verified, atomically: ``dest`` appears only when complete and correct.

    The body streams into ``dest + ".part"``, hashed as it is written; after the size and sha256
    checks pass, the part file is flushed, fsynced and renamed onto ``dest``. On any failure the
    part file is deleted and an existing ``dest`` is left untouched.

    Args:
        url: What to download (``http://``, ``https://`` or ``file://``).
        dest: Where to put it; the parent directory is created.
        sha256: Expected sha256 of the downloaded bytes (hex).
        size: Expected size in bytes, if known; a mismatching ``Content-Length`` fails before the body is read.
        progress: Show a tqdm progress bar.
        timeout: Seconds to wait for the connection and for each read.

    Returns:
        ``dest`` as a `Path`.

    Raises:
        DownloadError: The download did not complete (no connection, HTTP error, timeout, dropped connection).
        ChecksumError: It completed with the wrong size or sha256.
    """
    from tqdm.auto import tqdm  # lazily: tqdm.auto probes for IPython, and `import sparseae` stays fast

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    digest, received = hashlib.sha256(), 0
    request = urllib.request.Request(url, headers={"User-Agent": "sparseae (python urllib)"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response, open(part, "wb") as out:
            length = _content_length(response)
            if size is not None and length is not None and length != size:
                raise _size_mismatch(url, size, length, "announced")
            with tqdm(
                total=length if length is not None else size,
                desc=dest.name,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                disable=not progress,
            ) as bar:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
                    if size is not None and received > size:  # stop early rather than fill the disk
                        raise _size_mismatch(url, size, received, "at least")
            # http.client returns b"" when the peer closes early instead of raising, so count ourselves.
            if length is not None and received < length:
                raise DownloadError(url, f"connection dropped after {received} of {length} bytes")
            if size is not None and received != size:
                raise _size_mismatch(url, size, received, "received")
            actual = digest.hexdigest()
            if actual != sha256.lower():
                raise ChecksumError(
                    url,
                    f"sha256 mismatch (expected {sha256}, received {actual})",
                    expected=f"a file with sha256 {sha256}",
                    got=f"sha256 {actual} ({received} bytes)",
                )
            out.flush()
            os.fsync(out.fileno())  # the bytes are on disk before the rename makes them visible
        os.replace(part, dest)
    except (ChecksumError, DownloadError):
        part.unlink(missing_ok=True)
        raise
    except (OSError, http.client.HTTPException) as e:  # URLError, HTTPError, timeouts, resets are OSErrors
        part.unlink(missing_ok=True)
        raise DownloadError(url, _describe(e, received)) from e
    except BaseException:  # KeyboardInterrupt too: never leave a part file behind
        part.unlink(missing_ok=True)
        raise
    return dest


def fetch(name: str, cache_dir: str | Path | None = None, *, progress: bool = True) -> Path:
    """Make sure the four IDX files of ``name`` are in the cache, downloading what is missing.

    Each file already in the cache is verified (size and sha256) and kept if it is right;
    a missing or wrong file is downloaded from the mirrors, in order, until one succeeds.

    Args:
        name: A name from `DATASETS`, or ``"mnist"`` (shipped: returns the shipped directory).
        cache_dir: The cache root; ``None`` uses `default_cache_dir`.
        progress: Show a progress bar per download.

    Returns:
        The directory holding the four verified files: ``<cache_dir>/<name>``.

    Raises:
        SparseAEError: An unknown name, or a file no mirror could deliver (the message lists
            the URLs to fetch by hand and the directory to put them in).
    """
    if name == "mnist":
        return SHIPPED
    spec = get_named(name)
    directory = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    directory = directory / spec.name
    for file in spec.files:
        dest = directory / file.name
        if _is_verified(dest, file):
            continue
        dest.unlink(missing_ok=True)  # a wrong file is of no use, and must not pass for the real one later
        failures: list[ChecksumError | DownloadError] = []
        for base in spec.mirrors:
            try:
                download(_join(base, file.name), dest, sha256=file.sha256, size=file.size, progress=progress)
                break
            except (ChecksumError, DownloadError) as e:
                failures.append(e)
        else:
            raise _no_mirror_worked(spec, file, directory, failures)
    return directory


def load_named(name: str, cache_dir: str | Path | None = None, *, progress: bool = True) -> Dataset:
    """Load an MNIST-layout data set by name, downloading it on first use.

    Returns:
        A `Dataset` of images in [0, 1], shape ``(N, 1, 28, 28)``, with labels,
        ``label_names``, ``name=name`` and ``config=DataConfig(source=name)``, so that a run
        can load it again by name. ``"mnist"`` returns the shipped MNIST.
    """
    if name == "mnist":
        return load_mnist()
    spec = get_named(name)
    data = load_mnist(fetch(name, cache_dir, progress=progress))
    return replace(data, name=name, label_names=spec.label_names, config=DataConfig(source=name))


def _join(base: str, file_name: str) -> str:
    return base.rstrip("/") + "/" + file_name


def _content_length(response: http.client.HTTPResponse) -> int | None:
    value = response.headers.get("Content-Length")
    return int(value) if value is not None and value.strip().isdigit() else None


def _size_mismatch(url: str, size: int, got: int, how: str) -> ChecksumError:
    return ChecksumError(
        url,
        f"size mismatch (expected {size} bytes, {how} {got})",
        expected=f"a file of {size} bytes",
        got=f"{how} {got} bytes",
    )


def _describe(error: BaseException, received: int) -> str:
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP error {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        if not isinstance(error.reason, BaseException):
            return str(error.reason)
        error = error.reason
    if isinstance(error, TimeoutError):
        return f"timed out after {received} bytes"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, socket.gaierror):
        return f"host not found ({error.strerror})"
    if isinstance(error, (ConnectionError, http.client.IncompleteRead)):
        return f"connection dropped after {received} bytes ({type(error).__name__})"
    return f"{type(error).__name__}: {error}"


def _is_verified(path: Path, file: RemoteFile) -> bool:
    if not path.is_file() or path.stat().st_size != file.size:
        return False
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest() == file.sha256


def _no_mirror_worked(
    spec: NamedDataset, file: RemoteFile, directory: Path, failures: list[ChecksumError | DownloadError]
) -> SparseAEError:
    tried = "; ".join(f"{e.url}: {e.reason}" for e in failures)
    missing = [f for f in spec.files if not _is_verified(directory / f.name, f)]
    urls = "\n".join(f"  {_join(spec.mirrors[0], f.name)}  (sha256 {f.sha256})" for f in missing)
    others = "".join(f"\n(or from {base})" for base in spec.mirrors[1:])
    if all(isinstance(e, ChecksumError) for e in failures):
        why = "Every mirror served other bytes than the published file (changed upstream, or rewritten by a proxy)."
    else:
        why = "No mirror could be reached or finished the download (offline?)."
    return SparseAEError(
        f"downloading {spec.name} ({file.name})",
        expected="the file from one of the mirrors",
        got=tried,
        fix=f"{why} Nothing partial was kept. To install the data by hand, download\n{urls}{others}\n"
        f"and put the files, keeping these names, in\n  {directory}\nsparseae verifies them there and does not fetch them again.",
    )
