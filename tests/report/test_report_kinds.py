"""What a feature means, by the kind of rows, in a real headless Chromium: texts, tokens in documents, tables.

Every check compares what the page shows with values computed here with ``model.encode``.
"""

from __future__ import annotations

import math

import chromium
import pytest
import torch

import sparseae
from conftest import DOCS
from sparseae.data.rows import Documents, RowInfo, TokenRows
from sparseae.report import write_report

XSS = "<script>window.__xss=1</script>"
TOPICS = ("cats", "rivers", "engines", "music", "tax")


@pytest.fixture(scope="module")
def browser():
    driver = chromium.chromium("1200,2400")
    yield driver
    driver.quit()


def _train(out, data, n_latents, k=3, preprocess=None):
    model = sparseae.build_preset(
        "dense", data.sample_shape, sparseae.build_sparsity("topk", k=k), seed=0, n_latents=n_latents, preprocess=preprocess
    )
    sparseae.train(model, data, sparseae.TrainConfig(epochs=1, batch_size=32, metrics_every=2), out, progress=False)
    return sparseae.load(out)


def _top(codes, latent, n):
    values, rows = codes[:, latent].topk(n)
    keep = values != 0
    return rows[keep].tolist(), values[keep]


def _column(browser, caption):
    """The first column of the detail's table whose caption contains ``caption``."""
    return browser.execute_script(
        "return [...[...document.querySelectorAll('#info table')].find(t => t.caption.textContent.includes(arguments[0]))"
        ".querySelectorAll('tr td:first-child')].map(c => c.textContent)",
        caption,
    )


def _check_top(browser, codes, latent):
    """Open ``latent``: its shown top examples are the rows where model.encode gives it the largest values."""
    shown = chromium.open_feature(browser, latent)
    rows, values = _top(codes, latent, 20)
    assert [s["row"] for s in shown] == rows
    torch.testing.assert_close(torch.tensor([s["value"] for s in shown]), values)
    return shown


# --- texts: an embedding SAE whose rows carry the text they embed ---


@pytest.fixture(scope="module")
def texts_run(tmp_path_factory):
    torch.manual_seed(0)
    x = torch.randn(400, 16)
    texts = tuple(
        f"sentence {i} about {TOPICS[i % 5]}" + (f" {XSS}" if i % 3 == 0 else "") + (" </div><b>bold</b>" if i % 4 == 0 else "")
        for i in range(100)
    )
    data = sparseae.Dataset("embeddings", x[:300], x[300:], test_rows=RowInfo(texts=texts))
    out = tmp_path_factory.mktemp("texts") / "run"
    model = _train(out, data, 24)
    page = write_report(out, data=data)  # the texts come from data.test_rows
    return page, data, texts, model.encode(data.test).detach()


def test_texts_travel_escaped(texts_run):
    page, *_ = texts_run
    chunk = (page.parent / "report_files" / "rows-0000.js").read_text()
    for text in (page.read_text(), chunk):
        assert XSS not in text and "</div><b>" not in text
    assert "\\u003cscript\\u003e" in chunk


def test_texts_in_chromium(texts_run, browser):
    page, data, texts, codes = texts_run
    browser.get(page.as_uri())
    chromium.wait_for(browser, "!!document.getElementById('tops')")
    latent = int(codes.ne(0).sum(0).argmax())
    shown = _check_top(browser, codes, latent)
    shown_texts = browser.execute_script("return [...document.querySelectorAll('#tops .example .text')].map(e => e.textContent)")
    assert shown_texts == [texts[s["row"]] for s in shown]
    assert any(XSS in t for t in shown_texts) and browser.execute_script("return window.__xss") is None
    assert browser.find_elements("css selector", "#tops b") == []  # '<b>' shows as text, makes no element
    chromium.screenshot(browser, "report-texts")
    # Quantile examples are real rows with their exact value.
    for ex in chromium.shown_examples(browser, "#bands"):
        assert math.isclose(ex["value"], float(codes[ex["row"], latent]), rel_tol=1e-6)
    # The search finds the feature by a word of its top texts.
    word = texts[shown[0]["row"]].split()[1]  # its number: a word of few texts
    box = browser.find_element("id", "search")
    box.send_keys(word)
    ids = browser.execute_script("return [...document.querySelectorAll('#features .feature')].map(e => Number(e.dataset.id))")
    assert latent in ids and len(ids) < codes.shape[1]
    box.clear()
    box.send_keys("sentence")  # in every text: listed as too common rather than with every feature
    assert "too many features" in browser.find_element("id", "page-info").text
    box.clear()
    box.send_keys("zzznotaword")
    assert browser.execute_script("return document.querySelectorAll('#features .feature').length") == 0
    box.clear()
    # A one-epoch run has curves, from its per-step metrics.
    assert "Per step, from metrics-steps.jsonl" in browser.page_source
    assert len(browser.find_elements("css selector", "svg polyline")) >= 3
    assert chromium.severe(browser) == []


def test_sort_and_filter(texts_run, browser):
    page, _, _, codes = texts_run
    browser.get(page.as_uri())
    freq = codes.ne(0).double().mean(0)
    ids = "return [...document.querySelectorAll('#features .feature')].map(e => Number(e.dataset.id))"
    assert browser.execute_script(ids) == sorted(range(len(freq)), key=lambda j: (-freq[j], j))
    browser.execute_script("const f = document.getElementById('filter'); f.value = 'dense'; f.dispatchEvent(new Event('change'))")
    assert sorted(browser.execute_script(ids)) == [j for j in range(len(freq)) if freq[j] > 0.1]
    browser.execute_script("const f = document.getElementById('filter'); f.value = 'dead'; f.dispatchEvent(new Event('change'))")
    assert sorted(browser.execute_script(ids)) == [j for j in range(len(freq)) if freq[j] == 0]


# --- tokens: a language-model SAE on the tiny GPT-2's residual stream ---


@pytest.fixture(scope="module")
def tokens_run(tmp_path_factory, lm_dir):
    pytest.importorskip("transformers")
    from sparseae.data.activations import load_lm

    lm, tokenizer = load_lm(str(lm_dir), device="cpu")
    ids = [torch.tensor([tokenizer.bos_token_id, *tokenizer(d, add_special_tokens=False)["input_ids"]]) for d in DOCS[:6]]
    with torch.no_grad():
        acts = [lm(input_ids=t[None], output_hidden_states=True).hidden_states[1][0] for t in ids]  # (T, 32) after block 0
    token_ids = torch.cat(ids)
    offsets = torch.tensor([0, *torch.tensor([len(t) for t in ids]).cumsum(0).tolist()])
    vocab = {int(t): tokenizer.decode([int(t)]) for t in token_ids.unique()}
    documents = Documents(token_ids, offsets, vocab, tokenizer=str(lm_dir), model=str(lm_dir))
    # Rows: every token but BOS and every 5th position (those show unshaded: not rows of the data).
    doc_ids, positions = zip(*[(d, p) for d, t in enumerate(ids) for p in range(1, len(t)) if p % 5 != 3], strict=True)
    doc_ids, positions = torch.tensor(doc_ids), torch.tensor(positions)
    x = torch.stack([acts[d][p] for d, p in zip(doc_ids.tolist(), positions.tolist(), strict=True)])
    data = sparseae.Dataset("tiny-gpt2", x, x)
    out = tmp_path_factory.mktemp("tokens") / "run"
    model = _train(out, data, 40, k=4, preprocess="norm")
    rows = TokenRows(doc_ids, positions, documents)
    page = write_report(out, data=data, rows=RowInfo(tokens=rows))
    w_u = lm.get_output_embeddings().weight.detach()
    return page, model, x, rows, tokenizer, w_u, model.encode(x).detach()


def test_tokens_in_chromium(tokens_run, browser):
    page, model, x, rows, tokenizer, w_u, codes = tokens_run
    browser.get(page.as_uri())
    chromium.wait_for(browser, "!!document.getElementById('tops')")
    latent = int(codes.ne(0).sum(0).argmax())
    shown = _check_top(browser, codes, latent)
    # Each context: 16 tokens before and 4 after, each shaded by this feature's activation on it (None: not a row).
    pairs = zip(rows.doc_ids.tolist(), rows.positions.tolist(), strict=True)
    docs, where = rows.documents, {(d, p): i for i, (d, p) in enumerate(pairs)}
    for ex in shown:
        d, p = int(rows.doc_ids[ex["row"]]), int(rows.positions[ex["row"]])
        span = range(max(0, p - 16), min(len(docs.tokens(d)), p + 5))
        assert [t["text"] for t in ex["tokens"]] == [docs.text(docs.tokens(d)[q]) for q in span]
        for q, t in zip(span, ex["tokens"], strict=True):
            if (d, q) in where:
                value = float(codes[where[(d, q)], latent])
                assert math.isclose(float(t["title"].split()[-1]), value, rel_tol=1e-3, abs_tol=1e-6), (q, t)
            else:
                assert t["title"] == "not a held-out row (no activation)"
    # Logit tables: W_U @ the decoder atom in the raw inputs' units (the 'norm' scale undone).
    atom = model.W_dec[:, latent].detach() / model.preprocess.scale
    logits = w_u @ atom
    for caption, order in (("promotes", logits.topk(10).indices), ("suppresses", logits.topk(10, largest=False).indices)):
        assert _column(browser, caption) == [tokenizer.decode([int(i)]) for i in order]
    assert chromium.severe(browser) == []
    chromium.screenshot(browser, "report-tokens")


def test_token_view(tokens_run, browser):
    page, _, _, rows, _, _, codes = tokens_run
    browser.get(page.as_uri())
    chromium.wait_for(browser, "!!document.getElementById('tops')")
    token = browser.find_element("css selector", ".doc .tok[data-row='7']")
    token.click()
    links = browser.find_elements("css selector", "#token-features a")
    values, latents = codes[7].topk(10)
    expected = [int(j) for j, v in zip(latents, values, strict=True) if v != 0]
    assert [int(a.get_attribute("data-id")) for a in links] == expected
    assert browser.find_elements("css selector", ".doc .tok.none")  # BOS and the tokens left out of the rows
    links[0].click()
    title = f"document.querySelector('#info h3').textContent === 'Feature {expected[0]}'"
    chromium.wait_for(browser, title + " && !!document.getElementById('tops')")
    assert chromium.severe(browser) == []
    chromium.screenshot(browser, "report-token-view", element="token-view")


# --- tables: column names and the decoder atom's loadings ---


def test_tables_in_chromium(tmp_path, browser):
    torch.manual_seed(0)
    columns = ("age", "income", "<b>height</b>", "weight", "rooms", "distance")
    x = torch.randn(300, len(columns)) * torch.tensor([1.0, 3.0, 0.5, 2.0, 1.0, 1.5])
    data = sparseae.Dataset("houses", x[:200], x[200:], columns=columns)
    model = _train(tmp_path / "run", data, 10, k=2)
    page = write_report(tmp_path / "run", data=data)  # the names come from data.columns
    codes = model.encode(data.test).detach()
    browser.get(page.as_uri())
    chromium.wait_for(browser, "!!document.getElementById('tops')")
    latent = int(codes.ne(0).sum(0).argmax())
    _check_top(browser, codes, latent)
    atom = model.W_dec[:, latent].detach() / (model.preprocess.scale if "norm" in model.preprocess.steps else 1)
    for caption, sign in (("positive", 1), ("negative", -1)):
        cells = _column(browser, caption)
        order = (sign * atom).argsort(descending=True)
        assert cells == [columns[i] for i in order.tolist() if sign * atom[i] > 0]
    first = browser.execute_script("return document.querySelector('#tops .example div').textContent")
    row = int(codes[:, latent].argmax())
    assert first.startswith(f"age {round(float(data.test[row, 0]), 4)}, income ")  # each value with its column's name
    assert browser.find_elements("css selector", "#info b, #tops b") == []
    assert chromium.severe(browser) == []
    chromium.screenshot(browser, "report-tables")


# --- a real activation source: --data lm on the tiny GPT-2, reported from the command line ---


def test_lm_source_report_from_the_cli(lm_dir, text_file, tmp_path, browser, one_torch_thread):
    pytest.importorskip("transformers")
    from sparseae.cli import main
    from sparseae.data import DataConfig, load_data
    from sparseae.data.activations import ActivationConfig

    lm = ActivationConfig(model=str(lm_dir), module="transformer.h.0", text=str(text_file), device="cpu",
                          context_length=16, tokens=240, batch_size=3)  # fmt: skip
    data = load_data(DataConfig("lm", lm=lm, test_fraction=0.25))
    assert data.test_rows is not None and data.test_rows.tokens is not None
    model = sparseae.build_preset("dense", data.sample_shape, sparseae.build_sparsity("topk", k=4), seed=0, n_latents=32)
    sparseae.train(model, data, sparseae.TrainConfig(epochs=1, batch_size=32), tmp_path / "run", progress=False)
    # The run records its data, so the command line loads it again, tokens and all.
    assert main(["report", str(tmp_path / "run"), "--quiet"]) == 0
    page = tmp_path / "run" / "report.html"
    chunk = (tmp_path / "run" / "report_files" / "features-0000.js").read_text()
    assert '"ctx":' in chunk and '"logits":' in chunk  # contexts, and logit tables through the GPT-2's unembedding
    codes = sparseae.load(tmp_path / "run").encode(data.test).detach()
    browser.get(page.as_uri())
    chromium.wait_for(browser, "!!document.getElementById('tops')")
    _check_top(browser, codes, int(codes.ne(0).sum(0).argmax()))
    assert browser.find_elements("css selector", "#token-view .doc .tok")
    assert chromium.severe(browser) == []


def test_no_logit_tables_without_a_fitting_unembedding(lm_dir, caplog):
    pytest.importorskip("transformers")
    from sparseae.report.meaning import unembedding

    documents = Documents(torch.tensor([0, 1]), torch.tensor([0, 2]), {0: "a", 1: "b"}, tokenizer=str(lm_dir))
    assert unembedding(documents, 32) is None  # no model named
    named = Documents(documents.token_ids, documents.offsets, documents.vocab, str(lm_dir), model=str(lm_dir))
    w_u, _ = unembedding(named, 32)
    assert w_u.shape[1] == 32
    assert unembedding(named, 7) is None and "unembedding is 32 wide, the SAE's input 7" in caplog.text  # another width


def test_no_logit_tables_for_an_encoder_model(minilm_dir, caplog):
    from sparseae.report.meaning import unembedding

    named = Documents(torch.tensor([0, 1]), torch.tensor([0, 2]), {0: "a", 1: "b"}, str(minilm_dir), model=str(minilm_dir))
    assert unembedding(named, 384) is None and "is an encoder (BertModel), with no unembedding" in caplog.text
