"""Rows that know what they are: texts of embedding rows, tokens of language-model rows, table column names, word labels."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import DOCS
from sparseae.data import DataConfig, Dataset, RowInfo, holdout_rows, load_data
from sparseae.data.inputs import table_options
from sparseae.errors import SparseAEError

N = 40
X = (np.arange(N * 3, dtype=np.float32).reshape(N, 3) % 7) / 4
TEXTS = [f'row {i}: "quoted", comma, ünïcode \u2028 line-separator' for i in range(N)]


def _test_rows(n: int = N, fraction: float = 0.1) -> list[int]:
    return holdout_rows(n, fraction)[1].tolist()


def _csv(tmp_path: Path, labels: list[str] | None = None) -> Path:
    import csv

    path = tmp_path / "emb.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "x0", "x1", "x2", "text", *(["label"] if labels else [])])
        for i in range(N):
            w.writerow([i, *X[i].tolist(), TEXTS[i].replace("\u2028", " "), *([labels[i]] if labels else [])])
    return path


# --- texts --------------------------------------------------------------------------------------------


def test_csv_text_column_reaches_the_test_rows_and_is_no_feature(tmp_path):
    data = load_data(DataConfig(str(_csv(tmp_path)), text_column="text", drop_columns="id"))
    expected = [TEXTS[i].replace("\u2028", " ") for i in _test_rows()]
    assert data.test_rows is not None and list(data.test_rows.texts) == expected
    assert data.columns == ("x0", "x1", "x2")
    assert torch.equal(data.test, torch.from_numpy(X[_test_rows()]))


def test_parquet_text_column_word_labels_and_list_column_names(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    labels = ["dog" if i % 3 else "cat" for i in range(N)]
    table = pa.table({"id": np.arange(N), "emb": list(X), "text": TEXTS, "label": labels, "w": np.ones(N)})
    pq.write_table(table, tmp_path / "emb.parquet")
    data = load_data(DataConfig(str(tmp_path / "emb.parquet"), text_column="text", label_column="label", drop_columns="id"))
    rows = _test_rows()
    assert list(data.test_rows.texts) == [TEXTS[i] for i in rows]
    assert data.columns == ("emb[0]", "emb[1]", "emb[2]", "w")
    assert data.label_names == ("cat", "dog")
    assert data.test_labels.tolist() == [int(labels[i] == "dog") for i in rows]
    with pytest.raises(SparseAEError, match=r"emb\.parquet --text-column 'id': expected a column of strings"):
        load_data(DataConfig(str(tmp_path / "emb.parquet"), text_column="id"))


@pytest.mark.parametrize("kind", ["txt", "jsonl"])
@pytest.mark.parametrize("load", ["memory", "stream"])
def test_sidecar_texts_beside_an_array_file(tmp_path, kind, load):
    np.save(tmp_path / "embeddings.npy", X)
    if kind == "txt":  # \r\n line ends, and a line separator inside a text that is not a row break
        (tmp_path / "embeddings.txt").write_bytes("".join(t + "\r\n" for t in TEXTS).encode())
    else:  # objects and plain strings, a blank line, and a newline inside a text
        lines = [json.dumps({"text": t + "\nsecond line", "id": i}) if i % 2 else json.dumps(t) for i, t in enumerate(TEXTS)]
        (tmp_path / "embeddings.jsonl").write_text("\n".join(lines[:5]) + "\n\n" + "\n".join(lines[5:]) + "\n")
    data = load_data(DataConfig(str(tmp_path / "embeddings.npy"), load=load))
    expected = [TEXTS[i] + ("\nsecond line" if kind == "jsonl" and i % 2 else "") for i in _test_rows()]
    assert list(data.test_rows.texts) == expected
    assert data.streamed == (load == "stream") and data.columns is None
    smaller = data.subset(test=2)
    assert list(smaller.test_rows.texts) == expected[:2]


def test_texts_named_explicitly_and_a_test_source_with_its_own(tmp_path):
    np.save(tmp_path / "train.npy", X)
    (tmp_path / "captions.txt").write_text("\n".join(TEXTS) + "\n")
    data = load_data(DataConfig(str(tmp_path / "train.npy"), texts=str(tmp_path / "captions.txt"), test_fraction=0.25))
    assert list(data.test_rows.texts) == [TEXTS[i] for i in _test_rows(N, 0.25)]
    assert data.config.texts == str((tmp_path / "captions.txt").resolve())

    np.save(tmp_path / "test.npy", X[:7])
    (tmp_path / "test.txt").write_text("\n".join(f"test {i}" for i in range(7)))
    data = load_data(DataConfig(str(tmp_path / "train.npy"), test_source=str(tmp_path / "test.npy")))
    # the test source's rows in the order _whole gives them: its train rows, then its held-out ones
    train, test = holdout_rows(7, 0.1)
    assert list(data.test_rows.texts) == [f"test {i}" for i in [*train.tolist(), *test.tolist()]]


def test_a_texts_file_of_the_wrong_length_is_refused(tmp_path):
    np.save(tmp_path / "embeddings.npy", X)
    (tmp_path / "embeddings.txt").write_text("\n".join(TEXTS[:-3]) + "\n")
    with pytest.raises(
        SparseAEError,
        match=r"embeddings\.txt: expected one text per row of .*embeddings\.npy \(40 rows\), got 37 lines\. "
        r"Write one text per row, in the rows' order \(a text with a newline in it needs \.jsonl",
    ):
        load_data(DataConfig(str(tmp_path / "embeddings.npy")))
    (tmp_path / "embeddings.jsonl").write_text("\n".join(json.dumps(t) for t in TEXTS))
    with pytest.raises(SparseAEError, match=r"expected one file of texts beside it, got embeddings\.txt and embeddings\.jsonl"):
        load_data(DataConfig(str(tmp_path / "embeddings.npy")))
    (tmp_path / "embeddings.txt").unlink()
    (tmp_path / "embeddings.jsonl").write_text('{"text": 3}\n')
    with pytest.raises(SparseAEError, match=r"embeddings\.jsonl, line 1: expected a JSON string, or an object with a"):
        load_data(DataConfig(str(tmp_path / "embeddings.npy")))


def test_texts_are_refused_where_they_cannot_apply(tmp_path):
    with pytest.raises(SparseAEError, match=r"expected the texts from one place"):
        DataConfig("x.csv", text_column="text", texts="t.txt")
    np.save(tmp_path / "x.npy", X)
    with pytest.raises(SparseAEError, match=r"x\.npy --text-column: expected a CSV or Parquet file"):
        load_data(DataConfig(str(tmp_path / "x.npy"), text_column="text"))
    with pytest.raises(SparseAEError, match=r"--texts t\.txt: expected an array file or a shard cache"):
        load_data(DataConfig("mnist", texts="t.txt"))


@pytest.mark.parametrize(
    ("texts", "content", "message"),
    [
        ("t.csv", b"a\n", r"--texts .*t\.csv: expected a \.txt or \.jsonl file, got '\.csv'\. Convert it\."),
        ("none.txt", None, r"--texts .*none\.txt: expected a file of texts, got no such file\. Check the path\."),
        ("t.txt", b"caf\xe9\n", r"t\.txt: expected UTF-8 text, got a byte that is not UTF-8 at 3\. Save it as UTF-8\."),
        ("t.jsonl", b"{oops\n", r"t\.jsonl, line 1: expected a JSON object or string, got invalid JSON"),
    ],
)
def test_a_texts_file_that_cannot_be_read_says_why(tmp_path, texts, content, message):
    np.save(tmp_path / "x.npy", X[:1])
    if content is not None:
        (tmp_path / texts).write_bytes(content)
    with pytest.raises(SparseAEError, match=message):
        load_data(DataConfig(str(tmp_path / "x.npy"), texts=str(tmp_path / texts)))


def test_row_info_fields_must_agree():
    with pytest.raises(SparseAEError, match=r"RowInfo: expected one entry per row in every field, got 2 texts, 1 extra\['id'\]"):
        RowInfo(texts=("a", "b"), extra={"id": ("1",)})
    with pytest.raises(SparseAEError, match=r"array texts: expected one text per sample \(40\), got 2 texts"):
        Dataset.from_array(X, texts=["a", "b"])
    info = RowInfo(texts=("a", "b", "c"), extra={"id": ("1", "2", "3")})
    assert info.select(torch.tensor([2, 0])) == RowInfo(texts=("c", "a"), extra={"id": ("3", "1")})


def test_from_array_keeps_texts_and_columns():
    data = Dataset.from_array(X, texts=TEXTS, columns=["a", "b", "c"])
    assert list(data.test_rows.texts) == [TEXTS[i] for i in _test_rows()]
    assert data.columns == ("a", "b", "c")
    with pytest.raises(SparseAEError, match=r"columns: expected one name per feature of flat samples"):
        Dataset.from_array(X, columns=["a"])
    with pytest.raises(SparseAEError, match=r"test_rows: expected one entry per test sample \(2\), got 3 entries"):
        Dataset("x", torch.zeros(4, 2), torch.zeros(2, 2), test_rows=RowInfo(texts=("a", "b", "c")))


# --- labels and columns --------------------------------------------------------------------------------


def test_word_labels_become_classes_in_sorted_order(tmp_path):
    labels = ["zebra", "ant", "cat"] * 13 + ["ant"]
    data = load_data(DataConfig(str(_csv(tmp_path, labels)), label_column="label", drop_columns="id", text_column="text"))
    names = ("ant", "cat", "zebra")
    assert data.label_names == names
    everything = torch.cat([data.train_labels, data.test_labels])
    train, test = holdout_rows(N, 0.1)
    assert everything.tolist() == [names.index(labels[i]) for i in [*train.tolist(), *test.tolist()]]
    assert data.columns == ("x0", "x1", "x2")


def test_whole_number_labels_are_as_before(tmp_path):
    data = load_data(DataConfig(str(_csv(tmp_path, [str(i % 4) for i in range(N)])), label_column="label", text_column="text"))
    assert data.label_names is None
    assert data.test_labels.tolist() == [i % 4 for i in _test_rows()]


def test_an_empty_word_label_is_refused(tmp_path):
    labels = ["dog"] * N
    labels[6] = ""
    with pytest.raises(SparseAEError, match=r"emb\.csv, line 8, column 'label': expected a class label in every row"):
        load_data(DataConfig(str(_csv(tmp_path, labels)), label_column="label", text_column="text"))


def test_a_test_source_numbers_its_words_as_the_training_data(tmp_path):
    (tmp_path / "train.csv").write_text("a,y\n" + "".join(f"{i},{w}\n" for i, w in enumerate(["cat", "dog", "emu"] * 4)))
    (tmp_path / "test.csv").write_text("a,y\n1,emu\n2,dog\n3,emu\n")
    data = load_data(DataConfig(str(tmp_path / "train.csv"), test_source=str(tmp_path / "test.csv"), label_column="y"))
    assert data.label_names == ("cat", "dog", "emu")
    assert sorted(data.test_labels.tolist()) == [1, 2, 2]
    (tmp_path / "test.csv").write_text("a,y\n1,emu\n2,yak\n")
    with pytest.raises(SparseAEError, match=r"--test-source labels: expected classes of the training data .*class\(es\) 'yak'"):
        load_data(DataConfig(str(tmp_path / "train.csv"), test_source=str(tmp_path / "test.csv"), label_column="y"))


def test_labels_of_two_kinds_are_refused_and_parquet_labels_checked(tmp_path):
    (tmp_path / "train.csv").write_text("a,y\n" + "".join(f"{i},{i % 2}\n" for i in range(12)))
    (tmp_path / "test.csv").write_text("a,y\n1,emu\n2,dog\n")
    with pytest.raises(SparseAEError, match=r"got classes named by words in --test-source and numbers in --data"):
        load_data(DataConfig(str(tmp_path / "train.csv"), test_source=str(tmp_path / "test.csv"), label_column="y"))
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"x": np.ones(4), "y": ["a", None, "b", "a"]}), tmp_path / "t.parquet")
    with pytest.raises(SparseAEError, match=r"column .y.: expected class labels in every row: whole numbers, or words, got type"):
        load_data(DataConfig(str(tmp_path / "t.parquet"), label_column="y"))


@pytest.mark.parametrize(
    ("options", "columns"),
    [
        ({}, ("id", "x0", "x1", "x2")),
        ({"drop_columns": "id"}, ("x0", "x1", "x2")),
        ({"columns": "x2,x0"}, ("x0", "x2")),  # file order, as the values
        ({"columns": "id:x1", "drop_columns": "0"}, ("x0", "x1")),
    ],
)
def test_table_column_names_follow_the_selection(tmp_path, options, columns):
    data = load_data(DataConfig(str(_csv(tmp_path)), text_column="text", **options))
    assert data.columns == columns
    order = ["id", "x0", "x1", "x2"]
    full = np.column_stack([np.arange(N), X])[_test_rows()]
    assert np.allclose(data.test.numpy(), full[:, [order.index(c) for c in columns]])


def test_arrays_without_names_have_no_columns(tmp_path):
    np.save(tmp_path / "x.npy", X)
    assert load_data(DataConfig(str(tmp_path / "x.npy"))).columns is None
    (tmp_path / "plain.csv").write_text("".join(",".join(map(str, row)) + "\n" for row in X.tolist()))
    assert load_data(DataConfig(str(tmp_path / "plain.csv"))).columns is None


def test_encode_reads_a_table_without_its_text_column(tmp_path):
    options = table_options({"text_column": "text", "drop_columns": "id", "label_column": None}, tmp_path / "emb.csv")
    assert options == {"drop_columns": "id", "text_column": "text"}


# --- tokens of language-model activations ------------------------------------------------------------------

CONTEXT = 8
"""Short sequences, so that most documents of DOCS are cut into several."""


def _lm_config(lm_dir: Path, text_file: Path, tokens: int):
    from sparseae.data.activations import ActivationConfig

    return ActivationConfig(model=str(lm_dir), module="transformer.h.0", text=str(text_file), device="cpu",
                            context_length=CONTEXT, tokens=tokens, batch_size=3)  # fmt: skip


def _sequences(lm_dir: Path) -> list[list[int]]:
    """The reference: each text tokenized alone, cut into BOS + at most CONTEXT - 1 tokens."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(lm_dir)
    seqs = []
    for doc in DOCS:
        ids = tokenizer(doc, add_special_tokens=False)["input_ids"]
        seqs += [[tokenizer.bos_token_id, *ids[i : i + CONTEXT - 1]] for i in range(0, len(ids), CONTEXT - 1)]
    return seqs


@pytest.fixture(scope="module")
def cache(lm_dir, text_file, tmp_path_factory, one_torch_thread):
    pytest.importorskip("transformers")
    from sparseae.data.activations import cache_activations

    return cache_activations(_lm_config(lm_dir, text_file, 150), tmp_path_factory.mktemp("c") / "cache", progress=False)


def test_cache_records_the_document_position_and_token_of_every_row(cache, lm_dir):
    from sparseae.data.shards import ShardReader
    from sparseae.data.tokens import read_tokens

    seqs = _sequences(lm_dir)
    rows = read_tokens(cache, len(ShardReader(cache)))
    docs = rows.documents
    assert len(rows) == 150 and docs.tokenizer == docs.model == str(lm_dir)
    # every sequence up to the last row's, whole (its tokens past the 150th row included)
    assert [docs.tokens(d).tolist() for d in range(len(docs))] == seqs[: len(docs)]
    expected = [(d, p) for d, seq in enumerate(seqs) for p in range(1, len(seq))][:150]  # BOS (position 0) is no row
    assert list(zip(rows.doc_ids.tolist(), rows.positions.tolist(), strict=True)) == expected
    assert rows.token_ids().tolist() == [seqs[d][p] for d, p in expected]
    assert docs.text(seqs[0][0]) == "<|endoftext|>"
    assert "".join(docs.text(t) for t in seqs[0][1:]) == DOCS[0][: len("".join(docs.text(t) for t in seqs[0][1:]))]


def test_loading_a_cache_fills_the_test_rows_tokens(cache, lm_dir):
    seqs = _sequences(lm_dir)
    data = load_data(DataConfig(str(cache), test_fraction=0.2))
    tokens = data.test_rows.tokens
    expected = [(d, p) for d, seq in enumerate(seqs) for p in range(1, len(seq))][:150]
    picked = [expected[i] for i in _test_rows(150, 0.2)]
    assert list(zip(tokens.doc_ids.tolist(), tokens.positions.tolist(), strict=True)) == picked
    assert tokens.token_ids().tolist() == [seqs[d][p] for d, p in picked]
    d, p = picked[-1]
    window, at = tokens.documents.context(d, p, before=3, after=2)
    assert window == seqs[d][max(0, p - 3) : p + 3] and window[at] == seqs[d][p]
    assert len(data.subset(test=4).test_rows.tokens) == 4


def test_token_texts_joined_give_the_text_back(lm_cache):
    tokens = load_data(DataConfig(str(lm_cache))).test_rows.tokens
    docs, corpus = tokens.documents, " ".join(DOCS)
    assert len(tokens) > 0 and {int(d) for d in tokens.doc_ids} <= set(range(len(docs)))
    for d in range(len(docs)):
        ids = docs.tokens(d).tolist()
        assert docs.text(ids[0]) == "<|endoftext|>"
        assert "".join(docs.text(t) for t in ids[1:]).strip() in corpus


def test_an_old_cache_without_token_info_still_loads(cache, tmp_path):
    old = Path(shutil.copytree(cache, tmp_path / "old"))
    (old / "tokens.json").unlink()
    (old / "tokens.safetensors").unlink()
    data = load_data(DataConfig(str(old)))
    assert data.test_rows is None and len(data.test) > 0


def test_a_token_file_that_does_not_fit_the_cache_is_refused(cache, tmp_path):
    from safetensors.torch import load_file, save_file

    bad = Path(shutil.copytree(cache, tmp_path / "bad"))
    tensors = load_file(str(bad / "tokens.safetensors"))
    save_file({**tensors, "doc_ids": tensors["doc_ids"][:-1].contiguous()}, str(bad / "tokens.safetensors"))
    with pytest.raises(SparseAEError, match=r"tokens\.safetensors: expected a document and position for each of the 150 rows"):
        load_data(DataConfig(str(bad)))


def test_lm_source_keeps_the_tokens_of_its_test_rows(lm_dir, text_file, one_torch_thread):
    pytest.importorskip("transformers")
    seqs = _sequences(lm_dir)
    data = load_data(DataConfig("lm", lm=_lm_config(lm_dir, text_file, 100), test_fraction=0.25))
    tokens = data.test_rows.tokens
    assert len(tokens) == len(data.test) == 25
    expected = [seqs[d][p] for d, seq in enumerate(seqs) for p in range(1, len(seq))][:25]
    assert tokens.token_ids().tolist() == expected


# --- the command line ----------------------------------------------------------------------------------


def test_cli_flags_reach_the_run_and_eval_on_other_data_leaves_the_texts(tmp_path, monkeypatch, capsys):
    from sparseae.cli import main
    from sparseae.io import read_json

    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    np.save("emb.npy", rng.normal(size=(300, 8)).astype(np.float32))
    np.save("other.npy", rng.normal(size=(100, 8)).astype(np.float32))
    Path("captions.txt").write_text("".join(f"caption {i}\n" for i in range(300)))
    flags = ["--model", "dense", "--n-latents", "16", "--k", "4", "--aux-k", "0", "--epochs", "1", "--batch-size", "64"]
    assert main(["train", *flags, "--data", "emb.npy", "--texts", "captions.txt", "--out", "run", "--quiet"]) == 0
    data = read_json(tmp_path / "run" / "config.json")["data"]
    assert data["texts"] == str(tmp_path / "captions.txt") and data["text_column"] is None
    assert main(["eval", "run", "--data", "other.npy", "--quiet"]) == 0
    assert "other.npy test" in capsys.readouterr().out
