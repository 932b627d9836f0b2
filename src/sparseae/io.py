"""Save and load models and checkpoints: ``cfg.json`` + safetensors, never pickle."""

from __future__ import annotations

import contextlib
import errno
import io
import itertools
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save as save_safetensors
from torch import Tensor

from sparseae._config import from_dict
from sparseae.errors import DiskError, SparseAEError
from sparseae.models import Autoencoder, get_model_class
from sparseae.sparsity import build_sparsity

FORMAT = 1
"""Version of the on-disk layout; bumped when it changes incompatibly."""

CODE_SUFFIXES = (".safetensors", ".npz")
"""The files `save_codes` writes and `load_codes` reads."""

MODEL_FILE, CFG_FILE = "model.safetensors", "cfg.json"

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves the old file or the new one, never half.

    A failed write (a full disk, a read-only directory) raises `DiskError` naming
    ``path`` and leaves no temporary file behind.
    """
    path = Path(path)
    with _staged(path, data) as tmp:
        os.replace(tmp, path)
        _fsync_directory(path.parent)  # the rename itself survives a power cut


def replace_keeping_previous(path: str | Path, data: bytes, previous: str | Path) -> None:
    """Write ``data`` to ``path`` atomically and keep the file it replaces as ``previous``.

    ``path`` exists at every instant (once it has existed): the new file is written in
    full first, then the current one is hard-linked (or, where links are not supported,
    copied) to ``previous``, and only then is the new file renamed over ``path``. A
    failure at any point leaves ``path`` as it was.
    """
    path, previous = Path(path), Path(previous)
    with _staged(path, data) as tmp:
        if path.exists():
            spare = previous.with_name(f".{previous.name}.{os.getpid()}.tmp")
            try:
                spare.unlink(missing_ok=True)
                try:
                    os.link(path, spare)
                except OSError as e:
                    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES):
                        raise
                    shutil.copyfile(path, spare)  # a file system without hard links
                os.replace(spare, previous)
            finally:
                with contextlib.suppress(OSError):
                    spare.unlink(missing_ok=True)
        os.replace(tmp, path)
        _fsync_directory(path.parent)


def append_text(path: str | Path, text: str) -> None:
    """Append ``text`` to ``path`` (created if missing) and fsync it; a failed write cuts the file back to what it was.

    So a full disk never leaves half a line behind; the failure is a `DiskError` naming ``path``.
    """
    path = Path(path)
    data = text.encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    except OSError as e:
        raise disk_error(path, e) from None
    try:
        size = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)
            raise disk_error(path, e) from None
    finally:
        os.close(fd)


_DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_NOT_WRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS}


def disk_error(path: Path, error: OSError, kept: str = "the files written before are intact") -> DiskError:
    """The error for a failed write of ``path``: which file, what the system said, what to free or fix, and ``kept``."""
    where = path.parent
    reason = error.strerror or str(error)
    if error.errno in _DISK_FULL:
        return DiskError(
            str(path),
            expected="room on the disk to write it",
            got=f"a full disk ({reason})",
            fix=f"Free space on the disk that holds {where} (`df -h {where}` shows how much), e.g. old runs or "
            f"activation caches; {kept}.",
            error=error,
        )
    if error.errno in _NOT_WRITABLE:
        return DiskError(
            str(path),
            expected="a directory this process may write to",
            got=f"one it may not ({reason})",
            fix=f"Make {where} writable again (chmod u+w, or remount it read-write) or choose another directory; {kept}.",
            error=error,
        )
    return DiskError(
        str(path),
        expected="a file that can be written",
        got=f"an error from the operating system ({reason})",
        fix=f"Check {where} (does it still exist? is the disk healthy?); {kept}.",
        error=error,
    )


@contextlib.contextmanager
def _staged(path: Path, data: bytes) -> Iterator[str]:
    """A temporary file beside ``path`` holding ``data`` (flushed and fsynced), removed unless it was renamed.

    Every ``OSError`` inside (writing it, or what the caller does with it) becomes a `DiskError` naming ``path``.
    """
    if not path.parent.is_dir():
        raise SparseAEError(
            str(path),
            expected="a path in an existing directory",
            got=f"{path.parent} (no such directory)" if not path.parent.exists() else f"{path.parent} (a file)",
            fix="Create the directory first, or choose another path.",
        )
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual mode
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        yield tmp
    except OSError as e:
        raise disk_error(path, e) from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                Path(tmp).unlink(missing_ok=True)  # nothing to do once it was renamed into place


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse
        pass
    finally:
        os.close(fd)


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write(path, (json.dumps(obj, indent=2) + "\n").encode())


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise SparseAEError(str(path), expected="a JSON file", got="no such file", fix="Check the path.") from None
    except OSError as e:
        got = "a directory" if path.is_dir() else f"an unreadable file ({e.strerror})"
        raise SparseAEError(str(path), expected="a JSON file", got=got, fix="Check the path.") from None
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, too many digits, too deep
        raise SparseAEError(
            str(path), expected="valid JSON", got=f"a parse error ({str(e)[:200]})", fix="Repair or remove the file."
        ) from None


def write_tensors(path: str | Path, tensors: dict[str, Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write tensors (moved to the CPU, made contiguous) and string metadata as safetensors, atomically."""
    atomic_write(path, serialize_tensors(tensors, metadata))


def serialize_tensors(tensors: dict[str, Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """The bytes of a safetensors file holding ``tensors`` (moved to the CPU, made contiguous) and ``metadata``."""
    return save_safetensors({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=metadata)


def read_tensors(path: str | Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The tensors and the metadata of a safetensors file."""
    path = Path(path)
    if not path.is_file():
        raise SparseAEError(str(path), expected="a safetensors file", got="no such file", fix="Check the path.")
    try:
        with safe_open(path, framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}
    except Exception as e:  # SafetensorError, OSError, and whatever a damaged header makes torch raise
        raise SparseAEError(
            str(path),
            expected="a valid safetensors file",
            got=f"an unreadable one ({e})",
            fix="The file is damaged: re-create it.",
        ) from None


def save_model(model: Autoencoder, directory: str | Path) -> Path:
    """Write ``model.safetensors`` and ``cfg.json`` into ``directory`` (created if needed)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_tensors(directory / MODEL_FILE, model.state_dict())
    write_json(directory / CFG_FILE, {"format": FORMAT, **model.describe()})
    return directory


def model_from_cfg(cfg: Any, what: str) -> Autoencoder:
    """An untrained model built from a ``cfg.json`` dict."""
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        raise SparseAEError(
            what,
            expected=f"a sparseae model config of format {FORMAT}",
            got=f"format {cfg.get('format') if isinstance(cfg, dict) else type(cfg).__name__}",
            fix="The model was written by an incompatible sparseae version: use that version or retrain.",
        )
    kind, sparsity = cfg.get("kind", ""), cfg.get("sparsity") or {}
    if not isinstance(kind, str) or not isinstance(sparsity, dict) or not isinstance(sparsity.get("name", ""), str):
        raise SparseAEError(
            what, expected="a model kind and a sparsity {name, params}", got="values of other types", fix="Check the file."
        )
    if not isinstance(sparsity.get("params") or {}, dict):
        raise SparseAEError(
            f"{what} sparsity params", expected="a JSON object", got=repr(sparsity["params"])[:80], fix="Check the file."
        )
    cls = get_model_class(kind)
    config = from_dict(cls.config_class, cfg.get("config"), f"{what} config")
    preprocess = cfg.get("preprocess", [])
    if not isinstance(preprocess, list) or not all(isinstance(s, str) for s in preprocess):
        raise SparseAEError(f"{what} preprocess", expected="a list of step names", got=repr(preprocess), fix="Check the file.")
    constraint = build_sparsity(sparsity.get("name", ""), **(sparsity.get("params") or {}))
    with torch.device("meta"):  # its size, before any memory is allocated for it
        shell = cls(config, constraint, tuple(preprocess))
    check_fits_in_memory(shell, what)
    return cls(config, constraint, tuple(preprocess))


def check_fits_in_memory(model: torch.nn.Module, what: str) -> None:
    """Refuse a model whose weights (twice: the model and the file read into it) exceed the memory available now."""
    nbytes = sum(t.numel() * t.element_size() for t in itertools.chain(model.parameters(), model.buffers()))
    available = available_memory()
    if available is not None and 2 * nbytes > available:
        n = sum(p.numel() for p in model.parameters())
        raise SparseAEError(
            what,
            expected=f"a model that fits in memory ({available / 2**30:.1f} GiB available, and loading needs twice its size)",
            got=f"one of {n:,} parameters ({nbytes / 2**30:.1f} GiB)",
            fix="Check its sizes (e.g. n_latents, d_in): a damaged or foreign cfg.json asks for more than it should; "
            "otherwise load it on a machine with more memory.",
        )


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation now (Linux's MemAvailable, else the physical memory), if known."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - e.g. Windows
        return None


def load(path: str | Path, device: str | torch.device = "cpu") -> Autoencoder:
    """Load a model from a local directory holding ``cfg.json`` + ``model.safetensors`` (a run, or a Hub model folder).

    [`sparseae.load`][sparseae.load] also takes a Hub repo id.
    """
    path = Path(path)
    if not (path / CFG_FILE).is_file():
        raise SparseAEError(
            str(path),
            expected=f"a run or model directory containing {CFG_FILE} and {MODEL_FILE}",
            got="no such directory" if not path.exists() else f"no {CFG_FILE} in it",
            fix="Pass the directory that `sparseae train` printed (a run that finished).",
        )
    model = model_from_cfg(read_json(path / CFG_FILE), str(path / CFG_FILE))
    load_state(model, read_tensors(path / MODEL_FILE)[0], str(path / MODEL_FILE))
    return model.to(device).eval()


def load_state(model: torch.nn.Module, state: dict[str, Tensor], what: str) -> None:
    expected = model.state_dict()
    if set(state) != set(expected) or any(state[k].shape != v.shape for k, v in expected.items()):
        raise SparseAEError(
            what,
            expected="weights matching the model in cfg.json",
            got="different tensor names or shapes",
            fix="The weights and cfg.json do not belong together: re-save the model.",
        )
    model.load_state_dict(state)


# --- sparse codes ------------------------------------------------------------------------------


def save_codes(path: str | Path, code: Tensor) -> Path:
    """Write a code ``(N, n_latents)`` (CSR, as ``model.encode(x, sparse=True)`` gives; a dense one is converted)
    as its non-zeros only, atomically.

    ``.npz``: the layout of ``scipy.sparse.save_npz`` for a CSR matrix (arrays ``format``, ``shape``,
    ``data``, ``indices``, ``indptr``), so ``scipy.sparse.load_npz`` reads it. ``.safetensors``:
    tensors ``indptr``, ``indices``, ``values`` and the shape in the metadata (``"shape": "[N, n]"``).
    Both keep the values' dtype; the indices are int32 where they fit, as scipy's are.
    `load_codes` reads either back.
    """
    path = Path(path)
    _check_codes_suffix(path)
    csr = (code if code.layout == torch.sparse_csr else code.to_sparse_csr()).detach().cpu()
    crow, cols, values = csr.crow_indices(), csr.col_indices(), csr.values()  # (N + 1,), (nnz,), (nnz,)
    index = torch.int32 if max(values.numel(), csr.shape[1]) < 2**31 else torch.int64
    crow, cols = crow.to(index), cols.to(index)
    if path.suffix == ".npz":
        buffer = io.BytesIO()
        np.savez(
            buffer,
            indices=cols.numpy(),
            indptr=crow.numpy(),
            format=np.array(b"csr"),
            shape=np.array(csr.shape, dtype=np.int64),
            data=values.numpy(),
        )
        atomic_write(path, buffer.getvalue())
    else:
        metadata = {"format": "csr", "shape": json.dumps(list(csr.shape))}
        write_tensors(path, {"indptr": crow, "indices": cols, "values": values}, metadata)
    return path


def load_codes(path: str | Path) -> Tensor:
    """The code ``(N, n_latents)`` that `save_codes` (or ``sparseae encode --format sparse``) wrote, as a CSR tensor.

    Also reads a CSR matrix that ``scipy.sparse.save_npz`` wrote (indices sorted in each row).
    """
    path = Path(path)
    _check_codes_suffix(path)
    if path.suffix == ".npz":
        crow, cols, values, shape = _read_npz_csr(path)
    else:
        tensors, metadata = read_tensors(path)
        missing = {"indptr", "indices", "values"} - set(tensors)
        if missing or metadata.get("format") != "csr":
            raise SparseAEError(
                str(path),
                expected="sparse codes: tensors indptr, indices, values and metadata format 'csr' and shape",
                got=f"tensors {', '.join(sorted(tensors)) or 'none'} and format {metadata.get('format')!r}",
                fix="Pass a file written by `sparseae encode --format sparse` (or sparseae.io.save_codes).",
            )
        crow, cols, values, shape = tensors["indptr"], tensors["indices"], tensors["values"], metadata.get("shape")
        shape = _json_or_none(shape)
    try:
        rows, n = (int(d) for d in shape)  # type: ignore[union-attr]
        return torch.sparse_csr_tensor(crow.long(), cols.long(), values, (rows, n), check_invariants=True)
    except (TypeError, ValueError, RuntimeError) as e:
        raise SparseAEError(
            str(path),
            expected="a consistent CSR matrix (indptr of rows + 1 rising to nnz, indices in [0, n) ascending in each row)",
            got=f"{str(e).splitlines()[0][:200]} (shape {shape!r})",
            fix="The file is damaged, or a scipy matrix with unsorted indices (call .sort_indices() before save_npz): "
            "re-create it.",
        ) from None


def _check_codes_suffix(path: Path) -> None:
    if path.suffix not in CODE_SUFFIXES:
        raise SparseAEError(
            str(path),
            expected=f"a sparse code file ending in {' or '.join(CODE_SUFFIXES)}",
            got=f"a {path.suffix or 'name without a'} suffix",
            fix="Name it CODES.safetensors or CODES.npz (dense codes are plain .npy arrays: numpy.load).",
        )


def _read_npz_csr(path: Path) -> tuple[Tensor, Tensor, Tensor, Any]:
    """indptr, indices, data and shape of a scipy ``save_npz`` CSR file."""
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):  # a .npy file under a .npz name
            arrays = {}
        else:
            with loaded:
                arrays = {k: loaded[k] for k in loaded.files}
    except FileNotFoundError:
        raise SparseAEError(str(path), expected="a .npz file", got="no such file", fix="Check the path.") from None
    except (OSError, ValueError, EOFError) as e:  # damaged zip, pickled arrays
        raise SparseAEError(
            str(path), expected="a readable .npz file", got=f"an unreadable one ({e})", fix="Re-create it."
        ) from None
    wanted = {"format", "shape", "data", "indices", "indptr"}
    fmt = arrays.get("format")
    fmt = fmt.item() if isinstance(fmt, np.ndarray) and fmt.ndim == 0 else fmt
    fmt = fmt.decode("ascii", "replace") if isinstance(fmt, bytes) else fmt
    if not wanted <= set(arrays) or fmt != "csr":
        got = f"format {fmt!r}" if "format" in arrays else f"arrays {', '.join(sorted(arrays)) or 'none'}"
        raise SparseAEError(
            str(path),
            expected=f"a CSR matrix as scipy.sparse.save_npz writes it (arrays {', '.join(sorted(wanted))}, format 'csr')",
            got=got,
            fix="Write it with `sparseae encode --format sparse`, or save a scipy matrix as m.tocsr().",
        )
    return (*(torch.from_numpy(arrays[k]) for k in ("indptr", "indices", "data")), arrays["shape"].tolist())


def _json_or_none(text: str | None) -> Any:
    try:
        return json.loads(text) if text is not None else None
    except ValueError:
        return None
