"""Convolutional autoencoder, the architecture of the Keras blog's MNIST model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from sparseae.errors import check, non_negative_number, positive_int, positive_number
from sparseae.models.base import Autoencoder, count_firing, register_model
from sparseae.sparsity import Sparsity


@dataclass(frozen=True)
class ConvConfig:
    """Layer sizes and the Keras-compatibility switches of `ConvAutoencoder`."""

    in_channels: int = 1
    """Image channels (1 for MNIST)."""
    image_size: int = 28
    """Image height = width; must be divisible by 2 ** len(channels)."""
    channels: tuple[int, ...] = (16, 32)
    """Filters of each conv + 2x2 max-pool stage of the encoder; the decoder mirrors them."""
    n_latents: int = 32
    """Size of the code."""
    padding: Literal["tf", "torch"] = "tf"
    """Where the stride-2 transposed convolutions put their 'same' padding: 'tf'
    keeps the top/left of the full output as TensorFlow does, 'torch' uses
    PyTorch's padding=1, output_padding=1 (the bottom/right, a one-pixel shift)."""
    init: Literal["keras", "torch"] = "keras"
    """'keras': Glorot-uniform weights and zero biases; 'torch': PyTorch's defaults."""
    output_activation: Literal["relu", "sigmoid", "none"] = "relu"
    """Last layer's activation; the Keras blog model uses relu."""
    decoder_norm: float | None = None
    """Hold each code unit's outgoing weights (its column of the code -> decoder layer) at this L2
    norm: the gradient's component along each column is removed before the step and the columns
    are renormalised after it (the dictionary SAEs' unit-norm decoder). An L1 penalty on the code
    can then not be dodged by shrinking the code and growing the weights that read it, so it makes
    the code sparse instead of small; the smaller the norm, the sparser. None: free, as in Keras."""
    centre_code: bool = False
    """Start each code unit's bias at minus its median pre-activation on the training sample, so
    that every unit fires on half of the inputs at the start (zero biases leave some units silent
    on all of them from the first step, as the conv features are non-negative)."""
    revive_window: int | None = None
    """A code unit silent for this many training samples is dead, and an auxiliary loss raises its
    largest pre-activation in each batch until it fires again (the idea of AuxK and ghost grads:
    give dead units a gradient). None: no revival, as in Keras."""
    revive_coef: float = 1e-2
    """Weight of the revival loss: revive_coef x the sum over dead units of how far their
    largest pre-activation in the batch is below zero."""

    def __post_init__(self) -> None:
        for name in ("in_channels", "image_size", "n_latents"):
            value = getattr(self, name)
            check(value >= 1, name, expected="a positive integer", got=value, fix="Use a size of at least 1.")
        check(
            len(self.channels) >= 1 and all(c >= 1 for c in self.channels),
            "channels",
            expected="one or more positive filter counts",
            got=self.channels,
            fix="For example (16, 32).",
        )
        if self.decoder_norm is not None:
            positive_number(self.decoder_norm, "decoder_norm", fix="Leave it unset (None) for free decoder weights.")
        if self.revive_window is not None:
            positive_int(self.revive_window, "revive_window", fix="Count samples, or leave it unset (None) for no revival.")
        non_negative_number(self.revive_coef, "revive_coef", fix="Use 0 to switch the revival loss off.")
        factor = 2 ** len(self.channels)
        check(
            self.image_size % factor == 0,
            "image_size",
            expected=f"a multiple of {factor} (one halving per encoder stage)",
            got=self.image_size,
            fix="Resize the images or use fewer stages.",
        )


CENTRE_SAMPLES = 4096
"""Training samples whose median pre-activations start the code biases (`ConvConfig.centre_code`)."""

_OUTPUT = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "none": nn.Identity}


@register_model("conv")
class ConvAutoencoder(Autoencoder):
    """Conv encoder -> Dense code -> Dense + conv decoder, as in the Keras blog.

    With the default config (MNIST):

        (B,1,28,28) conv16 relu pool -> (B,16,14,14) conv32 relu pool -> (B,32,7,7)
        -> flatten 1568 -> dense 32 + sparsity = code (B,32)
        -> dense 1568 relu -> (B,32,7,7) conv32 relu -> upconv32 relu (B,32,14,14)
        -> upconv16 relu (B,16,28,28) -> conv-transpose 1 relu (B,1,28,28)

    130,017 parameters, as in Keras.

    TensorFlow padding without its cost: cropping the bottom/right of a padding-0
    transposed convolution (TensorFlow's 'same') is slow on CPU. Every other layer
    commutes with a 180-degree rotation of the image (kernels rotated with it), and
    rotating a padding=1, output_padding=1 transposed convolution's input and output
    gives TensorFlow's placement. So ``padding="tf"`` rotates the input, runs the
    PyTorch-padded network, and rotates the output back: the same function as the
    TensorFlow model whose kernels are these kernels rotated (and whose dense
    weights are permuted to match), at no cost. ``tests/models/test_models.py`` checks it
    against a direct crop-based reference.
    """

    config_class = ConvConfig
    input_fields = ("in_channels", "image_size")
    samples_since_fired: Tensor
    """Training samples since each code unit last fired (with `ConvConfig.revive_window` only)."""

    def __init__(self, config: ConvConfig, sparsity: Sparsity, preprocess: str | tuple[str, ...] | None = None):
        super().__init__(config, sparsity, preprocess)
        c = config
        layers: list[nn.Module] = []
        ch = c.in_channels
        for out in c.channels:
            layers += [nn.Conv2d(ch, out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            ch = out
        side = c.image_size // 2 ** len(c.channels)
        self.encoder = nn.Sequential(*layers, nn.Flatten())
        self.to_code = nn.Linear(ch * side * side, c.n_latents)
        self.from_code = nn.Linear(c.n_latents, ch * side * side)
        layers = [nn.ReLU(), nn.Unflatten(1, (ch, side, side)), nn.Conv2d(ch, ch, 3, padding=1), nn.ReLU()]
        for out in reversed(c.channels):
            layers += [nn.ConvTranspose2d(ch, out, 3, stride=2, padding=1, output_padding=1), nn.ReLU()]
            ch = out
        layers += [nn.ConvTranspose2d(ch, c.in_channels, 3, padding=1), _OUTPUT[c.output_activation]()]
        self.decoder = nn.Sequential(*layers)
        self.rotate = c.padding == "tf"
        if c.init == "keras":
            self.apply(_glorot_zero)
        if c.decoder_norm is not None:
            with torch.no_grad():
                self._renormalise()
        if c.revive_window is not None:  # only then: a model without revival keeps the Keras model's state dict
            self.register_buffer("samples_since_fired", torch.zeros(c.n_latents, dtype=torch.long))
        # Channels-last: oneDNN's faster convolution layout on CPU (docs/performance.md).
        self.to(memory_format=torch.channels_last)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.config.in_channels, self.config.image_size, self.config.image_size)

    def pre_activations(self, x: Tensor) -> Tensor:
        if self.rotate:
            x = x.flip(-2, -1)
        x = x.contiguous(memory_format=torch.channels_last)
        return self.to_code(self.encoder(x))  # (B, n_latents)

    def decode(self, code: Tensor) -> Tensor:
        x = self.decoder(self.from_code(code))  # (B, C, H, W)
        return x.flip(-2, -1) if self.rotate else x

    def auxiliary_loss(self, x: Tensor, pre: Tensor, code: Tensor, recon: Tensor) -> Tensor:
        """The revival loss (`ConvConfig.revive_window`): each dead unit's largest pre-activation in the
        batch, where below zero, is pulled up, so that the unit fires on the input it responds to most."""
        window = self.config.revive_window
        if window is None or not self.training:
            return recon.new_zeros(())
        dead = self.samples_since_fired >= window  # (n_latents,), before this batch
        count_firing(self.samples_since_fired, (code > 0).any(0), len(code))
        if not dead.any():
            return recon.new_zeros(())
        return self.config.revive_coef * torch.relu(-pre[:, dead].amax(0)).sum()

    @torch.no_grad()
    def prepare(self, x: Tensor) -> None:
        """With `ConvConfig.centre_code`: each code unit's bias at minus its median pre-activation on ``x``."""
        if self.config.centre_code:
            self.to_code.bias.zero_()
            self.to_code.bias.copy_(-self.pre_activations(x[:CENTRE_SAMPLES]).median(0).values)

    def encoder_weights(self) -> list[nn.Parameter]:
        return [m.weight for m in self.encoder if isinstance(m, nn.Conv2d)] + [self.to_code.weight]

    def encoder_bias(self) -> nn.Parameter:
        return self.to_code.bias

    def decoder_weights(self) -> list[nn.Parameter]:
        layers = [self.from_code, *(m for m in self.decoder if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)))]
        return [layer.weight for layer in layers]

    @torch.no_grad()
    def before_step(self) -> None:
        w = self.from_code.weight  # (decoder inputs, n_latents): column j reads unit j
        if self.config.decoder_norm is not None and w.grad is not None:
            # With columns of a fixed norm, the gradient's component along each only changes its norm.
            unit = w / w.norm(dim=0, keepdim=True).clamp(min=1e-12)
            w.grad -= (w.grad * unit).sum(0, keepdim=True) * unit

    @torch.no_grad()
    def after_step(self) -> None:
        if self.config.decoder_norm is not None:
            self._renormalise()

    def _renormalise(self) -> None:
        w = self.from_code.weight
        w *= self.config.decoder_norm / w.norm(dim=0, keepdim=True).clamp(min=1e-12)


def _glorot_zero(module: nn.Module) -> None:
    # Keras' glorot_uniform uses fan_in + fan_out over the receptive field, the same
    # sum torch's xavier_uniform_ computes for Linear, Conv2d and ConvTranspose2d.
    if isinstance(module, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.xavier_uniform_(module.weight)
        nn.init.zeros_(module.bias)
