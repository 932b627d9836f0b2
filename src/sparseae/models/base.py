"""The model extension point: encoder -> sparsity -> decoder, and the model registry."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

import numpy as np
import torch
from torch import Tensor, nn

from sparseae import distributed
from sparseae._config import to_dict
from sparseae.errors import SparseAEError
from sparseae.preprocess import Preprocessing
from sparseae.sparsity import Sparsity


class ModelOutput(NamedTuple):
    """What a forward pass returns."""

    recon: Tensor
    """Reconstruction of ``target``, the input's shape."""
    code: Tensor
    """Sparse code, ``(B, n_latents)``."""
    penalty: Tensor
    """Scalar sparsity penalty for this batch, added to the loss."""
    aux: Tensor
    """Scalar auxiliary loss of the model (AuxK, weight decay), added to the loss."""
    target: Tensor
    """What ``recon`` reconstructs: the input after the model's preprocessing (the input itself without any)."""


class Autoencoder(nn.Module):
    """An encoder to pre-activations, a sparsity constraint, a decoder.

    Subclasses set ``config_class``, build their layers from ``config`` and
    implement `pre_activations` and `decode`. The trainer also
    calls `prepare` once before training, and `before_step` /
    `after_step` around every optimizer step.

    ``preprocess`` names input transforms fitted on the training data before training
    (see `sparseae.preprocess`); they are part of the model: saved with it and
    applied by `encode`, undone by `reconstruct`.
    """

    kind: str = ""
    """Registry name, set by `register_model`; saved in ``cfg.json``."""
    config_class: type
    input_fields: tuple[str, ...] = ()
    """Config fields that the data decides (e.g. the image size); not user settings."""

    def __init__(self, config: Any, sparsity: Sparsity, preprocess: str | tuple[str, ...] | None = None):
        super().__init__()
        self.config = config
        self.sparsity = sparsity
        sparsity.setup(config.n_latents)
        self.preprocess = Preprocessing(preprocess, self.input_shape)

    @property
    def n_latents(self) -> int:
        return self.config.n_latents

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input sample."""
        raise NotImplementedError

    def check_input(self, sample_shape: tuple[int, ...], what: str) -> None:
        """Raise a clear error unless samples of ``sample_shape`` fit this model."""
        if tuple(sample_shape) != self.input_shape:
            width, want = math.prod(sample_shape), math.prod(self.input_shape)
            raise SparseAEError(
                what,
                expected=f"samples of the model's input shape {self.input_shape} ({want} values each)",
                got=f"shape {tuple(sample_shape)} ({width} values each)",
                fix="Use data of the kind the model was trained on, or train a model for this data.",
            )

    def pre_activations(self, x: Tensor) -> Tensor:
        """Encoder output before the constraint, ``(B, n_latents)``."""
        raise NotImplementedError

    def decode(self, code: Tensor) -> Tensor:
        """Reconstruction from a code ``(B, n_latents)``."""
        raise NotImplementedError

    def encode(self, x: Tensor, *, sparse: bool = False) -> Tensor:
        """The sparse code of raw inputs ``x``, ``(B, n_latents)``.

        With ``sparse=True`` it is a ``torch.sparse_csr_tensor`` holding only the non-zero
        activations (no gradient): row r's latents are ``col_indices()[crow[r]:crow[r + 1]]``
        (ascending), their values ``values()`` in the same places; ``.to_dense()`` gives the
        dense code. Its size is the number of non-zeros, not ``B x n_latents``.
        """
        if sparse:
            with torch.no_grad():
                return self.sparse_code(self.preprocess(x))
        return self.sparsity(self.pre_activations(self.preprocess(x)))

    def sparse_code(self, x: Tensor) -> Tensor:
        """The code of preprocessed inputs ``x`` as a CSR tensor ``(B, n_latents)`` of its non-zeros.

        By default the dense code's non-zeros; a model with a way to find them without the
        dense ``(B, n_latents)`` code overrides this (the dense model's TopK kernels).
        """
        return self.sparsity(self.pre_activations(x)).to_sparse_csr()

    def forward(self, x: Tensor, *, kernels: str = "auto", dtype: torch.dtype | None = None) -> ModelOutput:
        """Preprocess, encode, constrain, decode: everything the loss needs, for raw inputs ``x``.

        Args:
            x: Raw inputs, ``(B, *input_shape)``.
            kernels: 'auto': faster kernels where the model has them (the dense model's sparse
                TopK path, its choice screened in bfloat16 where that pays); 'exact': the same
                without the screening; 'reference': plain PyTorch operations. The trainer passes
                `TrainConfig.kernels`.
            dtype: The precision of the fast kernels' matmuls (bfloat16 under
                `TrainConfig.precision="bfloat16"`); plain operations follow autocast.
        """
        x = self.preprocess(x)
        pre = self.pre_activations(x)
        code = self.sparsity(pre)
        recon = self.decode(code)
        return ModelOutput(recon, code, self.sparsity.penalty(code, pre), self.auxiliary_loss(x, pre, code, recon), x)

    def auxiliary_loss(self, x: Tensor, pre: Tensor, code: Tensor, recon: Tensor) -> Tensor:
        """Extra loss terms of the model itself; zero by default."""
        return recon.new_zeros(())

    def initialise(self, x: Tensor) -> None:
        """Before training: fit the preprocessing on raw training inputs ``x``, then `prepare` on them preprocessed."""
        self.preprocess.fit(x)
        self.prepare(self.preprocess(x))

    def prepare(self, x: Tensor) -> None:
        """Data-dependent initialisation from a sample of (preprocessed) training inputs; nothing by default."""

    def set_epoch_rows(self, rows: int) -> None:
        """Told by the trainer, before each training run (and resume), how many rows one epoch has; ignored by default."""

    def encoder_bias(self) -> nn.Parameter | None:
        """The bias of each code unit's pre-activation, which `TrainConfig.encoder_bias_lr_scale` scales; None here."""
        return None

    def encoder_weights(self) -> list[nn.Parameter]:
        """The encoder's weights (not its biases), which `TrainConfig.encoder_lr_scale` scales; none here."""
        return []

    def decoder_weights(self) -> list[nn.Parameter]:
        """The decoder's weights, which `TrainConfig.decoder_lr_scale` scales; none here."""
        return []

    def before_step(self) -> None:
        """After the backward pass, before the optimizer step (e.g. edit gradients)."""

    def after_step(self) -> None:
        """After the optimizer step (e.g. renormalise weights)."""

    @torch.no_grad()
    def encode_all(self, x: Any, batch_size: int = 1000, *, sparse: bool = False) -> Tensor:
        """The codes of every sample of ``x`` (tensor or array, ``(N, *input_shape)``), in eval mode, on the CPU.

        With ``sparse=True`` a CSR tensor, as `encode` gives: each batch is encoded sparse and the
        pieces are joined, so no more than one batch's dense code exists at a time (none where the
        model finds the non-zeros without it).
        """
        device = next(self.parameters()).device
        was_training = self.training
        self.eval()
        try:
            codes = []
            for i in range(0, len(x), batch_size):
                chunk = x[i : i + batch_size]
                chunk = chunk if isinstance(chunk, Tensor) else torch.from_numpy(np.array(chunk, dtype=np.float32))
                codes.append(self.encode(chunk.float().to(device), sparse=sparse).cpu())
        finally:
            self.train(was_training)
        if sparse:
            return cat_csr(codes, self.n_latents)  # (N, n_latents), CSR
        return torch.cat(codes)  # (N, n_latents)

    def reconstruct(self, x: Tensor) -> Tensor:
        """``decode(encode(x))``, in the raw inputs' units (the preprocessing undone)."""
        return self.preprocess.inverse(self.decode(self.encode(x)), x)

    def describe(self) -> dict[str, Any]:
        """Everything needed to rebuild this model (weights aside); saved as ``cfg.json``."""
        return {
            "kind": self.kind,
            "config": to_dict(self.config),
            "sparsity": {"name": self.sparsity.name, "params": self.sparsity.get_params()},
            "preprocess": list(self.preprocess.steps),
        }


@torch.no_grad()
def count_firing(samples_since_fired: Tensor, fired: Tensor, rows: int) -> None:
    """Advance each unit's count of training samples since it last fired by a batch of ``rows``, and
    zero it for the units ``fired`` in that batch ((n,) bool). Counted over the global batch when
    distributed, so that every rank agrees on which units are dead."""
    fired = distributed.all_max(fired.to(torch.uint8)).bool()
    samples_since_fired += distributed.batch_total(rows, fired.device)
    samples_since_fired[fired] = 0


def cat_csr(pieces: list[Tensor], n_columns: int) -> Tensor:
    """CSR tensors of ``n_columns`` columns stacked by rows, ``(sum of their rows, n_columns)``."""
    if not pieces:
        return torch.zeros(0, n_columns).to_sparse_csr()
    crow, offset = [torch.zeros(1, dtype=torch.long, device=pieces[0].device)], 0
    for piece in pieces:
        crow.append(piece.crow_indices()[1:].long() + offset)  # (rows,)
        offset += piece.values().numel()
    return torch.sparse_csr_tensor(
        torch.cat(crow),
        torch.cat([p.col_indices().long() for p in pieces]),
        torch.cat([p.values() for p in pieces]),
        (sum(p.shape[0] for p in pieces), n_columns),
        check_invariants=False,
    )


_MODELS: dict[str, type[Autoencoder]] = {}

M = TypeVar("M", bound=type[Autoencoder])


def register_model(kind: str) -> Callable[[M], M]:
    """Class decorator: make a model class loadable by ``kind``."""

    def add(cls: M) -> M:
        if kind in _MODELS:
            raise ValueError(f"model kind {kind!r} is already registered by {_MODELS[kind].__qualname__}")
        cls.kind = kind
        _MODELS[kind] = cls
        return cls

    return add


def get_model_class(kind: str) -> type[Autoencoder]:
    try:
        return _MODELS[kind]
    except KeyError:
        raise SparseAEError(
            "model kind",
            expected=f"one of {', '.join(sorted(_MODELS))}",
            got=repr(kind),
            fix="The file may come from a newer sparseae: upgrade it.",
        ) from None
