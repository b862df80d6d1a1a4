"""`make demo`'s launcher: the dashboard comes up beside a running pipeline, Ctrl-C (SIGINT to the terminal's
process group) stops both, TensorFlow-free stages
only (data, index, split), so the test takes seconds."""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
from conftest import PROJECT_ROOT
from tools.fixtures import tiny_preset

from pipeline.runner import STAGES
from tools.live import free_port

# tests/test_browser_pipeline.py runs the launcher with training, in a browser; this one (seconds, no browser) runs
# everywhere, so the Ctrl-C behaviour is checked whether or not chromium is installed.



def healthy(url: str) -> bool:
    try:
        return urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok"
    except OSError:
        return False


def launch_and_interrupt(preset, status_path, port):
    """Start the launcher in its own process group (a terminal's foreground job), wait until the dashboard answers
    and the pipeline has finished, then Ctrl-C the group; returns (exit status, output, the status file)."""
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.launch", "--config", str(preset), "--port", str(port),
                             "--only", "data", "index", "split"], cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    lines: list[str] = []  # the launcher's output as it comes (a thread reads it, so the pipe never fills)

    def read() -> None:
        for line in iter(proc.stdout.readline, ""):
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.time() + 120
        # the dashboard answers, and the launcher has said so: its own health poll can lag the test's by a poll
        while not (healthy(url) and any(line.startswith("dashboard: ") for line in lines)):
            assert time.time() < deadline and proc.poll() is None, "the dashboard did not come up: " + "".join(lines)
            time.sleep(0.3)
        deadline = time.time() + 300  # the pipeline's own deadline, after the dashboard's
        while (json.loads(status_path.read_text()) if status_path.exists() else {}).get("state") != "finished":
            assert time.time() < deadline and proc.poll() is None, "the pipeline did not finish: " + "".join(lines)
            time.sleep(0.3)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
        proc.wait(timeout=60)
        reader.join(timeout=30)
        out = "".join(lines)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    with pytest.raises(ProcessLookupError):  # nothing of the group is left: pipeline and dashboard are gone
        for _ in range(50):
            os.killpg(proc.pid, 0)
            time.sleep(0.1)
    assert not healthy(url)
    return proc.returncode, out, json.loads(status_path.read_text())


def test_launcher_serves_the_dashboard_beside_the_pipeline_and_ctrl_c_stops_both(tmp_path, demo_root):
    shutil.copytree(demo_root, tmp_path / "data")  # the session's SYNTHETIC tree (seed 3, 12 x 4): the data stage finds it
    preset = tmp_path / "launched.toml"
    preset.write_text(tiny_preset("launched", tmp_path / "data", tmp_path / "artifacts" / "launched", train=None,
                                  body='[[runs]]\nmodel = "efficientnet_b0"\n'))
    status_path = tmp_path / "artifacts" / "launched" / "pipeline_status.json"

    code, out, status = launch_and_interrupt(preset, status_path, free_port())
    assert code == 130, out
    assert "dashboard: http://127.0.0.1:" in out and "pipeline finished" in out
    assert [s["name"] for s in status["stages"]] == list(STAGES)  # every stage the runner knows (9 now), in order
    assert [s["state"] for s in status["stages"]] == ["done"] * 3 + ["skipped"] * (len(STAGES) - 3)
    # A second `make demo` runs the same `run`, which skips what is up to date: tests/test_pipeline_stages.py
    # (test_second_run_of_an_unchanged_preset_rewrites_nothing) covers that, without a second dashboard start here.
