"""``python -m tools.browser_bench --artifacts DIR --experiment NAME``: click-to-updated-metric in a real browser.

What a user feels when toggling an ensemble member: from the click that removes a member's chip (or the Enter that
adds it back) in the members multiselect until the builder's summary line (members, rule, images) shows the new member
count, in headless Chromium against a ``streamlit run`` server. Measured with 1 and with 6 concurrent browser sessions
(one Chromium, isolated contexts, clicking at the same time), because every session's rerun shares the server's cores.
Prints one JSON line (p50/p90 per concurrency). Speed is measured here, never asserted in tests. Goal (issue 13): p50
< 250 ms alone, p90 < 1 s with six.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from tools.live import CHROMIUM, CHROMIUM_ARGS, PROJECT_ROOT, free_port, serve

SUMMARY = "[data-testid='stMarkdownContainer'] p:has-text('member(s),')"


async def _session(browser, url: str, clicks: int, ready: asyncio.Barrier, out: list[float]) -> None:
    try:
        context = await browser.new_context(viewport={"width": 1400, "height": 1000})
        page = await context.new_page()
        await page.goto(f"{url}/ensemble", timeout=120_000)
        await page.wait_for_selector(SUMMARY, timeout=120_000)
        await page.wait_for_selector("[data-testid='stApp'][data-test-script-state='notRunning']", timeout=120_000)
        picker = page.locator(".st-key-ens_member_pick")
        chips = picker.locator("[data-tag]")
        await chips.first.wait_for(timeout=120_000)
        names = [await chips.nth(k).get_attribute("aria-label") for k in range(await chips.count())]
    except BaseException:
        await ready.abort()  # the other sessions would wait for this one at the barrier forever
        raise
    await ready.wait()  # every session has loaded the page: now they click at the same time
    for i in range(clicks):
        try:
            before = await page.locator(SUMMARY).first.inner_text(timeout=120_000)
            name = names[(i // 2) % len(names)]  # remove then add back the same member: the member count always changes
            if i % 2 == 0:
                remove = picker.get_by_role("button", name=f"Remove {name}", exact=True)
                t = time.perf_counter()
                await remove.click(timeout=120_000)
            else:
                box = picker.locator("input")
                await box.click(timeout=120_000)
                await box.fill(name)
                await page.get_by_role("option", name=name, exact=True).wait_for(timeout=120_000)
                t = time.perf_counter()
                await box.press("Enter")
            await page.wait_for_function(
                "prev => { const el = [...document.querySelectorAll(\"[data-testid='stMarkdownContainer'] p\")]"
                ".find(p => p.innerText.includes('member(s),')); return el && el.innerText !== prev; }",
                arg=before, timeout=120_000)
            if i % 2:
                await page.keyboard.press("Escape")  # close the option list before the next click
        except PlaywrightTimeout:
            out.append(float("nan"))  # counted as a timeout, not a latency
            continue
        out.append((time.perf_counter() - t) * 1000)
    await context.close()


try:
    from playwright.async_api import TimeoutError as PlaywrightTimeout
except ImportError:  # reported by main() as a missing browser stack
    PlaywrightTimeout = TimeoutError


async def _measure(url: str, sessions: int, clicks: int) -> list[float]:
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        ready, latencies = asyncio.Barrier(sessions), []
        results = await asyncio.gather(*(_session(browser, url, clicks, ready, latencies) for _ in range(sessions)),
                                       return_exceptions=True)
        await browser.close()
    failures = [r for r in results if isinstance(r, BaseException) and not isinstance(r, asyncio.BrokenBarrierError)]
    if failures:
        raise failures[0]
    return latencies


def _argv(root: Path, port: int) -> list[str]:
    return [sys.executable, "-m", "streamlit", "run", str(root / "dashboard" / "app.py"), "--server.address", "127.0.0.1",
            "--server.port", str(port), "--server.headless", "true", "--browser.gatherUsageStats", "false"]


def _latencies(root: Path, artifacts: Path, experiment: str, sessions: int, clicks: int) -> list[float]:
    port = free_port()
    with serve(artifacts, experiment, cwd=root, argv=_argv(root, port), port=port) as (url, _):
        asyncio.run(_measure(url, 1, 1))  # warm-up: the first render pays the cold imports
        return asyncio.run(_measure(url, sessions, clicks))


def measure(artifacts: Path, experiment: str, concurrency: list[int], clicks: int, baseline_root: Path | None = None) -> dict:
    """p50/p90 per concurrency for this checkout, and, with ``baseline_root`` (another checkout, e.g. ``git archive
    main``), for that one too, measured right after on the same machine: the ratio is the honest number on a busy box."""
    out: dict = {"target": "p50 < 250 ms alone, p90 < 1000 ms with 6",
                 "baseline": f"the same clicks on {baseline_root}" if baseline_root else "absolute (no baseline checkout given)"}
    def record(prefix: str, n: int, lat: list[float]) -> None:
        done = [v for v in lat if v == v]
        out[f"{prefix}p50_ms_{n}"] = float(np.percentile(done, 50)) if done else float("nan")
        out[f"{prefix}p90_ms_{n}"] = float(np.percentile(done, 90)) if done else float("nan")
        out[f"{prefix}timeouts_{n}"] = len(lat) - len(done)
        print(f"{prefix or 'ours '}{n} browser(s): {out[f'{prefix}p50_ms_{n}']:.0f} / {out[f'{prefix}p90_ms_{n}']:.0f} ms",
              file=sys.stderr, flush=True)

    for n in concurrency:
        record("", n, _latencies(PROJECT_ROOT, artifacts, experiment, n, clicks))
        if baseline_root:
            record("baseline_", n, _latencies(baseline_root, artifacts, experiment, n, clicks))
            out[f"ratio_p50_{n}"] = out[f"baseline_p50_ms_{n}"] / out[f"p50_ms_{n}"]
    first, last = min(concurrency), max(concurrency)
    out["ok"] = out[f"p50_ms_{first}"] < 250 and out[f"p90_ms_{last}"] < 1000
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", required=True)
    parser.add_argument("--experiment", required=True)
    parser.add_argument("--browsers", type=int, nargs="+", default=[1, 6])
    parser.add_argument("--clicks", type=int, default=10, help="clicks per browser session")
    parser.add_argument("--baseline-root", type=Path, help="another checkout to measure the same way (e.g. `git archive main`)")
    args = parser.parse_args(argv)
    if not CHROMIUM.exists():
        print(json.dumps({"error": "Debian's chromium is not installed (`make browser`)"}))
        return 0
    os.environ.setdefault("HISTOCOMPARE_QUIET", "1")
    print(json.dumps(measure(Path(args.artifacts), args.experiment, args.browsers, args.clicks, args.baseline_root)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
