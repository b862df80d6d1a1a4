"""``make bench`` row: the Ray executor's overhead against the built-in pool, on the same tiny schedule, in one run.

The schedule: SYNTHETIC data (12 patients x 4 images), two patient folds x two backbones at 32 px, one epoch,
eager (no tracing), Grad-CAM and the neighbours' t-SNE off: small runs, so what Ray adds (starting a local Ray
instance, a worker process per slot, the storage probe, the progress actor) weighs as much as it ever will.
Both are the same ``python -m pipeline run`` command in a fresh process, with 2 runs at a time: the pool with
``workers = 2``, Ray with a local instance (no ``--address``; ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` keeps it on
127.0.0.1) and 1 CPU per run.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipeline.config import PROJECT_ROOT

from tools.fixtures import tiny_preset

BODY = """[[runs]]
model = "efficientnet_b0"
[[runs]]
model = "efficientnet_v2_b0"
[ensemble]
stacking_epochs = 3
[evaluate]
bootstrap = 20
[neighbours]
tsne = false
[gradcam]
enabled = false
"""


def _run(work: Path, name: str, extra: list[str]) -> float:
    preset = work / f"{name}.toml"
    preset.write_text(tiny_preset(name, work / "data", work / "artifacts" / name, train="workers = 2", body=BODY,
                                  split='mode = "patient"\nratios = [0.5, 0.25, 0.25]\nfolds = 2\nfold = "all"'))
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "HISTOCOMPARE_QUIET": "1",
           # the local instance's token in the environment, not written to ~/.ray/auth_token
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "pipeline", "run", "--config", str(preset), *extra], cwd=PROJECT_ROOT,
                         env=env, capture_output=True, text=True, timeout=1800)
    seconds = time.perf_counter() - start
    if out.returncode != 0:
        raise RuntimeError(f"{name}: exit {out.returncode}: {(out.stderr or out.stdout).strip().splitlines()[-1:]}")
    return seconds


def bench_ray_overhead(quick: bool) -> dict:
    """Seconds of the same schedule on the pool and on Ray; the ratio is Ray's overhead (1.0: none)."""
    try:
        import ray  # noqa: F401
    except ImportError:
        return {"name": "Ray executor vs built-in pool", "skipped": "ray is not installed", "target": "<= 1.5x"}
    from pipeline.stages.demo_data import generate_demo_data

    with tempfile.TemporaryDirectory(prefix="histocompare-bench-ray-") as tmp:
        work = Path(tmp)
        generate_demo_data(work / "data", seed=3, patients=12, images_per_patient=4)
        pool = _run(work, "pool", [])
        ray_s = _run(work, "ray", ["--executor", "ray", "--set", "cluster.cpus_per_run=1"])
    ratio = ray_s / pool
    return {"name": "Ray executor vs built-in pool (2 folds x 2 backbones, 32 px, 1 epoch, 2 at a time)",
            "ours_text": f"Ray (local instance): {ray_s:.0f} s", "baseline_text": f"{pool:.0f} s (built-in pool, 2 workers)",
            "ratio_text": f"{ratio:.2f}x", "ratio": ratio, "ray_s": ray_s, "pool_s": pool, "target": "<= 1.5x",
            "ok": ratio <= 1.5}
