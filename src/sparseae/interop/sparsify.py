"""EleutherAI sparsify's file layout: a folder per hookpoint holding ``cfg.json`` + ``sae.safetensors``, both ways.

sparsify (``eai-sparsify``, 1.x) computes, for an input row ``x``::

    pre   = relu((x - b_dec) @ encoder.weight.T + encoder.bias)   # encoder.weight (num_latents, d_in)
    code  = the k largest of pre (indices and values)
    recon = code @ W_dec + b_dec                                  # W_dec (num_latents, d_in)

which is sparseae's `DenseAutoencoder` with the TopK constraint: ``encoder`` as it is,
``W_dec = W_dec.T`` and ``b_dec = b_pre``. TopK exports the ``round(alpha * k)`` units it keeps
when encoding (sparsify has one k). Preprocessing that is an invertible affine map of the input
(``norm``, ``standardize``, ``zca``) is folded into the weights, as for SAELens, and a decoder bias
of its own (``pre_bias="none"``) moves into ``encoder.bias``, since sparsify always subtracts
``b_dec`` first. Neither package imports the other; what the other side cannot represent is refused
with a `SparseAEError` that says why.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sparseae._config import from_dict
from sparseae.errors import SparseAEError
from sparseae.interop._files import make_parent
from sparseae.interop.saelens import AFFINE_STEPS, _encode_time_k, _preprocessing_affine, _Weights
from sparseae.io import CFG_FILE, MODEL_FILE, read_json, read_tensors, write_json, write_tensors
from sparseae.models import Autoencoder, DenseAutoencoder, DenseConfig
from sparseae.sparsity import Sparsity, build_sparsity

WEIGHTS_FILE = "sae.safetensors"
"""sparsify's weights file; its config file is ``cfg.json``, like ours."""
SHAPES = {"encoder.weight": ("n", "d"), "encoder.bias": ("n",), "W_dec": ("n", "d"), "b_dec": ("d",)}
"""The tensors of a sparsify SAE, by (num_latents, d_in); ``W_skip`` (d, d) too with a skip connection."""

METADATA_KEY = "sparseae"
"""The safetensors metadata entry where `export_sparsify` keeps the model's settings (`Autoencoder.describe`)."""

_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


# --- export -------------------------------------------------------------------------------------


def export_sparsify(model: Autoencoder, directory: str | Path, *, hookpoint: str | None = None) -> Path:
    """Write ``model`` as a sparsify SAE: ``cfg.json`` and ``sae.safetensors`` in one folder.

    sparsify then loads it with ``Sae.load_from_disk(folder)`` and, on raw inputs, gives the top-k
    latents of ``model.encode`` and the reconstructions of ``model.reconstruct`` (in eval mode).

    Args:
        model: A dense model with the topk constraint, without an output activation, whose
            preprocessing (if any) is norm, standardize and/or zca.
        directory: The SAE's folder; with ``hookpoint``, the folder that holds one per hookpoint
            (as sparsify's trainer saves them). The SAE's folder must not exist or be empty.
        hookpoint: The module the activations come from (e.g. ``"layers.6"``): the SAE goes in
            ``directory / hookpoint``, where ``Sae.load_many(directory, local=True)`` finds it.

    Returns:
        The SAE's folder.
    """
    model = _exportable(model)
    folder = Path(directory) if hookpoint is None else Path(directory) / _relative(hookpoint)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        sparseae_model = (folder / MODEL_FILE).exists()
        raise SparseAEError(
            str(folder),
            expected="a new or empty folder for the SAE",
            got=f"a folder holding a sparseae model ({MODEL_FILE})" if sparseae_model else "a file or a folder with files in it",
            fix="Export to a new folder, e.g. RUN/sparsify (exports never overwrite).",
        )
    with torch.no_grad():
        if model.preprocess.steps or model.config.pre_bias == "none":
            tensors = _folded(model)
        else:  # nothing to fold: the weights as they are, bit for bit
            tensors = {"encoder.weight": model.encoder.weight, "encoder.bias": model.encoder.bias, "W_dec": model.W_dec.T}
            tensors["b_dec"] = model.b_pre
    d, n = model.W_dec.shape
    cfg = {
        "activation": "topk",
        "expansion_factor": max(1, n // d),  # sparsify reads num_latents first; this is only its nearest multiple
        "normalize_decoder": model.config.unit_norm_decoder,
        "num_latents": n,
        "k": _encode_time_k(model.sparsity),
        "multi_topk": False,
        "skip_connection": False,
        "transcode": False,
        "d_in": d,
    }
    make_parent(folder / CFG_FILE)
    # In the weights' metadata, which sparsify ignores (it logs a warning for each unknown field of cfg.json).
    write_tensors(folder / WEIGHTS_FILE, tensors, {METADATA_KEY: json.dumps(_description(model))})
    write_json(folder / CFG_FILE, cfg)
    return folder


def _exportable(model: Any) -> DenseAutoencoder:
    """``model``, if sparsify can represent it; else the reason it cannot."""
    if not isinstance(model, DenseAutoencoder):
        raise SparseAEError(
            "export to sparsify",
            expected="a dense model (sparseae.DenseAutoencoder): sparsify SAEs are one linear encoder and decoder",
            got=f"a {type(model).__name__}",
            fix="Train a dense model (--model dense) with --sparsity topk to use it in sparsify.",
        )
    if model.sparsity.name != "topk":
        raise SparseAEError(
            "export to sparsify",
            expected="the topk constraint (sparsify's SAEs keep the k largest ReLU pre-activations)",
            got=repr(model.sparsity.name),
            fix="Train with --sparsity topk to export to sparsify; export other constraints to SAELens (--format saelens).",
        )
    if model.config.output_activation != "none":
        raise SparseAEError(
            "export to sparsify",
            expected="a model without an output activation (sparsify decodes linearly)",
            got=f"output_activation={model.config.output_activation!r}",
            fix="Train with output_activation='none' to export.",
        )
    other = [s for s in model.preprocess.steps if s not in AFFINE_STEPS]
    if other:
        raise SparseAEError(
            "export to sparsify",
            expected=f"preprocessing among {', '.join(AFFINE_STEPS)} (affine maps, folded into the weights)",
            got=f"preprocess {','.join(model.preprocess.steps)}",
            fix=f"sparsify cannot apply {', '.join(other)}: only fixed affine maps of the input fold into its weights "
            "(center removes each input's own mean, which decoding a code cannot restore). Train without it to export.",
        )
    if model.W_dec.dtype not in _DTYPES:
        raise SparseAEError(
            "model dtype", expected="float32, float64, float16 or bfloat16", got=str(model.W_dec.dtype),
            fix="Convert it first, e.g. model.float().",
        )  # fmt: skip
    return model


def _folded(model: DenseAutoencoder) -> dict[str, Tensor]:
    """sparsify's tensors for raw inputs: the preprocessing folded in, and a decoder bias of the model's own
    (``pre_bias="none"``) moved into ``encoder.bias``, since sparsify always subtracts ``b_dec`` first."""
    weights = _Weights(
        model.encoder.weight.T.double(), model.encoder.bias.double(), model.W_dec.T.double(), model.b_pre.double(),
        model.config.pre_bias != "none",
    )  # fmt: skip
    if model.preprocess.steps:
        weights = weights.fold(_preprocessing_affine(model))
    b_enc = weights.b_enc if weights.apply_b_dec_to_input else weights.b_enc + weights.b_dec @ weights.W_enc
    tensors = {"encoder.weight": weights.W_enc.T, "encoder.bias": b_enc, "W_dec": weights.W_dec, "b_dec": weights.b_dec}
    return {k: v.to(model.W_dec.dtype) for k, v in tensors.items()}


def _relative(hookpoint: Any) -> Path:
    path = Path(hookpoint) if isinstance(hookpoint, str) else None
    if path is None or not hookpoint or path.is_absolute() or ".." in path.parts:
        raise SparseAEError(
            "hookpoint",
            expected="a module name such as 'layers.6' (a folder name inside the output folder)",
            got=repr(hookpoint),
            fix="Pass the module's name, as sparsify's --hookpoints names it.",
        )
    return path


def _description(model: DenseAutoencoder) -> dict[str, Any]:
    from sparseae._version import __version__

    return {"exported_by": f"sparseae {__version__}", **model.describe()}


# --- import -------------------------------------------------------------------------------------


def import_sparsify(directory: str | Path) -> DenseAutoencoder:
    """A sparseae model from a sparsify SAE folder (``cfg.json`` + ``sae.safetensors``).

    sparsify saves one such folder per hookpoint (``RUN/layers.6``); pass that folder. Given the
    folder above it, the error lists the hookpoints inside. The model gives sparsify's codes (its
    top-k latents, scattered into ``(B, num_latents)``) and reconstructions on the same inputs, in
    float32, and is returned in eval mode.

    Returns:
        A `DenseAutoencoder` with the topk constraint, ``pre_bias="zeros"`` (the imported ``b_dec``)
        and no preprocessing; the settings of a model that sparseae exported come back too.
    """
    directory = Path(directory)
    cfg_path, weights_path = directory / CFG_FILE, directory / WEIGHTS_FILE
    if not cfg_path.is_file() or not weights_path.is_file():
        raise _not_a_hookpoint(directory, cfg_path, weights_path)
    cfg = read_json(cfg_path)
    if not isinstance(cfg, dict):
        raise SparseAEError(str(cfg_path), expected="a JSON object", got=type(cfg).__name__, fix="Check the file.")
    if "format" in cfg and "kind" in cfg:
        raise SparseAEError(
            str(cfg_path),
            expected="a sparsify config",
            got="a sparseae model config",
            fix="Load it with sparseae.load(directory).",
        )
    _check_importable(cfg, str(cfg_path))
    tensors, metadata = read_tensors(weights_path)
    t = _read_weights(cfg, tensors, str(weights_path))
    n, d = t["encoder.weight"].shape
    saved = _saved(metadata)
    k = _whole(cfg.get("k"), f"{cfg_path} k", n)
    unit_norm = bool(cfg.get("normalize_decoder", True)) and bool(
        torch.allclose(t["W_dec"].double().norm(dim=1), torch.ones(n, dtype=torch.float64), atol=1e-4, rtol=0)
    )
    model = DenseAutoencoder(_dense_config(saved, d, n, unit_norm, str(cfg_path)), _sparsity(saved, k, n))
    with torch.no_grad():
        model.encoder.weight.copy_(t["encoder.weight"])
        model.encoder.bias.copy_(t["encoder.bias"])
        model.W_dec.copy_(t["W_dec"].T)
        model.b_pre.copy_(t["b_dec"])
    return model.eval()


def _not_a_hookpoint(directory: Path, cfg_path: Path, weights_path: Path) -> SparseAEError:
    """The error for a folder without a sparsify SAE in it: what it holds instead, and what to pass."""
    expected = f"a sparsify SAE folder holding {CFG_FILE} and {WEIGHTS_FILE}"
    hookpoints = _hookpoints(directory) if directory.is_dir() else []
    if hookpoints:
        shown = ", ".join(hookpoints[:20]) + (f", ... ({len(hookpoints)} in all)" if len(hookpoints) > 20 else "")
        return SparseAEError(
            str(directory),
            expected=expected + " (one hookpoint's)",
            got=f"a folder of {len(hookpoints)} hookpoint{'s' * (len(hookpoints) > 1)}: {shown}",
            fix=f"Import one hookpoint's folder, e.g. import_sparsify({str(directory / hookpoints[0])!r}).",
        )
    if (directory / "sae_weights.safetensors").is_file():
        return SparseAEError(str(directory), expected=expected, got="a SAELens SAE folder", fix="Import it with import_saelens.")
    missing = " and ".join(p.name for p in (cfg_path, weights_path) if not p.is_file())
    return SparseAEError(
        str(directory),
        expected=expected,
        got="no such folder" if not directory.exists() else f"no {missing} in it",
        fix="Pass the folder of one hookpoint, as sparsify's trainer saves it (e.g. checkpoints/RUN/layers.6); "
        "for a Hub repository, download it first (huggingface_hub.snapshot_download).",
    )


def _hookpoints(parent: Path, depth: int = 2) -> list[str]:
    """The SAE folders under ``parent``, as paths relative to it: one per hookpoint (``layers.6``), and
    one level deeper for sparsify's several seeds per hookpoint (``layers.6/seed1``)."""
    found = []
    for child in sorted(p for p in parent.iterdir() if p.is_dir()):
        if (child / CFG_FILE).is_file() and (child / WEIGHTS_FILE).is_file():
            found.append(child.name)
        elif depth > 1:
            found += [f"{child.name}/{name}" for name in _hookpoints(child, depth - 1)]
    return found


def _check_importable(cfg: dict[str, Any], what: str) -> None:
    if cfg.get("activation", "topk") != "topk":
        raise SparseAEError(
            f"{what} activation",
            expected="'topk' (the constraint sparseae has)",
            got=repr(cfg.get("activation")),
            fix="sparseae would need a constraint of its own for it (groupmax keeps the largest of each group of latents).",
        )
    if cfg.get("transcode"):
        raise SparseAEError(
            f"{what} transcode",
            expected="false: an autoencoder, which reconstructs its input",
            got="true: a transcoder, which predicts another module's output",
            fix="sparseae's models reconstruct their own input; import sparsify's autoencoders only.",
        )


def _read_weights(cfg: dict[str, Any], tensors: dict[str, Tensor], what: str) -> dict[str, Tensor]:
    expected = set(SHAPES) | ({"W_skip"} if cfg.get("skip_connection") else set())
    missing, unknown = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or unknown:
        got = ", ".join(filter(None, [missing and f"no {', '.join(missing)}", unknown and f"also {', '.join(unknown)}"]))
        raise SparseAEError(
            what,
            expected=f"the weights of a sparsify SAE: {', '.join(sorted(expected))}",
            got=got,
            fix="The weights and cfg.json do not belong together"
            + (" (sparsify saved this SAE without its decoder)" if missing == ["W_dec"] else "")
            + ": re-save the SAE with sparsify.",
        )
    t = {k: v.float() for k, v in tensors.items()}
    n, d = t["encoder.weight"].shape if t["encoder.weight"].ndim == 2 else (-1, -1)
    sizes = {"n": n, "d": d}
    wrong = [f"{k} {tuple(t[k].shape)}" for k, s in SHAPES.items() if tuple(t[k].shape) != tuple(sizes[a] for a in s)]
    declared = {"d_in": d, "num_latents": n}
    mismatch = [f"{key} {cfg[key]} in cfg.json" for key, v in declared.items() if cfg.get(key) not in (None, 0, v)]
    if wrong or mismatch or n < 1:
        raise SparseAEError(
            what,
            expected="encoder.weight (num_latents, d_in), encoder.bias (num_latents,), W_dec (num_latents, d_in), "
            "b_dec (d_in,), matching cfg.json",
            got=", ".join(wrong + mismatch) or f"encoder.weight {tuple(t['encoder.weight'].shape)}",
            fix="The weights and cfg.json do not belong together: re-save the SAE with sparsify.",
        )
    if "W_skip" in t and bool(t.pop("W_skip").any()):
        raise SparseAEError(
            f"{what} W_skip",
            expected="no skip connection (or one that is all zeros)",
            got="a trained skip connection: the reconstruction adds x @ W_skip.T",
            fix="sparseae's models reconstruct from the code alone; it would need a skip connection of its own. "
            "Train the sparsify SAE without --skip_connection to import it.",
        )
    return t


def _saved(metadata: dict[str, str]) -> dict[str, Any]:
    """What `export_sparsify` recorded about the model, or nothing (a file sparsify wrote)."""
    try:
        saved = json.loads(metadata.get(METADATA_KEY, "{}"))
    except ValueError:
        return {}
    return saved if isinstance(saved, dict) else {}


def _dense_config(saved: dict[str, Any], d: int, n: int, unit_norm: bool, what: str) -> DenseConfig:
    config = saved.get("config") if isinstance(saved.get("config"), dict) else {}
    # Training settings as exported; what the file itself says (sizes, biases, norms) comes from the file.
    fields: dict[str, Any] = {key: value for key, value in config.items() if key in DenseConfig.__dataclass_fields__}
    shape = config.get("input_shape")
    shape_ok = isinstance(shape, list) and all(isinstance(s, int) and s > 0 for s in shape) and math.prod(shape) == d
    fields.update(
        input_shape=shape if shape_ok else [d],
        n_latents=n,
        # A file sparsify wrote gets "zeros": b_dec is subtracted, as in sparsify. A model exported with
        # pre_bias="none" has its decoder bias folded into encoder.bias, so it comes back as "zeros" too.
        pre_bias=config.get("pre_bias") if config.get("pre_bias") in ("median", "mean", "zeros") else "zeros",
        # Renormalising rows that are not unit norm would change the model at its first step.
        unit_norm_decoder=unit_norm,
        tied_init=bool(config.get("tied_init", False)),
        output_activation="none",
    )
    return from_dict(DenseConfig, fields, f"{what} (as a sparseae config)")


def _sparsity(saved: dict[str, Any], k: int, n: int) -> Sparsity:
    """TopK with the file's k; the exported model's own settings (alpha) where they give the same k."""
    sparsity = saved.get("sparsity") if isinstance(saved.get("sparsity"), dict) else {}
    params = sparsity.get("params") if isinstance(sparsity.get("params"), dict) else {}
    if sparsity.get("name") == "topk":
        try:
            restored = build_sparsity("topk", **params)
            restored.setup(n)
        except (SparseAEError, TypeError):
            restored = None
        if restored is not None and _encode_time_k(restored) == k:
            return restored
    return build_sparsity("topk", k=k)


def _whole(value: Any, what: str, n: int) -> int:
    if not (isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= n):
        raise SparseAEError(
            what, expected=f"a whole number from 1 to num_latents ({n})", got=repr(value), fix="Check the file's k."
        )
    return value
