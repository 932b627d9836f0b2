"""The HTML report and comparison page: content, escaping, and a real headless Chromium."""

import chromium
import pytest
import torch

import sparseae
from sparseae.report import write_comparison, write_report

XSS = "<script>window.__xss = 1</script>"


@pytest.fixture(scope="module")
def run(tmp_path_factory, mnist):
    """A briefly trained conv run on 1,024 digits whose label 7 is named like a script tag."""
    names = tuple(XSS if i == 7 else f"digit {i}" for i in range(10))
    base = mnist.subset(1024, 256)
    data = sparseae.Dataset("mnist-named", base.train, base.test, base.train_labels, base.test_labels, label_names=names)
    out = tmp_path_factory.mktemp("report") / "run"
    sparseae.train(sparseae.mnist_conv(seed=1, recipe="keras"), data, sparseae.TrainConfig(epochs=2), out, progress=False)
    return out, data


def test_report_is_self_contained_and_escaped(run):
    out, data = run
    path = write_report(out, data=data)
    page = path.read_text()
    assert page.count("<script") == 2  # the inline JSON index and the inline script; nothing else runs on opening
    assert XSS not in page
    files = sorted((path.parent / "report_files").iterdir())
    assert [f.name for f in files] == ["features-0000.js", "rows-0000.js"]  # 32 latents, 256 rows: one chunk of each
    chunk = files[1].read_text()
    assert XSS not in chunk and "\\u003cscript\\u003e" in chunk  # the label travels escaped inside the JSON
    for text in (page, chunk):
        assert "http://" not in text.replace("http://www.w3.org/2000/svg", "") and "https://" not in text
    for section in ("Metrics", "Training curves", "Reconstructions", "Latent density", "Features", "Configuration"):
        assert f"<h2>{section}</h2>" in page


def test_comparison_page_lists_every_run(run, tmp_path):
    out, _ = run
    page = write_comparison([out, out], tmp_path / "c.html").read_text()
    assert "Sparsity-fidelity frontier" in page and page.count("<td>run</td>") == 2 and "<circle" in page


def test_cli_report_and_compare(run, tmp_path, capsys):
    from sparseae.cli import main

    out, _ = run
    assert (
        main(["report", str(out), "--out", str(tmp_path / "r.html"), "--quiet"]) == 2
    )  # in-memory data: the CLI cannot reload it
    assert "expected a run whose data sparseae can load again" in capsys.readouterr().err
    assert main(["compare", str(out), "--out", str(tmp_path / "c.html"), "--quiet"]) == 0
    assert (tmp_path / "c.html").is_file()


@pytest.mark.slow
def test_report_in_headless_chromium(run, tmp_path):
    out, data = run
    page = write_report(out, data=data, out=tmp_path / "report.html")
    browser = chromium.chromium()
    try:
        browser.get(page.as_uri())
        chromium.wait_for(browser, "!!document.getElementById('tops')")  # the first feature's chunk has loaded
        assert chromium.severe(browser) == []
        widths = browser.execute_script("return [...document.images].map(i => i.complete ? i.naturalWidth : -1)")
        assert widths and min(widths) > 0  # every image decoded
        assert browser.execute_script("return window.__xss") is None
        # Choose another latent by clicking its picture: its top inputs replace the first one's.
        tiles = browser.find_elements("css selector", "#features .feature img")
        assert len(tiles) == 32
        chosen = int(browser.find_elements("css selector", "#features .feature")[3].get_attribute("data-id"))
        tops = chromium.open_feature(browser, chosen)
        codes = sparseae.load(out).encode(data.test).detach()
        values, rows = codes[:, chosen].topk(len(tops))
        assert [t["row"] for t in tops] == rows.tolist()
        torch.testing.assert_close(torch.tensor([t["value"] for t in tops]), values)
        # Typing a number works too.
        box = browser.find_element("id", "latent")
        box.clear()
        box.send_keys("0\n")
        chromium.wait_for(browser, "document.querySelector('#info h3').textContent === 'Feature 0'")
        # The script-like label shows as text and did not run.
        seven = {i for i in range(len(data.test)) if int(data.test_labels[i]) == 7}
        latent = next(j for j in range(32) if set(codes[:, j].topk(20).indices.tolist()) & seven)
        chromium.open_feature(browser, latent)
        labels = browser.execute_script("return [...document.querySelectorAll('#tops .example div')].map(d => d.textContent)")
        assert f"label {XSS}" in labels and browser.execute_script("return window.__xss") is None
        assert chromium.severe(browser) == []
        chromium.screenshot(browser, "report-mnist")
    finally:
        browser.quit()


def test_report_for_non_image_data(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(300, 10)
    data = sparseae.Dataset("vectors", x[:200], x[200:], torch.zeros(200, dtype=torch.long), torch.zeros(100, dtype=torch.long))
    model = sparseae.build_preset("dense", (10,), sparseae.build_sparsity("topk", k=2), seed=0, n_latents=8)
    sparseae.train(model, data, sparseae.TrainConfig(epochs=1), tmp_path / "run", progress=False)
    page = write_report(tmp_path / "run", data=data)
    assert '"values":[' in (tmp_path / "run" / "report_files" / "rows-0000.js").read_text()
    assert "Reconstructions" not in page.read_text()
