"""The HTML report and comparison page: content, escaping, and a real headless Chromium."""

import os
import shutil
from pathlib import Path

import pytest
import torch

import sparseae
from sparseae.report import write_comparison, write_report

XSS = "<script>window.__xss = 1</script>"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


@pytest.fixture(scope="module")
def run(tmp_path_factory, mnist):
    """A briefly trained conv run on 1,024 digits whose label 7 is named like a script tag."""
    names = tuple(XSS if i == 7 else f"digit {i}" for i in range(10))
    base = mnist.subset(1024, 256)
    data = sparseae.Dataset("mnist-named", base.train, base.test, base.train_labels, base.test_labels, label_names=names)
    out = tmp_path_factory.mktemp("report") / "run"
    sparseae.train(sparseae.mnist_conv(seed=1), data, sparseae.TrainConfig(epochs=2), out, progress=False)
    return out, data


def test_report_is_self_contained_and_escaped(run):
    out, data = run
    page = write_report(out, data=data).read_text()
    assert page.count("<script") == 2  # the inline JSON and the inline script; nothing else runs
    assert XSS not in page and "\\u003cscript\\u003e" in page  # the label travels escaped inside the JSON
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "") and "https://" not in page
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


def _chromium():
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        if os.environ.get("CI"):
            pytest.fail("CI must have Debian's chromium and chromium-driver: `make test` installs them as root")
        pytest.skip("no chromium/chromedriver here: `make test` installs them when run as root (apt-get)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1200,2400"):  # fmt: skip
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # Deadlines against a hang only, far beyond a loaded machine: chromedriver's own are 60 s for the
    # browser to start, 300 s for a page, 30 s for a script.
    options.add_experimental_option("browserStartupTimeout", 600_000)
    options.timeouts = {"pageLoad": 600_000, "script": 600_000}
    return webdriver.Chrome(service=Service(driver), options=options)


@pytest.mark.slow
def test_report_in_headless_chromium(run, tmp_path):
    out, data = run
    page = write_report(out, data=data, out=tmp_path / "report.html")
    browser = _chromium()
    try:
        browser.get(page.as_uri())
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == []
        widths = browser.execute_script("return [...document.images].map(i => i.complete ? i.naturalWidth : -1)")
        assert widths and min(widths) > 0  # every image decoded
        assert browser.execute_script("return window.__xss") is None
        # Choose another latent by clicking its picture: its top inputs replace the first one's.
        tiles = browser.find_elements("css selector", "#grid img")
        target = tiles[3]
        chosen = target.get_attribute("data-id")
        target.click()
        assert browser.find_element("css selector", "#info h3").text == f"Latent {chosen}"
        tops = browser.find_elements("css selector", "#tops .top")
        codes = sparseae.load(out).encode(data.test).detach()
        expected = codes[:, int(chosen)].topk(len(tops)).indices.tolist()
        shown = [int(t.text.split("#")[1].split(" ")[0]) for t in tops]
        assert shown == expected
        # Typing a number works too.
        box = browser.find_element("id", "latent")
        box.clear()
        box.send_keys(str(tiles[0].get_attribute("data-id")) + "\n")
        assert browser.find_element("css selector", "#info h3").text == f"Latent {tiles[0].get_attribute('data-id')}"
        # The script-like label shows as text and did not run.
        labels = browser.execute_script("return [...document.querySelectorAll('#tops .top div')].map(d => d.textContent)")
        seven = [i for i in range(len(data.test)) if int(data.test_labels[i]) == 7]
        for latent in browser.execute_script("return JSON.parse(document.getElementById('browser-data').textContent).latents"):
            if any(t["input"] in seven for t in latent["top"]):
                browser.execute_script(f"show({latent['id']})")
                labels = browser.execute_script("return [...document.querySelectorAll('#tops .top div')].map(d => d.textContent)")
                break
        assert f"label {XSS}" in labels and browser.execute_script("return window.__xss") is None
        ARTIFACTS.mkdir(exist_ok=True)
        assert browser.save_screenshot(str(ARTIFACTS / "report.png"))
    finally:
        browser.quit()


def test_report_for_non_image_data(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(300, 10)
    data = sparseae.Dataset("vectors", x[:200], x[200:], torch.zeros(200, dtype=torch.long), torch.zeros(100, dtype=torch.long))
    model = sparseae.build_preset("dense", (10,), sparseae.build_sparsity("topk", k=2), seed=0, n_latents=8)
    sparseae.train(model, data, sparseae.TrainConfig(epochs=1), tmp_path / "run", progress=False)
    page = write_report(tmp_path / "run", data=data).read_text()
    assert '"values": [' in page and "Reconstructions" not in page
