"""Shared fixtures. Heavy artifacts (demo data, a trained tiny experiment) are built once per session."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HISTOCOMPARE_QUIET", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

PROJECT_ROOT = Path(__file__).resolve().parent.parent
BENCH_EXTRA = PROJECT_ROOT / ".bench-extra"  # optional baselines (`make bench-baselines`), never in .venv
if BENCH_EXTRA.is_dir() and str(BENCH_EXTRA) not in sys.path:
    sys.path.append(str(BENCH_EXTRA))
SAMPLE_ROOT = Path(os.environ.get("BREAKHIS_SAMPLE", PROJECT_ROOT.parent / "shared" / "breakhis-sample"))
# CI (`.ci/run`) sets this: every test the README describes as tested must run there, so a skip is a failure.
NO_SKIPS = os.environ.get("HISTOCOMPARE_NO_SKIPS") == "1"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under ``HISTOCOMPARE_NO_SKIPS=1`` a skipped test (missing sample, chromium, staintools...) fails instead."""
    outcome = yield
    report = outcome.get_result()
    if NO_SKIPS and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome, report.longrepr = "failed", f"skipped under HISTOCOMPARE_NO_SKIPS=1 (CI runs every test): {reason}"


@pytest.fixture(scope="session")
def sample_root() -> Path:
    if not (SAMPLE_ROOT / "BreaKHis_v1").is_dir():
        pytest.skip(f"real BreakHis sample not found at {SAMPLE_ROOT} (set BREAKHIS_SAMPLE to its folder)")
    return SAMPLE_ROOT


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    """A small SYNTHETIC dataset (12 patients x 4 images) shared by the tests."""
    from pipeline.stages.demo_data import generate_demo_data

    root = tmp_path_factory.mktemp("demo_data")
    generate_demo_data(root, seed=3, patients=12, images_per_patient=4)
    return root


@pytest.fixture(scope="session")
def demo_experiment(tmp_path_factory, demo_root) -> Path:
    """Indexed + patient-split experiment folder over the demo data (no training)."""
    from pipeline.artifacts.experiment import load_manifest
    from pipeline.artifacts.io import write_parquet
    from pipeline.core.splits import make_split
    from pipeline.stages.index import run_index

    exp = tmp_path_factory.mktemp("exp_demo")
    run_index(demo_root, exp)
    write_parquet(make_split(load_manifest(exp), "patient", seed=0), exp / "split.parquet")
    return exp


@pytest.fixture(scope="session")
def sample_patient_run(tmp_path_factory, sample_root) -> Path:
    """The real sample indexed, patient-split (seed 0) and one B0 trained on it from scratch (2 epochs, 64 px): shared by
    the training test and the neighbours stage's acceptance test; read-only for tests (copy before changing anything)."""
    from pipeline.artifacts.experiment import load_manifest
    from pipeline.artifacts.io import write_parquet
    from pipeline.config import TrainConfig
    from pipeline.core.splits import make_split
    from pipeline.stages.index import run_index
    from pipeline.stages.train import train_run

    exp = tmp_path_factory.mktemp("sample_patient") / "exp"
    run_index(sample_root, exp)
    write_parquet(make_split(load_manifest(exp), "patient", seed=0), exp / "split.parquet")
    cfg = TrainConfig(epochs=2, batch_size=16, image_size=64, weights="none", freeze_batchnorm=False, lr_backbone=1e-3, lr_head=5e-3)
    train_run(exp, "efficientnet_b0", cfg)
    return exp


def copy_experiment(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.fixture(scope="session")
def dashboard_artifacts(tmp_path_factory) -> Path:
    """An artifacts folder with the dashboard's synthetic ``fixture`` experiment (all ten models, every ensemble) and
    its doctored ``hostile`` twin (tools/fixtures.py); read-only for tests (copy before changing anything)."""
    from tools.fixtures import build, build_hostile

    root = tmp_path_factory.mktemp("dashboard")
    build(root)
    build_hostile(root)
    return root / "artifacts"

# TensorFlow's C++/absl start-up lines (oneDNN notice, cuda/cuInit on CPU machines): never in the CLI's normal output.
TF_NOISE = re.compile(r"oneDNN|cuInit|cuda drivers|cpu_feature_guard|absl::|^[IWE]\d{4} ", re.M)


DASHBOARD_APP = str(PROJECT_ROOT / "dashboard" / "app.py")


def render_page(artifacts: Path, experiment: str, page: str = "overview", monkeypatch=None, **query):
    """One dashboard page of one experiment under AppTest, as a URL with ``query`` opens it; it must not raise.

    AppTest always starts on the default page (the Overview), so another page is reached by a first run and a switch,
    then the query is applied and the page runs. The environment is set through ``monkeypatch`` when given (undone
    after the test), else in ``os.environ`` (for module-scoped fixtures)."""
    from streamlit.testing.v1 import AppTest

    for name, value in (("HISTOCOMPARE_ARTIFACTS", str(artifacts)), ("HISTOCOMPARE_EXPERIMENT", experiment)):
        if monkeypatch is not None:
            monkeypatch.setenv(name, value)
        else:
            os.environ[name] = value
    at = AppTest.from_file(DASHBOARD_APP, default_timeout=90)
    if page != "overview":
        at.run()
        at.switch_page(f"../pages/{page}.py")
    at.query_params.update(query)
    at.run()
    assert not at.exception, (page, [e.value for e in at.exception])
    return at

@pytest.fixture
def loopback():
    """AppTest has no server: tell the app it listens on 127.0.0.1, as dashboard/.streamlit/config.toml makes it (the
    dashboard tests use it for every test; a page warns when the server listens elsewhere)."""
    from streamlit import config

    before = config.get_option("server.address")
    config.set_option("server.address", "127.0.0.1")
    yield
    config.set_option("server.address", before)


def sigkill_when_paused(child: str, *args: str, timeout: float = 60) -> str:
    """Run the Python program ``child`` with ``args`` (the checkout on its path), SIGKILL it as soon as it prints a line
    starting with PAUSED, and return what it printed until then: the real process death a resume or a staged retrain
    must survive (tests/test_training.py, tests/test_retrain.py)."""
    proc = subprocess.Popen([sys.executable, "-c", child, *args], cwd=PROJECT_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("PAUSED"):
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait(timeout)
    assert proc.returncode == -signal.SIGKILL, "".join(lines) + proc.stderr.read()[-3000:]
    return "".join(lines)
