"""`run --executor ray --address 127.0.0.1:PORT` of a tiny protocol (two patient folds x two backbones, 32 px) on a
Ray head started here (loopback only, 2 CPUs, 80 MB object store, no dashboard), with the Ray worker that trains
one run killed mid-training: Ray retries it, it resumes from its resume point, and every run ends trained once
with exactly one prediction row per val/test image; the fold summary is written; the head is stopped always."""

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import PROJECT_ROOT
from tools.fixtures import tiny_preset
from pipeline.artifacts.catalog import Catalog
from pipeline.artifacts.predictions import load_predictions

pytest.importorskip("ray")

# the killed run (fold 0's B0) trains 3 epochs with a resume point after each; the others 1 epoch
RAY_BODY = """[[runs]]
model = "efficientnet_b0"
epochs = 3
[[runs]]
model = "efficientnet_v2_b0"

[ensemble]
stacking_epochs = 3
[evaluate]
bootstrap = 20
[neighbours]
tsne = false
[gradcam]
methods = ["gradcam"]
max_images = 2
batch_size = 2
deletion_steps = 2
"""


def ray_preset(data, out) -> str:
    return tiny_preset("rayp", data, out, split='mode = "patient"\nratios = [0.5, 0.25, 0.25]\nfolds = 2\nfold = "all"',
                       train="lr_backbone = 1e-3\ncheckpoint_seconds = 0", body=RAY_BODY)
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0",
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # Ray's single-machine mode: every address is 127.0.0.1
           # Ray 2.60 turns token authentication on when ~/.ray/auth_token exists (any local ray.init writes one):
           # head, driver and workers share this test's own token instead, whatever the home folder holds
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A Ray head on 127.0.0.1 in its own process group (stopped by its pid, whatever the test did)."""
    port = free_port()
    temp = Path("/tmp") / f"hc-ray-{os.getpid()}"  # Ray's socket paths must stay short (107 characters)
    env = {**os.environ, **RAY_ENV, "PYTHONPATH": str(PROJECT_ROOT)}
    log = tmp_path_factory.mktemp("ray-head") / "head.log"
    with open(log, "w") as out:
        head = subprocess.Popen([str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", "--node-ip-address",
                                 "127.0.0.1", "--port", str(port), "--num-cpus", "2", "--object-store-memory", "80000000",
                                 "--include-dashboard", "false", "--disable-usage-stats", "--temp-dir", str(temp)],
                                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while "will now block" not in log.read_text():
            assert head.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        head.send_signal(signal.SIGTERM)  # `ray start --block` stops everything it started
        try:
            head.wait(60)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(head.pid, signal.SIGKILL)  # anything left in the head's own process group
        except ProcessLookupError:
            pass
        subprocess.run(["rm", "-rf", str(temp)], check=False)


def _status_entry(exp: Path, run: str) -> dict | None:
    try:
        status = json.loads((exp / "pipeline_status.json").read_text())
    except (OSError, ValueError):
        return None
    return next((r for r in status.get("runs", {}).get("running", []) if r.get("run") == run), None)


def _checkpoint(run_dir: Path) -> tuple[int, bool]:
    try:
        state = json.loads((run_dir / "state.json").read_text())
    except (OSError, ValueError):
        return 0, False
    return state.get("checkpoint_epoch", 0), bool(state.get("fit_complete"))


@pytest.fixture(scope="module")
def protocol(ray_head, tmp_path_factory, demo_root):
    import shutil

    base = tmp_path_factory.mktemp("rayproto")
    data = base / "data"
    shutil.copytree(demo_root, data)  # the session's SYNTHETIC tree (seed 3, 12 x 4): the data stage finds it complete
    preset = base / "rayp.toml"
    preset.write_text(ray_preset(data, base / "artifacts" / "rayp"))
    fold0 = base / "artifacts" / "rayp-fold0"
    log = base / "run.log"
    env = {**os.environ, **RAY_ENV, "PYTHONPATH": str(PROJECT_ROOT)}
    killed = None
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "pipeline", "run", "--config", str(preset), "--executor", "ray",
                                 "--address", ray_head], cwd=PROJECT_ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + 600
            while proc.poll() is None and killed is None:  # kill fold 0's B0 worker once it has a resume point
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                point, complete = _checkpoint(fold0 / "runs" / "v1_b0")
                entry = _status_entry(fold0, "v1_b0")
                if point >= 1 and not complete and entry and entry.get("pid"):
                    os.kill(entry["pid"], signal.SIGKILL)
                    killed = {"pid": entry["pid"], "after_epoch": point, "entry": entry}
                time.sleep(0.1)
            proc.wait(600)
        finally:
            if proc.poll() is None:
                proc.kill()
    return {"base": base, "log": log.read_text(), "code": proc.returncode, "killed": killed,
            "dirs": [base / "artifacts" / f"rayp-fold{k}" for k in range(2)]}


def test_tiny_protocol_on_a_ray_head(protocol):
    text = protocol["log"]
    assert protocol["code"] == 0, text[-4000:]
    assert "4 runs of 2 experiments as one schedule on Ray" in text
    for k, exp in enumerate(protocol["dirs"]):
        split = pd.read_parquet(exp / "split.parquet")  # one row per image and fold
        expected = set(split.loc[(split["fold"] == k) & split["split"].isin(["val", "test"]), "image_id"])
        assert len(expected) == 24
        preds = load_predictions(exp)
        singles = preds[preds["kind"] == "single"]
        assert sorted(singles["run_id"].unique()) == ["v1_b0", "v2_b0"]
        for run_id, rows in singles.groupby("run_id"):
            assert not rows["image_id"].duplicated().any(), run_id  # exactly one row per image per run
            assert set(rows["image_id"]) == expected, run_id
            info = json.loads((exp / "runs" / run_id / "run.json").read_text())
            assert info["status"] == "complete" and info["epochs_done"] == (3 if run_id == "v1_b0" else 1)
            # each run finished once: one final line per run in the driver's log
            assert text.count(f"[rayp-fold{k}] {run_id}: val acc") == 1, text[-4000:]
        catalog = Catalog(exp)
        assert catalog.metrics.exists() and catalog.gradcam_scores("gradcam").exists()  # Grad-CAM ran as Ray tasks too
        status = json.loads((exp / "pipeline_status.json").read_text())
        assert status["state"] == "finished"
    summary = pd.read_parquet(protocol["base"] / "artifacts" / "rayp-folds" / "fold_summary.parquet")
    assert set(summary["folds"]) == {2}


def test_killed_worker_is_retried_and_resumes(protocol):
    killed, text = protocol["killed"], protocol["log"]
    assert killed is not None, "the run finished before a resume point was seen: " + text[-3000:]
    assert killed["entry"]["node"] and killed["entry"]["device"] == "CPU"  # the run reported where it trains
    assert f"[rayp-fold0] v1_b0: resuming after epoch {killed['after_epoch']} of 3" in text, text[-4000:]
    history = pd.read_parquet(protocol["dirs"][0] / "runs" / "v1_b0" / "history.parquet")
    assert history["epoch"].tolist() == [1, 2, 3]  # epochs after the resume point trained again, none twice


EXECUTOR_SCRIPT = r"""
import json, signal, sys, time
import ray
from pipeline.executors import Task
from pipeline.executors.ray_executor import RayExecutor
from pipeline.workers import JobFailed

executor = RayExecutor(sys.argv[1], cpus_per_run=1, gpus_per_run=-1, max_retries=2)
out = {"gpus_per_run": executor.gpus_per_run, "slots": executor.slots}
results = executor.map([Task("a", abs, -3), Task("bad", int, "x"), Task("b", abs, -5)], tensorflow=False)
out["results"] = [r.error.__class__.__name__ + ": " + str(r.error) if isinstance(r, JobFailed) else r for r in results]

def interrupt(*_):
    raise KeyboardInterrupt

signal.signal(signal.SIGALRM, interrupt)
signal.alarm(8)  # time for two sleeping tasks to start
started = time.monotonic()
try:
    executor.map([Task(f"s{i}", time.sleep, 120) for i in range(3)], tensorflow=False)
    out["interrupted"] = False
except KeyboardInterrupt:
    out["interrupted"] = True
out["interrupt_s"] = time.monotonic() - started
deadline = time.monotonic() + 30
while ray.available_resources().get("CPU", 0) < 2 and time.monotonic() < deadline:
    time.sleep(0.5)
out["cpus_free_after_s"] = time.monotonic() - started - out["interrupt_s"]
out["cpus_free"] = ray.available_resources().get("CPU", 0)
executor.close()
out["shut_down"] = not ray.is_initialized()
print(json.dumps(out))
"""


def test_own_errors_fail_once_and_ctrl_c_cancels_every_task(ray_head):
    """On the same head (a fresh driver process: Ray reads its address settings at import): a task that raises is
    reported once as JobFailed (not retried) while the others finish; Ctrl-C during a map cancels every task (the
    cluster's CPUs are free again within seconds, though each task would sleep two minutes)."""
    env = {**os.environ, **RAY_ENV, "PYTHONPATH": str(PROJECT_ROOT)}
    proc = subprocess.run([sys.executable, "-c", EXECUTOR_SCRIPT, ray_head], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=300, env=env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["gpus_per_run"] == 0 and out["slots"] == 2  # a CPU-only cluster: runs ask for no GPU
    assert out["results"][0] == 3 and out["results"][2] == 5
    assert out["results"][1].startswith("ValueError: invalid literal for int()")
    assert out["interrupted"] and out["interrupt_s"] < 30
    assert out["cpus_free"] == 2 and out["cpus_free_after_s"] < 30 and out["shut_down"]


def test_storage_probe_needs_the_drivers_token(tmp_path):
    """The probe a node runs: the driver's fresh token in the folder, else the folder is not the same storage."""
    from pipeline.executors.ray_executor import PROBE_FILE, _probe

    (tmp_path / PROBE_FILE).write_text("token-1")
    assert _probe(str(tmp_path), "token-1")[0] is True
    assert _probe(str(tmp_path), "token-2")[0] is False  # a stale copy of the folder (another machine's disk)
    assert _probe(str(tmp_path / "absent"), "token-1")[0] is False


def test_the_default_executor_never_imports_ray():
    """`make demo` and every preset without `[cluster] executor = "ray"` run without Ray: not even imported."""
    code = ("import sys; from pipeline.config import Config; from pipeline.runner import executor_for; "
            "import pipeline.cli, pipeline.schedule; e = executor_for(Config()); "
            "print(e.name, e.slots, 'ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})
    assert out.stdout.split() == ["local", "1", "False"], out.stderr[-2000:]
