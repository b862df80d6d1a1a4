"""``python -m pipeline.launch --config PRESET.toml`` (``make demo``): the dashboard first, the pipeline behind it.

Why: the whole demo takes minutes on a laptop's CPU; a new user should be looking at the dashboard within seconds,
watching the Pipeline page and the other pages fill in, not at a wall of progress bars. So this starts
``python -m pipeline run`` (its one progress display stays on this terminal) and, as soon as the run has written
its status file, the dashboard on 127.0.0.1. Ctrl-C stops both: the terminal's SIGINT reaches every process of the
foreground group (and is forwarded here when only this process got it); the pipeline stops within seconds
keeping finished work, so the next ``make demo`` resumes (every stage skips what is up to date). The dashboard
stays up after the pipeline ends, until Ctrl-C.

Only subprocesses: nothing here imports TensorFlow or Streamlit.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from pipeline.artifacts.catalog import Catalog
from pipeline.config import load_config
from pipeline.core.errors import PipelineError

STATUS_WAIT_SECONDS = 60.0  # the run writes its status file before any heavy import; this only guards a broken start
HEALTH_WAIT_SECONDS = 90.0
STOP_SECONDS = 15.0


def _stop(proc: subprocess.Popen | None, sig: int, grace: float, own_signal_wait: float = 2.0) -> int | None:
    """Stop a child: give it ``own_signal_wait`` seconds to act on the terminal's Ctrl-C (which reached it too; a
    second SIGINT could cut its own clean-up short), then send ``sig``, wait ``grace`` seconds, then kill it."""
    if proc is None:
        return None
    try:
        proc.wait(own_signal_wait)
    except subprocess.TimeoutExpired:
        try:
            proc.send_signal(sig)
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def _interrupt(*_) -> None:
    raise KeyboardInterrupt


def _wait_for_status(catalog: Catalog, pipeline: subprocess.Popen, since: float) -> bool:
    """True once the run has (re)written its status file; False when the pipeline exited first."""
    deadline = time.monotonic() + STATUS_WAIT_SECONDS
    while time.monotonic() < deadline:
        path = catalog.pipeline_status
        if path.exists() and path.stat().st_mtime >= since:
            return True
        if pipeline.poll() is not None:
            return False
        time.sleep(0.2)
    return True  # start the dashboard anyway: the Pipeline page says what is missing


def _wait_healthy(url: str, dashboard: subprocess.Popen) -> bool:
    deadline = time.monotonic() + HEALTH_WAIT_SECONDS
    while time.monotonic() < deadline and dashboard.poll() is None:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                return True
        except OSError:
            time.sleep(0.3)
    return False


def _run(config: Path, run_args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipeline", "run", "--config", str(config), *run_args])


def launch(configs: list[Path], port: int = 8501, run_args: list[str] | None = None) -> int:
    """Run the presets' pipelines one after the other with the dashboard open beside them (opened on the first
    preset's experiment); returns the exit status (130 after Ctrl-C)."""
    cfg = load_config(configs[0])  # a bad preset is a one-line error before anything starts
    for other in configs[1:]:
        load_config(other)
    catalog = Catalog(cfg.out_dir)
    url = f"http://127.0.0.1:{port}"
    since = time.time() - 1
    run_args = list(run_args or [])
    pipeline = _run(configs[0], run_args)
    dashboard = None
    previous = signal.signal(signal.SIGTERM, _interrupt)  # `kill PID` stops both, as Ctrl-C does
    try:
        if not _wait_for_status(catalog, pipeline, since) and pipeline.returncode:
            return pipeline.returncode  # it printed its one-line error
        dashboard = subprocess.Popen([sys.executable, "-m", "dashboard", "--experiment", catalog.name, "--artifacts",
                                      str(catalog.root.parent), "--port", str(port)], stdout=subprocess.DEVNULL)
        if _wait_healthy(url, dashboard):
            print(f"\ndashboard: {url}  (the Pipeline page follows the run; pages fill in as it goes; Ctrl-C stops both)\n",
                  flush=True)
        else:
            print(f"\nthe dashboard did not start (exit status {dashboard.poll()}); is port {port} in use? "
                  f"Try: make demo PORT={port + 1}. The pipeline goes on.\n", flush=True)
        code = pipeline.wait()
        for config in configs[1:]:  # the next preset (the demo's image-level twin) once the first has finished
            if code:
                break
            pipeline = _run(config, run_args)
            code = pipeline.wait()
        if code == 0:
            print(f"\npipeline finished. The dashboard stays up at {url}: Ctrl-C to stop it.", flush=True)
        else:
            print(f"\npipeline stopped with exit status {code}: the Pipeline page at {url} shows where. "
                  "Run the same command again to resume. Ctrl-C to stop the dashboard.", flush=True)
        if dashboard.poll() is None:
            dashboard.wait()
        return code
    except KeyboardInterrupt:
        # The terminal sent SIGINT to all of us; forward it anyway for a SIGINT/SIGTERM sent to this process alone.
        _stop(pipeline, signal.SIGINT, STOP_SECONDS)
        _stop(dashboard, signal.SIGTERM, STOP_SECONDS)
        print("\nstopped: finished work is kept; run the same command again to resume.", flush=True)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        _stop(pipeline, signal.SIGINT, STOP_SECONDS)
        _stop(dashboard, signal.SIGTERM, STOP_SECONDS)


def main(argv: list[str] | None = None) -> int:
    prog = "histocompare demo" if os.environ.get("HISTOCOMPARE_PROG") else "python -m pipeline.launch"
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, type=Path, action="append",
                        help="a preset to run (pipeline/configs/*.toml); repeat it to run several one after the other")
    parser.add_argument("--port", type=int, default=8501, help="the dashboard's port on 127.0.0.1")
    parser.add_argument("--only", nargs="+", help="passed to `run`: only these stages")
    args = parser.parse_args(argv)
    try:
        return launch(args.config, args.port, ["--only", *args.only] if args.only else None)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
