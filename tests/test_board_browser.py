"""The risk board in a real browser: Debian's headless Chromium, driven by selenium through
/usr/bin/chromedriver (an explicit Service, so selenium-manager never downloads anything), against
a live worker on the session broker fed with a simulated stream that has one click-spam incident.

Relies on: the worker consuming the inputs and emitting to risk-scores / risk-alerts, and its
board reader consuming those topics outside the consumer group (agents/board.py).
Screenshots go to test-artifacts/board/ (git-ignored; RISKSTREAM_TEST_ARTIFACTS overrides).
"""

from __future__ import annotations

import os
import shutil
import time
import urllib.parse
from pathlib import Path

import orjson
import pytest

from riskstream.simulate import ground_truth
from tests.conftest import ROOT, produce_lines, simulated_case

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--window-size=1400,1000")


def _missing_tools() -> str | None:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not (os.path.exists(path) and os.access(path, os.X_OK)):
            return f"{path} not installed"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium not installed (pip install -e '.[dev]')"
    return None


@pytest.fixture
def browser(tmp_path):
    missing = _missing_tools()
    if missing:
        if os.environ.get("RISKSTREAM_REQUIRE_TOOLS") == "1":
            pytest.fail(f"RISKSTREAM_REQUIRE_TOOLS=1 but {missing}")
        pytest.skip(missing)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # selenium-manager must never fetch a driver
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    profile = tmp_path / "chromium-profile"
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def artifacts_dir() -> Path:
    d = Path(os.environ.get("RISKSTREAM_TEST_ARTIFACTS", ROOT / "test-artifacts")) / "board"
    d.mkdir(parents=True, exist_ok=True)
    return d


def wait_until(condition, timeout: float, what: str, on_timeout=lambda: ""):
    """Poll ``condition`` (returns a truthy value when met) until ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except Exception as exc:  # the page is still rendering: look again
            last_error = exc
        time.sleep(0.25)
    pytest.fail(f"{what} not seen within {timeout:.0f}s (last error: {last_error!r})"
                f"{on_timeout()}", pytrace=False)


def test_board_shows_the_incident_on_top_and_the_lookup_shows_why(
        kafka_broker, kafka_topics, worker, browser, tmp_path):
    from selenium.webdriver.common.by import By

    prefix, bootstrap = kafka_topics, kafka_broker.bootstrap
    # 20 minutes of 15 advertisers; click spam from minute 15 to the end, so its alert is open.
    case = simulated_case(tmp_path, seed=21, advertisers=15, duration_s=1200, spam_start_s=900,
                          diurnal_amplitude=0.0)
    (truth,) = ground_truth(case.config)
    adv = truth["advertiser_id"]
    expected = [a for a in case.expected.alerts() if a["advertiser_id"] == adv]
    assert expected and expected[0]["status"] == "open", "test design: the incident alerts"
    produce_lines(bootstrap, f"{prefix}ad-impressions", case.impressions)
    produce_lines(bootstrap, f"{prefix}user-feedback", case.feedback)
    w = worker(prefix)
    log_tail = lambda: "\nworker log tail:\n" + w.log_tail()  # noqa: E731

    latest = [a for a in expected if a["status"] != "resolved"][-1]  # opening or escalation

    def top_is_incident() -> bool:
        status, body = w.get("/board/api/top?limit=3")
        rows = orjson.loads(body)["rows"] if status == 200 else []
        return bool(rows) and rows[0]["advertiser_id"] == adv and \
            (rows[0]["open_alert"] or {}).get("alert_id") == latest["alert_id"]

    wait_until(top_is_incident, 90, f"{adv} on top of /board/api/top with alert "
               f"{latest['alert_id']} ({latest['status']}) open", log_tail)

    out = artifacts_dir()
    browser.get(w.url("/board"))
    first = wait_until(lambda: browser.find_element(By.CSS_SELECTOR, "#top-rows tr"), 15,
                       "the board's first row", log_tail)
    assert first.get_attribute("data-advertiser-id") == adv
    badge = first.find_element(By.CSS_SELECTOR, ".badge")
    assert badge.get_attribute("textContent") == latest["severity"], first.text
    # its sparklines are drawn (risk trend and the kind's key rate)
    assert len(first.find_elements(By.CSS_SELECTOR, "svg.spark polyline")) == 2
    # the alert arrived in the live feed
    wait_until(lambda: browser.find_elements(
        By.CSS_SELECTOR, f'#alerts li[data-alert-id="{expected[0]["alert_id"]}"]'), 15,
        "the incident's alert in the feed", log_tail)
    # filtering by another kind hides it; by its own kind shows it
    from selenium.webdriver.support.ui import Select

    kind = Select(browser.find_element(By.ID, "kind-filter"))
    kind.select_by_value("complaints")
    wait_until(lambda: not browser.find_elements(
        By.CSS_SELECTOR, f'#top-rows tr[data-advertiser-id="{adv}"]'), 10,
        "the incident filtered out by kind=complaints")
    kind.select_by_value("click_fraud")
    wait_until(lambda: browser.find_elements(
        By.CSS_SELECTOR, f'#top-rows tr[data-advertiser-id="{adv}"]'), 10,
        "the incident back with kind=click_fraud")
    board_png = out / "board.png"
    browser.save_screenshot(str(board_png))

    browser.find_element(By.CSS_SELECTOR, f'#top-rows tr[data-advertiser-id="{adv}"] a.adv').click()
    wait_until(lambda: browser.current_url.endswith(
        "/board/advertiser?id=" + urllib.parse.quote(adv)), 10, "the lookup page")
    reasons = wait_until(lambda: browser.find_elements(
        By.CSS_SELECTOR, "#open-alerts li.reason"), 15, "the open alert's reasons", log_tail)
    shown = " ".join(r.text for r in reasons)
    for reason in latest["reasons"]:
        assert reason["message"] in shown, (reason["message"], shown)
    assert browser.find_elements(By.CSS_SELECTOR, "#baseline tbody tr"), "baseline table empty"
    lookup_png = out / "advertiser.png"
    browser.save_screenshot(str(lookup_png))
    print(f"\nboard screenshots: {board_png} {lookup_png}")
    assert board_png.stat().st_size > 10_000 and lookup_png.stat().st_size > 10_000
