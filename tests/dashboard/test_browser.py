"""A real browser on the real app: ``streamlit run`` headless on 127.0.0.1, Debian's Chromium through Playwright.

One server start; two browser sessions, each one interaction: wait for the headline metrics, change the
communication SMs, see the step time change, save a screenshot; pick the tiny MoE job, open the Plan page, plan
it (two GPU counts, a second or two), see the recommendation and its charts. Skips, with the reason, only when
Chromium or Playwright is missing (``.ci/run`` installs Chromium).

With ``SIM_DASHBOARD_SCREENSHOTS=1`` it also visits every page and writes the README's screenshots to
``docs/screenshots/`` (pressing each page's detail buttons; that takes a while longer).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("streamlit", reason="the dashboard extra is not installed (pip install -e '.[dashboard]')")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the dev extra has it)")

from tests.dashboard.conftest import DASHBOARD  # noqa: E402

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
ARGS = ["--no-sandbox", "--headless=new", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
SHOTS = DASHBOARD.parent / "docs" / "screenshots"
METRIC = '[data-testid="stMetricValue"]'
# page url -> (file name, what to do before the shot: buttons to press (their names, or patterns), or
# (label, text) to type into a field or to pick in a multiselect)
PAGES: dict[str, tuple[str, list[str | re.Pattern[str] | tuple[str, str]]]] = {
    "pipeline": ("pipeline.png", ["Simulate in detail"]),
    "experts": ("experts.png", ["Simulate the step under each policy"]),
    "network": ("network.png", ["Sweep communication SMs"]),
    "calibration": ("calibration.png", []), "cost": ("cost.png", []),
    "plan": ("plan.png", [("Deadline (days)", "60"), ("Budget (USD)", "6M"), ("Hardware", "h100_ib_1024"),
                          re.compile(r"^Plan$")]),  # two GPU types: about a minute
    "validation": ("validation.png", [re.compile(r"^Run \d+ cases")]),  # every case: about a minute
}

HEIGHTS = {"pipeline": 3000, "experts": 2000, "network": 2300, "calibration": 1900, "cost": 2250, "plan": 2650,
           "validation": 2950}  # each page in one shot

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium (apt-get install -y chromium chromium-driver)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    port = _free_port()
    cmd = [sys.executable, "-m", "streamlit", "run", str(DASHBOARD / "app.py"), "--server.headless", "true",
           "--server.address", "127.0.0.1", "--server.port", str(port), "--browser.gatherUsageStats", "false",
           "--server.fileWatcherType", "none"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=DASHBOARD.parent)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):  # 60 s at most
            if proc.poll() is not None:
                out = proc.stdout.read().decode() if proc.stdout else ""
                pytest.fail(f"streamlit exited: {out[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("streamlit did not answer within 60 s")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def _step_time(page) -> str:
    return page.locator(METRIC).first.inner_text()


def test_headline_then_comm_sms_change_moves_step_time(server, tmp_path):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            t0 = time.perf_counter()
            page.goto(server)
            page.locator(METRIC).first.wait_for(timeout=60_000)
            print(f"headline metrics shown {time.perf_counter() - t0:.2f} s after opening")
            before = _step_time(page)
            box = page.get_by_label("SMs for communication")
            box.fill("60")
            box.press("Enter")
            page.wait_for_function(f"""() => {{
                const m = document.querySelector('{METRIC}');
                return m && m.innerText !== {before!r};
            }}""", timeout=60_000)
            after = _step_time(page)
            assert after != before
            shot = tmp_path / "scenario.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            if os.environ.get("SIM_DASHBOARD_SCREENSHOTS"):
                _all_pages(browser, server)
        finally:
            browser.close()


def test_plan_page_plans_the_tiny_job_and_shows_the_recommendation(server, tmp_path):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1600})
            page.goto(server)
            page.locator(METRIC).first.wait_for(timeout=60_000)
            t0 = time.perf_counter()
            page.locator('[data-testid="stSelectbox"]').filter(has_text="Workload").click()
            page.get_by_role("option", name="tiny_moe_job").click()
            page.get_by_text("tiny-moe-test").first.wait_for(timeout=60_000)
            page.get_by_role("link", name="Plan").click()  # the same session: the Plan page plans the tiny job
            button = page.get_by_role("button", name="Plan", exact=True)
            button.wait_for(timeout=60_000)
            assert not page.locator(METRIC).count()  # nothing runs before the button
            page.get_by_role("button", name="Remove 32").click()  # GPU counts 8 and 16
            page.get_by_text("576 points").wait_for(timeout=60_000)
            button.click()
            days = page.locator('[data-testid="stMetric"]').filter(has_text="Days")
            days.wait_for(timeout=60_000)
            page.get_by_text("Recommended:").wait_for(timeout=60_000)
            page.locator('[data-testid="stVegaLiteChart"]').nth(2).wait_for(timeout=60_000)
            print(f"planned and drawn {time.perf_counter() - t0:.2f} s after picking the job")
            assert float(days.locator(METRIC).inner_text().replace(",", "")) > 0
            shot = tmp_path / "plan.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
        finally:
            browser.close()


def _type(page, label: str, text: str) -> None:
    """Type ``text`` into the field labelled ``label`` (not its help button) and submit it; in a multiselect,
    pick the option that starts with ``text``."""
    multi = page.locator('[data-testid="stMultiSelect"]').filter(has_text=label)
    if multi.count():
        multi.locator("input").click()
        page.get_by_role("option", name=re.compile(f"^{re.escape(text)}")).click()
        page.keyboard.press("Escape")
    else:
        box = page.get_by_label(label, exact=True).and_(page.locator("input"))
        box.fill(text)
        box.press("Enter")
    page.wait_for_timeout(1000)


def _all_pages(browser, server: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1400})
    page.goto(server)
    page.locator(METRIC).first.wait_for(timeout=60_000)
    page.wait_for_timeout(1500)
    page.screenshot(path=str(SHOTS / "scenario.png"), full_page=True)
    for url, (name, buttons) in PAGES.items():
        page.set_viewport_size({"width": 1400, "height": HEIGHTS.get(url, 1400)})
        page.goto(f"{server}/{url}")
        page.locator('[data-testid="stMainBlockContainer"] h1').first.wait_for(timeout=60_000)
        for label in buttons:
            if isinstance(label, tuple):
                _type(page, *label)
                continue
            page.get_by_role("button", name=label).click(timeout=120_000)
            page.wait_for_timeout(1000)
        _settle(page)
        page.evaluate("document.querySelectorAll('section, div').forEach(e => { if (e.scrollTop) e.scrollTop = 0; })")
        page.wait_for_timeout(500)
        page.screenshot(path=str(SHOTS / name), full_page=True)


def _settle(page) -> None:
    """Wait until the app stops running (no spinner, no progress bar, the status widget idle)."""
    page.wait_for_timeout(1500)
    for _ in range(600):
        busy = page.locator('[data-testid="stSpinner"], [data-testid="stProgress"], '
                            '[data-testid="stStatusWidget"]').count()
        if not busy:
            break
        page.wait_for_timeout(500)
    page.wait_for_timeout(2500)  # let the charts draw
