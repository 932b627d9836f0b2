"""ONNX graphs of a model ([`export_onnx`][sparseae.interop.onnx.export_onnx]): one of two graphs, both on raw inputs (the model's
preprocessing is part of the graph) in eval mode (TopK's ``alpha``, BatchTopK's
threshold: what `encode` does after training):

    encoder      inputs (N, *input_shape) float32 -> codes (N, n_latents)
    autoencoder  inputs (N, *input_shape) float32 -> codes (N, n_latents), reconstruction (N, *input_shape)

The reconstruction is in the raw inputs' units, as `reconstruct`
gives it. The graph is traced by PyTorch's TorchScript-based exporter (``dynamo=False``):
it needs nothing beyond ``onnx``, takes a fraction of a second, and reads the same on
every torch that sparseae accepts. A trace records Python values as constants, so every
warning the tracer raises (a batch size read with ``len``, a branch on a tensor's value)
is turned into an error rather than a graph that is silently wrong for other inputs.

"""

from __future__ import annotations

import inspect
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from sparseae import io
from sparseae._version import __version__
from sparseae.errors import SparseAEError
from sparseae.interop._files import check_new, make_parent, require, usual_mode
from sparseae.models import Autoencoder

PARTS = ("encoder", "autoencoder")
"""What `export_onnx` can export."""
DEFAULT_OPSET = 17
"""The ONNX opset written unless another is asked for: fixed, so that a graph does not change
with the torch version, and old enough for every maintained runtime (onnxruntime >= 1.13)."""
MIN_OPSET = 9
"""The oldest opset PyTorch's exporter writes these graphs in (TopK, Scatter)."""
INPUT_NAME = "inputs"
OUTPUT_NAMES = {"encoder": ("codes",), "autoencoder": ("codes", "reconstruction")}
_LEN_WARNING = "Using len to get tensor shape"


class _Encoder(nn.Module):
    """Raw inputs -> codes, as `Autoencoder.encode`."""

    def __init__(self, model: Autoencoder):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model.encode(x)  # (N, n_latents)


class _Autoencoder(_Encoder):
    """Raw inputs -> (codes, reconstruction in raw units): `Autoencoder.reconstruct`, keeping the codes."""

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
        model: A model, or a run directory / model directory that [`sparseae.load`][sparseae.load] reads.
        path: The ``.onnx`` file to write; it must not exist (parent directories are created).
        part: ``"encoder"``: inputs ``(N, *input_shape)`` float32 -> ``codes`` ``(N, n_latents)``;
            ``"autoencoder"``: -> ``codes`` and ``reconstruction`` ``(N, *input_shape)``, in raw units.
        opset: ONNX opset version; ``None`` writes `DEFAULT_OPSET`.
        batch_dynamic: A graph for any batch size ``N`` (else for ``N = 1`` only).

    Returns:
        ``path``. The graph's metadata holds the model's ``cfg.json`` (``sparseae_cfg``), the part and
        the sparseae version.

    Raises:
        SparseAEError: a bad part, opset or path, a model that is not float32, or one whose trace
            would not hold for other inputs (see the module docstring).
    """
    onnx = require("onnx", "ONNX export")
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
    check_new(path, "Remove it, or choose another path: export never overwrites a file.")
    make_parent(path)

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
            ("sparseae_version", __version__),
            ("sparseae_part", part),
            ("sparseae_cfg", json.dumps({"format": io.FORMAT, **model.describe()})),
        ):
            graph.metadata_props.add(key=key, value=value)
        onnx.save(graph, tmp)
        onnx.checker.check_model(tmp)
        os.chmod(tmp, usual_mode(0o666))  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        model.train(was_training)
    return path


def _legacy_exporter() -> dict[str, Any]:
    # torch >= 2.9 defaults to the torch.export-based exporter, which needs onnxscript and is
    # takes seconds per graph (docs/export.md); torch < 2.5 has no `dynamo` argument and only the TorchScript exporter.
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
