"""The demo page (``/``, ``/websocket-demo``) in a real browser: headless Chromium driven by Selenium.

The page is served by a real server (espeak engine, loopback), streams over ``/ws/stream``
and plays through its AudioWorklet; every assertion reads the page's own state
(``window.demoState``, kept by demo.js and the worklet's reports).

Chromium flags: ``--headless=new`` renders without a display; ``--autoplay-policy=
no-user-gesture-required`` lets the AudioContext start (Selenium's click is a real input
event too); ``--no-sandbox`` because CI runs as root. No sound card or extra flag is needed: on a
machine with no audio device (no ``/dev/snd``, no PulseAudio) headless Chromium 150 still
renders the audio graph in real time (checked: 2.99 s played by the worklet in 3.00 s of
wall time), so the worklet runs and its sample counts are real playback.

Skipped (with the reason) where chromium, chromedriver or selenium are missing; ``.ci/run``
installs them. ``DEMO_SCREENSHOT=docs/demo.png`` saves the screenshot there (the README's);
otherwise it goes to the test's temporary directory.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tts_server.transport import PIPELINE

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')")
if CHROMIUM is None or CHROMEDRIVER is None:
    pytest.skip(
        "chromium and chromedriver are not installed (apt-get install chromium chromium-driver)",
        allow_module_level=True,
    )

#: More than one second of non-silent samples must play (the issue's bar).
NON_SILENT_S = 1.0
#: Long enough for the page's first reply to speak for several seconds with espeak.
WAIT_S = 30.0


@pytest.fixture
def browser() -> Iterator[Any]:
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    assert CHROMIUM is not None  # the module is skipped otherwise
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--autoplay-policy=no-user-gesture-required",
        "--disable-gpu",
        "--window-size=900,900",
        "--disable-dev-shm-usage",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def espeak():
    from tts_server.engines.espeak import EspeakEngine

    return EspeakEngine()


def state(driver: Any) -> dict[str, Any]:
    return driver.execute_script("return window.demoState && JSON.parse(JSON.stringify(window.demoState));") or {}


def wait_for(driver: Any, check: Callable[[dict[str, Any]], bool], what: str, timeout_s: float = WAIT_S) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        current = state(driver)
        if current and check(current):
            return current
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; demoState: {current}")
        time.sleep(0.05)


def severe_logs(driver: Any, expected: tuple[str, ...] = ()) -> list[str]:
    """The browser's own error log (network failures, CSP violations, uncaught errors)."""
    entries = driver.get_log("browser")
    return [e["message"] for e in entries if e["level"] == "SEVERE" and not any(x in e["message"] for x in expected)]


def play_and_stop(
    driver: Any, url: str, screenshot: Path, expected_log: tuple[str, ...] = (), context_rate: int = 48_000
) -> dict[str, Any]:
    """Open the page, press "Simulate an LLM", check playback, press Stop; the states seen."""
    from selenium.webdriver.common.by import By

    driver.get(url)
    wait_for(driver, lambda s: s["status"] == "ready", "the page to load the voices", 10)
    driver.find_element(By.ID, "simulate").click()
    first = wait_for(driver, lambda s: s["framesReceived"] > 0, "the first audio frame")
    assert first["contextRate"] == context_rate, first  # 48 kHz: the stream's own rate, no resampling
    playing = wait_for(driver, lambda s: s["nonSilentSeconds"] > NON_SILENT_S, f"{NON_SILENT_S} s of sound")
    assert playing["contextState"] == "running"
    assert playing["underruns"] == 0 and playing["underrunSamples"] == 0, playing
    assert playing["overflowSamples"] == 0
    # Every output sample took 48000/context_rate source samples (one report is one instant):
    # exact at 48 kHz; at another rate the interpolator's read position is within a sample.
    consumed = playing["workletReceived"] - playing["bufferFill"]
    assert abs(consumed - playing["samplesPlayed"] * 48_000 / context_rate) <= 1.0, playing
    assert playing["ttfaMs"] is not None and playing["ttfaMs"] > 0
    assert playing["segments"] >= 1 and playing["rtf"] is not None and playing["rtf"] > 0
    assert playing["bufferFill"] > 0, "the reply should still be speaking when Stop is pressed"
    driver.save_screenshot(str(screenshot))

    driver.find_element(By.ID, "stop").click()
    stopped = wait_for(driver, lambda s: s["clears"] >= playing["clears"] + 1, "the worklet to empty its buffer", 2)
    assert stopped["bufferFill"] == 0 and not stopped["playing"], stopped
    time.sleep(0.5)  # frames of the cancelled text still on the way are dropped, not played
    after = state(driver)
    assert after["bufferFill"] == 0, after
    assert after["nonSilentSamples"] == stopped["nonSilentSamples"], "sound after Stop"
    assert after["underruns"] == 0, after
    assert after["serverErrors"] == [] and after["consoleErrors"] == [], after
    assert severe_logs(driver, expected_log) == []
    return after


async def test_the_page_plays_a_simulated_reply_gaplessly_and_stop_silences_it(make_server, espeak, browser, tmp_path):
    base, _ = await make_server(espeak)
    screenshot = Path(os.environ.get("DEMO_SCREENSHOT") or tmp_path / "demo.png")
    after = await asyncio.to_thread(play_and_stop, browser, base + "/", screenshot)
    assert after["framesReceived"] > 0 and after["tokensSent"] > 10
    assert await asyncio.to_thread(lambda: screenshot.stat().st_size) > 10_000


async def test_websocket_demo_serves_the_same_page(make_server, espeak, browser, tmp_path):
    base, _ = await make_server(espeak)
    await asyncio.to_thread(play_and_stop, browser, base + "/websocket-demo", tmp_path / "demo.png")


async def test_at_another_context_rate_the_worklet_resamples_without_gaps(make_server, espeak, browser, tmp_path):
    """Where a browser will not open a 48 kHz context, the worklet interpolates to the device rate."""
    base, _ = await make_server(espeak)
    url = base + "/?context_rate=44100"
    after = await asyncio.to_thread(play_and_stop, browser, url, tmp_path / "demo.png", context_rate=44_100)
    assert after["playedSeconds"] > NON_SILENT_S


async def test_closing_the_tab_mid_reply_frees_the_stream(make_server, espeak, browser):
    from selenium.webdriver.common.by import By

    base, app = await make_server(espeak)
    pipeline = app[PIPELINE]

    def open_and_leave() -> None:
        browser.get(base + "/")
        wait_for(browser, lambda s: s["status"] == "ready", "the page to load the voices", 10)
        browser.find_element(By.ID, "simulate").click()
        wait_for(browser, lambda s: s["framesReceived"] > 0 and s["tokensSent"] > 3, "the reply to start")
        assert pipeline.active_streams == 1  # the page's /ws/stream
        browser.get("about:blank")  # the page goes away mid-reply: its WebSocket closes

    await asyncio.to_thread(open_and_leave)
    deadline = asyncio.get_running_loop().time() + 5
    while pipeline.active_streams and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.02)
    assert pipeline.active_streams == 0


async def test_with_an_api_key_the_page_asks_for_it_then_plays(make_server, espeak, browser, tmp_path):
    from selenium.webdriver.common.by import By

    key = "demo-key-0123456789abcdef"
    base, _ = await make_server(espeak, {"server": {"api_keys": [key]}})

    def scenario() -> None:
        browser.get(base + "/")
        asked = wait_for(browser, lambda s: s["status"] == "API key needed", "the page to ask for the key", 10)
        assert asked["apiKeyRequired"] and browser.find_element(By.ID, "key-form").is_displayed()
        field = browser.find_element(By.ID, "api-key")
        field.send_keys("wrong-key")
        browser.find_element(By.CSS_SELECTOR, "#key-form button").click()
        wait_for(browser, lambda s: s["status"] == "API key needed", "the wrong key to be refused", 10)
        assert browser.find_element(By.ID, "key-error").text == "that key was refused"
        field.clear()
        field.send_keys(key)
        browser.find_element(By.CSS_SELECTOR, "#key-form button").click()
        wait_for(browser, lambda s: s["status"] == "ready", "the voices with the key", 10)
        assert not browser.find_element(By.ID, "key-form").is_displayed()
        # The WebSocket carries the key as ?api_key= (no header can be set on it) and plays.
        browser.find_element(By.ID, "play").click()
        wait_for(browser, lambda s: s["nonSilentSeconds"] > NON_SILENT_S, f"{NON_SILENT_S} s of sound")
        browser.find_element(By.ID, "stop").click()
        now = state(browser)
        assert now["serverErrors"] == [] and now["consoleErrors"] == [], now
        # The two refused GET /voices (no key, wrong key) are the only errors the browser logs.
        assert severe_logs(browser, expected=("/voices - Failed to load resource",)) == []

    await asyncio.to_thread(scenario)
