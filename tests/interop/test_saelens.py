"""SAELens interop: sparseae models load in the real sae_lens package and agree with it, and back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from sae_inputs import D_IN, randomize, raw_inputs
from safetensors import safe_open
from safetensors.torch import save_file

from sparseae import SparseAEError, load, save_model
from sparseae.interop import export_saelens, import_saelens
from sparseae.interop.saelens import WEIGHTS_FILE
from sparseae.models import ConvAutoencoder, ConvConfig, DenseAutoencoder, DenseConfig
from sparseae.sparsity import build_sparsity

N = 64
ATOL = 1e-5


def dense(sparsity: str, preprocess: tuple[str, ...] = (), seed: int = 0, **config) -> DenseAutoencoder:
    """A tiny dense model with a trained-looking random state: no tied weights, no unit norms, nonzero biases."""
    params = {"topk": {"k": 8}, "jumprelu": {"init_threshold": 0.3}, "batchtopk": {"k": 8}, "l1": {"weight": 3e-3}}
    model = DenseAutoencoder(
        DenseConfig(**{"input_shape": (D_IN,), "n_latents": N, "aux_k": 32, **config}),
        build_sparsity(sparsity, **params.get(sparsity, {})),
        preprocess,
    )
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        if sparsity == "jumprelu":
            model.sparsity.log_threshold.copy_(torch.empty(N).uniform_(0.05, 0.8, generator=g).log())
        if sparsity == "batchtopk":
            model.sparsity.threshold.fill_(0.4)
    if preprocess:
        model.preprocess.fit(raw_inputs(512, seed + 1))
    return model.eval()


def assert_same(sae, model: DenseAutoencoder, x: torch.Tensor) -> None:
    with torch.no_grad():
        code = model.encode(x)
        torch.testing.assert_close(sae.encode(x), code, atol=ATOL, rtol=1e-5)
        decoded = model.preprocess.inverse(model.decode(code), x)  # in the raw inputs' units, as SAELens decodes
        torch.testing.assert_close(sae.decode(code), decoded.reshape(len(x), -1), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(sae(x), model.reconstruct(x).reshape(len(x), -1), atol=1e-4, rtol=1e-4)
    assert (code != 0).any() and (code == 0).any()  # the comparison saw both active and inactive latents


# --- without sae_lens: the files themselves -----------------------------------------------------


def test_export_writes_the_saelens_layout(tmp_path: Path):
    export_saelens(dense("jumprelu"), tmp_path / "sae", hook_name="blocks.3.hook_resid_post", model_name="gpt2")
    cfg = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    assert cfg["architecture"] == "jumprelu" and (cfg["d_in"], cfg["d_sae"]) == (D_IN, N)
    assert cfg["apply_b_dec_to_input"] is True and cfg["normalize_activations"] == "none"
    assert cfg["metadata"]["hook_name"] == "blocks.3.hook_resid_post" and cfg["metadata"]["model_name"] == "gpt2"
    with safe_open(tmp_path / "sae" / WEIGHTS_FILE, framework="pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    assert shapes == {"W_enc": (D_IN, N), "b_enc": (N,), "W_dec": (N, D_IN), "b_dec": (D_IN,), "threshold": (N,)}


@pytest.mark.parametrize("sparsity", ["l1", "none", "wta", "topk", "jumprelu", "batchtopk"])
@pytest.mark.parametrize("preprocess", [(), ("standardize", "zca"), ("norm",)])
def test_round_trip_keeps_codes_reconstructions_and_settings(tmp_path: Path, sparsity: str, preprocess: tuple[str, ...]):
    model = dense(sparsity, preprocess, pre_bias="none" if sparsity == "l1" else "mean")
    back = import_saelens(export_saelens(model, tmp_path / "sae"))
    x = raw_inputs()
    with torch.no_grad():
        torch.testing.assert_close(back.encode(x), model.encode(x), atol=ATOL, rtol=1e-5)
        torch.testing.assert_close(back.reconstruct(x), model.reconstruct(x), atol=1e-4, rtol=1e-4)
    assert back.sparsity.name == sparsity and back.sparsity.get_params() == model.sparsity.get_params()
    assert back.config.aux_k == 32 and back.config.pre_bias == model.config.pre_bias and not back.preprocess.steps
    save_model(back, tmp_path / "sparseae")  # an ordinary sparseae model from here on
    assert load(tmp_path / "sparseae").sparsity.name == sparsity


def test_export_refuses_a_sparseae_model_directory(tmp_path: Path):
    model = dense("topk")
    save_model(model, tmp_path)
    with pytest.raises(SparseAEError, match="export would overwrite"):
        export_saelens(model, tmp_path)
    with pytest.raises(SparseAEError, match="a sparseae model config.*sparseae.load"):
        (tmp_path / WEIGHTS_FILE).write_bytes((tmp_path / "model.safetensors").read_bytes())
        import_saelens(tmp_path)


def test_export_refuses_what_saelens_cannot_represent(tmp_path: Path):
    conv = ConvAutoencoder(ConvConfig(), build_sparsity("l1"))
    with pytest.raises(SparseAEError, match="a dense model.*got a ConvAutoencoder"):
        export_saelens(conv, tmp_path)
    with pytest.raises(SparseAEError, match="output_activation='sigmoid'"):
        export_saelens(dense("l1", output_activation="sigmoid"), tmp_path)
    with pytest.raises(SparseAEError, match="a constraint SAELens has: .*got 'kl'"):
        export_saelens(dense("kl"), tmp_path)
    with pytest.raises(SparseAEError, match="cannot apply center"):
        export_saelens(dense("topk", ("center", "norm")), tmp_path)
    with pytest.raises(SparseAEError, match="hook_name: expected a string"):
        export_saelens(dense("topk"), tmp_path, hook_name=3)
    assert not (tmp_path / "cfg.json").exists()


def write_saelens(directory: Path, cfg: dict, tensors: dict[str, torch.Tensor]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "cfg.json").write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in tensors.items()}, directory / WEIGHTS_FILE)
    return directory


def plain_tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = {"W_enc": (D_IN, N), "b_enc": (N,), "W_dec": (N, D_IN), "b_dec": (D_IN,)}
    return {k: torch.randn(s, generator=g) * 0.5 for k, s in shapes.items()}


CFG6 = {
    "d_in": D_IN,
    "d_sae": N,
    "dtype": "float32",
    "device": "cpu",
    "apply_b_dec_to_input": True,
    "metadata": {"sae_lens_version": "6.1.0"},
}


def test_import_matches_the_saelens_forward_pass_by_hand(tmp_path: Path):
    t = plain_tensors()
    t["threshold"] = torch.rand(N) * 0.5
    t["threshold"][:4], t["threshold"][4:8] = 0.0, -0.2  # <= 0: every positive pre-activation passes
    model = import_saelens(write_saelens(tmp_path, {**CFG6, "architecture": "jumprelu"}, t))
    x = raw_inputs()
    pre = (x - t["b_dec"]) @ t["W_enc"] + t["b_enc"]
    code = torch.relu(pre) * (pre > t["threshold"])
    torch.testing.assert_close(model.encode(x), code, atol=ATOL, rtol=1e-5)
    torch.testing.assert_close(model.reconstruct(x), code @ t["W_dec"] + t["b_dec"], atol=ATOL, rtol=1e-5)


def test_import_reads_the_pre_6_layout_and_its_code_scale(tmp_path: Path):
    t = plain_tensors()
    t["scaling_factor"] = torch.rand(N) + 0.5
    old = {
        "d_in": D_IN,
        "d_sae": N,
        "dtype": "torch.float32",
        "hook_point": "blocks.2.hook_resid_pre",
        "activation_fn_str": "topk",
        "activation_fn_kwargs": {"k": 6},
        "apply_b_dec_to_input": False,
        "normalize_activations": False,
        "finetuning_scaling_factor": True,
        "sae_lens_training_version": "3.5.0",
    }
    model = import_saelens(write_saelens(tmp_path, old, t))
    assert model.sparsity.name == "topk" and model.sparsity.k == 6 and model.config.pre_bias == "none"
    x = raw_inputs()
    pre = x @ t["W_enc"] + t["b_enc"]
    values, indices = pre.topk(6, dim=-1)
    code = torch.zeros_like(pre).scatter(-1, indices, values.relu())
    torch.testing.assert_close(model.encode(x), code, atol=ATOL, rtol=1e-5)
    torch.testing.assert_close(model.reconstruct(x), (code * t["scaling_factor"]) @ t["W_dec"] + t["b_dec"], atol=ATOL, rtol=1e-5)


def test_import_refuses_what_sparseae_cannot_represent(tmp_path: Path):
    with pytest.raises(SparseAEError, match="no cfg.json and sae_weights.safetensors.*SAE.from_pretrained"):
        import_saelens(tmp_path)
    with pytest.raises(SparseAEError, match="architecture: expected one sparseae can represent.*got 'gated'"):
        import_saelens(write_saelens(tmp_path / "gated", {**CFG6, "architecture": "gated"}, plain_tensors()))
    with pytest.raises(SparseAEError, match="got 'layer_norm'.*per-input normalisation"):
        import_saelens(
            write_saelens(
                tmp_path / "ln", {**CFG6, "architecture": "standard", "normalize_activations": "layer_norm"}, plain_tensors()
            )
        )
    scaled = write_saelens(
        tmp_path / "avg",
        {**CFG6, "architecture": "standard", "normalize_activations": "expected_average_only_in"},
        plain_tensors(),
    )
    with pytest.raises(SparseAEError, match="norm_scaling_factor: .*pretrained_saes.yaml"):
        import_saelens(scaled)
    with pytest.raises(SparseAEError, match="norm_scaling_factor: expected None"):
        import_saelens(
            write_saelens(tmp_path / "plain", {**CFG6, "architecture": "standard"}, plain_tensors()), norm_scaling_factor=2.0
        )
    with pytest.raises(SparseAEError, match="also b_gate"):
        import_saelens(
            write_saelens(tmp_path / "extra", {**CFG6, "architecture": "standard"}, {**plain_tensors(), "b_gate": torch.zeros(N)})
        )
    with pytest.raises(SparseAEError, match=r"W_enc \(d_in, d_sae\) = \(16, 32\) per cfg.json"):
        import_saelens(write_saelens(tmp_path / "shape", {**CFG6, "d_sae": 32, "architecture": "standard"}, plain_tensors()))
    with pytest.raises(SparseAEError, match="activation_fn: expected relu or topk.*got 'tanh-relu'"):
        import_saelens(
            write_saelens(tmp_path / "tanh", {"d_in": D_IN, "d_sae": N, "activation_fn_str": "tanh-relu"}, plain_tensors())
        )
    batch = {**plain_tensors(), "topk_threshold": torch.tensor(0.2, dtype=torch.float64)}
    with pytest.raises(SparseAEError, match="k: expected a whole number.*save_inference_model"):
        import_saelens(write_saelens(tmp_path / "btk", {**CFG6, "architecture": "batchtopk", "k": 7.5}, batch))


# --- with the real sae_lens ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def sae_lens():
    return pytest.importorskip("sae_lens")


@pytest.mark.parametrize("sparsity", ["l1", "none", "wta", "topk", "jumprelu", "batchtopk"])
@pytest.mark.parametrize("preprocess", [(), ("norm",), ("standardize", "zca")])
def test_exported_model_loads_in_saelens_and_agrees(tmp_path: Path, sae_lens, sparsity: str, preprocess: tuple[str, ...]):
    model = dense(sparsity, preprocess, pre_bias="none" if sparsity == "none" else "median")
    export_saelens(model, tmp_path, hook_name="blocks.0.hook_resid_post", model_name="tiny")
    sae = sae_lens.SAE.load_from_disk(tmp_path)
    expected = {"topk": "TopKSAE", "jumprelu": "JumpReLUSAE", "batchtopk": "JumpReLUSAE"}.get(sparsity, "StandardSAE")
    assert type(sae).__name__ == expected
    assert sae.cfg.metadata.hook_name == "blocks.0.hook_resid_post"
    assert_same(sae, model, raw_inputs())


def test_topk_exports_its_encode_time_k(tmp_path: Path, sae_lens):
    model = DenseAutoencoder(DenseConfig(input_shape=(D_IN,), n_latents=N), build_sparsity("topk", k=4, alpha=2.0)).eval()
    export_saelens(model, tmp_path)
    sae = sae_lens.SAE.load_from_disk(tmp_path)
    assert sae.cfg.k == 8
    assert_same(sae, model, raw_inputs())


SAELENS_SAES = {
    "standard": ("StandardSAE", "StandardSAEConfig", {}),
    "topk": ("TopKSAE", "TopKSAEConfig", {"k": 7}),
    "jumprelu": ("JumpReLUSAE", "JumpReLUSAEConfig", {}),
}


@pytest.mark.parametrize("architecture", list(SAELENS_SAES))
@pytest.mark.parametrize("apply_b_dec_to_input", [True, False])
def test_saelens_saved_sae_imports_and_agrees(tmp_path: Path, sae_lens, architecture: str, apply_b_dec_to_input: bool):
    cls, cfg_cls, extra = SAELENS_SAES[architecture]
    cfg = getattr(sae_lens, cfg_cls)(d_in=D_IN, d_sae=N, apply_b_dec_to_input=apply_b_dec_to_input, **extra)
    sae = randomize(getattr(sae_lens, cls)(cfg))
    if architecture == "jumprelu":
        with torch.no_grad():
            sae.threshold.uniform_(0.0, 0.6)
    sae.save_model(tmp_path)
    model = import_saelens(tmp_path)
    assert model.sparsity.name == {"standard": "l1"}.get(architecture, architecture)
    assert_same(sae, model, raw_inputs())


@pytest.mark.parametrize("architecture", ["standard", "topk", "jumprelu", "batchtopk"])
def test_saelens_training_checkpoints_import_and_agree(tmp_path: Path, sae_lens, architecture: str):
    """Training SAEs save their own config fields (and, for topk, unfolded decoder norms); batchtopk keeps its threshold."""
    training = {
        "standard": ("StandardTrainingSAE", "StandardTrainingSAEConfig", {"l1_coefficient": 2.5}),
        "topk": ("TopKTrainingSAE", "TopKTrainingSAEConfig", {"k": 5, "rescale_acts_by_decoder_norm": True}),
        "jumprelu": ("JumpReLUTrainingSAE", "JumpReLUTrainingSAEConfig", {"jumprelu_bandwidth": 0.02, "l0_coefficient": 4.0}),
        "batchtopk": ("BatchTopKTrainingSAE", "BatchTopKTrainingSAEConfig", {"k": 5, "rescale_acts_by_decoder_norm": True}),
    }[architecture]
    cls, cfg_cls, fields = training
    sae = randomize(getattr(sae_lens, cls)(getattr(sae_lens, cfg_cls)(d_in=D_IN, d_sae=N, **fields)))
    with torch.no_grad():
        if architecture == "jumprelu":
            sae.threshold.uniform_(0.0, 0.6)
        if architecture == "batchtopk":
            sae.topk_threshold.fill_(0.3)
    sae.save_model(tmp_path / "checkpoint")
    model = import_saelens(tmp_path / "checkpoint")
    params = model.sparsity.get_params()
    if architecture == "standard":
        assert params == {"weight": 2.5}
    if architecture == "jumprelu":
        assert (params["bandwidth"], params["l0_coef"]) == (0.02, 4.0)
    # SAELens's inference form of the same SAE (norms folded; batchtopk written as a JumpReLU) is the reference.
    sae.save_inference_model(tmp_path / "inference")
    reference = sae_lens.SAE.load_from_disk(tmp_path / "inference")
    assert_same(reference, model, raw_inputs())
    assert_same(reference, import_saelens(tmp_path / "inference"), raw_inputs())


def test_saelens_input_scaling_is_folded_in(tmp_path: Path, sae_lens):
    """A checkpoint that still scales and whitens its inputs, with SAELens's own folding as the reference."""
    from sae_lens.training.activation_scaler import ActivationScaler, ActivationWhitening

    x = raw_inputs()
    for mode in ("expected_average_only_in", "covariance_whitening"):
        sae = randomize(sae_lens.StandardSAE(sae_lens.StandardSAEConfig(d_in=D_IN, d_sae=N, normalize_activations=mode)))
        sae.save_model(tmp_path / mode)
        scaler = ActivationScaler(scaling_factor=0.37 if mode == "expected_average_only_in" else None)
        if mode == "covariance_whitening":
            matrix = torch.randn(D_IN, D_IN, dtype=torch.float64) + 4 * torch.eye(D_IN, dtype=torch.float64)
            scaler.whitening = ActivationWhitening(x.mean(0).double(), matrix, torch.linalg.inv(matrix))
            sae.fold_activation_whitening(scaler.whitening.mean, matrix, scaler.whitening.inverse_matrix)
        else:
            sae.fold_activation_norm_scaling_factor(0.37)
        scaler.save(str(tmp_path / mode / "activation_scaler.json"))
        assert_same(sae, import_saelens(tmp_path / mode), x)
    # A pretrained SAE's factor comes from SAELens's pretrained_saes.yaml, passed by hand.
    (tmp_path / "expected_average_only_in" / "activation_scaler.json").unlink()
    model = import_saelens(tmp_path / "expected_average_only_in", norm_scaling_factor=0.37)
    assert_same(sae_lens_folded(sae_lens, tmp_path / "expected_average_only_in", 0.37), model, x)


def sae_lens_folded(sae_lens, directory: Path, factor: float):
    sae = sae_lens.SAE.load_from_disk(directory)
    sae.fold_activation_norm_scaling_factor(factor)
    return sae


def test_pre_6_file_loads_alike_in_both(tmp_path: Path, sae_lens):
    t = plain_tensors(5)
    old = {
        "d_in": D_IN,
        "d_sae": N,
        "dtype": "float32",
        "model_name": "gpt2-small",
        "hook_point": "blocks.4.hook_resid_pre",
        "hook_point_layer": 4,
        "activation_fn_str": "topk",
        "activation_fn_kwargs": {"k": 9},
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "neuronpedia_id": "gpt2-small/4-res",
    }
    write_saelens(tmp_path, old, t)
    sae = sae_lens.SAE.load_from_disk(tmp_path)
    assert type(sae).__name__ == "TopKSAE" and sae.cfg.metadata.hook_name == "blocks.4.hook_resid_pre"
    assert_same(sae, import_saelens(tmp_path), raw_inputs())


def test_bfloat16_saelens_sae_imports_as_float32(tmp_path: Path, sae_lens):
    sae = randomize(sae_lens.TopKSAE(sae_lens.TopKSAEConfig(d_in=D_IN, d_sae=N, k=6, dtype="bfloat16")))
    sae.save_model(tmp_path)
    model = import_saelens(tmp_path)
    assert model.W_dec.dtype == torch.float32
    x = raw_inputs().bfloat16().float()
    with torch.no_grad():
        # bfloat16 arithmetic rounds each step: compare SAELens's float32 copy of the same weights.
        sae32 = sae.to(dtype=torch.float32)
        assert_same(sae32, model, x)
    assert model.sparsity.k == 6


def test_hook_z_sae_imports_with_flattened_heads(tmp_path: Path, sae_lens):
    """SAELens flattens (n_heads, d_head) itself; sparseae's dense model flattens every input, so codes agree."""
    cfg = sae_lens.StandardSAEConfig(d_in=D_IN, d_sae=N, reshape_activations="hook_z")
    cfg.metadata.hook_name = "blocks.0.attn.hook_z"
    sae = randomize(sae_lens.StandardSAE(cfg))
    sae.save_model(tmp_path)
    model = import_saelens(tmp_path)
    x = raw_inputs().view(-1, 4, 4)  # (B, n_heads, d_head)
    with torch.no_grad():
        torch.testing.assert_close(sae.encode(x), model.encode(x), atol=ATOL, rtol=1e-5)
        torch.testing.assert_close(sae(x).flatten(1), model.reconstruct(x), atol=1e-4, rtol=1e-4)
