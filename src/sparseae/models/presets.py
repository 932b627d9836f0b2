"""Named, ready-made models: what ``sparseae train --model NAME`` builds.

A preset is a model class, the config defaults that make it what it is, the
fields it reads off the data, and its usual sparsity constraint.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from sparseae.errors import SparseAEError
from sparseae.models.base import Autoencoder
from sparseae.models.conv import ConvAutoencoder, ConvConfig
from sparseae.models.dense import DenseAutoencoder
from sparseae.sparsity import Sparsity, build_sparsity


def _image_fields(shape: tuple[int, ...]) -> dict[str, Any]:
    if len(shape) != 3 or shape[1] != shape[2]:
        raise SparseAEError(
            "model",
            expected="square images of shape (channels, size, size) for a convolutional model",
            got=f"samples of shape {shape}",
            fix="Use image data such as MNIST, or --model dense.",
        )
    return {"in_channels": shape[0], "image_size": shape[1]}


@dataclass(frozen=True)
class Recipe:
    """Another way to build and train a preset's model: the config defaults it uses instead of the preset's."""

    defaults: dict[str, Any]
    train_defaults: dict[str, Any]
    doc: str


@dataclass(frozen=True)
class Preset:
    """A model class with its defaults."""

    model: type[Autoencoder]
    data_fields: Callable[[tuple[int, ...]], dict[str, Any]]
    """The config fields read off the data's sample shape."""
    sparsity: str
    sparsity_params: dict[str, Any] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)
    """Config fields that differ from the config class's own defaults."""
    train_defaults: dict[str, Any] = field(default_factory=dict)
    """TrainConfig fields this model is usually trained with (the CLI's defaults)."""
    lr_at_batch: tuple[float, int, float] | None = None
    """``(lr, batch, floor)``: unless a learning rate is given, train with ``lr * sqrt(batch_size / batch)``
    (Adam's square-root scaling rule: half the batch, 1/sqrt(2) of the rate), but not below ``floor``;
    None: TrainConfig's."""
    doc: str = ""
    expansion: bool = False
    """Whether the code size may be given as a multiple of the input width (``expansion_factor``)."""
    recipes: dict[str, Recipe] = field(default_factory=dict)
    """Other ways to build and train this model, by name (``--recipe NAME``), besides its own ("default")."""

    @property
    def recipe_names(self) -> list[str]:
        """Every ``--recipe`` of this preset: "default" (its own), then its other recipes."""
        return ["default", *self.recipes]

    def recipe(self, name: str) -> Preset:
        """This preset with recipe ``name``'s defaults ("default": itself)."""
        if name == "default":
            return self
        if name not in self.recipes:
            raise SparseAEError(
                "recipe",
                expected=f"one of {', '.join(self.recipe_names)} for this model",
                got=repr(name),
                fix="Leave --recipe out for the model's own recipe.",
            )
        r = self.recipes[name]
        return replace(self, defaults=r.defaults, train_defaults=r.train_defaults, lr_at_batch=None, doc=r.doc, recipes={})

    def default_lr(self, batch_size: int) -> float | None:
        """The learning rate this model trains with at ``batch_size`` when none is given (None: TrainConfig's default)."""
        if self.lr_at_batch is None:
            return None
        lr, batch, floor = self.lr_at_batch
        return max(floor, lr * math.sqrt(batch_size / batch))


EXPANSION_FACTOR_DOC = """Latents as a multiple of the input width: n_latents = round(F * d_in), e.g. 8 on
768-wide activations gives 6,144; instead of --n-latents."""
"""The help of ``expansion_factor`` (``--expansion-factor``), an option of the presets with ``expansion``."""


DENSE_TRAINING: dict[str, Any] = {
    "optimizer": "adam", "adam_eps": 1e-8, "adam_beta1": 0.8, "lr_decay": "linear", "lr_decay_fraction": 0.2,
    "lr_long_run": 2**20, "encoder_bias_lr_scale": 5.0, "encoder_lr_scale": 0.67, "decoder_lr_scale": 3.0,
}  # fmt: skip
"""How the dense preset trains (``TrainConfig.for_preset("dense")``): torch's Adam with beta1 0.8 (less
momentum than 0.9: about 1% lower held-out FVU at every setting of the real-activation benchmark), the
rate decayed linearly to zero over the last fifth of the steps, (`DENSE_LR`) 4e-3 at batch 4,096, and
that rate set for runs of up to 2^20 samples (256 steps of 4,096): a run of S samples beyond trains at
lr x sqrt(2^20 / S) (2,048 steps of 4,096 at 1.4e-3, where 4e-3 left 22% of the latents dead); the
encoder's bias at 5x the rate (about 1% lower held-out FVU and fewer dead latents at k 16 and 32 on two
seeds); the decoder's atoms at 3x the rate and the encoder's weights at 0.67x (2.4-3.4% lower held-out
FVU than both at the rate, and at most 1% of the latents dead at k 16, 32, 64 and layer 5, where there
were up to 2%: the decoder's rate buys the FVU, and the encoder's is what kills latents).
Each part's measured reason is in docs/choosing.md ("The dense recipe")."""
DENSE_LR = (4e-3, 4096, 2e-3)
"""The dense preset's learning rate at a batch size, and its floor: other batch sizes get it scaled by
sqrt(batch_size / 4096) down to 2e-3 (reached at 1,024; 2e-3 at 128 too, where the rule would give 7.1e-4,
which trained MNIST's TopK k=50 to FVU 0.095 against 0.064 at 2e-3)."""
DENSE_DEAD_WINDOW = None
"""The dense preset's AuxK dead window: None is 8,192 samples, or 40 firings of an average latent
(`DEAD_FIRINGS` x n_latents / k) where that is longer (15,360 for 6,144 latents at k 16): short enough
for AuxK to revive latents within a few hundred steps (a million-sample window never engages in a
256-step run of batch 4,096), and not too short in firings at a small k."""

CONV_MODEL: dict[str, Any] = {"decoder_norm": 0.04, "centre_code": True, "revive_window": 6400}
"""How the mnist-conv preset builds its model by default: the Keras blog's architecture and L1 penalty, its
code units held alive (docs/choosing.md, "The MNIST model without dead units")."""
CONV_TRAINING: dict[str, Any] = {"lr": 2e-3, "lr_decay": "linear", "lr_decay_fraction": 0.2}
"""How the mnist-conv preset trains by default: Keras' Adam at 2e-3, decayed linearly to zero over the
last fifth of the steps."""
KERAS = Recipe({}, {}, doc="The Keras blog's convolutional sparse autoencoder exactly (L1 1e-4 on a 32-unit code).")
"""``--recipe keras``: the model and training of the Keras blog, which `ConvConfig`'s and `TrainConfig`'s own
defaults are."""

PRESETS: dict[str, Preset] = {
    "mnist-conv": Preset(
        ConvAutoencoder, _image_fields, "l1", {"weight": 1e-4}, defaults=CONV_MODEL, train_defaults=CONV_TRAINING,
        doc="The Keras blog's convolutional sparse autoencoder (L1 1e-4 on a 32-unit code), trained so that its "
        "code units stay alive; --recipe keras: exactly as Keras trains it.",
        recipes={"keras": KERAS},
    ),
    "dense": Preset(
        DenseAutoencoder, lambda shape: {"input_shape": tuple(shape)}, "topk", {"k": 32},
        defaults={"aux_k": 256, "dead_window": DENSE_DEAD_WINDOW},
        train_defaults=DENSE_TRAINING, lr_at_batch=DENSE_LR,
        doc="Dictionary-learning SAE: pre-encoder bias, unit-norm decoder, tied init, TopK, AuxK.", expansion=True,
    ),
    "classic": Preset(
        DenseAutoencoder, lambda shape: {"input_shape": tuple(shape)}, "kl", {"rho": 0.1, "beta": 3.0},
        defaults={"n_latents": 196, "pre_bias": "none", "unit_norm_decoder": False, "tied_init": False,
                  "weight_decay": 3e-3, "output_activation": "sigmoid"},
        train_defaults={"loss": "half_sse", "lr": 3e-3},
        doc="Ng's sparse autoencoder (CS294A): sigmoid units, KL sparsity, weight decay; 784-196 for MNIST.", expansion=True,
    ),
}  # fmt: skip


@contextmanager
def seeded(seed: int | None) -> Iterator[None]:
    """Draw from a generator seeded with ``seed`` (if given), leaving the global RNG as it was."""
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        yield


def list_presets() -> list[str]:
    return sorted(PRESETS)


def get_preset(name: str, recipe: str = "default") -> Preset:
    """The preset ``name``, with the defaults of its ``recipe`` (see `Preset.recipes`)."""
    if name not in PRESETS:
        raise SparseAEError("model", expected=f"one of {', '.join(list_presets())}", got=repr(name), fix="Pick a listed model.")
    return PRESETS[name].recipe(recipe)


def build_preset(
    name: str,
    sample_shape: tuple[int, ...],
    sparsity: Sparsity | None = None,
    seed: int | None = None,
    preprocess: str | tuple[str, ...] | None = None,
    expansion_factor: float | None = None,
    recipe: str = "default",
    **config: Any,
) -> Autoencoder:
    """The preset ``name`` for samples of ``sample_shape``, initialised from ``seed`` if given.

    Args:
        sparsity: The constraint on the code (default: the preset's own).
        preprocess: Input preprocessing steps fitted before training, e.g. ``"norm"``
            (see `sparseae.preprocess`).
        expansion_factor: The code size as a multiple of the input width,
            ``n_latents = round(expansion_factor * prod(sample_shape))`` (dense and
            classic); give it or ``n_latents``, not both.
        recipe: "default", or another of the preset's recipes (``"keras"`` for mnist-conv).
        **config: Overrides of the model's config fields, e.g. ``n_latents=4096``.
    """
    preset = get_preset(name, recipe)
    if expansion_factor is not None:
        config = {**config, "n_latents": _expanded(name, preset, sample_shape, expansion_factor, config.get("n_latents"))}
    if sparsity is None:
        sparsity = build_sparsity(preset.sparsity, **preset.sparsity_params)
    fields = {**preset.defaults, **config, **preset.data_fields(tuple(sample_shape))}
    with seeded(seed):
        return preset.model(preset.model.config_class(**fields), sparsity, preprocess)


def _expanded(name: str, preset: Preset, sample_shape: tuple[int, ...], factor: float, n_latents: int | None) -> int:
    """``n_latents`` for ``expansion_factor=factor``, refusing a second code size and factors that give no latent."""
    if not preset.expansion:
        with_it = ", ".join(k for k, p in PRESETS.items() if p.expansion)
        raise SparseAEError("expansion_factor", expected=f"a model with a dense code ({with_it})", got=f"model {name!r}",
                            fix="Set its n_latents (--n-latents) instead.")  # fmt: skip
    if n_latents is not None:
        raise SparseAEError(
            "expansion_factor and n_latents",
            expected="one of them",
            got=f"both (expansion_factor={factor:g}, n_latents={n_latents})",
            fix="Pass one: n_latents (--n-latents) is the code size, expansion_factor (--expansion-factor) makes it "
            "that multiple of the input width.",
        )
    width = math.prod(sample_shape)
    if not 0 < factor < math.inf or round(factor * width) < 1:
        raise SparseAEError(
            "expansion_factor",
            expected="a finite number > 0 that gives at least one latent",
            got=f"{factor:g} (times {width} input values: {factor * width:g} latents)",
            fix="For example 4 to 32 for language-model activations.",
        )
    return round(factor * width)


def mnist_conv(
    weight: float = 1e-4, *, seed: int | None = 0, sparsity: Sparsity | None = None, recipe: str = "default", **config: Any
) -> ConvAutoencoder:
    """The classic convolutional sparse autoencoder for MNIST (Keras blog), 130,017 parameters.

    Train it with ``TrainConfig.for_preset("mnist-conv", recipe=...)`` of the same recipe.

    Args:
        weight: L1 activity penalty weight on the 32-unit code (Keras ``l1(10e-5)``);
            0 gives the same model without the penalty.
        seed: Seeds the initialisation (``None``: use the global RNG).
        sparsity: Another constraint on the code instead of L1 (``weight`` is then ignored).
        recipe: "default": the code units held alive (`CONV_MODEL`); "keras": the Keras blog's model exactly.
        **config: Overrides of `ConvConfig` fields, e.g. ``padding="torch"``.
    """
    sparsity = sparsity or build_sparsity("l1", weight=weight)
    defaults = get_preset("mnist-conv", recipe).defaults
    with seeded(seed):
        return ConvAutoencoder(ConvConfig(**{**defaults, **config}), sparsity)
