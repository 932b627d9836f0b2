"""Input preprocessing: each step by hand-computed values, inverses, and models that keep it through save and load."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import sparseae
from sparseae import SparseAEError, TrainConfig, build_preset
from sparseae.cli import main
from sparseae.preprocess import STEPS, ZCA_EPS, Preprocessing, parse_steps
from sparseae.sparsity import build_sparsity

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def fitted(steps: str, x: torch.Tensor) -> Preprocessing:
    return Preprocessing(steps, tuple(x.shape[1:])).fit(x)


def t(rows: list) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def correlated(n: int = 400, d: int = 6, seed: int = 0) -> torch.Tensor:
    """Rows with correlated features of very different scales and offsets, float64 ``(n, d)``."""
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(d, d, generator=g, dtype=torch.float64)
    scales = torch.logspace(-1, 2, d, dtype=torch.float64)
    return torch.randn(n, d, generator=g, dtype=torch.float64) @ mixing * scales + torch.arange(d) * 10.0


def structured_raw(n: int = 600, d: int = 16, seed: int = 0) -> torch.Tensor:
    """Sparse combinations of a few atoms, in raw units far from the SAE's (scale 50, offset 10), float32."""
    g = torch.Generator().manual_seed(seed)
    atoms = torch.nn.functional.normalize(torch.randn(8, d, generator=g), dim=1)
    codes = torch.rand(n, 8, generator=g) * (torch.rand(n, 8, generator=g) < 0.3)
    return 50 * (codes @ atoms + 0.01 * torch.randn(n, d, generator=g)) + 10


# --- each step by hand --------------------------------------------------------------------


def test_center_removes_each_rows_own_mean():
    x = t([[1, 2, 3], [4, 4, 4], [0, 0, 6]])
    out = fitted("center", x)(x)
    assert torch.allclose(out, t([[-1, 0, 1], [0, 0, 0], [-2, -2, 4]]))
    assert torch.allclose(out.mean(1), torch.zeros(3, dtype=torch.float64))


def test_standardize_uses_the_training_mean_and_std_and_leaves_a_constant_column_unscaled():
    x = t([[1, 2, 5], [3, 2, 7], [5, 2, 9]])  # means 3, 2, 7; sample stds 2, 0, 2
    pre = fitted("standardize", x)
    assert torch.allclose(pre.mean, torch.tensor([3.0, 2.0, 7.0])) and torch.allclose(pre.std, torch.tensor([2.0, 1.0, 2.0]))
    out = pre(x)
    assert torch.allclose(out, t([[-1, 0, -1], [0, 0, 0], [1, 0, 1]]))
    assert torch.allclose(out.mean(0), torch.zeros(3, dtype=torch.float64))
    assert torch.allclose(out.std(0), t([1, 0, 1]))  # the constant column stays 0, not 0/0
    assert torch.allclose(pre(t([[5, 2, 7]])), t([[1, 0, 0]]))  # new inputs use the fitted values


def test_norm_scales_so_the_mean_squared_norm_is_the_dimension():
    x = t([[3, 4], [0, 0]])  # mean squared norm 12.5, d = 2: scale sqrt(2 / 12.5) = 0.4
    pre = fitted("norm", x)
    assert pre.scale.item() == pytest.approx(0.4)
    out = pre(x)
    assert torch.allclose(out, t([[1.2, 1.6], [0, 0]]))
    assert out.square().sum(1).mean().item() == pytest.approx(2.0)
    wide = correlated(d=6)
    assert fitted("norm", wide)(wide).square().sum(1).mean().item() == pytest.approx(6.0, rel=1e-5)


def test_zca_whitens_as_the_module_docstring_says():
    x = correlated()
    pre = fitted("zca", x)
    centred = x - x.mean(0)
    cov = centred.T @ centred / (len(x) - 1)
    eigvals, eigvecs = torch.linalg.eigh(cov)
    eps = ZCA_EPS * eigvals.mean()
    expected_w = eigvecs @ torch.diag((eigvals + eps).rsqrt()) @ eigvecs.T  # W = U diag(1/sqrt(lambda + eps)) U^T
    assert torch.allclose(pre.whiten.double(), expected_w, rtol=1e-4, atol=1e-6)
    assert torch.allclose(pre.colour.double() @ pre.whiten.double(), torch.eye(6, dtype=torch.float64), atol=1e-4)

    out = pre(x)
    assert torch.allclose(out.mean(0), torch.zeros(6, dtype=torch.float64), atol=1e-4)
    # The covariance of whitened data is U diag(lambda / (lambda + eps)) U^T: the identity, shrunk by the regulariser.
    assert torch.allclose(out.T @ out / (len(x) - 1), eigvecs @ torch.diag(eigvals / (eigvals + eps)) @ eigvecs.T, atol=1e-4)


def test_zca_covariance_is_the_identity_up_to_the_regulariser():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2000, 5, generator=g, dtype=torch.float64) @ (torch.eye(5) + 0.5 * torch.rand(5, 5, generator=g)).double()
    out = fitted("zca", x)(x)
    eigvals = torch.linalg.eigvalsh(torch.cov(x.T))
    eps = ZCA_EPS * eigvals.mean()
    white = torch.linalg.eigvalsh(torch.cov(out.T))
    # Each direction keeps lambda / (lambda + eps) of its variance: at most 1, at least the smallest such share.
    assert torch.allclose(white, (eigvals / (eigvals + eps)).sort().values, atol=1e-4)
    assert (white <= 1).all() and (white > 1 - (eps / (eigvals.min() + eps)) - 1e-4).all()
    assert torch.allclose(torch.cov(out.T), torch.eye(5, dtype=torch.float64), atol=float(eps / (eigvals.min() + eps)) + 1e-4)


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        # standardize -> [[-1,0,-1],[0,0,0],[1,0,1]]; then each row's mean (-2/3, 0, 2/3) removed.
        ("standardize,center", [[-1 / 3, 2 / 3, -1 / 3], [0, 0, 0], [1 / 3, -2 / 3, 1 / 3]]),
        # center -> [[-5/3,-2/3,7/3],[-1,-2,3],[-1/3,-10/3,11/3]]; column means -1,-2,3, stds 2/3,4/3,2/3.
        ("center,standardize", [[-1, 1, -1], [0, 0, 0], [1, -1, 1]]),
        # standardize, then mean squared norm 4/3 scaled to d = 3: factor 1.5.
        ("standardize,norm", [[-1.5, 0, -1.5], [0, 0, 0], [1.5, 0, 1.5]]),
    ],
)
def test_steps_combine_in_the_order_given(steps, expected):
    x = t([[1, 2, 5], [3, 2, 7], [5, 2, 9]])
    assert torch.allclose(fitted(steps, x)(x), t(expected), atol=1e-6)


def test_each_step_is_fitted_on_the_output_of_the_ones_before():
    x = correlated()
    pre = fitted("standardize,zca", x)
    standardized = (x - x.mean(0)) / x.std(0)
    assert torch.allclose(pre.zca_mean.double(), standardized.mean(0), atol=1e-5)  # ~0, not the raw means (0, 10, 20, ...)
    assert torch.allclose(pre(x), fitted("zca", standardized)(standardized), atol=1e-4)


def test_no_steps_is_the_identity():
    x = correlated()
    for steps in (None, "", "none"):
        pre = fitted(steps, x)
        assert pre.steps == () and pre(x) is x and pre.inverse(x, x) is x


# --- inverse --------------------------------------------------------------------------------

COMBINATIONS = [*STEPS, "center,zca", "standardize,zca", "zca,norm", "norm,center", "center,standardize,norm,zca"]


@pytest.mark.parametrize("steps", COMBINATIONS)
def test_inverse_undoes_forward(steps):
    x = correlated().float()  # the dtype of a model's inputs and buffers
    pre = fitted(steps, x)
    assert torch.allclose(pre.inverse(pre(x), x), x, rtol=1e-4, atol=1e-3)
    new = correlated(n=20, seed=1).float()  # inputs the steps were not fitted on
    assert torch.allclose(pre.inverse(pre(new), new), new, rtol=1e-4, atol=1e-3)


def test_inverse_accepts_float64_input_like_forward():
    x = correlated()
    pre = fitted("zca", x)
    assert torch.allclose(pre.inverse(pre(x), x), x, rtol=1e-4, atol=1e-3)


def test_preprocessing_keeps_the_sample_shape():
    images = torch.rand(50, 1, 4, 4)
    pre = fitted("center,zca", images)
    assert pre(images).shape == images.shape and pre.inverse(pre(images), images).shape == images.shape


# --- models that carry their preprocessing ------------------------------------------------------


@pytest.fixture(scope="module", params=["norm", "standardize,zca"])
def trained(request, tmp_path_factory):
    """A dense TopK model with preprocessing ``request.param``, trained briefly into a run directory: (model, data, run)."""
    x = structured_raw()
    data = sparseae.Dataset("raw", x[:540], x[540:])
    model = build_preset("dense", (16,), build_sparsity("topk", k=4), seed=0, preprocess=request.param, n_latents=32)
    run = tmp_path_factory.mktemp("preprocess") / "run"
    config = TrainConfig(epochs=2, batch_size=64, lr=1e-2, optimizer="adam")
    return sparseae.train(model, data, config, run, progress=False).model, data, run


def test_model_keeps_its_fitted_preprocessing_through_save_and_load(trained, tmp_path):
    model, data, run = trained
    steps, raw = ",".join(model.preprocess.steps), data.test
    if steps == "norm":
        assert model.preprocess.scale.item() != 1.0  # fitted, not the initial value
    sparseae.save_model(model, tmp_path / "saved")
    for directory in (run, tmp_path / "saved"):
        loaded = sparseae.load(directory)
        assert loaded.preprocess.steps == tuple(steps.split(","))
        assert json.loads((directory / "cfg.json").read_text())["preprocess"] == steps.split(",")
        for name, buffer in model.preprocess.state_dict().items():
            assert torch.equal(loaded.preprocess.state_dict()[name], buffer), name
        with torch.no_grad():
            assert torch.equal(loaded.encode(raw), model.encode(raw))
            assert torch.equal(loaded.reconstruct(raw), model.reconstruct(raw))


def test_reconstruct_comes_back_in_raw_units(trained):
    model, data, _ = trained
    steps, raw = ",".join(model.preprocess.steps), data.test
    with torch.no_grad():
        out = model(raw)  # out.target: the preprocessed inputs the SAE reconstructs
        recon = model.reconstruct(raw)
    raw_error, pre_error = recon - raw, out.recon - out.target
    pre = model.preprocess
    if steps == "norm":
        # Dividing by the scale undoes norm: the raw error is the preprocessed error over the scale.
        assert torch.allclose(raw_error * pre.scale, pre_error, atol=1e-4)
    else:
        # zca undone by its inverse, then standardize by the std.
        assert torch.allclose(raw_error, (pre_error @ pre.colour) * pre.std, rtol=1e-4, atol=1e-3)
    assert abs(recon.mean().item() - raw.mean().item()) < 0.05 * raw.abs().mean().item()  # raw offset and scale
    fvu = (raw_error.square().sum() / (raw - raw.mean(0)).square().sum()).item()
    assert fvu < 0.5, fvu  # a useful reconstruction of the raw data


# --- bad names and the CLI -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ("whiten", r"preprocess: expected steps among center, standardize, norm, zca \(comma-separated\), or none, "
                   r"got 'whiten'\. For example --preprocess norm, or --preprocess center,zca\."),
        ("center, Norm", r"got 'Norm'"),
        (("zca", "pca"), r"got 'pca'"),
        ("norm,norm", r"preprocess: expected each step once, got norm,norm\. Drop the repeat\."),
    ],
)  # fmt: skip
def test_bad_step_names_are_refused(steps, message):
    with pytest.raises(SparseAEError, match=message):
        parse_steps(steps)
    with pytest.raises(SparseAEError, match=message):
        build_preset("dense", (8,), preprocess=steps, n_latents=32)


def test_step_names_are_trimmed_and_none_is_no_step():
    assert parse_steps(" center , zca ") == ("center", "zca")
    assert parse_steps("none") == parse_steps(None) == parse_steps("") == ()


def test_fit_errors_are_clear():
    with pytest.raises(SparseAEError, match=r"preprocessing sample: expected at least 2 training inputs to fit on, got 1"):
        Preprocessing("norm", (3,)).fit(torch.ones(1, 3))
    with pytest.raises(SparseAEError, match=r"preprocess norm: expected inputs that are not all zero, got only zeros"):
        Preprocessing("norm", (3,)).fit(torch.zeros(5, 3))


def test_cli_preprocess_flag_is_saved_with_the_model(tmp_path, capsys):
    np.save(tmp_path / "raw.npy", structured_raw(n=300).numpy())
    argv = ["train", "--data", str(tmp_path / "raw.npy"), "--model", "dense", "--k", "4", "--n-latents", "32",
            "--epochs", "1", "--preprocess", "norm", "--quiet", "--out", str(tmp_path / "run")]  # fmt: skip
    assert main(argv) == 0
    assert json.loads((tmp_path / "run" / "cfg.json").read_text())["preprocess"] == ["norm"]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["model"]["preprocess"] == ["norm"]
    model = sparseae.load(tmp_path / "run")
    assert model.preprocess.steps == ("norm",) and model.preprocess.scale.item() != 1.0


def test_cli_bad_preprocess_exits_2(tmp_path, capsys):
    np.save(tmp_path / "raw.npy", structured_raw(n=100).numpy())
    argv = ["train", "--data", str(tmp_path / "raw.npy"), "--model", "dense", "--preprocess", "whiten", "--quiet",
            "--out", str(tmp_path / "run")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("sparseae: error: preprocess: expected steps among") and "Traceback" not in err
    assert not (tmp_path / "run").exists()
