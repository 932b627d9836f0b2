"""Hugging Face Hub model folders: write one ([`publish_folder`][sparseae.interop.hub.publish_folder]), and load a
model by repo id ([`load_hub`][sparseae.interop.hub.load_hub]) or from wherever it is ([`load`][sparseae.interop.hub.load]).

A Hub folder (`publish_folder`) is what ``hf upload`` sends to a model repository:
``model.safetensors`` + ``cfg.json`` (what [`sparseae.load`][sparseae.load] reads), the run's
``config.json`` and ``metrics.jsonl``, and a ``README.md`` model card. `load_hub`
loads such a repository by its id, through the Hugging Face cache.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from sparseae import io, rundir
from sparseae._version import __version__
from sparseae.errors import SparseAEError
from sparseae.interop._files import make_parent, require, usual_mode
from sparseae.models import Autoencoder
from sparseae.rundir import CONFIG_FILE, METRICS_FILE, RECONSTRUCTIONS_FILE

HUB_FILES = (io.MODEL_FILE, io.CFG_FILE, CONFIG_FILE, METRICS_FILE)
"""The files `load_hub` downloads from a repository (a model card or other files are left there)."""
CARD_FILE = "README.md"
KNOWN_DATASETS = {"mnist": "ylecun/mnist", "fashion-mnist": "zalando-datasets/fashion_mnist"}
"""Hub data-set ids of the named sources, for the model card's ``datasets`` entry."""

_REPO_ID = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?/[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")
_PLAIN_YAML = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]*")


def publish_folder(run_dir: str | Path, out_dir: str | Path, *, repo_id: str | None = None, license: str | None = None) -> Path:
    """Write a Hugging Face Hub model folder for the model of a run.

    The folder holds ``model.safetensors`` + ``cfg.json`` (so [`sparseae.load`][sparseae.load] reads it, from disk
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
    make_parent(out_dir)
    names = [io.MODEL_FILE, io.CFG_FILE, CONFIG_FILE, METRICS_FILE, RECONSTRUCTIONS_FILE]
    names = [n for n in names if (run_dir / n).is_file()]
    card = model_card(model, run, rundir.read_metrics(run_dir), repo_id=repo_id, title=run_dir.resolve().name, license=license,
                      files=[*names, CARD_FILE])  # fmt: skip
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.", suffix=".tmp"))
    try:
        os.chmod(tmp, usual_mode(0o777))
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
    Written as text rather than with huggingface_hub's ModelCard: writing a folder must not need
    huggingface_hub (only loading by repo id does), and the front matter is five plain keys.
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


def load(path: str | Path, device: str | torch.device = "cpu") -> Autoencoder:
    """Load a model from a run directory, a directory holding ``cfg.json`` + ``model.safetensors``
    (e.g. a Hub model folder), or a Hugging Face Hub repository ``user/repo`` (downloaded once, cached).

    A string is a repo id only when no such local path exists and it does not look like
    one (``runs/nope`` where ``runs`` is a local directory is a mistyped path). A sparsify or
    SAELens SAE folder is refused with the function that imports it.
    """
    if isinstance(path, str) and not Path(path).exists() and looks_like_repo_id(path) and not _local_parent(path):
        return load_hub(path, device=device)
    _refuse_foreign(Path(path))
    return io.load(path, device)


def _refuse_foreign(folder: Path) -> None:
    """Point a folder of another tool's files (their config is ``cfg.json`` too) to the function that imports it."""
    from sparseae.interop import saelens, sparsify

    if (folder / io.MODEL_FILE).exists():
        return
    for tool, weights, function in (("sparsify", sparsify.WEIGHTS_FILE, "import_sparsify"),
                                    ("SAELens", saelens.WEIGHTS_FILE, "import_saelens")):  # fmt: skip
        if (folder / weights).is_file():
            raise SparseAEError(
                str(folder),
                expected=f"a sparseae model folder ({io.CFG_FILE} + {io.MODEL_FILE})",
                got=f"a {tool} SAE folder ({io.CFG_FILE} + {weights})",
                fix=f"Import it: sparseae.interop.{function}({str(folder)!r}) gives a sparseae model.",
            )


def _local_parent(name: str) -> bool:
    return Path(name).parent.is_dir()


def looks_like_repo_id(name: str) -> bool:
    """Whether ``name`` has the form of a Hub model id, ``user/repo`` (whether or not a local path of that name exists)."""
    return isinstance(name, str) and len(name) <= 192 and bool(_REPO_ID.fullmatch(name)) and ".." not in name


def load_hub(
    repo_id: str, revision: str | None = None, cache_dir: str | Path | None = None, *, device: str | torch.device = "cpu"
) -> Autoencoder:
    """Load a model from a Hugging Face Hub repository written by `publish_folder`.

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
    hub = require("huggingface_hub", "Loading from the Hugging Face Hub")
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
            library_version=__version__,
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
