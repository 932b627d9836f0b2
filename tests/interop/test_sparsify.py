"""sparsify interop: sparseae models load in the real eai-sparsify package and encode alike, and back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from sae_inputs import D_IN, randomize, raw_inputs
from safetensors.torch import save_file

from sparseae import SparseAEError, load, save_model
from sparseae.interop import export_saelens, export_sparsify, import_sparsify
from sparseae.interop.sparsify import METADATA_KEY, WEIGHTS_FILE
from sparseae.models import ConvAutoencoder, ConvConfig, DenseAutoencoder, DenseConfig
from sparseae.sparsity import build_sparsity

N = 64
ATOL = 1e-5


def dense(preprocess: tuple[str, ...] = (), seed: int = 0, sparsity: str = "topk", **config) -> DenseAutoencoder:
    """A tiny TopK model with a trained-looking random state: no tied weights, no unit norms, nonzero biases."""
    params = {"topk": {"k": 8}, "l1": {"weight": 3e-3}}.get(sparsity, {})
    model = DenseAutoencoder(
        DenseConfig(**{"input_shape": (D_IN,), "n_latents": N, "aux_k": 32, **config}),
        build_sparsity(sparsity, **params),
        preprocess,
    )
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    if preprocess:
        model.preprocess.fit(raw_inputs(512, seed + 1))
    return model.eval()


def assert_same(sae, model: DenseAutoencoder, x: torch.Tensor) -> None:
    """sparsify's top-k latents (indices and activations) and reconstruction are sparseae's.

    Reconstructions agree to 1e-5 too, except where preprocessing was folded into the weights: undoing
    zca in float32 cancels terms of size 10 into values near 0 (2.7e-5 apart at worst here), so those
    get SAELens's tolerance, 1e-4.
    """
    recon_tol = 1e-4 if model.preprocess.steps else ATOL
    with torch.no_grad():
        acts, indices, _ = sae.encode(x)  # (B, k) each
        code = model.encode(x)  # (B, n)
        torch.testing.assert_close(torch.zeros_like(code).scatter(-1, indices, acts), code, atol=ATOL, rtol=ATOL)
        # The same latents fire; where fewer than k pre-activations are positive, sparsify's other picks are zeros.
        fired = torch.zeros_like(code, dtype=torch.bool).scatter(-1, indices, acts > 0)
        assert torch.equal(fired, code > 0)
        torch.testing.assert_close(torch.gather(code, -1, indices), acts, atol=ATOL, rtol=ATOL)
        torch.testing.assert_close(sae.decode(acts, indices), model.reconstruct(x), atol=recon_tol, rtol=recon_tol)
    assert fired.any() and (~fired).any()


# --- without sparsify: the files themselves -----------------------------------------------------


def test_export_writes_the_sparsify_layout(tmp_path: Path):
    model = dense()
    folder = export_sparsify(model, tmp_path / "run", hookpoint="layers.3")
    assert folder == tmp_path / "run" / "layers.3"
    cfg = json.loads((folder / "cfg.json").read_text())
    assert cfg == {
        "activation": "topk",
        "expansion_factor": 4,
        "normalize_decoder": True,
        "num_latents": N,
        "k": 8,
        "multi_topk": False,
        "skip_connection": False,
        "transcode": False,
        "d_in": D_IN,
    }
    from safetensors import safe_open

    with safe_open(folder / WEIGHTS_FILE, framework="pt") as f:
        assert torch.equal(f.get_tensor("W_dec"), model.W_dec.T) and torch.equal(f.get_tensor("b_dec"), model.b_pre)
        assert json.loads(f.metadata()[METADATA_KEY])["sparsity"] == {"name": "topk", "params": {"k": 8, "alpha": 1.0}}


def test_round_trip_is_exact(tmp_path: Path):
    model = DenseAutoencoder(
        DenseConfig(
            input_shape=(4, 4),
            n_latents=N,
            pre_bias="mean",
            aux_k=16,
            aux_fraction=0.5,
            dead_window=None,
            unit_norm_decoder=False,
            tied_init=False,
            fit_encoder_scale=False,
        ),  # fmt: skip
        build_sparsity("topk", k=4, alpha=2.0),
    )
    back = import_sparsify(export_sparsify(model, tmp_path / "sae"))
    assert back.describe() == model.describe() and not back.training
    state = back.state_dict()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    save_model(back, tmp_path / "sparseae")  # an ordinary sparseae model from here on
    assert load(tmp_path / "sparseae").describe() == model.describe()


@pytest.mark.parametrize("preprocess", [(), ("norm",), ("standardize", "zca")])
def test_round_trip_folds_preprocessing_and_a_decoder_bias(tmp_path: Path, preprocess: tuple[str, ...]):
    model = dense(preprocess, pre_bias="none")
    back = import_sparsify(export_sparsify(model, tmp_path / "sae"))
    x = raw_inputs()
    with torch.no_grad():
        torch.testing.assert_close(back.encode(x), model.encode(x), atol=ATOL, rtol=ATOL)
        torch.testing.assert_close(back.reconstruct(x), model.reconstruct(x), atol=1e-4, rtol=1e-4)
    assert back.config.pre_bias == "zeros" and not back.preprocess.steps  # sparsify always subtracts b_dec
    assert back.config.aux_k == 32 and back.sparsity.get_params() == model.sparsity.get_params()


def test_export_refuses_what_sparsify_cannot_represent(tmp_path: Path):
    with pytest.raises(SparseAEError, match="a dense model.*got a ConvAutoencoder"):
        export_sparsify(ConvAutoencoder(ConvConfig(), build_sparsity("topk", k=8)), tmp_path)
    with pytest.raises(SparseAEError, match="expected the topk constraint.*got 'l1'.*--format saelens"):
        export_sparsify(dense(sparsity="l1"), tmp_path)
    with pytest.raises(SparseAEError, match="output_activation='sigmoid'"):
        export_sparsify(dense(output_activation="sigmoid"), tmp_path)
    with pytest.raises(SparseAEError, match="sparsify cannot apply center"):
        export_sparsify(dense(("center", "norm")), tmp_path)
    with pytest.raises(SparseAEError, match="hookpoint: expected a module name.*got '../up'"):
        export_sparsify(dense(), tmp_path, hookpoint="../up")
    save_model(dense(), tmp_path / "model")
    with pytest.raises(SparseAEError, match=r"got a folder holding a sparseae model \(model.safetensors\).*never overwrite"):
        export_sparsify(dense(), tmp_path / "model")
    export_sparsify(dense(), tmp_path, hookpoint="layers.0")
    with pytest.raises(SparseAEError, match="expected a new or empty folder.*got a file or a folder with files"):
        export_sparsify(dense(), tmp_path, hookpoint="layers.0")
    with pytest.raises(SparseAEError, match="expected a path in a directory, got a path inside a file"):
        export_sparsify(dense(), tmp_path / "layers.0" / "cfg.json", hookpoint="layers.1")


def write_sparsify(folder: Path, cfg: dict, tensors: dict[str, torch.Tensor]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cfg.json").write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in tensors.items()}, folder / WEIGHTS_FILE)
    return folder


def plain_tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = {"encoder.weight": (N, D_IN), "encoder.bias": (N,), "W_dec": (N, D_IN), "b_dec": (D_IN,)}
    return {k: torch.randn(s, generator=g) * 0.5 for k, s in shapes.items()}


CFG = {"activation": "topk", "num_latents": N, "k": 6, "d_in": D_IN}


def test_import_matches_the_sparsify_forward_pass_by_hand(tmp_path: Path):
    t = plain_tensors()
    model = import_sparsify(write_sparsify(tmp_path, CFG, t))
    x = raw_inputs()
    pre = torch.relu((x - t["b_dec"]) @ t["encoder.weight"].T + t["encoder.bias"])
    values, indices = pre.topk(6, dim=-1)
    code = torch.zeros_like(pre).scatter(-1, indices, values)
    torch.testing.assert_close(model.encode(x), code, atol=ATOL, rtol=ATOL)
    torch.testing.assert_close(model.reconstruct(x), code @ t["W_dec"] + t["b_dec"], atol=ATOL, rtol=ATOL)
    assert model.config.pre_bias == "zeros" and not model.config.unit_norm_decoder  # its rows are not unit norm


def test_import_refuses_what_sparseae_cannot_represent(tmp_path: Path):
    with pytest.raises(SparseAEError, match="no cfg.json and sae.safetensors in it.*folder of one hookpoint"):
        import_sparsify(tmp_path)
    with pytest.raises(SparseAEError, match="activation: expected 'topk'.*got 'groupmax'"):
        import_sparsify(write_sparsify(tmp_path / "groupmax", {**CFG, "activation": "groupmax"}, plain_tensors()))
    with pytest.raises(SparseAEError, match="transcode: .*a transcoder, which predicts another module's output"):
        import_sparsify(write_sparsify(tmp_path / "transcoder", {**CFG, "transcode": True}, plain_tensors()))
    skip = {**plain_tensors(), "W_skip": torch.eye(D_IN)}
    with pytest.raises(SparseAEError, match="W_skip: expected no skip connection.*--skip_connection"):
        import_sparsify(write_sparsify(tmp_path / "skip", {**CFG, "skip_connection": True}, skip))
    with pytest.raises(SparseAEError, match="got no W_dec.*saved this SAE without its decoder"):
        import_sparsify(write_sparsify(tmp_path / "encoder", CFG, {k: v for k, v in plain_tensors().items() if k != "W_dec"}))
    with pytest.raises(SparseAEError, match=r"got W_dec \(32, 16\)\. The weights and cfg.json do not belong together"):
        import_sparsify(write_sparsify(tmp_path / "shape", CFG, {**plain_tensors(), "W_dec": torch.zeros(32, D_IN)}))
    with pytest.raises(SparseAEError, match="got d_in 20 in cfg.json"):
        import_sparsify(write_sparsify(tmp_path / "d_in", {**CFG, "d_in": 20}, plain_tensors()))
    with pytest.raises(SparseAEError, match=r"k: expected a whole number from 1 to num_latents \(64\), got 65"):
        import_sparsify(write_sparsify(tmp_path / "k", {**CFG, "k": 65}, plain_tensors()))
    save_model(dense(), tmp_path / "sparseae")
    (tmp_path / "sparseae" / WEIGHTS_FILE).write_bytes((tmp_path / "sparseae" / "model.safetensors").read_bytes())
    with pytest.raises(SparseAEError, match="got a sparseae model config.*sparseae.load"):
        import_sparsify(tmp_path / "sparseae")
    with pytest.raises(SparseAEError, match="got a SAELens SAE folder.*import_saelens"):
        import_sparsify(export_saelens(dense(), tmp_path / "saelens"))


def test_a_zero_skip_connection_imports(tmp_path: Path):
    t = plain_tensors()
    model = import_sparsify(write_sparsify(tmp_path, {**CFG, "skip_connection": True}, {**t, "W_skip": torch.zeros(D_IN, D_IN)}))
    assert torch.equal(model.W_dec.T, t["W_dec"])


def test_the_folder_of_several_hookpoints_lists_them(tmp_path: Path):
    for i, hookpoint in enumerate(["layers.0", "layers.1", "layers.10/seed0", "layers.10/seed1"]):
        export_sparsify(dense(seed=i), tmp_path / "run", hookpoint=hookpoint)
    (tmp_path / "run" / "config.json").write_text("{}")  # sparsify's trainer keeps its settings beside the SAEs
    with pytest.raises(SparseAEError, match="got a folder of 4 hookpoints: layers.0, layers.1, layers.10/seed0, layers.10/seed1"):
        import_sparsify(tmp_path / "run")
    x = raw_inputs()
    with torch.no_grad():
        torch.testing.assert_close(import_sparsify(tmp_path / "run" / "layers.1").encode(x), dense(seed=1).encode(x))
    with pytest.raises(SparseAEError, match=r"import_sparsify\('.*/run/layers.0'\)"):
        import_sparsify(tmp_path / "run")


def test_sparseae_load_points_a_sparsify_folder_to_import_sparsify(tmp_path: Path):
    folder = export_sparsify(dense(), tmp_path / "sae")
    with pytest.raises(SparseAEError, match="got a sparsify SAE folder.*import_sparsify"):
        load(folder)


# --- with the real sparsify ---------------------------------------------------------------------


@pytest.mark.parametrize("preprocess", [(), ("norm",), ("standardize", "zca")])
@pytest.mark.parametrize("pre_bias", ["median", "none"])
def test_exported_model_loads_in_sparsify_and_agrees(tmp_path: Path, sparsify, preprocess: tuple[str, ...], pre_bias: str):
    model = dense(preprocess, pre_bias=pre_bias)
    sae = sparsify.Sae.load_from_disk(export_sparsify(model, tmp_path))
    assert (sae.num_latents, sae.cfg.k, sae.W_skip) == (N, 8, None)
    assert_same(sae, model, raw_inputs())


def test_topk_exports_its_encode_time_k(tmp_path: Path, sparsify):
    model = DenseAutoencoder(DenseConfig(input_shape=(D_IN,), n_latents=N), build_sparsity("topk", k=4, alpha=2.0)).eval()
    sae = sparsify.Sae.load_from_disk(export_sparsify(model, tmp_path))
    assert sae.cfg.k == 8
    assert_same(sae, model, raw_inputs())


def test_exported_hookpoints_load_with_load_many(tmp_path: Path, sparsify):
    models = {f"layers.{i}": dense(seed=i) for i in range(3)}
    for hookpoint, model in models.items():
        export_sparsify(model, tmp_path, hookpoint=hookpoint)
    saes = sparsify.Sae.load_many(str(tmp_path), local=True)
    assert list(saes) == list(models)
    for hookpoint, sae in saes.items():
        assert_same(sae, models[hookpoint], raw_inputs())


@pytest.mark.parametrize(
    "settings",
    [
        {"num_latents": N, "k": 7},
        {"num_latents": N, "k": 7, "normalize_decoder": False, "multi_topk": True},
        {"expansion_factor": 4, "k": 5},  # num_latents 0: d_in * expansion_factor
    ],
)
def test_sparsify_saved_sae_imports_and_agrees(tmp_path: Path, sparsify, settings: dict):
    sae = randomize(sparsify.Sae(D_IN, sparsify.SaeConfig(**settings)))
    if settings.get("normalize_decoder", True):
        sae.set_decoder_norm_to_unit_norm()
    sae.save_to_disk(tmp_path)
    model = import_sparsify(tmp_path)
    assert model.sparsity.name == "topk" and model.sparsity.k == settings["k"] and model.n_latents == N
    assert model.config.unit_norm_decoder == settings.get("normalize_decoder", True)
    assert_same(sae, model, raw_inputs())


def test_sparsify_hookpoint_folders_import_one_by_one(tmp_path: Path, sparsify):
    saes = {
        name: randomize(sparsify.Sae(D_IN, sparsify.SaeConfig(num_latents=N, k=6)), seed)
        for seed, name in enumerate(["h.0", "h.1"])
    }
    for name, sae in saes.items():
        sae.save_to_disk(tmp_path / name)  # as sparsify's trainer saves each hookpoint
    with pytest.raises(SparseAEError, match="got a folder of 2 hookpoints: h.0, h.1"):
        import_sparsify(tmp_path)
    for name, sae in saes.items():
        assert_same(sae, import_sparsify(tmp_path / name), raw_inputs())


def test_sparsify_transcoder_and_encoder_only_saes_are_refused(tmp_path: Path, sparsify):
    sparsify.Sae(D_IN, sparsify.TranscoderConfig(num_latents=N, k=4)).save_to_disk(tmp_path / "transcoder")
    with pytest.raises(SparseAEError, match="transcode: expected false"):
        import_sparsify(tmp_path / "transcoder")
    sparsify.Sae(D_IN, sparsify.SaeConfig(num_latents=N, k=4), decoder=False).save_to_disk(tmp_path / "encoder")
    with pytest.raises(SparseAEError, match="no W_dec"):
        import_sparsify(tmp_path / "encoder")


def test_round_trip_through_sparsify_itself(tmp_path: Path, sparsify):
    """sparseae -> files -> sparsify loads and saves them again -> sparseae: the same model."""
    model = dense()
    sparsify.Sae.load_from_disk(export_sparsify(model, tmp_path / "out")).save_to_disk(tmp_path / "again")
    back = import_sparsify(tmp_path / "again")
    state = back.state_dict()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items() if k != "samples_since_fired")
    assert back.sparsity.k == 8


def test_cli_exports_to_sparsify(tmp_path: Path, capsys):
    from sparseae.cli import main

    model = dense()
    save_model(model, tmp_path / "model")
    out = tmp_path / "to-sparsify"
    assert main(["export", str(tmp_path / "model"), "--format", "sparsify", "--out", str(out), "--hook-name", "layers.6"]) == 0
    assert capsys.readouterr().out.strip() == f"sparsify: {out / 'layers.6'}"
    x = raw_inputs()
    with torch.no_grad():
        assert torch.equal(import_sparsify(out / "layers.6").encode(x), model.encode(x))
    save_model(dense(sparsity="l1"), tmp_path / "l1")
    assert main(["export", str(tmp_path / "l1"), "--format", "sparsify", "--out", str(tmp_path / "no")]) == 2
    assert "expected the topk constraint" in capsys.readouterr().err
