"""Pictures of what each latent stands for."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from sparseae.models import Autoencoder, ConvAutoencoder, DenseAutoencoder
from sparseae.pictures.images import save_image_grid


def image_shape(shape: tuple[int, ...]) -> tuple[int, int, int] | None:
    """``(C, H, W)`` to draw samples of ``shape`` as images, or ``None`` if they are not images."""
    if len(shape) == 3 and shape[0] in (1, 3):
        return (shape[0], shape[1], shape[2])
    if len(shape) == 2:
        return (1, shape[0], shape[1])
    side = math.isqrt(math.prod(shape))
    if side * side == math.prod(shape):
        return (1, side, side)
    return None


@torch.no_grad()
def feature_images(model: Autoencoder, weights: Literal["decoder", "encoder"] = "decoder") -> Tensor:
    """Each latent's direction in input space, ``(n_latents, *input_shape)``.

    Dense models: the decoder column (the dictionary atom), or with
    ``weights="encoder"`` the encoder row (the input pattern the unit responds
    to, what Ng's notes draw). Convolutional models: the decoder's output for
    that latent alone at value 1, minus its output for the zero code.
    """
    if isinstance(model, DenseAutoencoder):
        matrix = model.encoder.weight if weights == "encoder" else model.W_dec.T
        return matrix.reshape(-1, *model.input_shape)
    if isinstance(model, ConvAutoencoder):
        eye = torch.eye(model.n_latents, device=next(model.parameters()).device)
        base = model.decode(torch.zeros_like(eye[:1]))
        return model.decode(eye) - base
    raise TypeError(f"no feature picture for {type(model).__name__}")


def feature_tiles(model: Autoencoder, weights: Literal["decoder", "encoder"] = "decoder") -> Tensor | None:
    """Every feature as an image ``(n_latents, C, H, W)`` in [0, 1], or ``None`` when inputs are not images.

    Each is scaled so that its largest |value| is black or white; 0 is gray.
    """
    shape = image_shape(model.input_shape)
    if shape is None:
        return None
    features = feature_images(model, weights).reshape(-1, *shape).float().cpu()
    peak = features.flatten(1).abs().amax(1).clamp(min=1e-12)
    return 0.5 + 0.5 * features / peak[:, None, None, None]


def save_feature_grid(
    model: Autoencoder,
    path: str | Path,
    n: int | None = None,
    columns: int = 10,
    scale: int = 3,
    weights: Literal["decoder", "encoder"] = "decoder",
) -> Path:
    """Draw the first ``n`` features as `feature_tiles`, ``columns`` to a row."""
    tiles = feature_tiles(model, weights)
    if tiles is None:
        raise ValueError(f"inputs of shape {model.input_shape} are not images")
    features, shape = tiles[:n], tuple(tiles.shape[1:])
    rows = [features[i : i + columns] for i in range(0, len(features), columns)]
    if len(rows) > 1 and len(rows[-1]) < columns:  # pad the last row with gray tiles
        rows[-1] = torch.cat([rows[-1], torch.full((columns - len(rows[-1]), *shape), 0.5)])
    return save_image_grid(path, rows, scale=scale)
