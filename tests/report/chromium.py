"""A real headless Chromium through chromedriver, for the report's browser tests (skipped where there is none)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
DOC_IMAGES = ROOT / "docs" / "images"


def chromium(size: str = "1200,2400"):
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
                 "--disable-component-update", "--disable-sync", f"--window-size={size}"):  # fmt: skip
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # Deadlines against a hang only, far beyond a loaded machine: chromedriver's own are 60 s for the
    # browser to start, 300 s for a page, 30 s for a script.
    options.add_experimental_option("browserStartupTimeout", 600_000)
    options.timeouts = {"pageLoad": 600_000, "script": 600_000}
    return webdriver.Chrome(service=Service(driver), options=options)


def severe(browser) -> list[dict]:
    """The console's errors since the last call (chromedriver hands each entry out once)."""
    return [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]


def wait_for(browser, script: str, timeout: float = 120.0):
    """Poll ``return <script>`` until it is truthy (a chunk file loads asynchronously); its value."""
    from selenium.webdriver.support.wait import WebDriverWait

    return WebDriverWait(browser, timeout, poll_frequency=0.05).until(lambda b: b.execute_script("return " + script))


def open_feature(browser, latent: int) -> list[dict]:
    """Click feature ``latent`` in the list (searching the pages for it) and return its top examples as shown."""
    browser.execute_script("document.getElementById('filter').value = 'all'; document.getElementById('sort').value = 'id';"
                           "document.getElementById('sort').dispatchEvent(new Event('change'))")  # fmt: skip
    for _ in range(1000):
        found = browser.find_elements("css selector", f"#features .feature[data-id='{latent}']")
        if found:
            found[0].click()
            break
        browser.find_element("id", "next").click()
    title = f"document.querySelector('#info h3')?.textContent === 'Feature {latent}'"
    wait_for(browser, title + " && !!document.getElementById('tops')")
    return shown_examples(browser, "#tops")


def shown_examples(browser, where: str) -> list[dict]:
    return browser.execute_script(
        f"return [...document.querySelectorAll('{where} .example')].map(e => ({{row: Number(e.dataset.row), "
        "value: Number(e.dataset.value), text: e.textContent, "
        "tokens: [...e.querySelectorAll('.tok')].map(t => ({text: t.textContent, title: t.title}))}))"
    )


def screenshot(browser, name: str, element: str = "browser", width: int = 800) -> Path:
    """A small PNG of one element (scaled to ``width``, its first 900 pixels of height): into test-artifacts/ (whole),
    and with SPARSEAE_DOC_IMAGES=1 into docs/images/ (the docs show it) instead of a small copy in test-artifacts/."""
    from PIL import Image

    ARTIFACTS.mkdir(exist_ok=True)
    raw = ARTIFACTS / f"{name}.png"
    target = browser.find_element("id", element)
    browser.execute_script("arguments[0].scrollIntoView()", target)
    target.screenshot(str(raw))
    image = Image.open(raw)
    if image.width > width:
        image = image.resize((width, round(image.height * width / image.width)), Image.LANCZOS)
    image = image.crop((0, 0, image.width, min(image.height, 900))).convert("RGB").quantize(colors=64)
    out = DOC_IMAGES / f"{name}.png" if os.environ.get("SPARSEAE_DOC_IMAGES") else ARTIFACTS / f"{name}-small.png"
    image.save(out, optimize=True)  # docs/images only on request: a test run leaves the tree clean
    return out
