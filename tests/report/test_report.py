import struct
import zlib

import numpy as np
import torch

from sparseae.report import encode_png, image_grid


def decode_png(data: bytes) -> tuple[tuple[int, int, int, int], np.ndarray]:
    """Minimal PNG reader for the files we write (8-bit, filter 0): header fields and pixels."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        assert struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])[0] == zlib.crc32(kind + body)
        chunks[kind] = chunks.get(kind, b"") + body
        pos += 12 + length
    width, height, depth, color, *_ = struct.unpack(">IIBBBBB", chunks[b"IHDR"])
    channels = 1 if color == 0 else 3
    raw = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), np.uint8).reshape(height, 1 + width * channels)
    assert (raw[:, 0] == 0).all()
    return (width, height, depth, color), raw[:, 1:].reshape(height, width, channels).squeeze(-1 if channels == 1 else ())


def test_png_round_trip_gray_and_rgb():
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    header, pixels = decode_png(encode_png(gray))
    assert header == (4, 3, 8, 0) and np.array_equal(pixels, gray)
    rgb = np.random.default_rng(0).integers(0, 256, (5, 2, 3), dtype=np.uint8)
    header, pixels = decode_png(encode_png(rgb))
    assert header == (2, 5, 8, 2) and np.array_equal(pixels, rgb)


def test_image_grid_places_each_image():
    rows = [torch.zeros(3, 1, 4, 4), torch.ones(3, 1, 4, 4)]
    grid = image_grid(rows, pad=1, scale=2)
    assert grid.shape == (2 * 9 + 1, 3 * 9 + 1)
    assert (grid[1:9, 1:9] == 0).all() and (grid[10:18, 10:18] == 255).all() and (grid[0] == 255).all()


def test_feature_images_are_decoder_directions(tmp_path):
    import sparseae
    from sparseae.models import DenseAutoencoder, DenseConfig
    from sparseae.report import feature_images, save_feature_grid
    from sparseae.sparsity import build_sparsity

    dense = DenseAutoencoder(DenseConfig(input_shape=(1, 6, 6), n_latents=7), build_sparsity("topk", k=2))
    features = feature_images(dense)
    assert features.shape == (7, 1, 6, 6) and torch.equal(features[3].flatten(), dense.W_dec[:, 3])
    conv = sparseae.mnist_conv(seed=0)
    features = feature_images(conv)
    code = torch.zeros(1, 32)
    code[0, 5] = 1.0
    torch.testing.assert_close(features[5:6], conv.decode(code) - conv.decode(torch.zeros(1, 32)))
    path = save_feature_grid(dense, tmp_path / "f.png", columns=3, scale=1)
    header, pixels = decode_png(path.read_bytes())
    assert header[:2] == (3 * 8 + 2, 3 * 8 + 2)  # 3x3 tiles of 6+2 pixels, last row padded with gray
    assert pixels[-4, -4] == 128
