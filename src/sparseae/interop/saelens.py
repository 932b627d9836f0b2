"""SAELens's file layout: ``cfg.json`` + ``sae_weights.safetensors``, both ways.

SAELens (``sae_lens``, versions 6.x; older files too) computes, for an input row ``x``::

    pre   = (x - b_dec * apply_b_dec_to_input) @ W_enc + b_enc    # W_enc (d_in, d_sae)
    code  = activation(pre)                                       # standard: ReLU; topk: ReLU of the k largest;
                                                                  # jumprelu: ReLU(pre) where pre > threshold
    recon = code @ W_dec + b_dec                                  # W_dec (d_sae, d_in)

which is sparseae's `DenseAutoencoder` with ``W_enc = encoder.weight.T``,
``W_dec = W_dec.T`` and ``b_dec = b_pre`` (subtracted from the input unless ``pre_bias="none"``).
Constraints map by their encode-time code: l1, none and wta are a ReLU ("standard"); TopK exports the
``round(alpha * k)`` units it keeps when encoding; a JumpReLU threshold is ``exp(log_threshold)``; a
BatchTopK model's learned threshold becomes a JumpReLU threshold shared by every latent, as SAELens
itself saves BatchTopK SAEs.

Preprocessing that is an invertible affine map of the input (``norm``, ``standardize``, ``zca``,
in any order) is folded into the weights on export, so SAELens sees raw inputs and gives the same
codes and reconstructions; SAELens's own input scaling and whitening are folded the same way on import.
Neither package is imported by the other: the files are read and written directly, and what the
other side cannot represent is refused with a `SparseAEError` that says why.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from sparseae._config import from_dict
from sparseae.errors import SparseAEError
from sparseae.io import CFG_FILE, MODEL_FILE, read_json, read_tensors, write_json, write_tensors
from sparseae.models import Autoencoder, DenseAutoencoder, DenseConfig
from sparseae.sparsity import Sparsity, build_sparsity

WEIGHTS_FILE = "sae_weights.safetensors"
"""SAELens's weights file; its config file is ``cfg.json``, like ours."""
SCALER_FILE, WHITENING_FILE = "activation_scaler.json", "activation_whitening.safetensors"
"""Written by SAELens's trainer beside a checkpoint whose input scaling is not folded in yet."""

LAYOUT_VERSION = "6.0.0"
"""The ``sae_lens_version`` written on export: SAELens reads files without one (or older than 6)
in its pre-6.0 flat layout, so this marks the layout written, not the version of a package."""

ARCHITECTURES = {
    "l1": "standard",
    "none": "standard",
    "wta": "standard",  # its encode-time code is the plain ReLU
    "topk": "topk",
    "jumprelu": "jumprelu",
    "batchtopk": "jumprelu",
}
"""sparseae constraint -> the SAELens architecture that computes its encode-time code."""
IMPORTABLE = ("standard", "topk", "jumprelu", "batchtopk")
"""SAELens architectures that import exactly (batchtopk: a training checkpoint with an integer k)."""
AFFINE_STEPS = ("norm", "standardize", "zca")
"""Preprocessing steps that are invertible affine maps, so they fold into the weights."""

_DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}
_KNOWN_WEIGHTS = {"W_enc", "b_enc", "W_dec", "b_dec"}
_EXTRA_WEIGHTS = {
    "standard": set(),
    "topk": set(),
    "jumprelu": {"threshold", "log_threshold"},
    "batchtopk": {"topk_threshold"},
}
_SCALE_WEIGHTS = {"scaling_factor", "finetuning_scaling_factor"}  # pre-6.0 per-latent scale of the code
_CONVERTED = (
    "For SAEs that SAELens converts while loading (Gemma Scope, Llama Scope, dictionary_learning, ...), "
    "load them with SAELens (sae = SAE.from_pretrained(release, sae_id)), write them with sae.save_model(directory), "
    "and import that directory; sparsify's folders import directly with import_sparsify."
)


class _Affine(NamedTuple):
    """What an SAE saw of raw inputs ``x``: ``z = (x - mean) @ matrix``, undone by ``x = z @ inverse + mean``."""

    mean: Tensor  # (d_in,)
    matrix: Tensor  # (d_in, d_in)
    inverse: Tensor  # (d_in, d_in)


class _Weights(NamedTuple):
    """An SAE's affine parts in SAELens's convention (float64)."""

    W_enc: Tensor  # (d_in, d_sae)
    b_enc: Tensor  # (d_sae,)
    W_dec: Tensor  # (d_sae, d_in)
    b_dec: Tensor  # (d_in,)
    apply_b_dec_to_input: bool

    def fold(self, seen: _Affine) -> _Weights:
        """The same SAE on raw inputs, for weights that worked on ``z = (x - mean) @ matrix``.

        ``(z - b_dec) @ W_enc = (x - b_dec') @ (matrix @ W_enc)`` with ``b_dec' = b_dec @ inverse + mean``,
        and ``(code @ W_dec + b_dec) @ inverse + mean = code @ (W_dec @ inverse) + b_dec'``; without
        ``apply_b_dec_to_input`` the input's shift moves into ``b_enc`` instead.
        """
        W_enc = seen.matrix @ self.W_enc
        b_enc = self.b_enc if self.apply_b_dec_to_input else self.b_enc - seen.mean @ W_enc
        return _Weights(W_enc, b_enc, self.W_dec @ seen.inverse, self.b_dec @ seen.inverse + seen.mean, self.apply_b_dec_to_input)


# --- export -------------------------------------------------------------------------------------


def export_saelens(
    model: Autoencoder, directory: str | Path, *, hook_name: str | None = None, model_name: str | None = None
) -> Path:
    """Write ``model`` as a SAELens SAE: ``cfg.json`` and ``sae_weights.safetensors`` in ``directory``.

    SAELens then loads it with ``SAE.load_from_disk(directory)`` and, on raw inputs, gives the codes
    of ``model.encode`` and the reconstructions of ``model.reconstruct`` (in eval mode: a TopK model
    exports the ``round(alpha * k)`` units it keeps at encode time).

    Args:
        model: A dense model whose constraint is l1, none, wta, topk, jumprelu or batchtopk, without an
            output activation, and whose preprocessing (if any) is norm, standardize and/or zca.
        directory: Created if needed; it must not hold a sparseae model (both layouts use ``cfg.json``).
        hook_name: Where the activations come from (e.g. ``"blocks.8.hook_resid_pre"``), for SAELens's
            ``HookedSAETransformer``; stored in ``cfg.json``'s metadata.
        model_name: The language model the activations come from, likewise.

    Returns:
        ``directory``.
    """
    directory = Path(directory)
    model = _exportable(model)
    for what, value in (("hook_name", hook_name), ("model_name", model_name)):
        if value is not None and not isinstance(value, str):
            raise SparseAEError(what, expected="a string or None", got=repr(value), fix="Pass the name as text.")
    if (directory / MODEL_FILE).exists():
        raise SparseAEError(
            str(directory),
            expected="a directory without a sparseae model in it",
            got=f"one holding {MODEL_FILE}, whose {CFG_FILE} the export would overwrite",
            fix="Export to a new directory, e.g. RUN/saelens.",
        )
    dtype = model.W_dec.dtype
    dtype_name = next((name for name, d in _DTYPES.items() if d == dtype), None)
    if dtype_name is None:
        raise SparseAEError(
            "model dtype",
            expected=f"one SAELens stores: {', '.join(_DTYPES)}",
            got=str(dtype),
            fix="Convert it first, e.g. model.float().",
        )
    name = model.sparsity.name
    with torch.no_grad():
        weights = _Weights(
            model.encoder.weight.T.double(),
            model.encoder.bias.double(),
            model.W_dec.T.double(),
            model.b_pre.double(),
            model.config.pre_bias != "none",
        )
        if model.preprocess.steps:
            weights = weights.fold(_preprocessing_affine(model))
        tensors = {k: getattr(weights, k).to(dtype) for k in ("W_enc", "b_enc", "W_dec", "b_dec")}
        cfg: dict[str, Any] = {
            "architecture": ARCHITECTURES[name],
            "d_in": weights.W_enc.shape[0],
            "d_sae": weights.W_enc.shape[1],
            "dtype": dtype_name,
            "device": "cpu",
            "apply_b_dec_to_input": weights.apply_b_dec_to_input,
            "normalize_activations": "none",
            "reshape_activations": "none",
        }
        if name == "topk":
            cfg.update(k=_encode_time_k(model.sparsity), rescale_acts_by_decoder_norm=False)
        elif name == "jumprelu":
            tensors["threshold"] = model.sparsity.threshold.detach().to(dtype)  # (n_latents,)
        elif name == "batchtopk":
            # At encode time BatchTopK keeps ReLU(pre) > max(threshold, 0): a JumpReLU with one shared threshold.
            shared = model.sparsity.threshold.detach().clamp(min=0).to(dtype)
            tensors["threshold"] = shared.expand(model.n_latents).clone()
    cfg["metadata"] = _export_metadata(model, hook_name, model_name)
    directory.mkdir(parents=True, exist_ok=True)
    write_tensors(directory / WEIGHTS_FILE, tensors)
    write_json(directory / CFG_FILE, cfg)
    return directory


def _exportable(model: Any) -> DenseAutoencoder:
    """``model``, if SAELens can represent it; else the reason it cannot."""
    if not isinstance(model, DenseAutoencoder):
        raise SparseAEError(
            "export to SAELens",
            expected="a dense model (sparseae.DenseAutoencoder): SAELens SAEs are one linear encoder and decoder",
            got=f"a {type(model).__name__}",
            fix="Train a dense model (--model dense) to use it in SAELens.",
        )
    if model.config.output_activation != "none":
        raise SparseAEError(
            "export to SAELens",
            expected="a model without an output activation (SAELens decodes linearly)",
            got=f"output_activation={model.config.output_activation!r}",
            fix="SAELens would need an activation on its decoder's output: train with output_activation='none' to export.",
        )
    name = model.sparsity.name
    if name not in ARCHITECTURES:
        raise SparseAEError(
            "export to SAELens",
            expected=f"a constraint SAELens has: {', '.join(ARCHITECTURES)}",
            got=repr(name),
            fix="SAELens would need an activation function of its own for it (a registered SAE class).",
        )
    other = [s for s in model.preprocess.steps if s not in AFFINE_STEPS]
    if other:
        raise SparseAEError(
            "export to SAELens",
            expected=f"preprocessing among {', '.join(AFFINE_STEPS)} (affine maps, folded into the weights)",
            got=f"preprocess {','.join(model.preprocess.steps)}",
            fix=f"SAELens cannot apply {', '.join(other)}: only fixed affine maps of the input fold into its weights "
            "(center removes each input's own mean, which decoding a code cannot restore). Train without it to export.",
        )
    return model


def _preprocessing_affine(model: DenseAutoencoder) -> _Affine:
    """The model's preprocessing as ``(x - mean) @ matrix``, read off the steps themselves (float64)."""
    d, shape = model.preprocess.d, model.input_shape
    eye = torch.eye(d, dtype=torch.float64, device=model.W_dec.device)
    zero = torch.zeros(1, d, dtype=torch.float64, device=eye.device)

    def forward(v: Tensor) -> Tensor:
        return model.preprocess(v.view(-1, *shape)).reshape(len(v), d)

    def inverse(v: Tensor) -> Tensor:
        y = v.view(-1, *shape)
        return model.preprocess.inverse(y, y).reshape(len(v), d)

    offset, back = forward(zero)[0], inverse(zero)[0]  # f(0) = -mean @ matrix; g(0) = mean
    return _Affine(back, forward(eye) - offset, inverse(eye) - back)


@contextmanager
def _eval_mode(sparsity: Sparsity) -> Iterator[None]:
    was_training = sparsity.training
    sparsity.eval()
    try:
        yield
    finally:
        sparsity.train(was_training)


def _encode_time_k(sparsity: Sparsity) -> int:
    with _eval_mode(sparsity):
        return sparsity.active()  # type: ignore[attr-defined]


def _export_metadata(model: DenseAutoencoder, hook_name: str | None, model_name: str | None) -> dict[str, Any]:
    from sparseae._version import __version__

    return {
        "sae_lens_version": LAYOUT_VERSION,
        "sae_lens_training_version": None,
        "model_name": model_name,
        "hook_name": hook_name,
        "exported_by": f"sparseae {__version__}",
        # Restores the training settings (and a BatchTopK constraint) when the file comes back to sparseae.
        "sparseae": model.describe(),
    }


# --- import -------------------------------------------------------------------------------------


class _Cfg(NamedTuple):
    """What sparseae reads from a SAELens ``cfg.json``, old layouts brought to the 6.x one."""

    architecture: str
    d_in: int | None
    d_sae: int | None
    apply_b_dec_to_input: bool
    normalize_activations: str
    k: Any
    rescale_acts_by_decoder_norm: bool
    hyperparameters: dict[str, Any]
    """Training settings SAELens kept: top-level training fields, else metadata.training_architecture_details."""
    sparseae: dict[str, Any]
    """What `export_saelens` stored about the sparseae model, if it wrote the file."""


def import_saelens(directory: str | Path, *, norm_scaling_factor: float | None = None) -> DenseAutoencoder:
    """A sparseae model from a SAELens SAE directory (``cfg.json`` + ``sae_weights.safetensors``).

    Reads the files SAELens writes (``sae.save_model``, ``save_inference_model``, training checkpoints)
    in the 6.x layout and the older flat one (``hook_point``, ``activation_fn_str``, ...), including
    pretrained SAEs saved to disk. The model gives SAELens's codes and reconstructions on raw inputs,
    in float32, and is returned in eval mode.

    Args:
        directory: The SAE's directory.
        norm_scaling_factor: For ``normalize_activations="expected_average_only_in"`` files whose
            factor is not folded in: the factor SAELens multiplies inputs by (pretrained SAEs list it
            as ``norm_scaling_factor`` in SAELens's ``pretrained_saes.yaml``; a training checkpoint
            keeps it in ``activation_scaler.json``, read automatically). Overrides that file.

    Returns:
        A `DenseAutoencoder` with constraint l1 (SAELens "standard"), topk,
        jumprelu or batchtopk, and no preprocessing: input scaling is folded into the weights.
    """
    directory = Path(directory)
    cfg_path, weights_path = directory / CFG_FILE, directory / WEIGHTS_FILE
    if not cfg_path.is_file() or not weights_path.is_file():
        missing = " and ".join(p.name for p in (cfg_path, weights_path) if not p.is_file())
        raise SparseAEError(
            str(directory),
            expected=f"a SAELens SAE directory holding {CFG_FILE} and {WEIGHTS_FILE}",
            got="no such directory" if not directory.exists() else f"no {missing} in it",
            fix=_CONVERTED,
        )
    raw = read_json(cfg_path)
    if not isinstance(raw, dict):
        raise SparseAEError(str(cfg_path), expected="a JSON object", got=type(raw).__name__, fix="Check the file.")
    if "format" in raw and "kind" in raw:
        raise SparseAEError(
            str(cfg_path),
            expected="a SAELens config",
            got="a sparseae model config",
            fix="Load it with sparseae.load(directory).",
        )
    cfg = _read_cfg(raw, str(cfg_path))
    tensors, _ = read_tensors(weights_path)
    weights, extra = _read_weights(cfg, tensors, str(weights_path))
    if cfg.rescale_acts_by_decoder_norm:
        # SAELens scales pre by |W_dec row| and the code by its inverse before decoding; folding
        # the norms into the weights leaves the same codes (as SAELens does when it saves for inference).
        norms = weights.W_dec.norm(dim=1).clamp(min=1e-8)  # (d_sae,)
        weights = weights._replace(W_enc=weights.W_enc * norms, b_enc=weights.b_enc * norms, W_dec=weights.W_dec / norms[:, None])
    seen = _input_scaling(cfg, directory, norm_scaling_factor, weights.W_enc.shape[0])
    if seen is not None:
        weights = weights.fold(seen)
    model = DenseAutoencoder(
        _dense_config(cfg, weights, str(cfg_path)), _sparsity(cfg, extra, weights.W_enc.shape[1], str(cfg_path))
    )
    with torch.no_grad():
        model.encoder.weight.copy_(weights.W_enc.T)
        model.encoder.bias.copy_(weights.b_enc)
        model.W_dec.copy_(weights.W_dec.T)
        model.b_pre.copy_(weights.b_dec)
        if model.sparsity.name == "jumprelu":
            # A threshold <= 0 passes every positive pre-activation, like a threshold of 0: log 0 = -inf.
            model.sparsity.log_threshold.copy_(extra["threshold"].clamp(min=0).log())
        elif model.sparsity.name == "batchtopk":
            model.sparsity.threshold.copy_(extra["threshold"].reshape(-1)[0])
    return model.eval()


def _major(version: Any) -> int:
    match = re.match(r"\s*(\d+)", str(version or ""))
    return int(match.group(1)) if match else 0


def _read_cfg(raw: dict[str, Any], what: str) -> _Cfg:
    metadata = raw.get("metadata") if isinstance(raw.get("metadata"), dict) else {}
    version = raw.get("sae_lens_version") or metadata.get("sae_lens_version")
    architecture = raw.get("architecture", "standard")
    k = raw.get("k")
    normalize = raw.get("normalize_activations")
    if _major(version) < 6:
        # The pre-6.0 flat layout, as SAELens's handle_pre_6_0_config reads it.
        activation = raw.get("activation_fn_str", raw.get("activation_fn", "relu"))
        kwargs = raw.get("activation_fn_kwargs") if isinstance(raw.get("activation_fn_kwargs"), dict) else {}
        if activation == "topk" and kwargs.get("k") is not None:
            architecture, k = "topk", kwargs["k"]
        elif activation != "relu" and architecture == "standard":
            raise SparseAEError(
                f"{what} activation_fn",
                expected="relu or topk (the activations sparseae has)",
                got=repr(activation),
                fix="sparseae would need a constraint with this activation; import SAEs with relu or topk instead.",
            )
        if isinstance(normalize, bool):
            normalize = "expected_average_only_in" if normalize else "none"
    if architecture not in IMPORTABLE:
        raise SparseAEError(
            f"{what} architecture",
            expected=f"one sparseae can represent: {', '.join(IMPORTABLE)}",
            got=repr(architecture),
            fix="sparseae would need a model with this architecture's encoder (gated, transcoders, ...); "
            "a batchtopk or matryoshka SAE saved with save_inference_model is a jumprelu one and imports.",
        )
    hyperparameters = dict(metadata.get("training_architecture_details") or {})
    hyperparameters.update({key: value for key, value in raw.items() if key not in ("metadata", "k")})
    sparseae = metadata.get("sparseae")
    return _Cfg(
        architecture=architecture,
        d_in=raw.get("d_in"),
        d_sae=raw.get("d_sae"),
        apply_b_dec_to_input=bool(raw.get("apply_b_dec_to_input", True)),
        normalize_activations=normalize or "none",
        k=k,
        rescale_acts_by_decoder_norm=bool(raw.get("rescale_acts_by_decoder_norm", False)),
        hyperparameters=hyperparameters,
        sparseae=sparseae if isinstance(sparseae, dict) else {},
    )


def _read_weights(cfg: _Cfg, tensors: dict[str, Tensor], what: str) -> tuple[_Weights, dict[str, Tensor]]:
    allowed = _KNOWN_WEIGHTS | _EXTRA_WEIGHTS[cfg.architecture] | _SCALE_WEIGHTS
    missing = sorted(_KNOWN_WEIGHTS - set(tensors))
    unknown = sorted(set(tensors) - allowed)
    if missing or unknown:
        raise SparseAEError(
            what,
            expected=f"the weights of a SAELens {cfg.architecture} SAE: {', '.join(sorted(allowed - _SCALE_WEIGHTS))}",
            got=", ".join(filter(None, [missing and f"no {', '.join(missing)}", unknown and f"also {', '.join(unknown)}"])),
            fix="The weights and cfg.json do not belong together, or the SAE has parts sparseae cannot represent.",
        )
    t = {k: v.double() for k, v in tensors.items()}
    d_in, d_sae = t["W_enc"].shape if t["W_enc"].ndim == 2 else (-1, -1)
    shapes = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
    extra: dict[str, Tensor] = {}
    if cfg.architecture == "jumprelu":
        if "threshold" in t:
            extra["threshold"] = t["threshold"]
        elif "log_threshold" in t:
            extra["threshold"] = t["log_threshold"].exp()
        shapes["threshold"] = (d_sae,)
    elif cfg.architecture == "batchtopk" and "topk_threshold" in t:
        extra["threshold"] = t["topk_threshold"].reshape(-1)
        shapes["threshold"] = (1,)
    scale = next((t[k] for k in _SCALE_WEIGHTS if k in t), None)
    if scale is not None:
        extra["scale"] = scale.reshape(-1)
        shapes["scale"] = (d_sae,)
    found = {**t, **extra}
    wrong = [
        f"{k} {tuple(found[k].shape) if k in found else 'missing'}"
        for k, s in shapes.items()
        if k not in found or tuple(found[k].shape) != s
    ]
    declared = (cfg.d_in, cfg.d_sae)
    if wrong or any(v is not None and v != w for v, w in zip(declared, (d_in, d_sae), strict=True)):
        raise SparseAEError(
            what,
            expected=f"shapes W_enc (d_in, d_sae) = ({cfg.d_in}, {cfg.d_sae}) per cfg.json, b_enc (d_sae,), W_dec (d_sae, d_in), "
            "b_dec (d_in,), and a threshold per latent (jumprelu) or one (batchtopk)",
            got=", ".join(wrong) or f"W_enc {tuple(t['W_enc'].shape)}",
            fix="The weights and cfg.json do not belong together: re-save the SAE with SAELens.",
        )
    W_dec = t["W_dec"]
    if scale is not None:
        W_dec = W_dec * extra["scale"][:, None]  # pre-6.0 SAELens scaled the code by it before decoding
    return _Weights(t["W_enc"], t["b_enc"], W_dec, t["b_dec"], cfg.apply_b_dec_to_input), extra


def _input_scaling(cfg: _Cfg, directory: Path, factor: float | None, d_in: int) -> _Affine | None:
    """SAELens's input scaling/whitening not yet folded into the weights, as an affine map (or None)."""
    mode = cfg.normalize_activations
    if factor is not None and not (isinstance(factor, (int, float)) and not isinstance(factor, bool) and 0 < factor < math.inf):
        raise SparseAEError("norm_scaling_factor", expected="a finite number > 0", got=repr(factor), fix="Pass the factor.")
    if mode == "none":
        if factor is not None:
            raise SparseAEError(
                "norm_scaling_factor",
                expected="None for an SAE whose normalize_activations is 'none' (its scaling is in its weights)",
                got=repr(factor),
                fix="Leave norm_scaling_factor out.",
            )
        return None
    if mode not in ("expected_average_only_in", "covariance_whitening"):
        raise SparseAEError(
            f"{directory / CFG_FILE} normalize_activations",
            expected="none, expected_average_only_in or covariance_whitening (fixed maps of the input, folded into the weights)",
            got=repr(mode),
            fix="sparseae would need a per-input normalisation step that the reconstruction undoes from each input's "
            "own norm or mean; a code alone does not carry it, so such SAEs cannot be imported.",
        )
    scaler = read_json(directory / SCALER_FILE) if (directory / SCALER_FILE).is_file() else {}
    if factor is None and isinstance(scaler, dict) and isinstance(scaler.get("scaling_factor"), (int, float)):
        factor = float(scaler["scaling_factor"])
    eye = torch.eye(d_in, dtype=torch.float64)
    mean, matrix, inverse = torch.zeros(d_in, dtype=torch.float64), eye, eye
    if mode == "covariance_whitening":
        if not (directory / WHITENING_FILE).is_file():
            raise SparseAEError(
                str(directory),
                expected=f"{WHITENING_FILE} beside an SAE with normalize_activations='covariance_whitening'",
                got="no such file",
                fix="SAELens folds the whitening into the weights when training finishes: import the final SAE, "
                "or copy the checkpoint's whitening file next to it.",
            )
        w, _ = read_tensors(directory / WHITENING_FILE)
        if not ({"mean", "matrix", "inverse_matrix"} <= set(w)) or w["matrix"].shape != (d_in, d_in):
            raise SparseAEError(
                str(directory / WHITENING_FILE),
                expected=f"mean ({d_in},), matrix and inverse_matrix ({d_in}, {d_in})",
                got=", ".join(f"{k} {tuple(v.shape)}" for k, v in w.items()),
                fix="The file does not belong to this SAE.",
            )
        mean, matrix, inverse = (w[k].double().cpu() for k in ("mean", "matrix", "inverse_matrix"))
    elif factor is None:
        raise SparseAEError(
            "norm_scaling_factor",
            expected="the factor SAELens multiplies inputs by, for an SAE with normalize_activations='expected_average_only_in'",
            got=f"none given, and no {SCALER_FILE} in {directory}",
            fix="Pass import_saelens(..., norm_scaling_factor=F): pretrained SAEs list F as norm_scaling_factor in "
            "SAELens's pretrained_saes.yaml; pass 1.0 to feed inputs that are already scaled.",
        )
    s = 1.0 if factor is None else float(factor)
    # SAELens scales first, then whitens: z = (s x - mean) @ M = (x - mean / s) @ (s M).
    return _Affine(mean / s, matrix * s, inverse / s)


def _dense_config(cfg: _Cfg, weights: _Weights, what: str) -> DenseConfig:
    d_in, d_sae = weights.W_enc.shape
    saved = cfg.sparseae.get("config") if isinstance(cfg.sparseae.get("config"), dict) else {}
    unit_norm = bool(torch.allclose(weights.W_dec.norm(dim=1), torch.ones(d_sae, dtype=torch.float64), atol=1e-4, rtol=0))
    fields: dict[str, Any] = {
        key: saved[key] for key in ("aux_k", "aux_coef", "dead_window", "weight_decay", "tied_init") if key in saved
    }
    shape = saved.get("input_shape")
    shape_ok = isinstance(shape, list) and all(isinstance(n, int) for n in shape) and math.prod(shape) == d_in
    pre_bias = saved.get("pre_bias") if saved.get("pre_bias") in ("median", "mean", "zeros") else "zeros"
    fields.update(
        input_shape=shape if shape_ok else [d_in],
        n_latents=d_sae,
        # "zeros": the imported bias is kept when training starts (median/mean would re-fit it).
        pre_bias=pre_bias if weights.apply_b_dec_to_input else "none",
        # Renormalising columns that are not unit norm would change the model at its first step.
        unit_norm_decoder=unit_norm and bool(saved.get("unit_norm_decoder", True)),
        tied_init=fields.get("tied_init", False),
        output_activation="none",
    )
    return from_dict(DenseConfig, fields, f"{what} (as a sparseae config)")


def _sparsity(cfg: _Cfg, extra: dict[str, Tensor], n_latents: int, what: str) -> Sparsity:
    """The constraint for the file's architecture, with the training settings it recorded where they fit."""
    saved = cfg.sparseae.get("sparsity") if isinstance(cfg.sparseae.get("sparsity"), dict) else {}
    name, params = saved.get("name"), saved.get("params") if isinstance(saved.get("params"), dict) else {}
    h = cfg.hyperparameters
    if cfg.architecture == "standard":
        if name in ("l1", "none", "wta"):
            return build_sparsity(name, **params)
        weight = h.get("l1_coefficient")
        ok = _number(weight) and h.get("lp_norm", 1) == 1 and weight >= 0  # SAELens's Lp penalty is ours only for p = 1
        return build_sparsity("l1", **({"weight": float(weight)} if ok else {}))
    if cfg.architecture == "topk":
        k = _whole(cfg.k, f"{what} k")
        if name == "topk":
            restored = build_sparsity("topk", **params)
            restored.setup(n_latents)
            if _encode_time_k(restored) == k:
                return restored
        return build_sparsity("topk", k=k)
    if cfg.architecture == "batchtopk":
        if "threshold" not in extra:
            raise SparseAEError(what, expected="a topk_threshold weight", got="none", fix="Re-save the checkpoint with SAELens.")
        k = cfg.k
        if not (_number(k) and float(k).is_integer()):
            raise SparseAEError(
                f"{what} k",
                expected="a whole number (sparseae's batchtopk keeps an integer k per example on average)",
                got=repr(k),
                fix="Save the SAE with SAELens's save_inference_model: that writes it as a jumprelu SAE, which imports.",
            )
        rate = h.get("topk_threshold_lr")
        return build_sparsity(
            "batchtopk", k=int(k), **({"threshold_momentum": 1 - rate} if _number(rate) and 0 < rate < 1 else {})
        )
    # jumprelu: SAELens's training fields, else what sparseae exported; a shared threshold was a BatchTopK.
    threshold = extra["threshold"]
    if name == "batchtopk" and bool((threshold == threshold[0]).all()):
        extra["threshold"] = threshold[:1]
        return build_sparsity("batchtopk", **params)
    if name == "jumprelu":
        return build_sparsity("jumprelu", **params)
    found = {
        "l0_coef": h.get("l0_coefficient"),
        "bandwidth": h.get("jumprelu_bandwidth"),
        "init_threshold": h.get("jumprelu_init_threshold"),
    }
    usable = {k: float(v) for k, v in found.items() if _number(v) and (v > 0 or (k == "l0_coef" and v == 0))}
    return build_sparsity("jumprelu", **usable)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _whole(value: Any, what: str) -> int:
    if not (_number(value) and float(value).is_integer() and value >= 1):
        raise SparseAEError(what, expected="a whole number >= 1", got=repr(value), fix="Check the file's k.")
    return int(value)
