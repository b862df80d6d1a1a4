"""``pipeline_status.json``: the live state of a ``python -m pipeline run``, written by the runner, read by the dashboard.

Why a file: the dashboard only reads artifacts, and a page that refreshes every few seconds needs something cheap
to read that says what the pipeline is doing *now* (the stamps and run folders say only what is finished). The
runner rewrites it atomically about once a second while anything changes, and at least every
``HEARTBEAT_SECONDS`` while it lives, so a reader can tell a silent-but-busy pipeline from one that died
(``updated`` stops moving). Schema (version 1)::

    {"version": 1, "experiment": "demo", "pid": 123, "state": "running" | "finished" | "failed" | "stopped",
     "started": ISO, "updated": ISO, "updated_unix": float, "error": str | null, "changes": int,
     "stages": [{"name": "train", "state": "waiting" | "running" | "done" | "failed" | "skipped", "seconds": float | null,
                 "up_to_date": true, "checked_seconds": float}],
     "runs": {"total": 11, "done": 3, "running": [{"run": "v1_b0", "epoch": 4, "epochs": 10, "seen": 48, "of": 92,
                                                  "eta_s": 31.0, "loss": 0.61, "accuracy": 0.7,
                                                  "node": "host", "pid": 4242, "device": "GPU 1" | "CPU"}]},
     "log": ["last", "lines"]}

A stage's ``seconds`` is its last real duration: when a rerun finds it up to date (it only printed "up to date"
lines), ``up_to_date`` is true, ``checked_seconds`` is the time that check took, and ``seconds`` is carried over from
the previous run's file (null when that is unknown).
``node``/``pid``/``device`` say where a run trains (a local worker or a Ray worker on any node); a schedule of
several experiments (``fold = "all"``, several presets) writes each experiment's runs into its own file.
``changes`` counts finished stages and finished runs: a dashboard page reruns when it moves, so it picks up the
new artifacts without a reload.
"""

from __future__ import annotations

import time
from pathlib import Path

from pipeline.artifacts.catalog import Catalog
from pipeline.artifacts.io import read_json

STATUS_VERSION = 1
HEARTBEAT_SECONDS = 5.0
STALE_SECONDS = 30.0  # a "running" status not rewritten for this long: the process probably died


def read_status(catalog: Catalog) -> dict | None:
    """The status of the experiment's last ``run``, or None when no run has written one.

    A damaged file raises ``PipelineError`` (naming it); a status of another version is treated as absent.
    """
    path: Path = catalog.pipeline_status
    if not path.exists():
        return None
    status = read_json(path)
    if not isinstance(status, dict) or status.get("version") != STATUS_VERSION:
        return None
    return status


def seconds_since_update(status: dict, now: float | None = None) -> float:
    """How long ago the runner last rewrote the status (its heartbeat)."""
    try:
        updated = float(status.get("updated_unix") or 0.0)
    except (TypeError, ValueError):  # a foreign value: as old as can be
        updated = 0.0
    return max(0.0, (time.time() if now is None else now) - updated)


def is_stale(status: dict, now: float | None = None) -> bool:
    """A status that says "running" but has not been rewritten for ``STALE_SECONDS``: the process is gone."""
    return status.get("state") == "running" and seconds_since_update(status, now) > STALE_SECONDS


def run_eta_seconds(epoch: int, epochs: int, seen: int, of: int, epoch_elapsed: float, epoch_seconds: list[float]) -> float | None:
    """Seconds left in a training run that is ``seen/of`` images into epoch ``epoch`` of ``epochs`` (1-based).

    The rest of this epoch is extrapolated from its own rate so far; each later epoch takes the mean of the
    finished epochs after the first (the first includes graph tracing), else of the first, else this epoch's
    projected length. None while nothing has been measured yet.
    """
    fraction = seen / of if of else 0.0
    this_epoch = epoch_elapsed / fraction if fraction > 0 else None
    typical = epoch_seconds[1:] or epoch_seconds
    per_epoch = sum(typical) / len(typical) if typical else this_epoch
    if per_epoch is None:
        return None
    rest_of_this = this_epoch * (1 - fraction) if this_epoch is not None else per_epoch
    return max(0.0, rest_of_this + max(0, epochs - epoch) * per_epoch)


def format_when(stamp: object) -> str:
    """``2026-11-27T08:05:00`` (the runner's local time) -> ``27 Nov 2026, 08:05:00``; ``?`` when not such a time.

    Why: the page is read by people; an ISO timestamp with its ``T`` reads as a machine value."""
    from datetime import datetime

    try:
        when = datetime.fromisoformat(str(stamp))
    except ValueError:
        return "?"
    return f"{when.day} {when:%b %Y, %H:%M:%S}"


def format_seconds(seconds: float | None) -> str:
    """``75`` -> ``1:15``, ``3725`` -> ``1:02:05``; ``?`` when unknown."""
    if seconds is None:
        return "?"
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
