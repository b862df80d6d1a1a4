"""``python -m tools.dashboard_bench --artifacts DIR --experiment NAME``: the dashboard's own latency, with AppTest.

Run by ``make bench`` (``tools/bench.py``) in a fresh interpreter; prints one JSON line. Time to first
render of each page, and the ensemble builder's latency per member toggle (the < 200 ms budget). Speed is
measured here, never asserted in tests.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
PAGES = ["overview", "confusion", "misclassified", "stain_comparison", "ensemble_builder", "training_curves", "gradcam", "embedding"]


def measure(quick: bool) -> dict:
    from streamlit.testing.v1 import AppTest

    app = str(ROOT / "dashboard" / "app.py")
    first = {}
    for page in PAGES:
        at = AppTest.from_file(app, default_timeout=120)
        at.run()
        t = time.perf_counter()
        at.switch_page(f"../pages/{page}.py")
        at.run()
        first[page] = (time.perf_counter() - t) * 1000
    at = AppTest.from_file(app, default_timeout=120)
    at.run()
    at.switch_page("../pages/ensemble_builder.py")
    at.run()
    latencies = []
    members = list(at.multiselect(key="ens_member_pick").value)  # the builder's one member picker (issue 27)
    for i in range(4 if quick else 12):  # remove a member, then add it back: every toggle re-scores
        pick, member = at.multiselect(key="ens_member_pick"), members[(i // 2) % len(members)]
        t = time.perf_counter()
        (pick.unselect(member) if member in pick.value else pick.select(member)).run()
        latencies.append((time.perf_counter() - t) * 1000)
    return {**{f"first_render_ms_{p}": v for p, v in first.items()},
            "toggle_median_ms": float(np.median(latencies)), "toggle_max_ms": float(np.max(latencies)),
            "target": "toggle < 200 ms", "baseline": "absolute (no baseline)", "ok": float(np.median(latencies)) < 200}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", required=True, help="artifacts root holding the experiment")
    parser.add_argument("--experiment", required=True)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    os.environ["HISTOCOMPARE_ARTIFACTS"], os.environ["HISTOCOMPARE_EXPERIMENT"] = args.artifacts, args.experiment
    print(json.dumps(measure(args.quick)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
