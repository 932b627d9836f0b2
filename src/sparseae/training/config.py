"""How to train (`TrainConfig`) and what training returns (`TrainResult`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

from sparseae.errors import check, positive_int, positive_number
from sparseae.models import Autoencoder, get_preset


@dataclass(frozen=True)
class TrainConfig:
    """How to train. Each field's docstring is its ``--help`` text."""

    epochs: int = 10
    """Passes over the training split."""
    steps: int | None = None
    """Train for exactly this many optimizer steps instead of whole epochs."""
    batch_size: int = 128
    """Samples per optimizer step."""
    lr: float = 1e-3
    """Adam learning rate."""
    optimizer: Literal["keras-adam", "adam"] = "keras-adam"
    """'keras-adam': Adam as Keras computes it (epsilon added before the bias
    correction, which damps the first steps); 'adam': torch.optim.Adam."""
    adam_eps: float = 1e-7
    """Adam epsilon; 1e-7 is Keras' default (PyTorch's is 1e-8)."""
    adam_beta1: float = 0.9
    """Adam's decay rate of the running mean of gradients (beta1)."""
    adam_beta2: float = 0.999
    """Adam's decay rate of the running mean of squared gradients (beta2); 0.99 forgets
    the large gradients of the first steps sooner."""
    loss: Literal["mse", "bce", "half_sse"] = "mse"
    """Reconstruction loss: 'mse' (mean over every element), 'bce' (binary cross-entropy,
    outputs clipped to [1e-7, 1-1e-7] as in Keras), or 'half_sse' (half the squared
    error summed over an example's features, averaged over examples: Ng's J)."""
    seed: int = 0
    """Seeds the model's initialisation (from the CLI) and, unless --data-seed is set, the data order."""
    data_seed: int | None = None
    """Seeds the data order (the shuffled batches and the sample that initialises the model) apart from
    --seed; unset: --seed. A sweep over --seed sets it, as its models share each batch."""
    device: str = "auto"
    """'auto' (CUDA, then Apple MPS, then CPU), or a torch device such as 'cpu', 'cuda:1'."""
    eval_batch_size: int = 1000
    """Samples per batch when evaluating on the test split."""
    tensorboard: bool = False
    """Also log each epoch's metrics and the feature grid to RUN/tensorboard (needs the tensorboard package)."""
    checkpoint_every: int | None = None
    """Also write a checkpoint every N optimizer steps within an epoch (one is always written
    after each epoch); --resume continues from the exact batch."""
    max_bad_steps: int = 10
    """A step whose loss or gradients are not finite is skipped; after this many in a row the
    run stops, naming the step (0 switches the check off, saving a sync per step)."""
    precision: Literal["float32", "bfloat16"] = "float32"
    """Precision of the forward pass: 'bfloat16' runs the matmuls and convolutions in bfloat16
    (autocast; about 2x faster on CPUs with AVX-512-BF16 or AMX and on recent GPUs), with
    float32 weights, optimizer and loss."""
    kernels: Literal["auto", "exact", "reference"] = "auto"
    """'auto': the fast paths (sparse TopK encoder backward and decoder, fused Adam), and in
    float32 on CPUs with bfloat16 dot products (AVX-512-BF16, AMX) a TopK choice screened by a
    bfloat16 matmul and rescored in float32 (the values and gradients are float32; see
    docs/performance.md); 'exact': the same fast paths with the choice made by the float32
    matmul; 'reference': plain PyTorch operations, for checking them."""
    lr_warmup: int = 0
    """Warm the learning rate up linearly over the first N optimizer steps: step s uses
    lr * s / N (SAELens' lr_warm_up_steps); 0: the full rate from the first step."""
    lr_decay: Literal["none", "linear", "cosine"] = "none"
    """Decay the learning rate over the last --lr-decay-fraction of the run's steps,
    linearly or along a cosine (torch's CosineAnnealingLR), towards --lr-decay-to x lr."""
    lr_decay_fraction: float = 0.2
    """The share of the run's steps, at its end, that --lr-decay spans (in (0, 1])."""
    lr_decay_to: float = 0.0
    """Where --lr-decay ends, as a fraction of --lr (0: towards zero; reached just after the last step)."""
    lr_long_run: int = 0
    """The run length, in training samples (steps x batch size), that lr is set for: a longer run
    of S samples trains at lr x sqrt(N / S) throughout (a rate that suits a few hundred steps
    kills latents over a few thousand); 0: lr whatever the length."""
    l1_warmup: int = 0
    """Ramp the sparsity penalty's weight linearly from 1/N of its value at step 1 to all of it
    at step N (SAELens' l1_warm_up_steps); for any constraint with a penalty (l1, kl, jumprelu's
    L0 term, ...); 0: the full penalty from the first step."""
    grad_clip: float | None = None
    """Scale the gradients down so that their global L2 norm is at most this, before each
    optimizer step (torch.nn.utils.clip_grad_norm_); unset: no clipping."""
    encoder_lr_scale: float = 1.0
    """The learning rate of the encoder's weights (the dense model's ``encoder.weight``, the conv
    model's encoder layers and code layer; not their biases) as a multiple of lr. On real
    activations a slower encoder left fewer latents dead (0.67 beside a decoder at 3x kept them
    under 1% at every setting, docs/choosing.md)."""
    encoder_bias_lr_scale: float = 1.0
    """The learning rate of the encoder's bias (the bias of each latent's pre-activation: the dense
    model's ``encoder.bias``, the conv model's code layer's) as a multiple of lr. The weights move
    a pre-activation by up to lr x |x|_1 per Adam step, its bias by lr: on real activations 5 made
    the TopK dictionary's held-out FVU about 1% lower with fewer dead latents (docs/choosing.md)."""
    decoder_lr_scale: float = 1.0
    """The learning rate of the decoder's weights (the dense model's dictionary ``W_dec``, the conv
    model's decoder layers) as a multiple of lr. On real activations 2-4 made the TopK dictionary's
    held-out FVU 4-5% lower (docs/choosing.md), and left more latents dead than a slower encoder
    (`encoder_lr_scale`) brings back: the dense recipe trains the decoder at 3, the encoder at 0.67."""
    metrics_every: int | None = None
    """Also write one line to RUN/metrics-steps.jsonl every N optimizer steps: lr, the training
    loss terms and L0 averaged over those steps, latents dead in them, samples/s (and to
    TensorBoard, and the progress bar); unset: per-epoch metrics only."""

    @classmethod
    def for_preset(cls, name: str, recipe: str = "default", **fields: Any) -> TrainConfig:
        """The config ``sparseae train --model NAME`` trains with, with ``fields`` overriding it.

        ``TrainConfig()`` alone is the Keras blog's recipe (keras-adam, lr 1e-3), which is
        ``for_preset("mnist-conv", recipe="keras")``; ``mnist-conv`` trains with its own by default
        (`sparseae.models.presets.CONV_TRAINING`), the ``dense`` preset with its own
        (`sparseae.models.presets.DENSE_TRAINING`), its learning rate following the batch size unless
        ``lr`` is given (or is None), e.g. ``TrainConfig.for_preset("dense", epochs=5, batch_size=4096)``
        trains at 4e-3.
        """
        preset = get_preset(name, recipe)
        fields = {**preset.train_defaults, **fields}
        if fields.get("lr") is None:
            fields.pop("lr", None)
            lr = preset.default_lr(fields.get("batch_size", cls.batch_size))
            if lr is not None:
                fields["lr"] = lr
        return cls(**fields)

    @property
    def order_seed(self) -> int:
        """The seed of the data order: ``data_seed``, else ``seed``."""
        return self.seed if self.data_seed is None else self.data_seed

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size"):
            positive_int(getattr(self, name), name, fix=f"Pass a positive {name}.")
        check(
            self.checkpoint_every is None or self.checkpoint_every >= 1,
            "checkpoint_every",
            expected="an integer >= 1",
            got=self.checkpoint_every,
            fix="Leave it unset to checkpoint after each epoch only.",
        )
        check(
            self.max_bad_steps >= 0, "max_bad_steps", expected="an integer >= 0", got=self.max_bad_steps, fix="0 switches it off."
        )
        check(
            self.steps is None or self.steps >= 1,
            "steps",
            expected="an integer >= 1",
            got=self.steps,
            fix="Leave it unset to train by epochs.",
        )
        for name in ("lr", "adam_eps", "encoder_lr_scale", "encoder_bias_lr_scale", "decoder_lr_scale"):
            positive_number(getattr(self, name), name, fix=f"Pass a positive {name}.")
        for name in ("adam_beta1", "adam_beta2"):
            value = getattr(self, name)
            check(0 <= value < 1, name, expected="a number in [0, 1)", got=value, fix="For example 0.9 or 0.999.")
        for name in ("lr_warmup", "l1_warmup"):
            value = getattr(self, name)
            check(value >= 0, name, expected="a number of steps >= 0", got=value, fix="0 switches the warm-up off.")
        check(
            self.lr_long_run >= 0,
            "lr_long_run",
            expected="a number of training samples >= 0",
            got=self.lr_long_run,
            fix="0 keeps lr whatever the run's length.",
        )
        check(
            0 < self.lr_decay_fraction <= 1,
            "lr_decay_fraction",
            expected="a fraction of the run in (0, 1]",
            got=self.lr_decay_fraction,
            fix="For example 0.2: the last fifth of the steps.",
        )
        check(
            0 <= self.lr_decay_to <= 1,
            "lr_decay_to",
            expected="a fraction of lr in [0, 1]",
            got=self.lr_decay_to,
            fix="0 decays towards zero, 0.1 towards a tenth of lr.",
        )
        check(
            self.grad_clip is None or 0 < self.grad_clip < math.inf,
            "grad_clip",
            expected="a finite number > 0, or unset",
            got=self.grad_clip,
            fix="Leave it unset to not clip.",
        )
        check(
            self.metrics_every is None or self.metrics_every >= 1,
            "metrics_every",
            expected="an integer >= 1, or unset",
            got=self.metrics_every,
            fix="Leave it unset for per-epoch metrics only.",
        )


class TrainResult(NamedTuple):
    """What `train` returns."""

    model: Autoencoder
    """The trained model, in eval mode."""
    metrics: list[dict[str, Any]]
    """One record per epoch (the lines of ``metrics.jsonl``)."""
    run_dir: Path | None
    """Where the run was written, if anywhere."""
