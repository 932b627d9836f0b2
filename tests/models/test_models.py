import math

import pytest
import torch
import torch.nn.functional as F

import sparseae
from sparseae.models import ConvAutoencoder, ConvConfig
from sparseae.sparsity import build_sparsity


def test_parameter_count_matches_keras():
    assert sum(p.numel() for p in sparseae.mnist_conv().parameters()) == 130_017


def test_layer_shapes_28_14_7_14_28():
    model = sparseae.mnist_conv()
    x = torch.rand(2, 1, 28, 28)
    shapes = []
    hooks = [m.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape[1:]))) for m in (*model.encoder, *model.decoder)]
    out = model(x)
    for h in hooks:
        h.remove()
    sides = [s[-1] for s in shapes if len(s) == 3]
    assert sides == [28, 28, 14, 14, 14, 7, 7, 7, 7, 14, 14, 28, 28, 28, 28]
    assert out.recon.shape == x.shape and out.code.shape == (2, 32)


def test_keras_initialisation():
    model = sparseae.mnist_conv(seed=3, recipe="keras")
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            assert torch.all(p == 0), name
        else:
            fan_sum = (p.shape[0] + p.shape[1]) * p[0, 0].numel()  # (fan_in + fan_out), receptive field included
            limit = math.sqrt(6 / fan_sum)
            assert p.abs().max() <= limit and p.abs().max() > 0.9 * limit, name


def test_seed_makes_initialisation_reproducible_without_touching_global_rng():
    state = torch.get_rng_state()
    a, b = sparseae.mnist_conv(seed=5), sparseae.mnist_conv(seed=5)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def _tf_reference(model: ConvAutoencoder, x: torch.Tensor) -> torch.Tensor:
    """The Keras/TensorFlow model computed directly: 'same' transposed convs keep the top/left.

    Its weights are ours rotated by 180 degrees (kernels, and the dense layers'
    spatial axes), which is what sparseae's rotation trick claims to be equal to.
    """
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    rot = lambda w: w.flip(-2, -1)  # noqa: E731
    h = F.max_pool2d(F.relu(F.conv2d(x, rot(sd["encoder.0.weight"]), sd["encoder.0.bias"], padding=1)), 2)
    h = F.max_pool2d(F.relu(F.conv2d(h, rot(sd["encoder.3.weight"]), sd["encoder.3.bias"], padding=1)), 2)
    w_code = sd["to_code.weight"].reshape(32, 32, 7, 7).flip(-2, -1).reshape(32, -1)
    code = F.relu(F.linear(h.flatten(1), w_code, sd["to_code.bias"]))
    w_up = sd["from_code.weight"].reshape(32, 7, 7, 32).flip(1, 2).reshape(-1, 32)
    b_up = sd["from_code.bias"].reshape(32, 7, 7).flip(1, 2).reshape(-1)
    h = F.relu(F.linear(code, w_up, b_up)).reshape(-1, 32, 7, 7)
    h = F.relu(F.conv2d(h, rot(sd["decoder.2.weight"]), sd["decoder.2.bias"], padding=1))
    for i in (4, 6):  # TensorFlow 'same', stride 2: full (2n+1) output, bottom/right row and column cropped
        h = F.relu(F.conv_transpose2d(h, rot(sd[f"decoder.{i}.weight"]), sd[f"decoder.{i}.bias"], stride=2)[..., :-1, :-1])
    return F.relu(F.conv_transpose2d(h, rot(sd["decoder.8.weight"]), sd["decoder.8.bias"], padding=1))


def test_tf_padding_equals_the_direct_tensorflow_computation():
    model = sparseae.mnist_conv(seed=1)
    with torch.no_grad():  # non-zero biases, so that they are checked too
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.uniform_(-0.1, 0.1)
    x = torch.rand(4, 1, 28, 28)
    torch.testing.assert_close(model.reconstruct(x), _tf_reference(model, x), atol=1e-5, rtol=1e-4)


def test_torch_padding_is_a_different_function():
    a = sparseae.mnist_conv(seed=1, recipe="keras")
    b = sparseae.mnist_conv(seed=1, recipe="keras", padding="torch")
    b.load_state_dict(a.state_dict())
    x = torch.rand(4, 1, 28, 28)
    assert (a.reconstruct(x) - b.reconstruct(x)).abs().max() > 1e-3


def test_encode_decode_reconstruct_agree():
    model = sparseae.mnist_conv(seed=2)
    x = torch.rand(3, 1, 28, 28)
    out = model(x)
    torch.testing.assert_close(model.decode(model.encode(x)), out.recon)
    torch.testing.assert_close(model.reconstruct(x), out.recon)
    assert out.penalty.item() == pytest.approx(1e-4 * out.code.sum().item() / 3, rel=1e-5)


def test_other_image_sizes():
    model = ConvAutoencoder(ConvConfig(in_channels=3, image_size=32, channels=(8, 16, 16), n_latents=10), build_sparsity("none"))
    x = torch.rand(2, 3, 32, 32)
    assert model.reconstruct(x).shape == x.shape and model.encode(x).shape == (2, 10)


def test_bad_config():
    with pytest.raises(sparseae.SparseAEError, match=r"image_size: expected a multiple of 4 .*got 30"):
        ConvConfig(image_size=30)
