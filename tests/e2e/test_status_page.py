"""The status page in a real browser (headless Chromium through Debian's chromedriver):
a real three-node cluster, its owner killed, the takeover seen on the page and on the
timeline without a reload. A screenshot is kept in the test's folder (and copied to
FAILOVER_TEST_SCREENSHOTS when that names a folder) for a person to look at."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from tests.support.cluster import wait_until
from tests.support.flower import free_port, serve, stop

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM = "/usr/bin/chromium"
EVIL = '<img src=x onerror="window.pwned=1">'


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    """Headless Chromium; missing, the test fails (install chromium and chromium-driver)."""
    assert os.path.exists(CHROMEDRIVER) and os.path.exists(CHROMIUM), (
        "apt-get install chromium chromium-driver (see the README)"
    )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--window-size=1400,1400"):  # fmt: skip
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def attribute(driver: webdriver.Chrome, css: str, name: str) -> str | None:
    """An attribute of the first element matching `css` now, or None (the page redraws)."""
    try:
        found = driver.find_elements(By.CSS_SELECTOR, css)
        return found[0].get_attribute(name) if found else None
    except WebDriverException:
        return None


def keep(driver: webdriver.Chrome, tmp_path: Path, name: str) -> Path:
    shot = tmp_path / name
    driver.save_screenshot(str(shot))
    folder = os.environ.get("FAILOVER_TEST_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(folder) / name)
    return shot


def test_the_page_shows_a_takeover_live_and_on_the_timeline(cluster, browser, tmp_path):
    a = cluster.start_live("a", "eu")
    wait_until(lambda: cluster.owned_by("a"), 20, "a to claim")
    cluster.start_live("b", "eu")
    cluster.start_live("c", "us")
    port = free_port()
    base = f"http://127.0.0.1:{port}/"
    web = serve(cluster, [sys.executable, "-m", "workers", "web", "--port", str(port)], base)
    try:
        browser.get(base)
        card = '[data-service="folder_monitor"]'
        wait_until(lambda: attribute(browser, card, "data-owner") == "a", 10, "the page to show a")
        wait_until(
            lambda: attribute(browser, '#timeline g.mark[data-reason="startup"]', "data-detail"),
            10,
            "the timeline to mark the startup",
        )
        a.crash()
        wait_until(lambda: cluster.owned_by("b"), 30, "b to take over")
        wait_until(lambda: attribute(browser, card, "data-owner") == "b", 5, "the page to show b")
        detail = wait_until(
            lambda: attribute(browser, '#timeline g.mark[data-reason="takeover"]', "data-detail"),
            5,
            "the timeline to mark the takeover",
        )
        assert "a \u2192 b" in detail
        wait_until(
            lambda: attribute(browser, 'tr[data-node="a"]', "data-state") == "dead",
            5,
            "the page to show a dead",
        )
        keep(browser, tmp_path, "status-page-after-takeover.png")

        moved = cluster.cli("move", "folder_monitor", "--to", "c", "--reason", EVIL)
        assert moved.returncode == 0, moved.stderr
        wait_until(lambda: attribute(browser, card, "data-owner") == "c", 5, "the page to show c")
        events = browser.find_element(By.ID, "events")
        wait_until(lambda: EVIL in events.text, 5, "the reason to show as text")
        assert not events.find_elements(By.TAG_NAME, "img")
        assert browser.execute_script("return window.pwned === undefined")
        keep(browser, tmp_path, "status-page-after-move.png")
    finally:
        stop(web)
