"""End to end in a real browser: Debian's chromium driven by Playwright against `streamlit run`."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from conftest import PROJECT_ROOT

from pipeline.fixtures import MEMBERS, build

CHROMIUM = Path("/usr/bin/chromium")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (`make browser` or `apt-get install chromium`)")
    build(tmp_path)
    port = free_port()
    env = {**os.environ, "HISTOCOMPARE_ARTIFACTS": str(tmp_path / "artifacts"), "HISTOCOMPARE_EXPERIMENT": "fixture",
           "PYTHONPATH": str(PROJECT_ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(PROJECT_ROOT / "dashboard" / "app.py"), "--server.headless", "true",
         "--server.address", "127.0.0.1", "--server.port", str(port), "--browser.gatherUsageStats", "false"],
        cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                break
        except OSError:
            time.sleep(0.3)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("streamlit did not become healthy within 60 s")
    yield url, tmp_path
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=10)


def test_toggle_member_changes_accuracy_in_browser(server, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    from pipeline.artifacts.predictions import probability_matrix
    from pipeline.core.ensemble import combine

    url, root = server
    preds = pd.read_parquet(root / "artifacts" / "fixture" / "predictions.parquet")
    members = list(MEMBERS)
    probs, meta = probability_matrix(preds, members, "test")
    y = meta.label.to_numpy()
    acc = lambda subset: f"{(combine(probs[[members.index(m) for m in subset]], 'soft').pred == y).mean():.4f}"
    before = acc(members)
    toggled = next(m for m in members if acc([x for x in members if x != m]) != before)  # a removal that matters
    after = acc([x for x in members if x != toggled])
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
            "--disable-component-update", "--no-first-run", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{url}/ensemble")
        accuracy = page.locator(".st-key-ensemble_metrics [data-testid='stMetricValue']").first
        expect(accuracy).to_have_text(before, timeout=60_000)
        clicked = time.perf_counter()
        page.locator(f".st-key-member_{toggled}").get_by_text(toggled).click()
        expect(accuracy).to_have_text(after, timeout=30_000)
        latency_ms = (time.perf_counter() - clicked) * 1000  # reported, never asserted (no timing asserts in tests)
        shot = tmp_path / "ensemble_builder.png"
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert shot.stat().st_size > 10_000
    print(f"removed {toggled}: accuracy {before} -> {after} in {latency_ms:.0f} ms (click to new text); screenshot {shot}")
