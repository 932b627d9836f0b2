"""ONNX export (run in onnxruntime against PyTorch), Hub model folders and loading them by repo id."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import sparseae
from sparseae.interop import hub
from sparseae.interop.hub import load_hub, looks_like_repo_id, model_card, publish_folder
from sparseae.interop.onnx import export_onnx
from sparseae.models import DenseAutoencoder, DenseConfig
from sparseae.sparsity import Sparsity

EXPORT_BATCH, RUN_BATCH = 2, 5  # the graph is traced on 2 rows and run on 5: the batch axis must be dynamic
ATOL = 1e-5
PARAMS = {"topk": {"k": 6, "alpha": 1.5}, "batchtopk": {"k": 6}, "jumprelu": {"init_threshold": 0.3}}
"""Hyperparameters under which each constraint's encode-time behaviour shows (TopK keeps round(1.5 * 6) = 9 units)."""


@pytest.fixture
def ort():
    pytest.importorskip("onnx")
    return pytest.importorskip("onnxruntime")


def run_onnx(ort, path: Path, x: torch.Tensor) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["inputs"]
    return session.run(None, {"inputs": x.numpy()})


def dense(name: str, preprocess: str | None = None) -> DenseAutoencoder:
    """A small dense model whose encode-time state is set: a few training forwards (BatchTopK's threshold)."""
    torch.manual_seed(0)
    model = sparseae.build_preset("dense", (12,), sparseae.build_sparsity(name, **PARAMS.get(name, {})), n_latents=32,
                                  preprocess=preprocess)  # fmt: skip
    data = torch.randn(256, 12) * 2 + 0.5
    model.initialise(data)
    model.train()
    with torch.no_grad():
        for batch in data.split(64):
            model(batch)
    return model.eval()


def check_both_parts(ort, model, tmp_path: Path, x: torch.Tensor) -> None:
    encoder = export_onnx(model, tmp_path / "encoder.onnx")
    whole = export_onnx(model, tmp_path / "autoencoder.onnx", part="autoencoder")
    with torch.no_grad():
        codes, recon = model.encode(x), model.reconstruct(x)
    # Random inputs (fixed seed): no two pre-activations tie at TopK's cut, where the two runtimes could pick differently.
    (onnx_codes,) = run_onnx(ort, encoder, x)
    np.testing.assert_allclose(onnx_codes, codes.numpy(), atol=ATOL, rtol=0)
    onnx_codes, onnx_recon = run_onnx(ort, whole, x)
    assert onnx_recon.shape == tuple(x.shape)
    np.testing.assert_allclose(onnx_codes, codes.numpy(), atol=ATOL, rtol=0)
    np.testing.assert_allclose(onnx_recon, recon.numpy(), atol=ATOL, rtol=0)


# --- ONNX ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sparseae.list_sparsities())
def test_dense_model_exports_with_every_constraint(ort, tmp_path, name):
    model = dense(name)
    check_both_parts(ort, model, tmp_path, torch.randn(RUN_BATCH, 12) * 2 + 0.5)


def test_conv_model_exports(ort, tmp_path):
    model = sparseae.mnist_conv(seed=0).eval()  # the 180-degree rotation (TF padding) is part of the graph
    check_both_parts(ort, model, tmp_path, torch.rand(RUN_BATCH, 1, 28, 28))


def test_topk_exports_its_encode_time_k(ort, tmp_path):
    model = dense("topk")  # k=6, alpha=1.5: 9 units at encode time, 6 in training
    x = torch.randn(RUN_BATCH, 12) * 2 + 0.5
    (codes,) = run_onnx(ort, export_onnx(model, tmp_path / "e.onnx"), x)
    assert ((codes != 0).sum(1) == 9).all()


def test_batchtopk_exports_its_threshold_not_the_batch_selection(ort, tmp_path):
    model = dense("batchtopk")
    threshold = float(model.sparsity.threshold)
    assert threshold > 0
    x = torch.randn(RUN_BATCH, 12) * 2 + 0.5
    (codes,) = run_onnx(ort, export_onnx(model, tmp_path / "e.onnx"), x)
    pre = model.pre_activations(x).detach().numpy()
    np.testing.assert_allclose(codes, np.where(pre > threshold, pre, 0), atol=ATOL, rtol=0)


def test_export_leaves_the_model_mode_as_it_was(ort, tmp_path):
    model = dense("wta").train()  # WTA keeps a batch's winners in training, the plain ReLU in eval
    x = torch.randn(RUN_BATCH, 12)
    (codes,) = run_onnx(ort, export_onnx(model, tmp_path / "e.onnx"), x)
    assert model.training
    np.testing.assert_allclose(codes, torch.relu(model.eval().pre_activations(x)).detach().numpy(), atol=ATOL, rtol=0)


def test_graph_metadata_holds_the_model_config(ort, tmp_path):
    import onnx

    model = dense("topk")
    graph = onnx.load(str(export_onnx(model, tmp_path / "e.onnx", opset=13)))
    meta = {p.key: p.value for p in graph.metadata_props}
    assert json.loads(meta["sparseae_cfg"]) == {"format": sparseae.io.FORMAT, **json.loads(json.dumps(model.describe()))}
    assert meta["sparseae_part"] == "encoder" and meta["sparseae_version"] == sparseae.__version__
    assert {o.version for o in graph.opset_import if o.domain == ""} == {13}


def test_fixed_batch_graph(ort, tmp_path):
    model = dense("l1", preprocess="center,standardize,norm,zca")
    x = torch.randn(1, 12) * 2 + 0.5
    codes, recon = run_onnx(ort, export_onnx(model, tmp_path / "a.onnx", part="autoencoder", batch_dynamic=False), x)
    np.testing.assert_allclose(codes, model.encode(x).detach().numpy(), atol=ATOL, rtol=0)
    np.testing.assert_allclose(recon, model.reconstruct(x).detach().numpy(), atol=ATOL, rtol=0)
    with pytest.raises(Exception, match="inputs"):  # onnxruntime's own error: the graph is for one row
        run_onnx(ort, tmp_path / "a.onnx", torch.randn(2, 12))


def test_preprocessed_model_exports_with_dynamic_batch(ort, tmp_path):
    model = dense("topk", preprocess="center,standardize,norm,zca")  # preprocessing is inside the graph, and undone
    check_both_parts(ort, model, tmp_path, torch.randn(RUN_BATCH, 12) * 2 + 0.5)


def test_trace_that_would_not_hold_for_other_inputs_is_refused(ort, tmp_path):
    class Branchy(Sparsity):
        def forward(self, pre):
            return torch.relu(pre) if pre.sum() > 0 else torch.zeros_like(pre)  # a Python branch on a value

    model = DenseAutoencoder(DenseConfig(input_shape=(12,), n_latents=16), Branchy()).eval()
    with pytest.raises(sparseae.SparseAEError, match="tracer warning.*Python boolean.*tensor operations only"):
        export_onnx(model, tmp_path / "e.onnx")
    assert not list(tmp_path.iterdir())  # no file, not even a temporary one


def test_run_directory_exports(ort, tmp_path, run):
    path = export_onnx(run, tmp_path / "out" / "sae.onnx", part="autoencoder")  # parent folders created
    model = sparseae.load(run)
    x = torch.randn(RUN_BATCH, 12)
    codes, recon = run_onnx(ort, path, x)
    np.testing.assert_allclose(codes, model.encode(x).detach().numpy(), atol=ATOL, rtol=0)
    np.testing.assert_allclose(recon, model.reconstruct(x).detach().numpy(), atol=ATOL, rtol=0)


def test_export_errors(ort, tmp_path):
    model = dense("l1")
    with pytest.raises(sparseae.SparseAEError, match=r"part: expected one of encoder, autoencoder, got 'decoder'"):
        export_onnx(model, tmp_path / "e.onnx", part="decoder")
    (tmp_path / "e.onnx").write_text("")
    with pytest.raises(sparseae.SparseAEError, match=r"e\.onnx: expected a path that does not exist yet, got an existing "
                       r"file\. Remove it, or choose another path"):  # fmt: skip
        export_onnx(model, tmp_path / "e.onnx")
    with pytest.raises(sparseae.SparseAEError, match=r"opset: expected an ONNX opset version >= 9"):
        export_onnx(model, tmp_path / "f.onnx", opset=8)
    with pytest.raises(sparseae.SparseAEError, match=r"float32 weights.*torch.float64.*\.float\(\)"):
        export_onnx(dense("l1").double(), tmp_path / "f.onnx")
    with pytest.raises(sparseae.SparseAEError, match=r"a sparseae model.*got Linear"):
        export_onnx(torch.nn.Linear(2, 2), tmp_path / "f.onnx")
    with pytest.raises(sparseae.SparseAEError, match=r"no-run: expected a run or model directory"):
        export_onnx(tmp_path / "no-run", tmp_path / "f.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.onnx"]


# --- Hub folders --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A finished two-epoch run of a TopK model on an .npy file (so config.json records the data)."""
    root = tmp_path_factory.mktemp("hub")
    np.save(root / "rows.npy", np.random.default_rng(0).normal(size=(320, 12)).astype(np.float32))
    data = sparseae.load_data(sparseae.DataConfig(source=str(root / "rows.npy")))
    torch.manual_seed(0)
    model = sparseae.build_preset("dense", (12,), sparseae.build_sparsity("topk", k=4), n_latents=16)
    sparseae.train(model, data, sparseae.TrainConfig(epochs=2, batch_size=64), out=root / "run", progress=False)
    return root / "run"


def front_matter(card: str) -> dict:
    yaml = pytest.importorskip("yaml")
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_publish_folder_writes_a_loadable_hub_folder(tmp_path, run):
    out = publish_folder(run, tmp_path / "hub", repo_id="someone/tiny-sae", license="mit")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "cfg.json", "config.json", "metrics.jsonl", "model.safetensors"]
    card = (out / "README.md").read_text()
    meta = front_matter(card)
    assert meta["library_name"] == "sparseae" and meta["license"] == "mit"
    assert {"sparse-autoencoder", "sparseae", "dense", "topk"} <= set(meta["tags"])
    last = sparseae.read_metrics(run)[-1]
    assert f"## Metrics (epoch 2, step {last['step']})" in card
    assert f"| test_mse | {last['test_mse']:.4g} |" in card and f"| test_fvu | {last['test_fvu']:.4g} |" in card
    assert "`topk` (k=4, alpha=1.0)" in card and "| latents | 16 |" in card and "rows.npy" in card
    assert 'sparseae.load("someone/tiny-sae")' in card
    assert (out / "config.json").read_text() == (run / "config.json").read_text()
    original, published = sparseae.load(run), sparseae.load(out)
    x = torch.randn(8, 12)
    assert torch.equal(published.encode(x), original.encode(x))
    assert torch.equal(published.reconstruct(x), original.reconstruct(x))


def test_publish_folder_refuses_what_it_cannot_publish(tmp_path, run):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(sparseae.SparseAEError, match=r"full: expected a new or empty folder, got a folder that already holds "
                       r"files\. Choose another output folder"):  # fmt: skip
        publish_folder(run, tmp_path / "full")
    with pytest.raises(sparseae.SparseAEError, match=r"expected a run directory \(with config.json\)"):
        publish_folder(tmp_path / "full", tmp_path / "out")
    started = tmp_path / "started"
    started.mkdir()
    shutil.copy(run / "config.json", started)
    with pytest.raises(sparseae.SparseAEError, match=r"a run that finished at least one epoch.*--resume"):
        publish_folder(started, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full", "started"]  # nothing half-written


def test_empty_output_folder_is_used(tmp_path, run):
    (tmp_path / "hub").mkdir()
    assert (publish_folder(run, tmp_path / "hub") / "model.safetensors").is_file()
    card = (tmp_path / "hub" / "README.md").read_text()
    assert front_matter(card).get("license") is None  # unknown: left out
    assert "# run\n" in card and 'sparseae.load("USER/REPO")' in card  # no repo id given: the run's name, a placeholder


def test_model_card_names_the_data_sets(run):
    model = sparseae.load(run)
    lm = {"model": "gpt2", "module": "transformer.h.6", "text": "hf:roneneldan/TinyStories"}
    card = model_card(model, {"data": {"source": "lm", "lm": lm}, "train": {}}, [], repo_id="a/b")
    assert front_matter(card)["datasets"] == ["roneneldan/TinyStories"]
    assert "activations of `gpt2` at `transformer.h.6`" in card and "No metrics were recorded." in card
    card = model_card(model, {"data": {"source": "mnist", "train_limit": 1000}, "train": {}}, [], repo_id="a/b")
    assert front_matter(card)["datasets"] == ["ylecun/mnist"] and "MNIST (first 1,000 train samples)" in card
    assert "datasets" not in front_matter(model_card(model, {"data": None, "train": {}}, [], repo_id="a/b"))


def fill_cache(cache: Path, repo_id: str, folder: Path | None, commit: str = "0123456789abcdef" * 2 + "01234567") -> str:
    """The Hugging Face cache layout snapshot_download leaves behind: refs/main -> snapshots/<commit>/files."""
    storage = cache / ("models--" + repo_id.replace("/", "--"))
    (storage / "refs").mkdir(parents=True)
    (storage / "refs" / "main").write_text(commit)
    shutil.copytree(folder, storage / "snapshots" / commit) if folder else (storage / "snapshots" / commit).mkdir(parents=True)
    return commit


@pytest.fixture
def offline(monkeypatch):
    """Hugging Face Hub offline mode, as HF_HUB_OFFLINE=1 sets it (the library reads the variable at import)."""
    constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def test_load_hub_reads_the_cache_offline(tmp_path, run, offline):
    # The real snapshot_download, offline, on a cache filled as a download would leave it.
    commit = fill_cache(tmp_path / "cache", "someone/tiny-sae", publish_folder(run, tmp_path / "hub"))
    original = sparseae.load(run)
    x = torch.randn(8, 12)
    for revision in (None, commit):
        model = load_hub("someone/tiny-sae", revision=revision, cache_dir=tmp_path / "cache")
        assert not model.training
        assert torch.equal(model.encode(x), original.encode(x))


def test_load_hub_errors(tmp_path, offline):
    message = (r"someone/absent: expected a model in the local Hugging Face cache.*got no cached copy, and the Hub is "
               r"offline \(HF_HUB_OFFLINE is set\)\. Download it once while online")  # fmt: skip
    with pytest.raises(sparseae.SparseAEError, match=message):
        load_hub("someone/absent", cache_dir=tmp_path / "cache")
    fill_cache(tmp_path / "cache", "someone/not-sae", None)
    with pytest.raises(sparseae.SparseAEError, match=r"expected a sparseae model repository.*without cfg.json"):
        load_hub("someone/not-sae", cache_dir=tmp_path / "cache")
    with pytest.raises(sparseae.SparseAEError, match=r"expected a Hub repo id user/repo, got 'runs/../x'"):
        load_hub("runs/../x")


@pytest.mark.parametrize(
    "name, expected",
    [("user/repo", True), ("EleutherAI/sae-pythia-70m", True), ("a.b/c_d", True), ("runs", False), ("a/b/c", False),
     ("/abs/path", False), ("./rel", False), ("user/", False), ("us er/repo", False), ("a/-b", False), ("../x", False)],
)  # fmt: skip
def test_looks_like_repo_id(name, expected):
    assert looks_like_repo_id(name) is expected


def test_load_takes_a_mistyped_local_path_for_a_path_not_a_repo_id(tmp_path, monkeypatch):
    # "runs/nope" has a repo id's form, but "runs" is a local directory: a missing run, not a Hub download.
    (tmp_path / "runs").mkdir()
    monkeypatch.chdir(tmp_path)
    tried = []
    monkeypatch.setattr(hub, "load_hub", lambda *a, **k: tried.append(a))
    with pytest.raises(sparseae.SparseAEError, match=r"^runs/nope: expected a run or model directory .*got no such directory"):
        sparseae.load("runs/nope")
    assert not tried
    sparseae.load("someone/sae")  # no local "someone": a repo id
    assert tried == [("someone/sae",)]
