"""Dense sparse autoencoders: today's dictionary-learning SAE, and Ng's classic network."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from sparseae import distributed
from sparseae import kernels as topk_kernels
from sparseae.errors import check, positive_int
from sparseae.models.base import Autoencoder, ModelOutput, count_firing, register_model
from sparseae.sparsity import Sparsity


@dataclass(frozen=True)
class DenseConfig:
    """A dense ``d_in -> n_latents -> d_in`` autoencoder and its training aids."""

    input_shape: tuple[int, ...] = (784,)
    """Shape of one input; it is flattened to d_in = prod(input_shape)."""
    n_latents: int = 1024
    """Size of the code (the dictionary)."""
    pre_bias: Literal["median", "mean", "zeros", "none"] = "median"
    """Bias subtracted before encoding and added back after decoding, initialised to the
    training data's geometric median or mean (or zeros); 'none': no such bias."""
    unit_norm_decoder: bool = True
    """Keep every decoder column at unit norm: the gradient's component along each
    column is removed before the step, and the columns are renormalised after it."""
    tied_init: bool = True
    """Start the encoder as the decoder transposed (else Glorot-uniform)."""
    fit_encoder_scale: bool = True
    """With tied_init and a code that scales with its pre-activations (TopK), multiply
    the initial encoder by the least-squares factor that makes the first reconstruction
    of the training sample closest to it (about 0.6 on language-model activations):
    the encoder transposed at full scale overshoots (held-out FVU 0.098 against 0.105
    without it, 256 steps on real activations; docs/choosing.md, "The dense recipe")."""
    aux_k: int = 0
    """AuxK (Gao et al. 2024): the aux_k largest pre-activations of dead latents must
    reconstruct the residual; 0 switches it off."""
    aux_coef: float = 1 / 32
    """Weight of the AuxK loss."""
    aux_fraction: float = 1.0
    """Share of each batch's rows that the AuxK loss is computed on (a random sample,
    as batches are shuffled): its sparse backward costs aux_k / k times the main code's per row."""
    dead_window: int | None = 1_000_000
    """A latent is dead after this many training samples without firing, or after a
    whole epoch without firing where the training data is shorter than that. None: after
    8,192 samples, or DEAD_FIRINGS (40) x n_latents / k where that is longer (the time in
    which a latent of average frequency fires 40 times, for a constraint with k units per
    row: TopK, BatchTopK; 15,360 for 6,144 latents at k 16)."""
    weight_decay: float = 0.0
    """(weight_decay / 2) * sum of squared weights (not biases) is added to the loss, as in Ng's notes."""
    output_activation: Literal["none", "sigmoid", "relu"] = "none"
    """Activation of the reconstruction; Ng's MNIST network uses sigmoid."""

    def __post_init__(self) -> None:
        check(
            len(self.input_shape) >= 1 and all(d >= 1 for d in self.input_shape),
            "input_shape",
            expected="one or more positive sizes",
            got=self.input_shape,
            fix="It is set from the data.",
        )
        check(self.n_latents >= 1, "n_latents", expected="an integer >= 1", got=self.n_latents, fix="Use a positive code size.")
        check(self.aux_k >= 0, "aux_k", expected="an integer >= 0", got=self.aux_k, fix="Use 0 to switch AuxK off.")
        if self.dead_window is not None:
            positive_int(self.dead_window, "dead_window", fix="Count samples, or leave it unset (None) to count firings.")
        fraction = self.aux_fraction
        check(0 < fraction <= 1, "aux_fraction", expected="a number in (0, 1]", got=fraction, fix="Use 1 for every row.")
        for name in ("aux_coef", "weight_decay"):
            value = getattr(self, name)
            check(0 <= value < math.inf, name, expected="a finite number >= 0", got=value, fix="Use 0 to switch it off.")

    @property
    def d_in(self) -> int:
        return math.prod(self.input_shape)


DEAD_FIRINGS = 40
"""With ``dead_window=None``: a latent is dead after at least the samples in which one of average frequency
fires this often (docs/choosing.md, "The dense recipe": 8,192 samples alone left 6.5% of the latents dead
at k 16)."""
MIN_DEAD_WINDOW = 8192
"""With ``dead_window=None``: the shortest window, and the window of a constraint without a fixed k."""

DENSE_AUX_FACTOR = 8
"""With the sparse kernels, AuxK runs as dense matmuls over the dead latents' columns while they are at most
this many times aux_k, and through the sparse kernels beyond (the crossover measured in docs/performance.md:
about 2,000 dead latents at aux_k 256 on the real-activation benchmark, with the bfloat16 screening)."""

FIT_SAMPLES = 4096
"""Rows of the initialisation sample that `DenseAutoencoder.encoder_scale_fit` uses."""

_OUTPUT = {"none": nn.Identity, "sigmoid": nn.Sigmoid, "relu": nn.ReLU}


@register_model("dense")
class DenseAutoencoder(Autoencoder):
    """``code = sparsity(W_enc (x - b_pre) + b_enc)``, ``recon = W_dec code + b_pre``.

    ``W_dec`` is ``(d_in, n_latents)``: column j is latent j's dictionary atom.
    Without a pre-encoder bias (``pre_bias="none"``) the decoder has a bias of its own.
    """

    config_class = DenseConfig
    input_fields = ("input_shape",)
    samples_since_fired: Tensor

    def __init__(self, config: DenseConfig, sparsity: Sparsity, preprocess: str | tuple[str, ...] | None = None):
        super().__init__(config, sparsity, preprocess)
        c = config
        d, n = c.d_in, c.n_latents
        self.encoder = nn.Linear(d, n)
        # (d, n), stored latent-major (W_dec.T is contiguous): each atom is one run of memory, as the
        # sparse decoder reads it, and the unit-norm steps reduce along it.
        self.W_dec = nn.Parameter(torch.empty(n, d).T)
        self.b_pre = nn.Parameter(torch.zeros(d))  # pre-encoder bias, or the decoder's bias when pre_bias="none"
        self.output = _OUTPUT[c.output_activation]()
        self.register_buffer("samples_since_fired", torch.zeros(n, dtype=torch.long))
        self.epoch_rows: int | None = None  # set by the trainer: a latent silent for a whole epoch is dead
        nn.init.zeros_(self.encoder.bias)
        if c.unit_norm_decoder or c.tied_init:
            nn.init.normal_(self.W_dec)
            self.W_dec.data /= self.W_dec.data.norm(dim=0, keepdim=True)
        else:
            nn.init.xavier_uniform_(self.W_dec)
        if c.tied_init:
            self.encoder.weight.data.copy_(self.W_dec.data.T)
        else:
            nn.init.xavier_uniform_(self.encoder.weight)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.config.input_shape

    def _centre(self) -> Tensor:
        return self.b_pre if self.config.pre_bias != "none" else self.b_pre.new_zeros(())

    def pre_activations(self, x: Tensor) -> Tensor:
        return self.encoder(x.flatten(1) - self._centre())  # (B, n_latents)

    def decode(self, code: Tensor) -> Tensor:
        out = self.output(code @ self.W_dec.T + self.b_pre)  # (B, d_in)
        return out.view(-1, *self.config.input_shape)

    def forward(self, x: Tensor, *, kernels: str = "auto", dtype: torch.dtype | None = None) -> ModelOutput:
        # The sparse CSR operations run on CPU and CUDA; the kernels compute in float32 (or bfloat16).
        k = self.sparsity.sparse_k() if self.uses_kernels(kernels) else None
        if k is None or x.device.type not in ("cpu", "cuda") or self.W_dec.dtype != torch.float32:
            return super().forward(x)
        # TopK through the sparse kernels: the same function as the dense path (tests/test_kernels.py).
        c, dtype = self.config, dtype or torch.float32
        x = self.preprocess(x)
        dead = self._dead() if self.training and c.aux_k else None
        aux = dead.nonzero().squeeze(1) if dead is not None and dead.any() else None
        few_dead = aux is not None and len(aux) <= DENSE_AUX_FACTOR * c.aux_k
        code, aux_code = topk_kernels.topk_encode(
            x.flatten(1),
            self.encoder.weight,
            self.encoder.bias,
            k,
            self._centre(),
            dtype,
            aux=aux,
            aux_k=c.aux_k,
            aux_rows=self._aux_rows(len(x)),
            aux_dense=few_dead,
            screen=topk_kernels.screen_dtype(x.device) if kernels == "auto" else None,
        )
        if few_dead:  # AuxK as dense matmuls over the dead latents' rows and atoms, in the kernels' passes
            decoded, aux_decoded = topk_kernels.sparse_decode_with_columns(code, self.W_dec, self._aux_code(aux_code.values), aux)
        else:
            decoded = topk_kernels.sparse_decode(code, self.W_dec)
        recon = self.output(decoded + self.b_pre).view(-1, *c.input_shape)
        loss = self._weight_decay(recon)
        if self.training:
            dense = topk_kernels.to_csr(code, c.n_latents)  # a (B, n) dense code would cost more than the step's decoder
            count_firing(self.samples_since_fired, topk_kernels.fired(dense), len(x))
            if few_dead:
                rows = len(aux_decoded)
                loss = loss + self._auxk_loss(aux_decoded, x[:rows], recon[:rows])
            elif aux is not None:
                rows = len(aux_code.values)
                loss = loss + self._auxk_loss(topk_kernels.sparse_decode(aux_code, self.W_dec), x[:rows], recon[:rows])
        else:
            dense = topk_kernels.densify(code, c.n_latents)
        return ModelOutput(recon, dense, recon.new_zeros(()), loss, x)

    def sparse_code(self, x: Tensor) -> Tensor:
        """The code's non-zeros as CSR; with TopK (`Sparsity.sparse_k`) through the sparse kernels, which keep
        each block of rows' k largest pre-activations and never hold the dense ``(B, n_latents)`` code."""
        k = self.sparsity.sparse_k()
        if k is None or x.device.type not in ("cpu", "cuda") or self.W_dec.dtype != torch.float32:
            return super().sparse_code(x)
        code, _ = topk_kernels.topk_encode(x.flatten(1), self.encoder.weight, self.encoder.bias, k, self._centre())
        return _nonzero_csr(code, self.n_latents)

    def encoder_weights(self) -> list[nn.Parameter]:
        return [self.encoder.weight]

    def encoder_bias(self) -> nn.Parameter:
        return self.encoder.bias

    def decoder_weights(self) -> list[nn.Parameter]:
        return [self.W_dec]

    def uses_kernels(self, kernels: str = "auto") -> bool:
        """Whether `forward(x, kernels=kernels)` runs the sparse TopK kernels (`sparseae.kernels`) on CPU or CUDA
        float32 weights: with `kernels` "auto" or "exact" and a constraint that offers them (`Sparsity.sparse_k`)."""
        return kernels in ("auto", "exact") and self.sparsity.sparse_k() is not None

    def auxiliary_loss(self, x: Tensor, pre: Tensor, code: Tensor, recon: Tensor) -> Tensor:
        c = self.config
        loss = self._weight_decay(recon)
        if not self.training:
            return loss
        dead = self._dead()
        count_firing(self.samples_since_fired, topk_kernels.fired(code), len(code))
        if c.aux_k and dead.any():
            k, rows = min(c.aux_k, int(dead.sum())), self._aux_rows(len(x))
            values, indices = pre[:rows].masked_fill(~dead, -torch.inf).topk(k, dim=-1, sorted=False)  # (rows, k)
            aux_code = torch.zeros_like(pre[:rows]).scatter_(-1, indices, torch.relu(values))
            loss = loss + self._auxk_loss(aux_code @ self.W_dec.T, x[:rows], recon[:rows])
        return loss

    def _aux_code(self, pre: Tensor) -> Tensor:
        """AuxK's code over the dead latents from their pre-activations ``(rows, m)``: the ``aux_k`` largest
        of each row, ReLU'd (the same function as `auxiliary_loss`'s, cheaper than the sparse kernels while
        the dead are few)."""
        if pre.shape[1] > self.config.aux_k:
            values, indices = pre.topk(self.config.aux_k, dim=-1, sorted=False)
            pre = torch.zeros_like(pre).scatter(-1, indices, values)
        return pre.relu()

    def _aux_rows(self, rows: int) -> int:
        return max(1, round(rows * self.config.aux_fraction))

    def _weight_decay(self, recon: Tensor) -> Tensor:
        c = self.config
        if not c.weight_decay:
            return recon.new_zeros(())
        return 0.5 * c.weight_decay * (self.encoder.weight.square().sum() + self.W_dec.square().sum())

    def _dead(self) -> Tensor:
        """Latents silent for the last ``dead_window`` training samples (or epoch, if shorter) before this batch, (n,) bool."""
        window = self.dead_window()
        return self.samples_since_fired >= (window if self.epoch_rows is None else min(window, self.epoch_rows))

    def dead_window(self) -> int:
        """The dead window in samples: ``config.dead_window``, or (when that is None) the longer of
        `MIN_DEAD_WINDOW` and `DEAD_FIRINGS` x n_latents / k."""
        if self.config.dead_window is not None:
            return self.config.dead_window
        k = self.sparsity.units_per_row()
        return MIN_DEAD_WINDOW if k is None else max(MIN_DEAD_WINDOW, round(DEAD_FIRINGS * self.config.n_latents / k))

    def set_epoch_rows(self, rows: int) -> None:
        self.epoch_rows = rows if rows > 0 else None

    def _auxk_loss(self, aux_recon: Tensor, x: Tensor, recon: Tensor) -> Tensor:
        """AuxK: the dead latents' reconstruction of what the live ones miss, relative to its variance."""
        residual = (x - recon).flatten(1).detach()
        if distributed.active():
            # The residual's spread over the global batch; the loss is weighted per rank
            # like a mean (by the trainer), hence the n / len(x) share here.
            n = distributed.batch_total(len(residual), residual.device)
            mean = distributed.all_sum(residual.sum(0)) / n
            scale = distributed.all_sum((residual - mean).square().sum()).clamp(min=1e-12) * len(residual) / n
        else:
            scale = (residual - residual.mean(0)).square().sum().clamp(min=1e-12)
        return self.config.aux_coef * (aux_recon.float() - residual).square().sum() / scale

    @torch.no_grad()
    def prepare(self, x: Tensor) -> None:
        """Set the pre-encoder bias to the geometric median (or mean) of ``x``, then fit the encoder's scale."""
        x = x.flatten(1).to(self.b_pre)
        if self.config.pre_bias == "mean":
            self.b_pre.copy_(x.mean(0))
        elif self.config.pre_bias == "median":
            self.b_pre.copy_(geometric_median(x))
        if self.config.tied_init and self.config.fit_encoder_scale and self.sparsity.scale_equivariant:
            self.encoder.weight *= self.encoder_scale_fit(x[:FIT_SAMPLES])

    @torch.no_grad()
    def encoder_scale_fit(self, x: Tensor) -> float:
        """The factor s minimising ``||s * W_dec code(x) - (x - b_pre)||^2`` over the rows of ``x`` (flat, preprocessed).

        The code scales with the encoder (``sparsity.scale_equivariant``, a zero encoder
        bias), so multiplying the encoder by s multiplies the decoded part by s. Returns
        1 where the code is empty or the fit is not a finite positive number.
        """
        code = self.sparsity(self.pre_activations(x))
        decoded, target = code @ self.W_dec.T, x - self.b_pre
        norm = decoded.square().sum()
        scale = float((decoded * target).sum() / norm) if norm > 0 else 1.0
        return scale if 0 < scale < math.inf else 1.0

    @torch.no_grad()
    def before_step(self) -> None:
        if self.config.unit_norm_decoder and self.W_dec.grad is not None:
            # With unit columns w, the gradient's component along w only changes the norm.
            # On the latent-major (n, d) views, where each atom is one run of memory.
            w, g = self.W_dec.T, self.W_dec.grad.T
            g.addcmul_(torch.einsum("nd,nd->n", g, w)[:, None], w, value=-1)  # einsum: the dots without an (n, d) product

    @torch.no_grad()
    def after_step(self) -> None:
        if self.config.unit_norm_decoder:
            w = self.W_dec.T  # (n, d), contiguous
            w /= torch.linalg.vector_norm(w, dim=1, keepdim=True).clamp(min=1e-12)


def _nonzero_csr(code: topk_kernels.SparseCode, n: int) -> Tensor:
    """The ``(B, n)`` CSR matrix of a TopK code's non-zero values (the ReLU leaves zeros among the k)."""
    keep = code.values != 0  # (B, k)
    crow = torch.zeros(len(keep) + 1, dtype=torch.long, device=keep.device)
    torch.cumsum(keep.sum(1), 0, out=crow[1:])
    # Row-major boolean indexing keeps each row's latents in their (ascending) order.
    return torch.sparse_csr_tensor(crow, code.indices[keep], code.values[keep], (len(keep), n), check_invariants=False)


def geometric_median(x: Tensor, iterations: int = 100, tol: float = 1e-6) -> Tensor:
    """The point minimising the sum of Euclidean distances to the rows of ``x`` (Weiszfeld's algorithm)."""
    x = x.double()
    y = x.mean(0)
    for _ in range(iterations):
        w = 1.0 / (x - y).norm(dim=1).clamp(min=1e-12)  # (N,)
        y_next = (w[:, None] * x).sum(0) / w.sum()
        if (y_next - y).norm() <= tol * y.norm().clamp(min=1e-12):
            y = y_next
            break
        y = y_next
    return y.float()
