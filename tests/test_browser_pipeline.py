"""`make demo` in a real browser, on a tiny preset: the launcher starts the pipeline and the dashboard; while training
runs the Pipeline page reports a running stage, the Overview gains its run table once the first run finishes, without
a reload; Ctrl-C to the launcher's process group stops the pipeline and the dashboard."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
from conftest import PROJECT_ROOT
from tools.fixtures import tiny_preset

from tools.live import CHROMIUM, chromium, free_port

try:
    import playwright  # noqa: F401

    HAVE_PLAYWRIGHT = True
except ImportError:
    HAVE_PLAYWRIGHT = False

pytestmark = [pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed (`make browser`)"),
              pytest.mark.skipif(not HAVE_PLAYWRIGHT, reason="the playwright package is not installed")]

TINY_BODY = """[[runs]]
model = "efficientnet_b0"
[[runs]]
model = "efficientnet_v2_b0"

[ensemble]
enabled = false

[evaluate]
bootstrap = 50

[gradcam]
enabled = false
"""


def healthy(url: str) -> bool:
    try:
        return urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok"
    except OSError:
        return False


def test_make_demo_dashboard_fills_in_while_the_pipeline_runs(tmp_path, demo_root):
    from playwright.sync_api import expect

    shutil.copytree(demo_root, tmp_path / "data")  # the session's SYNTHETIC tree: the data stage finds it complete
    preset = tmp_path / "tiny.toml"
    preset.write_text(tiny_preset("tiny", tmp_path / "data", tmp_path / "artifacts" / "tiny", train="workers = 2", body=TINY_BODY))
    status_file = tmp_path / "artifacts" / "tiny" / "pipeline_status.json"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    launcher = subprocess.Popen([sys.executable, "-m", "pipeline.launch", "--config", str(preset), "--port", str(port)],
                                cwd=PROJECT_ROOT, env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.time() + 120
        while not healthy(url):
            assert launcher.poll() is None and time.time() < deadline, "the dashboard did not come up"
            time.sleep(0.3)
        with chromium(1400, 1000) as page:
            page.goto(f"{url}/pipeline")
            headline = page.locator(".st-key-pl_headline")
            expect(headline).to_contain_text(re.compile(r"Running: stage (index|split|train)"), timeout=90_000)
            assert json.loads(status_file.read_text())["runs"]["done"] == 0, "training ended before the check"

            page.evaluate("window.__noReload = true")  # gone if the page is reloaded
            page.get_by_test_id("stSidebarNavLink").filter(has_text="Overview").click()
            expect(page.locator("h1").first).to_have_text("Overview", timeout=60_000)
            so_far = page.get_by_text(re.compile("^Runs finished so far"))
            if json.loads(status_file.read_text())["runs"]["done"] == 0 and not (status_file.parent / "predictions.parquet").exists():
                expect(so_far).to_have_count(0)  # nothing trained yet: no run table
            expect(so_far.or_(page.get_by_text("Every run and ensemble"))).to_be_visible(timeout=420_000)
            assert page.evaluate("window.__noReload === true")  # filled in by the page itself, not by a reload
        assert json.loads(status_file.read_text())["runs"]["done"] >= 1
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGINT)  # Ctrl-C in the terminal
        try:
            out, _ = launcher.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(launcher.pid, signal.SIGKILL)
            out, _ = launcher.communicate()
    assert launcher.returncode == 130, out
    with pytest.raises(ProcessLookupError):  # the pipeline and the dashboard are gone with it
        for _ in range(50):
            os.killpg(launcher.pid, 0)
            time.sleep(0.1)
    assert not healthy(url)
