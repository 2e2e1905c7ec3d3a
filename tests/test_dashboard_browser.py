"""Dashboards in a real browser: headless Debian Chromium driven by Selenium.

(1) A finished tiny carve's dashboard served over HTTP on 127.0.0.1 the way the service will serve
it (page, local Plotly bundle, job index): no console errors, every chart drawn with data, the
layer picker moves the heatmap; a screenshot goes to ``$MOECARVE_TEST_OUTPUT`` (default
``test-output/``). (2) The CLI's self-contained report opened from ``file://`` with every
non-file request made to fail: it still renders, and the browser asked for no URL off disk.

Skipped only when chromium / chromedriver are not installed:
``apt-get install -y chromium chromium-driver`` and ``pip install selenium``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_dashboard import carve_once
from test_service_harness import KEY_A, small_recipe

pytest_plugins = ["test_service_harness"]

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not (CHROMIUM and CHROMEDRIVER),
        reason="needs Debian chromium + chromium-driver (apt-get install -y chromium chromium-driver)",
    ),
]
OUTPUT = Path(
    os.environ.get("MOECARVE_TEST_OUTPUT", Path(__file__).resolve().parents[1] / "test-output")
)
CHARTS = (
    "chart-load",
    "chart-imbalance",
    "chart-quality",
    "chart-hist",
    "chart-cosel",
    "chart-trans",
)
# Not network: inline data, and the browser's own pages (its start page loads chrome:// resources).
LOCAL = ("data:", "blob:", "about:", "chrome:", "chrome-untrusted:")

# Per chart: number of traces with data and of plotted marks (heatmap cells are one <image>).
CHART_STATE_JS = """
return arguments[0].map((id) => {
  const el = document.getElementById(id);
  const has = (a) => Array.isArray(a) && a.flat(2).some((v) => v !== null && v !== undefined);
  const traces = (el.data || []).filter((t) => has(t.z) || has(t.y));
  const marks = el.querySelectorAll(".hm image, .bars path, .scatterlayer path.point, .scatterlayer path.js-line").length;
  return {id, traces: traces.length, marks, empty: !!el.querySelector(".empty")};
});
"""


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, llama_dir) -> Path:
    return carve_once(tmp_path_factory, llama_dir)


@pytest.fixture(scope="module")
def server(service, service_root) -> Iterator[tuple[str, str]]:
    """The real job service (uvicorn + worker on 127.0.0.1) with one finished job."""
    client = service.client(KEY_A)
    job = client.submit(small_recipe(service_root), label="browser")
    assert client.wait(job["id"], timeout=300)["status"] == "succeeded"
    yield service.url, job["id"]


def _driver(offline: bool = False):
    webdriver = pytest.importorskip(
        "selenium.webdriver", reason="needs selenium (pip install selenium)"
    )
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="moecarve-chromium-")
    flags = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1400,2300"]  # fmt: skip
    if offline:  # any request that is not file:// fails loudly
        flags += ["--proxy-server=127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND"]
    for flag in flags:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    driver.profile_dir = profile
    return driver


@pytest.fixture
def browser():
    driver = _driver()
    yield driver
    driver.quit()
    shutil.rmtree(driver.profile_dir, ignore_errors=True)


def _wait_ready(driver) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 60).until(
        lambda d: d.execute_script("return document.body.dataset.ready")
    )
    assert driver.execute_script("return document.body.dataset.ready") == "true"


def _errors(driver) -> list[dict]:
    return [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]


def _requested(driver) -> list[str]:
    urls = []
    for entry in driver.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg["method"] == "Network.requestWillBeSent":
            urls.append(msg["params"]["request"]["url"])
    return urls


def _assert_charts_drawn(driver) -> None:
    states = driver.execute_script(CHART_STATE_JS, list(CHARTS))
    for s in states:
        assert not s["empty"] and s["traces"] > 0 and s["marks"] > 0, s
    tokens = driver.execute_script("return document.querySelectorAll('#token-text .tok').length")
    assert (
        tokens
        == driver.execute_script(
            "return JSON.parse(document.getElementById('moecarve-data').textContent).tokens.tokens.length"
        )
        > 0
    )
    cards = driver.execute_script(
        "return [...document.querySelectorAll('#summary .card .v')].map(e => e.textContent)"
    )
    assert len(cards) == 6 and "S2A2E8" in cards and all(c and c != "–" for c in cards), cards


def test_served_dashboard_renders_and_follows_the_layer(server, browser):
    server, job = server
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    browser.get(f"{server}/v1/dashboard?key={KEY_A}")
    browser.find_element(By.LINK_TEXT, "dashboard").click()  # index → the finished job's dashboard
    _wait_ready(browser)
    assert browser.current_url == f"{server}/v1/jobs/{job}/dashboard?key={KEY_A}"
    _assert_charts_drawn(browser)

    rect = "return document.getElementById('chart-load').layout.shapes[0].y0"
    cosel = "return JSON.stringify(document.getElementById('chart-cosel').data[0].z)"
    before = (browser.execute_script(rect), browser.execute_script(cosel))
    assert before[0] == -0.5  # layer 0 highlighted
    Select(browser.find_element(By.ID, "layer-select")).select_by_value("1")
    WebDriverWait(browser, 20).until(lambda d: d.execute_script(rect) == 0.5)
    assert browser.execute_script(cosel) != before[1]  # the layer's own co-selection matrix
    assert browser.find_element(By.ID, "layer-facts").text.startswith("layer 1:")
    assert "layer 1" in browser.find_element(By.ID, "tokens-note").text

    ActionChains(browser).move_to_element(
        browser.find_elements(By.CSS_SELECTOR, "#token-text .tok")[3]
    ).perform()
    detail = browser.find_element(By.ID, "token-detail").text
    assert "L0:" in detail and "L1:" in detail, detail

    Select(browser.find_element(By.ID, "source-select")).select_by_value("calibration")
    _assert_charts_drawn(browser)
    assert not _errors(browser), _errors(browser)
    elsewhere = [u for u in _requested(browser) if not u.startswith((server, *LOCAL))]
    assert not elsewhere, elsewhere  # everything, Plotly included, comes from the server itself
    OUTPUT.mkdir(parents=True, exist_ok=True)
    Select(browser.find_element(By.ID, "source-select")).select_by_value("heldout")
    assert browser.save_screenshot(str(OUTPUT / "dashboard-browser.png"))


def test_cli_report_opens_from_disk_without_network(checkpoint, tmp_path):
    from moecarve.cli import main

    report = tmp_path / "report.html"
    assert main(["report", str(checkpoint), "--out", str(report)]) == 0
    driver = _driver(offline=True)
    try:
        driver.get(report.as_uri())
        _wait_ready(driver)
        _assert_charts_drawn(driver)
        assert not _errors(driver), _errors(driver)
        urls = _requested(driver)
        assert report.as_uri() in urls
        off_disk = [u for u in urls if not u.startswith(("file:", *LOCAL))]
        assert not off_disk, off_disk
    finally:
        driver.quit()
        shutil.rmtree(driver.profile_dir, ignore_errors=True)
