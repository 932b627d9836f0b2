"""Image grids written as PNG with the standard library (no plotting dependency).

Hand-written on purpose: a PNG of 8-bit pixels is a few lines of zlib and struct, while Pillow
is an optional extra (sparseae[images]) that training must not need to write its pictures.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from sparseae.io import atomic_write


def encode_png(pixels: np.ndarray) -> bytes:
    """PNG bytes of a uint8 array ``(H, W)`` (grayscale) or ``(H, W, 3)`` (RGB)."""
    if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] != 3):
        raise ValueError(f"expected uint8 (H, W) or (H, W, 3), got {pixels.dtype} {pixels.shape}")
    height, width = pixels.shape[:2]
    color_type = 0 if pixels.ndim == 2 else 2
    rows = np.ascontiguousarray(pixels).reshape(height, -1)
    raw = b"".join(b"\x00" + rows[i].tobytes() for i in range(height))  # filter 0 per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def image_grid(rows: list[Tensor], pad: int = 2, scale: int = 2) -> np.ndarray:
    """Tile rows of images ``(N, C, H, W)`` (values in [0, 1]; C = 1 or 3) into one uint8 picture.

    The picture is as wide as the longest row; shorter rows leave white space.
    """
    n = max(len(images) for images in rows)
    _, c, h, w = rows[0].shape
    cell_h, cell_w = h * scale + pad, w * scale + pad
    grid = np.full((len(rows) * cell_h + pad, n * cell_w + pad, c), 255, np.uint8)
    for r, images in enumerate(rows):
        pixels = (images.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
        pixels = pixels.permute(0, 2, 3, 1).numpy().repeat(scale, 1).repeat(scale, 2)  # (N, H*s, W*s, C)
        for i in range(len(images)):
            y, x = pad + r * cell_h, pad + i * cell_w
            grid[y : y + h * scale, x : x + w * scale] = pixels[i]
    return grid[..., 0] if c == 1 else grid


def save_image_grid(path: str | Path, rows: list[Tensor], **kwargs: int) -> Path:
    """Write `image_grid` of ``rows`` as a PNG file."""
    atomic_write(path, encode_png(image_grid(rows, **kwargs)))
    return Path(path)
