"""Models for other tools: ONNX graphs, and Hugging Face Hub model folders.

ONNX (:func:`export_onnx`) writes one of two graphs, both on raw inputs (the model's
preprocessing is part of the graph) in eval mode (TopK's ``alpha``, BatchTopK's
threshold: what :meth:`~sparseae.models.Autoencoder.encode` does after training)::

    encoder      inputs (N, *input_shape) float32 -> codes (N, n_latents)
    autoencoder  inputs (N, *input_shape) float32 -> codes (N, n_latents), reconstruction (N, *input_shape)

The reconstruction is in the raw inputs' units, as :meth:`~sparseae.models.Autoencoder.reconstruct`
gives it. The graph is traced by PyTorch's TorchScript-based exporter (``dynamo=False``):
it needs nothing beyond ``onnx``, takes a fraction of a second, and reads the same on
every torch that sparseae accepts. A trace records Python values as constants, so every
warning the tracer raises (a batch size read with ``len``, a branch on a tensor's value)
is turned into an error rather than a graph that is silently wrong for other inputs.

A Hub folder (:func:`publish_folder`) is what ``hf upload`` sends to a model repository:
``model.safetensors`` + ``cfg.json`` (what :func:`sparseae.load` reads), the run's
``config.json`` and ``metrics.jsonl``, and a ``README.md`` model card. :func:`load_hub`
loads such a repository by its id, through the Hugging Face cache.
"""

from __future__ import annotations

import importlib
import inspect
import json
import math
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import sparseae
from sparseae import io, rundir
from sparseae.errors import SparseAEError
from sparseae.models import Autoencoder
from sparseae.rundir import CONFIG_FILE, METRICS_FILE, RECONSTRUCTIONS_FILE

PARTS = ("encoder", "autoencoder")
"""What :func:`export_onnx` can export."""
DEFAULT_OPSET = 17
"""The ONNX opset written unless another is asked for: fixed, so that a graph does not change
with the torch version, and old enough for every maintained runtime (onnxruntime >= 1.13)."""
MIN_OPSET = 9
"""The oldest opset PyTorch's exporter writes these graphs in (TopK, Scatter)."""
INPUT_NAME = "inputs"
OUTPUT_NAMES = {"encoder": ("codes",), "autoencoder": ("codes", "reconstruction")}
HUB_FILES = (io.MODEL_FILE, io.CFG_FILE, CONFIG_FILE, METRICS_FILE)
"""The files :func:`load_hub` downloads from a repository (a model card or other files are left there)."""
CARD_FILE = "README.md"
KNOWN_DATASETS = {"mnist": "ylecun/mnist", "fashion-mnist": "zalando-datasets/fashion_mnist"}
"""Hub data-set ids of the named sources, for the model card's ``datasets`` entry."""

_REPO_ID = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?/[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")
_PLAIN_YAML = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]*")
_LEN_WARNING = "Using len to get tensor shape"

_UMASK = os.umask(0)
os.umask(_UMASK)


# --- ONNX ---------------------------------------------------------------------------------------------------------------


class _Encoder(nn.Module):
    """Raw inputs -> codes, as :meth:`Autoencoder.encode`."""

    def __init__(self, model: Autoencoder):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model.encode(x)  # (N, n_latents)


class _Autoencoder(_Encoder):
    """Raw inputs -> (codes, reconstruction in raw units): :meth:`Autoencoder.reconstruct`, keeping the codes."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        code = self.model.encode(x)  # (N, n_latents)
        return code, self.model.preprocess.inverse(self.model.decode(code), x)  # (N, *input_shape)


def export_onnx(
    model: Autoencoder | str | Path,
    path: str | Path,
    *,
    part: str = "encoder",
    opset: int | None = None,
    batch_dynamic: bool = True,
) -> Path:
    """Write ``model`` (or the model of a run or model directory) as an ONNX graph.

    Args:
        model: A model, or a run directory / model directory that :func:`sparseae.load` reads.
        path: The ``.onnx`` file to write; it must not exist (parent directories are created).
        part: ``"encoder"``: inputs ``(N, *input_shape)`` float32 -> ``codes`` ``(N, n_latents)``;
            ``"autoencoder"``: -> ``codes`` and ``reconstruction`` ``(N, *input_shape)``, in raw units.
        opset: ONNX opset version; ``None`` writes :data:`DEFAULT_OPSET`.
        batch_dynamic: A graph for any batch size ``N`` (else for ``N = 1`` only).

    Returns:
        ``path``. The graph's metadata holds the model's ``cfg.json`` (``sparseae_cfg``), the part and
        the sparseae version.

    Raises:
        SparseAEError: a bad part, opset or path, a model that is not float32, or one whose trace
            would not hold for other inputs (see the module docstring).
    """
    onnx = _import("onnx", "ONNX export")
    if isinstance(model, (str, Path)):
        model = io.load(model)
    if not isinstance(model, Autoencoder):
        raise SparseAEError(
            "model",
            expected="a sparseae model, or the path of a run or model directory",
            got=type(model).__name__,
            fix="Pass a model built or loaded with sparseae.",
        )
    if part not in PARTS:
        raise SparseAEError(
            "part", expected=f"one of {', '.join(PARTS)}", got=repr(part), fix="Export the encoder or the whole autoencoder."
        )
    if opset is not None and not (isinstance(opset, int) and not isinstance(opset, bool) and opset >= MIN_OPSET):
        raise SparseAEError(
            "opset",
            expected=f"an ONNX opset version >= {MIN_OPSET}, or None for {DEFAULT_OPSET}",
            got=repr(opset),
            fix="Leave it unset unless a runtime needs a particular version.",
        )
    parameter = next(model.parameters(), None)
    if parameter is not None and parameter.dtype != torch.float32:
        raise SparseAEError(
            "model",
            expected="float32 weights (the graph takes float32 inputs)",
            got=str(parameter.dtype),
            fix="Export a float32 copy: copy.deepcopy(model).float().",
        )
    path = Path(path)
    _check_new(path, "Remove it, or choose another path: export never overwrites a file.")
    _make_parent(path)

    wrapper = (_Encoder if part == "encoder" else _Autoencoder)(model)
    device = parameter.device if parameter is not None else torch.device("cpu")
    example = torch.randn(2 if batch_dynamic else 1, *model.input_shape, generator=torch.Generator().manual_seed(0))
    outputs = OUTPUT_NAMES[part]
    dynamic = {name: {0: "batch"} for name in (INPUT_NAME, *outputs)} if batch_dynamic else None
    was_training = model.training
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        wrapper.eval()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.onnx.export(
                wrapper,
                (example.to(device),),
                tmp,
                input_names=[INPUT_NAME],
                output_names=list(outputs),
                dynamic_axes=dynamic,
                opset_version=opset or DEFAULT_OPSET,
                do_constant_folding=True,
                **_legacy_exporter(),
            )
        _check_trace(caught, batch_dynamic, model)
        for w in caught:  # what the exporter says besides: passed on, but for its notice that it is the legacy one
            if not issubclass(w.category, (torch.jit.TracerWarning, DeprecationWarning)):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        graph = onnx.load(tmp, load_external_data=False)
        graph.doc_string = f"sparseae {model.kind} model ({part}): {INPUT_NAME} (N, *input_shape) -> {', '.join(outputs)}"
        for key, value in (
            ("sparseae_version", sparseae.__version__),
            ("sparseae_part", part),
            ("sparseae_cfg", json.dumps({"format": io.FORMAT, **model.describe()})),
        ):
            graph.metadata_props.add(key=key, value=value)
        onnx.save(graph, tmp)
        onnx.checker.check_model(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        model.train(was_training)
    return path


def _legacy_exporter() -> dict[str, Any]:
    # torch >= 2.9 defaults to the torch.export-based exporter, which needs onnxscript and is
    # ~10x slower here; torch < 2.5 has no `dynamo` argument and only the TorchScript exporter.
    return {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}


def _check_trace(caught: list[warnings.WarningMessage], batch_dynamic: bool, model: Autoencoder) -> None:
    """Raise on a tracer warning: the graph holds a value that was only true of the example input."""
    tracer = [w for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
    if not batch_dynamic:  # the batch size is a constant of such a graph anyway
        tracer = [w for w in tracer if not str(w.message).startswith(_LEN_WARNING)]
    if not tracer:
        return
    first = str(tracer[0].message).split(". ")[0]
    fix = (
        "Export with batch_dynamic=False for a graph of batch size 1, or read the batch size as x.shape[0] in the model's code."
        if first.startswith(_LEN_WARNING)
        else "Compute the code with tensor operations only (no Python branch or number taken from a tensor's value)."
    )
    raise SparseAEError(
        f"ONNX export of the {model.kind} model ({model.sparsity.name} sparsity, preprocess "
        f"{','.join(model.preprocess.steps) or 'none'})",
        expected="a computation that the trace records for every input",
        got=f"{len(tracer)} tracer warning(s), the first: {first!r}",
        fix=fix,
    )


# --- Hub folders --------------------------------------------------------------------------------------------------------


def publish_folder(run_dir: str | Path, out_dir: str | Path, *, repo_id: str | None = None, license: str | None = None) -> Path:
    """Write a Hugging Face Hub model folder for the model of a run.

    The folder holds ``model.safetensors`` + ``cfg.json`` (so :func:`sparseae.load` reads it, from disk
    or, uploaded, by repo id), copies of the run's ``config.json`` and ``metrics.jsonl`` (and
    ``reconstructions.png`` where the run has one), and a ``README.md`` model card: YAML front
    matter (``library_name: sparseae``, tags, data sets, license) and the model's settings, its
    training, its final metrics and how to load it. The folder appears whole or not at all.

    ``config.json`` is copied as it is: it records the data's paths on this machine.

    Args:
        run_dir: A run directory that finished at least one epoch.
        out_dir: The folder to write; it must not exist or be empty.
        repo_id: ``user/repo`` the folder is meant for, shown in the card's title and loading code.
        license: A Hub license id (e.g. ``mit``, ``apache-2.0``) for the card; omitted when unset.

    Returns:
        ``out_dir``.
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    run = rundir.read_config(run_dir)
    if not ((run_dir / io.CFG_FILE).is_file() and (run_dir / io.MODEL_FILE).is_file()):
        raise SparseAEError(
            str(run_dir),
            expected=f"a run that finished at least one epoch (with {io.CFG_FILE} and {io.MODEL_FILE})",
            got="a run without a saved model yet",
            fix="Wait for its first epoch to end, or continue it: sparseae train --resume RUN.",
        )
    if repo_id is not None and not looks_like_repo_id(repo_id):
        raise SparseAEError("repo_id", expected="user/repo", got=repr(repo_id), fix="Name the repository as the Hub does.")
    model = io.load(run_dir)  # the model files must load before they are published
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise SparseAEError(
            str(out_dir),
            expected="a new or empty folder",
            got="a file" if not out_dir.is_dir() else "a folder that already holds files",
            fix="Choose another output folder, or remove that one: publishing never overwrites.",
        )
    _make_parent(out_dir)
    names = [io.MODEL_FILE, io.CFG_FILE, CONFIG_FILE, METRICS_FILE, RECONSTRUCTIONS_FILE]
    names = [n for n in names if (run_dir / n).is_file()]
    card = model_card(model, run, rundir.read_metrics(run_dir), repo_id=repo_id, title=run_dir.resolve().name, license=license,
                      files=[*names, CARD_FILE])  # fmt: skip
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.", suffix=".tmp"))
    try:
        os.chmod(tmp, 0o777 & ~_UMASK)
        for name in names:
            shutil.copyfile(run_dir / name, tmp / name)
        (tmp / CARD_FILE).write_text(card)
        if out_dir.is_dir():
            out_dir.rmdir()  # empty, checked above
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def model_card(
    model: Autoencoder,
    run: dict[str, Any],
    metrics: list[dict[str, Any]],
    *,
    repo_id: str | None = None,
    title: str | None = None,
    license: str | None = None,
    files: list[str] | None = None,
) -> str:
    """The ``README.md`` of a Hub folder: YAML front matter, then the model, its training, its metrics, its use.

    ``repo_id`` (else ``title``) heads the card; the loading code names ``repo_id``, else a placeholder.
    """
    desc = model.describe()
    sparsity, data, train = desc["sparsity"], run.get("data"), run.get("train") or {}
    tags = ["sparse-autoencoder", "sparseae", desc["kind"]]
    if ":" not in sparsity["name"]:  # a registered constraint; a user's module:Class is no tag
        tags.append(sparsity["name"])
    front = ["---", "library_name: sparseae"]
    if license:
        front.append(f"license: {_yaml(license)}")
    front += ["tags:", *(f"- {_yaml(t)}" for t in tags)]
    datasets = _hub_datasets(data)
    if datasets:
        front += ["datasets:", *(f"- {_yaml(d)}" for d in datasets)]
    front.append("---")

    n_params = sum(p.numel() for p in model.parameters())
    params = ", ".join(f"{k}={v!r}" for k, v in sparsity["params"].items())
    constraint = f"`{sparsity['name']}`" + (f" ({params})" if params else "")
    preprocess = ", ".join(desc["preprocess"])
    preprocess = f"{preprocess} (fitted on the training data; part of the model)" if preprocess else "none"
    source = _describe_data(data)
    version = run.get("sparseae_version", "?")
    lines = [
        *front,
        "",
        f"# {repo_id or title or 'Sparse autoencoder'}",
        "",
        f"A sparse autoencoder trained with sparseae {version}: "
        f"the `{desc['kind']}` model with {model.n_latents:,} latents and {constraint} sparsity, "
        f"trained on {source}.",
        "",
        "## Model",
        "",
        "| | |",
        "| --- | --- |",
        f"| kind | `{desc['kind']}` |",
        f"| input shape | `{tuple(model.input_shape)}` (one sample) |",
        f"| latents | {model.n_latents:,} |",
        f"| constraint | {constraint} |",
        f"| preprocessing | {preprocess} |",
        f"| parameters | {n_params:,} |",
        "",
        "<details><summary>Full model config</summary>",
        "",
        *_table(desc["config"], ("field", "value")),
        "",
        "</details>",
        "",
        "## Training",
        "",
        f"Data: {source}.",
        "",
        *_table({k: v for k, v in train.items() if v is not None}, ("setting", "value")),
        "",
        f"## Metrics{_at(metrics)}",
        "",
    ]
    if metrics:
        lines += [
            "The last record of `metrics.jsonl`: `test_*` on the held-out test split, `train_*` averaged over the "
            "epoch's batches (definitions: sparseae's `metrics` module).",
            "",
            *_table({k: v for k, v in metrics[-1].items() if k not in ("epoch", "step")}, ("metric", "value")),
        ]
    else:
        lines.append("No metrics were recorded.")
    if files and RECONSTRUCTIONS_FILE in files:
        lines += ["", f"![Test samples above their reconstructions]({RECONSTRUCTIONS_FILE})"]
    custom = sparsity["name"].partition(":")[0] if ":" in sparsity["name"] else None
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "import sparseae",
        "",
        f'model = sparseae.load("{repo_id or "USER/REPO"}")  # from the Hub (cached), or sparseae.load("path/to/this/folder")',
        f"codes = model.encode(x)  # x: raw inputs, float32 ({', '.join(['N', *map(str, model.input_shape)])})",
        "recon = model.reconstruct(x)  # in the inputs' units",
        "```",
    ]
    if custom:
        lines += ["", f"The constraint is the user's own: the module `{custom}` must be importable to load the model."]
    if files:
        lines += ["", "## Files", "", *(f"- `{f}`{_FILE_NOTES.get(f, '')}" for f in files)]
    return "\n".join(lines) + "\n"


_FILE_NOTES = {
    io.MODEL_FILE: ": the weights (safetensors)",
    io.CFG_FILE: ": what builds the model (kind, config, constraint, preprocessing)",
    CONFIG_FILE: ": the run's model, training and data settings",
    METRICS_FILE: ": one line of metrics per epoch",
    RECONSTRUCTIONS_FILE: ": test samples above their reconstructions",
    CARD_FILE: ": this card",
}


def _at(metrics: list[dict[str, Any]]) -> str:
    return f" (epoch {metrics[-1].get('epoch')}, step {metrics[-1].get('step')})" if metrics else ""


def _table(values: dict[str, Any], header: tuple[str, str]) -> list[str]:
    return [f"| {header[0]} | {header[1]} |", "| --- | --- |", *(f"| {k} | {_cell(v)} |" for k, v in values.items())]


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    if isinstance(value, bool) or value is None:
        return f"`{value}`"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (list, tuple, dict)):
        return f"`{json.dumps(value)}`".replace("|", "\\|")
    return f"`{value}`".replace("|", "\\|")


def _yaml(value: str) -> str:
    """A YAML scalar: plain where that is safe, else double-quoted (JSON strings are YAML)."""
    return value if _PLAIN_YAML.fullmatch(value) else json.dumps(value)


def _hub_datasets(data: dict[str, Any] | None) -> list[str]:
    """Hub data-set ids the training data came from, where known."""
    if not data:
        return []
    if data.get("source") in KNOWN_DATASETS:
        return [KNOWN_DATASETS[data["source"]]]
    text = (_lm_config(data) or {}).get("text", "")
    if isinstance(text, str) and text.startswith("hf:"):
        return [text[3:].split(":")[0]]
    return []


def _lm_config(data: dict[str, Any]) -> dict[str, Any] | None:
    """The language model, module and text of activations: live (source 'lm') or from a shard cache here."""
    if data.get("source") == "lm":
        return data.get("lm")
    manifest = Path(str(data.get("source", ""))) / "manifest.json"
    try:
        meta = json.loads(manifest.read_text()).get("metadata") or {}
    except (OSError, ValueError, AttributeError):
        return None
    return meta.get("config") if meta.get("source") == "lm-activations" else None


def _describe_data(data: dict[str, Any] | None) -> str:
    if not data:
        return "data passed to `sparseae.train` in memory (not recorded)"
    source = str(data.get("source"))
    names = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST", "kmnist": "KMNIST"}
    lm = _lm_config(data)
    if lm:
        what = "cached activations" if source != "lm" else "activations"
        text = f"{what} of `{lm.get('model')}` at `{lm.get('module')}` on `{lm.get('text')}`"
    elif source in names:
        text = names[source]
    elif source.startswith("patches"):
        text = f"{data.get('patch_size')}x{data.get('patch_size')} natural-image patches (`{source}`)"
    else:
        text = f"`{source}`"
    limits = [f"first {data[k]:,} {k[:-6]} samples" for k in ("train_limit", "test_limit") if data.get(k)]
    return text + (f" ({', '.join(limits)})" if limits else "")


# --- loading by repo id -------------------------------------------------------------------------------------------------


def looks_like_repo_id(name: str) -> bool:
    """Whether ``name`` has the form of a Hub model id, ``user/repo`` (whether or not a local path of that name exists)."""
    return isinstance(name, str) and len(name) <= 192 and bool(_REPO_ID.fullmatch(name)) and ".." not in name


def load_hub(
    repo_id: str, revision: str | None = None, cache_dir: str | Path | None = None, *, device: str | torch.device = "cpu"
) -> Autoencoder:
    """Load a model from a Hugging Face Hub repository written by :func:`publish_folder`.

    Only the model's files are downloaded (into the Hugging Face cache, once per revision);
    offline (``HF_HUB_OFFLINE=1``, or no network) a cached copy is used.

    Args:
        repo_id: ``user/repo``.
        revision: A branch, tag or commit hash; the default branch when unset.
        cache_dir: The Hugging Face cache to use; its default location when unset.
        device: Where the model goes.

    Returns:
        The model, in eval mode.
    """
    if not looks_like_repo_id(repo_id):
        raise SparseAEError(
            "model", expected="a Hub repo id user/repo", got=repr(repo_id), fix="Check the id, or pass a local folder's path."
        )
    hub = _import("huggingface_hub", "Loading from the Hugging Face Hub")
    from huggingface_hub.utils import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{repo_id}" + (f" (revision {revision})" if revision else "")
    try:
        folder = hub.snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=cache_dir,
            allow_patterns=list(HUB_FILES),
            library_name="sparseae",
            library_version=sparseae.__version__,
        )
    except RevisionNotFoundError:
        raise SparseAEError(
            where, expected="a branch, tag or commit of the repository", got="no such revision", fix="Check the revision."
        ) from None
    except RepositoryNotFoundError:  # also private and gated repositories, to a user without access
        raise SparseAEError(
            repo_id,
            expected="a local model folder, or a model repository on the Hugging Face Hub",
            got="neither: no such folder here, and no repository of that id that you can read on the Hub",
            fix="Check the path or the id; for a private repository, log in first (hf auth login).",
        ) from None
    except LocalEntryNotFoundError as e:  # offline, or the Hub unreachable, and no complete copy in the cache
        offline = bool(importlib.import_module("huggingface_hub.constants").HF_HUB_OFFLINE)
        reason = "the Hub is offline (HF_HUB_OFFLINE is set)" if offline else f"the Hub could not be reached ({_cause(e)})"
        raise SparseAEError(
            where,
            expected="a model in the local Hugging Face cache, or a reachable Hub to download it from",
            got=f"no cached copy, and {reason}",
            fix="Download it once while online (unset HF_HUB_OFFLINE); later loads use the cache. "
            "Or pass the path of a local model folder.",
        ) from None
    except HfHubHTTPError as e:
        raise SparseAEError(
            where, expected="a download from the Hugging Face Hub", got=_cause(e), fix="Try again later, or check the id."
        ) from None
    folder = Path(folder)
    if not (folder / io.CFG_FILE).is_file():
        raise SparseAEError(
            where,
            expected=f"a sparseae model repository ({io.CFG_FILE} + {io.MODEL_FILE})",
            got=f"a repository without {io.CFG_FILE}",
            fix="Check the id; sparseae writes such folders with publish_folder (sparseae export RUN --format hub).",
        )
    return io.load(folder, device)


def _cause(error: BaseException) -> str:
    cause = error.__cause__ or error
    return f"{type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}".rstrip(": ")


# --- shared -------------------------------------------------------------------------------------------------------------


def _import(name: str, what: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError:
        raise SparseAEError(what, expected=f"the {name} package", got="not installed", fix=f"pip install {name}") from None


def _check_new(path: Path, fix: str) -> None:
    if path.exists() or path.is_symlink():
        got = "an existing " + ("folder" if path.is_dir() else "file")
        raise SparseAEError(str(path), expected="a path that does not exist yet", got=got, fix=fix)


def _make_parent(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise SparseAEError(
            str(path), expected="a path in a directory", got="a path inside a file", fix="Choose another path."
        ) from None
