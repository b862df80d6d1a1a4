"""``python -m tools.builder_messages --artifacts DIR --experiment NAME``: what one builder toggle sends to the browser.

Issue 27 ("six users at once") asks the builder to send only what changed. This opens the ensemble builder in headless
Chromium against a ``streamlit run`` server, then removes and re-adds members in the members multiselect, and decodes
every websocket frame the server sends for each toggle (Streamlit's ``ForwardMsg`` protobufs) until the rerun's
``script_finished``: the number of delta messages (elements and blocks), how many of them are charts, and the bytes.
Optionally with a diagnostics tab open (``--panel roc``). Prints one JSON line. Measured here, never asserted in tests.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from tools.live import CHROMIUM, chromium, serve, wait_idle

CHARTS = {"plotly_chart", "vega_lite_chart", "arrow_vega_lite_chart", "deck_gl_json_chart", "graphviz_chart"}


def _decode(payload: bytes) -> tuple[str, str | None]:
    """(message type, element type or block) of one ForwardMsg frame."""
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

    msg = ForwardMsg()
    msg.ParseFromString(payload)
    kind = msg.WhichOneof("type") or "?"
    if kind != "delta":
        return kind, None
    delta = msg.delta.WhichOneof("type")
    if delta == "new_element":
        return kind, msg.delta.new_element.WhichOneof("type")
    return kind, delta


def measure(artifacts: Path, experiment: str, toggles: int, panel: str | None) -> dict:
    frames: list[tuple[float, bytes]] = []
    with serve(artifacts, experiment) as (url, _), chromium() as page:
        page.on("websocket", lambda ws: ws.on("framereceived", lambda data: frames.append(
            (time.perf_counter(), data if isinstance(data, bytes) else data.encode()))))
        page.goto(f"{url}/ensemble" + (f"?panel={panel}" if panel else ""), timeout=120_000)
        picker = page.locator(".st-key-ens_member_pick")
        chips = picker.locator("[data-tag]")
        chips.first.wait_for(timeout=120_000)
        wait_idle(page, 120_000)
        names = [chips.nth(k).get_attribute("aria-label") for k in range(chips.count())]
        per_toggle = []
        for i in range(toggles):
            start = len(frames)
            name = names[(i // 2) % len(names)]
            if i % 2 == 0:
                picker.get_by_role("button", name=f"Remove {name}", exact=True).click()
            else:
                box = picker.locator("input")
                box.click()
                box.fill(name)
                page.get_by_role("option", name=name, exact=True).click()
            deadline = time.time() + 60
            while time.time() < deadline and not any(_decode(f)[0] == "script_finished" for _, f in frames[start:]):
                page.wait_for_timeout(20)
            wait_idle(page, 60_000)
            page.keyboard.press("Escape")
            sent = [_decode(f) for _, f in frames[start:]]
            deltas = [d for k, d in sent if k == "delta"]
            per_toggle.append({"deltas": len(deltas), "charts": sum(d in CHARTS for d in deltas),
                               "bytes": sum(len(f) for _, f in frames[start:]),
                               "types": {t: deltas.count(t) for t in sorted(set(filter(None, deltas)))}})
    return {"panel": panel or "default (confusion matrix)", "toggles": toggles,
            "deltas_median": statistics.median(t["deltas"] for t in per_toggle),
            "charts_median": statistics.median(t["charts"] for t in per_toggle),
            "bytes_median": statistics.median(t["bytes"] for t in per_toggle),
            "first_toggle": per_toggle[0]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", required=True)
    parser.add_argument("--experiment", required=True)
    parser.add_argument("--toggles", type=int, default=6)
    parser.add_argument("--panel", nargs="*", default=[None], help="diagnostics tabs to measure with (cm roc refer ...)")
    args = parser.parse_args(argv)
    if not CHROMIUM.exists():
        print(json.dumps({"error": "Debian's chromium is not installed (`make browser`)"}))
        return 0
    os.environ.setdefault("HISTOCOMPARE_QUIET", "1")
    for panel in args.panel:
        print(json.dumps(measure(Path(args.artifacts), args.experiment, args.toggles, panel)), flush=True)
    print("", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
