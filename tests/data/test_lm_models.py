"""Encoder models (the real all-MiniLM-L6-v2, offline) and many hookpoints in one forward pass (MiniLM and the tiny GPT-2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import DOCS
from sparseae._config import from_dict
from sparseae.data import DataConfig, load_data
from sparseae.data.activations import (
    ActivationConfig,
    cache_activations,
    ce_loss_recovered,
    collect,
    is_causal_lm,
    iter_activations,
    iter_activations_per_module,
    load_lm,
    resolve_modules,
)
from sparseae.data.fan_out import Aborted, fan_out
from sparseae.data.lm_models import _pretrained
from sparseae.data.shards import ShardReader
from sparseae.data.tokens import TokenLog, read_tokens
from sparseae.errors import SparseAEError

pytest.importorskip("transformers")

ATOL = 1e-5
"""Between a sequence run in a padded batch and alone: attention over a padded row rounds differently."""
TEXTS = DOCS[:6] + [" ".join(DOCS[:6])]  # about 140 word pieces; the long one is cut into several sequences


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def minilm(minilm_dir: Path):
    return load_lm(str(minilm_dir), "cpu")


@pytest.fixture(scope="module")
def gpt2(lm_dir: Path):
    return load_lm(str(lm_dir), "cpu")


def rows_alone(lm, texts, layer: int, context_length: int, exclude: bool) -> torch.Tensor:
    """The reference: each [CLS] ... [SEP] sequence run alone, rows from ``hidden_states[layer + 1]``."""
    model, tokenizer = lm
    out = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        for i in range(0, len(ids), context_length - 2):
            seq = torch.tensor([[tokenizer.cls_token_id, *ids[i : i + context_length - 2], tokenizer.sep_token_id]])
            with torch.no_grad():
                hidden = model(seq, output_hidden_states=True).hidden_states[layer + 1][0]  # (T, d)
            out.append(hidden[1:-1] if exclude else hidden)
    return torch.cat(out)


# --- encoders ------------------------------------------------------------------------------------------------------------


def test_encoder_loads_without_a_head_and_causal_models_with_one(minilm, gpt2):
    model, tokenizer = minilm
    assert type(model).__name__ == "BertModel" and not model.training and not is_causal_lm(model)
    assert tokenizer.cls_token_id is not None and tokenizer.sep_token_id is not None and tokenizer.bos_token_id is None
    assert is_causal_lm(gpt2[0]) and type(gpt2[0]).__name__ == "GPT2LMHeadModel"


@pytest.mark.parametrize("exclude", [True, False])
@pytest.mark.parametrize("layer", [2, 5])
def test_encoder_rows_equal_hidden_states(minilm, layer, exclude):
    model, tokenizer = minilm
    # batches of 4 sequences of unequal lengths: right padding, and a long text cut into sequences of 16
    got = torch.cat(list(iter_activations(model, tokenizer, f"encoder.layer.{layer}", TEXTS, context_length=16, batch_size=4,
                                          exclude_bos=exclude)))  # fmt: skip
    want = rows_alone(minilm, TEXTS, layer, 16, exclude)
    assert got.dtype == torch.float32 and got.shape == want.shape and got.shape[1] == 384
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


def test_encoder_rows_are_the_real_word_pieces(minilm):
    model, tokenizer = minilm
    log = TokenLog()
    rows = torch.cat(list(iter_activations(model, tokenizer, "encoder.layer.0", TEXTS, context_length=16, batch_size=3,
                                           tokens=log)))  # fmt: skip
    pieces = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in TEXTS]
    assert len(rows) == sum(map(len, pieces))
    token_rows = log.token_rows(tokenizer, "minilm")
    special = {tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id}
    assert not special & set(token_rows.token_ids().tolist())
    assert token_rows.token_ids().tolist() == [i for p in pieces for i in p]  # every piece once, in order
    docs = token_rows.documents
    for d in range(len(docs)):  # each sequence framed [CLS] ... [SEP], no padding
        ids = docs.tokens(d).tolist()
        assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id and len(ids) <= 16
        assert tokenizer.pad_token_id not in ids[1:-1]
    assert 1 <= int(token_rows.positions.min()) and int(token_rows.positions.max()) <= 14
    kept = sum(len(r) for r in iter_activations(model, tokenizer, "encoder.layer.0", TEXTS, context_length=16, exclude_bos=False))
    assert kept == len(rows) + 2 * len(docs)  # [CLS] and [SEP] of each sequence


def test_context_must_hold_a_token_between_cls_and_sep(minilm):
    model, tokenizer = minilm
    with pytest.raises(SparseAEError, match=r"context_length: expected more than 2 \(the special tokens"):
        next(iter_activations(model, tokenizer, "encoder.layer.0", TEXTS, context_length=2))


def test_ce_loss_recovered_refuses_an_encoder(minilm):
    model, tokenizer = minilm
    with pytest.raises(
        SparseAEError, match=r"CE loss recovered: expected a causal language model .* got BertModel.*leave out --ce-loss"
    ):
        ce_loss_recovered(None, model, tokenizer, "encoder.layer.2", TEXTS)


def test_a_folder_loads_offline_and_a_name_tries_the_cache_first(tmp_path):
    calls = []

    class Auto:
        @classmethod
        def from_pretrained(cls, name, **kwargs):
            calls.append(kwargs)
            if kwargs.get("local_files_only"):
                raise OSError("not in the cache")
            return "from the hub"

    assert _pretrained(Auto, "org/model") == "from the hub"
    assert calls == [{"local_files_only": True}, {}]
    calls.clear()
    with pytest.raises(OSError):
        _pretrained(Auto, str(tmp_path))  # a folder never reaches the hub
    assert calls == [{"local_files_only": True}]


# --- many hookpoints --------------------------------------------------------------------------------------------------------


def test_patterns_and_lists_resolve_in_model_order(minilm, gpt2):
    model = minilm[0]
    assert resolve_modules(model, "encoder.layer.*") == [f"encoder.layer.{i}" for i in range(6)]
    assert resolve_modules(model, "encoder.layer.4, encoder.layer.[13]") == [
        "encoder.layer.1",
        "encoder.layer.3",
        "encoder.layer.4",
    ]
    assert resolve_modules(gpt2[0], "transformer.h.*.mlp") == ["transformer.h.0.mlp", "transformer.h.1.mlp"]
    assert resolve_modules(gpt2[0], "transformer.h.1,transformer.h.1") == ["transformer.h.1"]


@pytest.mark.parametrize(
    ("spec", "close"),
    [("encoder.layers.*", "encoder.layer.5, encoder.layer.4"), ("encoder.layer.2,encoder.layr.3", "encoder.layer.3")],
)
def test_a_pattern_or_name_matching_nothing_lists_close_names(minilm, spec, close):
    bad = spec.split(",")[-1]
    with pytest.raises(SparseAEError, match=rf"module: expected .* of BertModel, got '{bad}'\. Close matches: {close}"):
        resolve_modules(minilm[0], spec)


def per_module(lm, spec, **kw) -> dict[str, torch.Tensor]:
    parts = list(iter_activations_per_module(*lm, spec, DOCS, context_length=16, batch_size=3, **kw))
    return {name: torch.cat([p[name] for p in parts]) for name in parts[0]}


def test_two_modules_in_one_pass_equal_two_runs(gpt2):
    model, tokenizer = gpt2
    got = per_module(gpt2, "transformer.h.1.mlp,transformer.h.0", max_tokens=70)
    assert list(got) == ["transformer.h.0", "transformer.h.1.mlp"]
    for name, rows in got.items():
        alone = torch.cat(list(iter_activations(model, tokenizer, name, DOCS, context_length=16, batch_size=3, max_tokens=70)))
        assert rows.shape == alone.shape == (70, 32)
        torch.testing.assert_close(rows, alone, atol=1e-6, rtol=0)


def test_the_pass_stops_after_the_deepest_module(gpt2):
    model, _ = gpt2
    ran = []
    handles = [model.transformer.h[i].register_forward_pre_hook(lambda *_, i=i: ran.append(i)) for i in (0, 1)]
    try:
        per_module(gpt2, "transformer.h.0.mlp,transformer.h.0.attn", max_tokens=5)
        assert ran == [0]  # block 1 never starts
        ran.clear()
        per_module(gpt2, "transformer.h.0.mlp,transformer.h.0.attn", max_tokens=5, stop_early=False)
        assert ran == [0, 1]
    finally:
        for h in handles:
            h.remove()


def test_one_tensor_per_batch_means_one_module(gpt2):
    with pytest.raises(
        SparseAEError,
        match=r"module: expected one module .*got 2: transformer\.h\.0, transformer\.h\.1\. .*iter_activations_per_module",
    ):
        next(iter_activations(*gpt2, "transformer.h.*", DOCS))


@pytest.mark.parametrize(
    ("module", "got"),
    [
        ("transformer", r"got a BaseModelOutputWithPastAndCrossAttentions, not a tensor"),
        ("transformer.wpe", r"got shape \(1, \d+, 32\)"),  # one row of positions, shared by the batch
    ],
)
def test_a_hookpoint_without_one_vector_per_token_names_module_and_shape(gpt2, module, got):
    with pytest.raises(
        SparseAEError, match=rf"module '{module}': expected an output of shape \(batch, tokens, d\) = \(3, \d+\) \+ \(d,\).*{got}"
    ):
        per_module(gpt2, f"transformer.h.0,{module}")


def test_config_refuses_an_empty_item():
    with pytest.raises(SparseAEError, match=r"module: expected module names or patterns, comma-separated, got 'a,,b'"):
        ActivationConfig(model="gpt2", module="a,,b", text="docs.txt")


# --- caches --------------------------------------------------------------------------------------------------------------


def test_cache_of_two_encoder_layers_in_one_pass(minilm_dir, text_file, tmp_path):
    cfg = ActivationConfig(model=str(minilm_dir), module="encoder.layer.4,encoder.layer.2", text=str(text_file), device="cpu",
                           context_length=16, tokens=150, batch_size=4)  # fmt: skip
    out = cache_activations(cfg, tmp_path / "out", rows_per_shard=64, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["encoder.layer.2", "encoder.layer.4"]
    tokens = []
    for name in ("encoder.layer.2", "encoder.layer.4"):
        reader = ShardReader(out / name)
        assert reader.shape == (150, 384) and len(reader.manifest["shards"]) == 3
        meta = reader.metadata
        assert meta["causal"] is False and meta["model_class"] == "BertModel" and meta["rows"] == 150
        assert meta["modules"] == ["encoder.layer.2", "encoder.layer.4"] and meta["tokens_per_s"] > 0
        single = from_dict(ActivationConfig, meta["config"], "metadata")
        assert single.module == name
        torch.testing.assert_close(torch.from_numpy(reader.read(0, 150)), torch.cat(list(collect(single))), atol=ATOL, rtol=0)
        assert json.loads((out / name / "tokens.json").read_text())["causal"] is False
        tokens.append(read_tokens(out / name, 150))
    assert torch.equal(tokens[0].token_ids(), tokens[1].token_ids()) and len(tokens[0]) == 150
    assert torch.equal(tokens[0].documents.token_ids, tokens[1].documents.token_ids)
    with pytest.raises(SparseAEError, match=r"expected one shard cache .* got a folder of 2 caches, one per module: "
                                             r"encoder\.layer\.2, encoder\.layer\.4\. Pass one of them"):  # fmt: skip
        load_data(DataConfig(str(out)))
    assert load_data(DataConfig(str(out / "encoder.layer.2"))).test_rows.tokens is not None


def test_a_causal_cache_says_so(lm_cache):
    assert ShardReader(lm_cache).metadata["causal"] is True
    assert json.loads((lm_cache / "tokens.json").read_text())["causal"] is True


def test_a_failed_pass_leaves_no_cache(lm_dir, text_file, tmp_path):
    cfg = ActivationConfig(model=str(lm_dir), module="transformer.h.0,transformer", text=str(text_file), device="cpu",
                           context_length=16, tokens=50)  # fmt: skip
    with pytest.raises(SparseAEError, match=r"module 'transformer'"):
        cache_activations(cfg, tmp_path / "out", progress=False)
    assert not any(p.is_file() for p in (tmp_path / "out").rglob("*"))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(SparseAEError, match=r"full: expected a new or empty directory for the caches"):
        cache_activations(cfg, tmp_path / "full", progress=False)


def test_fan_out_hands_each_consumer_its_items_and_stops_both_sides_on_failure():
    batches = [{"a": i, "b": -i} for i in range(10)]
    assert fan_out(batches, {"a": list, "b": sum}) == {"a": list(range(10)), "b": -45}

    def fail(items):
        for i in items:
            if i == 3:
                raise ValueError("disk full")

    with pytest.raises(ValueError, match="disk full"):
        fan_out(iter(batches * 100), {"a": fail, "b": list})

    seen = []

    def record(items):
        try:
            for i in items:
                seen.append(i)
        except Aborted:
            seen.append("aborted")
            raise

    def producer():
        yield from batches[:2]
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fan_out(producer(), {"a": record, "b": list})
    assert seen == [0, 1, "aborted"]
