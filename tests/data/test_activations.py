"""Language-model activations as data, and CE loss recovered, on a tiny GPT-2 and tokenizer built offline."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
import torch

from conftest import BOS, DOCS  # the tiny language model and its text are fixtures shared with other tests
from sparseae._config import field_docs, from_dict
from sparseae.data.activations import (
    ActivationConfig,
    ActivationStream,
    cache_activations,
    ce_loss_recovered,
    collect,
    find_module,
    iter_activations,
    load_lm,
    read_texts,
)
from sparseae.data.shards import ShardReader
from sparseae.errors import SparseAEError

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

ATOL = 1e-6
"""Tolerance between two runs of the same rows: MKL may round the last bit differently with the memory's alignment."""


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Tiny matrices gain nothing from threads, and lose a lot when another process holds the other cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def lm(lm_dir: Path):
    return load_lm(str(lm_dir), "cpu")


def config(lm_dir: Path, text: Path, **kw) -> ActivationConfig:
    return ActivationConfig(
        **{"model": str(lm_dir), "module": "transformer.h.0", "text": str(text), "device": "cpu", "context_length": 64, **kw}
    )


def expected_rows(lm, docs, block: int, context_length: int, exclude_bos: bool) -> torch.Tensor:
    """The reference: each sequence run alone through the model, rows from ``hidden_states``."""
    model, tokenizer = lm
    bos = tokenizer.bos_token_id
    rows = []
    for doc in docs:
        ids = tokenizer(doc, add_special_tokens=False)["input_ids"]
        for i in range(0, len(ids), context_length - 1):
            seq = torch.tensor([[bos, *ids[i : i + context_length - 1]]])
            with torch.no_grad():
                hidden = model(seq, output_hidden_states=True).hidden_states[block + 1][0]  # (T, d)
            rows.append(hidden[1:] if exclude_bos else hidden)
    return torch.cat(rows)


def test_load_lm_gives_eval_model_and_pad(lm):
    model, tokenizer = lm
    assert not model.training
    assert tokenizer.pad_token == tokenizer.eos_token == BOS
    assert tokenizer("a")["input_ids"][0] != tokenizer.bos_token_id  # like GPT-2's: no BOS added by the tokenizer


@pytest.mark.parametrize("exclude_bos", [True, False])
@pytest.mark.parametrize("block", [0, 1])
def test_rows_equal_hidden_states_at_real_tokens(lm, block, exclude_bos):
    model, tokenizer = lm
    # A batch of 4 sequences of unequal lengths: padding, and a long document cut in several sequences.
    docs = DOCS[:6] + [" ".join(DOCS)]
    got = torch.cat(list(iter_activations(model, tokenizer, f"transformer.h.{block}", docs, context_length=16, batch_size=4,
                                          exclude_bos=exclude_bos)))  # fmt: skip
    want = expected_rows(lm, docs, block, 16, exclude_bos)
    if block == model.config.n_layer - 1:  # Hugging Face reports the last block's output after the final layer norm
        with torch.no_grad():
            got = model.transformer.ln_f(got)
    assert got.dtype == torch.float32 and got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_row_count_is_real_tokens(lm):
    model, tokenizer = lm
    n_tokens = sum(len(tokenizer(d, add_special_tokens=False)["input_ids"]) for d in DOCS)  # each under context_length - 1
    rows = lambda **kw: sum(len(r) for r in iter_activations(model, tokenizer, "transformer.h.0", DOCS, batch_size=5, **kw))  # noqa: E731
    assert rows(context_length=64, exclude_bos=True) == n_tokens
    assert rows(context_length=64, exclude_bos=False) == n_tokens + len(DOCS)  # one BOS per sequence


@pytest.mark.parametrize("max_tokens", [1, 7, 50])
def test_max_tokens_is_exact(lm, max_tokens):
    model, tokenizer = lm
    got = list(
        iter_activations(model, tokenizer, "transformer.h.1", DOCS, context_length=64, batch_size=2, max_tokens=max_tokens)
    )
    assert sum(len(r) for r in got) == max_tokens
    full = torch.cat(list(iter_activations(model, tokenizer, "transformer.h.1", DOCS, context_length=64, batch_size=2)))
    torch.testing.assert_close(torch.cat(got), full[:max_tokens], atol=ATOL, rtol=0)


def test_early_stop_changes_nothing(lm):
    model, tokenizer = lm
    a, b = (
        torch.cat(list(iter_activations(model, tokenizer, "transformer.h.0", DOCS, context_length=64, stop_early=s)))
        for s in (True, False)
    )
    torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


def test_collect_and_cache_agree(lm_dir, text_file, tmp_path):
    cfg = config(lm_dir, text_file, tokens=100, batch_size=3)
    direct = torch.cat(list(collect(cfg)))
    assert direct.shape == (100, 32)
    path = cache_activations(cfg, tmp_path / "cache", rows_per_shard=30, progress=False)
    reader = ShardReader(path)
    assert reader.shape == (100, 32) and len(reader.manifest["shards"]) == 4
    torch.testing.assert_close(torch.from_numpy(reader.read(0, 100)), direct, atol=ATOL, rtol=0)
    meta = reader.metadata
    assert meta["d_model"] == 32 and meta["rows"] == 100 and meta["tokens_per_s"] > 0
    assert from_dict(ActivationConfig, meta["config"], "metadata") == cfg


def test_text_sources(tmp_path, text_file):
    assert list(read_texts(str(text_file))) == DOCS
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "2.txt").write_text("second\n")
    (tmp_path / "1.txt").write_text("first\nstill first\n\n\nnext\n")
    assert list(read_texts(str(tmp_path))) == ["first\nstill first", "next", "second"]
    with pytest.raises(SparseAEError, match=r"no such file or directory\)\. Check the path"):
        list(read_texts(str(tmp_path / "missing.txt")))


def test_stream_covers_tokens_once_and_is_deterministic(lm_dir, text_file):
    cfg = config(lm_dir, text_file, tokens=90, batch_size=2, context_length=16)
    stream = ActivationStream(cfg, buffer_batches=2)  # a 64-row buffer: several fills per epoch
    assert len(stream) == 90 and stream.sample_shape == (32,)
    rows = torch.cat(list(collect(cfg)))
    torch.testing.assert_close(stream.head(10), rows[:10], atol=ATOL, rtol=0)

    def epoch(seed, e):
        return list(stream.batches(8, seed, e))

    batches = epoch(0, 0)
    assert [len(b) for b in batches[:-1]] == [8] * (len(batches) - 1) and sum(map(len, batches)) == 90
    got = torch.cat(batches)
    # Every row once: the batches hold the collected rows, each as often as it was collected.
    # (DOCS repeats itself, so some rows come several times: compare how often each row occurs.)
    near = lambda a, b: torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist") < 1e-5  # noqa: E731
    assert torch.equal(near(got, rows).sum(0), near(rows, rows).sum(0))
    assert not torch.allclose(got, rows)  # shuffled
    for a, b in zip(batches, epoch(0, 0), strict=True):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)
    assert not torch.allclose(got, torch.cat(epoch(0, 1)))
    assert not torch.allclose(got, torch.cat(epoch(1, 0)))


@pytest.mark.parametrize(
    ("name", "close"),
    [
        ("transformer.h.9", r"transformer\.h\.0.*transformer\.h\.1|transformer\.h\.1.*transformer\.h\.0"),
        ("transfomer.h.0", "transformer.h.0"),
    ],
)
def test_unknown_module_lists_close_matches(lm, name, close):
    model, tokenizer = lm
    with pytest.raises(
        SparseAEError, match=rf"module: expected the name of a module of GPT2LMHeadModel, got '{name}'\. Close matches: .*{close}"
    ):
        find_module(model, name)
    with pytest.raises(SparseAEError, match="module_names"):
        next(iter_activations(model, tokenizer, name, DOCS))


def test_config_is_checked():
    good = dict(model="gpt2", module="transformer.h.6", text="docs.txt")
    with pytest.raises(SparseAEError, match=r"context_length: expected an integer >= 2, got 1"):
        ActivationConfig(**good, context_length=1)
    with pytest.raises(SparseAEError, match=r"tokens: expected an integer >= 1, got 0"):
        ActivationConfig(**good, tokens=0)
    with pytest.raises(SparseAEError, match=r"device: expected auto, cpu, cuda, cuda:N or mps, got 'gpu'"):
        ActivationConfig(**good, device="gpu")
    with pytest.raises(SparseAEError, match=r"text: expected hf:<dataset>\[:<config>\]"):
        ActivationConfig(**{**good, "text": "hf:"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        ActivationConfig(**good).tokens = 5  # type: ignore[misc]


def test_context_longer_than_model_is_refused(lm):
    model, tokenizer = lm
    with pytest.raises(SparseAEError, match=r"context_length: expected at most 64 \(the model's maximum"):
        next(iter_activations(model, tokenizer, "transformer.h.0", DOCS, context_length=65))


def test_missing_model_says_so(tmp_path):
    with pytest.raises(SparseAEError, match=r"a Hugging Face model name or a local directory"):
        load_lm(str(tmp_path / "nothing"), "cpu")


class Identity:
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return x


class Zero:
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


@pytest.mark.parametrize("exclude_bos", [True, False])
def test_ce_loss_recovered_bounds(lm, exclude_bos):
    model, tokenizer = lm
    kw = dict(context_length=32, batch_size=4, max_batches=3, exclude_bos=exclude_bos)
    ident = ce_loss_recovered(Identity(), model, tokenizer, "transformer.h.0", DOCS, **kw)
    zero = ce_loss_recovered(Zero(), model, tokenizer, "transformer.h.0", DOCS, **kw)
    assert ident["ce_loss_recovered"] == pytest.approx(1.0, abs=1e-6)
    assert zero["ce_loss_recovered"] == pytest.approx(0.0, abs=1e-6)
    assert ident["ce_loss_clean"] == pytest.approx(ident["ce_loss_with_sae"], abs=1e-6)
    assert ident["ce_loss_clean"] < ident["ce_loss_zero"] - 0.5  # the trained model beats the ablated one by far
    assert zero["ce_loss_with_sae"] == pytest.approx(zero["ce_loss_zero"], abs=1e-6)
    n_targets = sum(len(tokenizer(d, add_special_tokens=False)["input_ids"]) for d in DOCS[:12])  # 3 batches of 4
    assert ident["tokens"] == n_targets


def test_ce_loss_recovered_keeps_tuple_outputs(lm):
    # GPT-2's attention module returns (output, weights): replacing must keep the tuple.
    model, tokenizer = lm
    got = ce_loss_recovered(Identity(), model, tokenizer, "transformer.h.0.attn", DOCS, context_length=32, max_batches=1)
    assert got["ce_loss_recovered"] == pytest.approx(1.0, abs=1e-6)


def test_ce_loss_recovered_checks_sae_width(lm):
    model, tokenizer = lm

    class Wrong:
        def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
            return x[:, :5]

    with pytest.raises(SparseAEError, match=r"sae.reconstruct: expected rows of shape \(n, 32\)"):
        ce_loss_recovered(Wrong(), model, tokenizer, "transformer.h.0", DOCS, context_length=64, max_batches=1)


@pytest.mark.parametrize("package", ["transformers", "datasets"])
def test_missing_packages_say_how_to_install(monkeypatch, package):
    monkeypatch.setitem(sys.modules, package, None)  # makes `import package` fail
    with pytest.raises(SparseAEError, match=rf"{package}: expected .*, got not installed\. .*pip install 'sparseae\[lm\]'"):
        load_lm("gpt2") if package == "transformers" else next(read_texts("hf:some/dataset"))


def test_every_config_field_has_help():
    assert set(field_docs(ActivationConfig)) == {f.name for f in dataclasses.fields(ActivationConfig)}


def test_ce_loss_recovered_with_a_sparseae_model(lm):
    import sparseae

    model, tokenizer = lm
    sae = sparseae.build_preset("dense", (32,), sparseae.build_sparsity("topk", k=4), seed=0, n_latents=64)
    sae.train()
    got = ce_loss_recovered(sae, model, tokenizer, "transformer.h.0", DOCS, context_length=32, max_batches=2)
    assert got["ce_loss_clean"] < got["ce_loss_zero"] and torch.isfinite(torch.tensor(got["ce_loss_recovered"]))
    assert sae.training  # put back as it was
