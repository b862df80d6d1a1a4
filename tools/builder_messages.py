"""``python -m tools.builder_messages --artifacts DIR --experiment NAME``: what one builder interaction sends.

Issue 27 ("six users at once") asks the builder to send only what changed. This opens the ensemble builder in headless
Chromium against a ``streamlit run`` server, removes and re-adds members in the members multiselect, then picks other
diagnostics panels, and decodes every websocket frame the server sends for each interaction (Streamlit's
``ForwardMsg`` protobufs) until its rerun has finished: the delta messages (elements and blocks, by type), the
``ref_hash`` messages (an element the browser has cached, sent as a reference) and the bytes. Optionally with a panel
open from the start (``--panel roc``). Prints one JSON line per panel. Measured here, never asserted in tests.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Callable

from tools.live import CHROMIUM, chromium, serve, wait_idle

SETTLE_MS = 300  # after the script has finished: the last frames of the rerun are still on their way


def decode_frame(payload: bytes) -> tuple[str, str | None]:
    """(message type, element or block type) of one ForwardMsg frame."""
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

    msg = ForwardMsg()
    msg.ParseFromString(payload)
    kind = msg.WhichOneof("type") or "?"
    if kind != "delta":
        return kind, None
    delta = msg.delta.WhichOneof("type")
    return kind, (msg.delta.new_element.WhichOneof("type") if delta == "new_element" else delta)


def _sent(page, frames: list[bytes], action: Callable[[], None]) -> dict:
    """Run ``action`` (one click) and count what the server sends for the rerun it causes."""
    start = len(frames)
    action()
    deadline = time.time() + 60
    while time.time() < deadline and not any(decode_frame(f)[0] == "script_finished" for f in frames[start:]):
        page.wait_for_timeout(20)
    wait_idle(page, 60_000)
    page.wait_for_timeout(SETTLE_MS)
    decoded = [decode_frame(f) for f in frames[start:]]
    deltas = [d for k, d in decoded if k == "delta"]
    return {"deltas": len(deltas), "cached": sum(k == "ref_hash" for k, _ in decoded),
            "bytes": sum(len(f) for f in frames[start:]), "types": {t: deltas.count(t) for t in sorted(set(filter(None, deltas)))}}


def measure(artifacts: Path, experiment: str, toggles: int, panel: str | None) -> dict:
    frames: list[bytes] = []
    with serve(artifacts, experiment) as (url, _), chromium() as page:
        page.on("websocket", lambda ws: ws.on("framereceived", lambda data: frames.append(
            data if isinstance(data, bytes) else data.encode())))
        page.goto(f"{url}/ensemble" + (f"?panel={panel}" if panel else ""), timeout=120_000)
        picker = page.locator(".st-key-ens_member_pick")
        chips = picker.locator("[data-tag]")
        chips.first.wait_for(timeout=120_000)
        wait_idle(page, 120_000)
        page.wait_for_timeout(SETTLE_MS)
        names = [chips.nth(k).get_attribute("aria-label") for k in range(chips.count())]

        def toggle(i: int) -> None:
            name = names[(i // 2) % len(names)]  # remove, then add back the same member
            if i % 2 == 0:
                picker.get_by_role("button", name=f"Remove {name}", exact=True).click()
            else:
                box = picker.locator("input")
                box.click()
                box.fill(name)
                page.get_by_role("option", name=name, exact=True).click()

        per_toggle = []
        for i in range(toggles):
            per_toggle.append(_sent(page, frames, lambda i=i: toggle(i)))
            page.keyboard.press("Escape")
        switches = {label: _sent(page, frames, lambda label=label: page.get_by_role("tab", name=label).or_(
            page.locator(".st-key-ens_panel button", has_text=label)).first.click())  # tabs before issue 27's split
            for label in ("ROC", "Confusion matrix")}
    return {"panel": panel or "default (confusion matrix)", "toggles": toggles,
            "toggle_deltas_median": statistics.median(t["deltas"] for t in per_toggle),
            "toggle_cached_median": statistics.median(t["cached"] for t in per_toggle),
            "toggle_bytes_median": statistics.median(t["bytes"] for t in per_toggle),
            "per_toggle": per_toggle, "panel_switches": switches}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", required=True)
    parser.add_argument("--experiment", required=True)
    parser.add_argument("--toggles", type=int, default=6)
    parser.add_argument("--panel", nargs="*", default=[None], help="panels open from the start (cm roc refer ...)")
    args = parser.parse_args(argv)
    if not CHROMIUM.exists():
        print(json.dumps({"error": "Debian's chromium is not installed (`make browser`)"}))
        return 0
    os.environ.setdefault("HISTOCOMPARE_QUIET", "1")
    for panel in args.panel:
        print(json.dumps(measure(Path(args.artifacts), args.experiment, args.toggles, panel)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
