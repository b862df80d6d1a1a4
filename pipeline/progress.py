"""Progress: tqdm bars for single-process loops, and the one display of a ``run`` (terminal line + status file).

Why one display: two training workers that each draw a tqdm bar on the same terminal overwrite each other's
lines. Here a worker draws nothing: it *reports* events (``report({...})``: a log line, a training run's batch
progress, a finished run) and the runner's ``Board`` is the only thing that writes, both to the terminal (log
lines scroll, one status line per running run, redrawn in place when the terminal is a TTY) and to
``pipeline_status.json``, which the dashboard's Pipeline page reads. In a worker process ``pipeline.workers``
sends reports to the parent over the worker's pipe; in the runner's own process they go straight to the board;
with neither (``python -m pipeline train`` on its own) log lines are printed and batch progress is dropped.
"""

from __future__ import annotations

import io
import os
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Callable, Iterable, TypeVar

from tqdm.auto import tqdm

from pipeline.artifacts.io import read_json, write_json
from pipeline.core.errors import PipelineError
from pipeline.artifacts.status import HEARTBEAT_SECONDS, STATUS_VERSION, format_seconds, run_eta_seconds

T = TypeVar("T")
LOG_LINES = 40
PLACE_KEYS = ("node", "pid", "device")  # where a run trains (pipeline.devices.place), shown with its progress


def progress(items: Iterable[T], desc: str, total: int | None = None, unit: str = "img") -> Iterable[T]:
    """Wrap ``items`` in a progress bar showing rate and ETA; disabled by HISTOCOMPARE_QUIET=1 and in a worker process
    (whose output the runner's board shows as log lines: a bar would become a line per refresh)."""
    disable = os.environ.get("HISTOCOMPARE_QUIET") == "1" or isinstance(sys.stderr, LineReporter)
    return tqdm(items, desc=desc, total=total, unit=unit, dynamic_ncols=True, disable=disable, file=sys.stderr,
                mininterval=0.5 if sys.stderr.isatty() else 5.0)


# -- reporting (any process) -----------------------------------------------------------------------------------------
def _print_sink(event: dict) -> None:
    """No board (``python -m pipeline train`` on its own): print log lines; on a terminal, batch progress as one line
    redrawn in place."""
    kind = event.get("kind")
    tty = sys.stderr.isatty() and os.environ.get("HISTOCOMPARE_QUIET") != "1"
    if kind == "log":
        if tty:
            sys.stderr.write("\r\x1b[2K")
        print(event["line"], flush=True)
    elif kind == "batch" and tty:
        pct = 100 * event["seen"] / event["of"] if event.get("of") else 0
        sys.stderr.write(f"\r\x1b[2K{event['run']}: epoch {event['epoch']}/{event['epochs']} {pct:3.0f}% "
                         f"ETA {format_seconds(event.get('eta_s'))}")
        sys.stderr.flush()


_sink: Callable[[dict], None] = _print_sink


def set_sink(sink: Callable[[dict], None] | None) -> Callable[[dict], None]:
    """Route ``report`` to ``sink`` (None: back to printing); returns the previous sink."""
    global _sink
    previous, _sink = _sink, sink or _print_sink
    return previous


def report(event: dict) -> None:
    """Report a progress event: ``{"kind": "log", "line": ...}``, ``{"kind": "batch", "run": ..., ...}``,
    ``{"kind": "run_start" | "run_done", "run": ...}``."""
    _sink(event)


class LineReporter(io.TextIOBase):
    """A text stream that reports each complete line as a log event (a worker's ``sys.stdout``/``sys.stderr``)."""

    def __init__(self) -> None:
        self._buffer = ""
        self._lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        with self._lock:
            self._buffer += text.replace("\r", "\n")
            *lines, self._buffer = self._buffer.split("\n")
        for line in lines:
            if line.strip():
                report({"kind": "log", "line": line})
        return len(text)

    def flush(self) -> None:
        with self._lock:
            line, self._buffer = self._buffer, ""
        if line.strip():
            report({"kind": "log", "line": line})


def batch_event(run: str, epoch: int, epochs: int, seen: int, of: int, epoch_elapsed: float, epoch_seconds: list[float],
                loss: float | None = None, accuracy: float | None = None) -> dict:
    """A training run's progress within an epoch (``epoch`` is 1-based), with its ETA."""
    return {"kind": "batch", "run": run, "epoch": epoch, "epochs": epochs, "seen": seen, "of": of,
            "eta_s": run_eta_seconds(epoch, epochs, seen, of, epoch_elapsed, epoch_seconds),
            "loss": None if loss is None else float(loss), "accuracy": None if accuracy is None else float(accuracy)}


def _previous_seconds(path: Path, experiment: str) -> dict[str, float]:
    """Each stage's last real duration from the status file a previous run of ``experiment`` left (empty if none)."""
    try:
        previous = read_json(path)
    except (OSError, ValueError, PipelineError):  # absent, unreadable or not JSON: no history, never a failed run
        return {}
    if not isinstance(previous, dict) or previous.get("experiment") != experiment:
        return {}
    return {s["name"]: float(s["seconds"]) for s in previous.get("stages") or []
            if isinstance(s, dict) and isinstance(s.get("name"), str) and isinstance(s.get("seconds"), (int, float))}


# -- the runner's board ----------------------------------------------------------------------------------------------
class Board:
    """The runner's single progress display: the terminal and ``pipeline_status.json`` (see the module docstring).

    Thread-safe: events arrive on the main thread, a heartbeat thread rewrites the status file every few seconds.
    """

    def __init__(self, path: Path, experiment: str, stages: list[str], out=None, min_interval: float = 1.0):
        self.path, self.out, self.min_interval = Path(path), out or sys.stdout, min_interval
        self.tty = bool(getattr(self.out, "isatty", lambda: False)())
        self.lock = threading.RLock()
        now = time.strftime("%Y-%m-%dT%H:%M:%S")
        self.status = {"version": STATUS_VERSION, "experiment": experiment, "pid": os.getpid(), "state": "running",
                       "started": now, "error": None, "changes": 0,
                       "stages": [{"name": s, "state": "waiting", "seconds": None} for s in stages],
                       "runs": {"total": 0, "done": 0, "running": []}, "log": []}
        self.previous = _previous_seconds(self.path, experiment)  # each stage's last real duration, from the last run
        self.lines_in_stage = {"up_to_date": 0, "other": 0}  # what the running stage printed: did it do any work?
        self.log_lines: deque[str] = deque(maxlen=LOG_LINES)
        self.running: dict[str, dict] = {}  # run id -> its last batch event
        self.drawn = 0  # status lines currently on the terminal
        self.last_write = 0.0
        self._stop = threading.Event()
        self._heartbeat = threading.Thread(target=self._beat, daemon=True)

    # lifecycle
    def __enter__(self) -> Board:
        self.write(force=True)
        self._heartbeat.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._stop.set()
        with self.lock:
            if exc_type is None:
                self.status["state"] = "finished"
            else:
                stopped = issubclass(exc_type, KeyboardInterrupt)
                self.status["state"] = "stopped" if stopped else "failed"
                self.status["error"] = "interrupted (Ctrl-C): run again to resume" if stopped else f"{exc}".strip() or exc_type.__name__
                for stage in self.status["stages"]:
                    if stage["state"] == "running":
                        stage["state"] = "failed"
            self.running.clear()
            self._erase()
            self.write(force=True)

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            self.write(force=True)

    # events
    def stage(self, name: str, state: str, seconds: float | None = None) -> None:
        """A stage's new state. A stage that only printed "up to date" lines did no work: its ``seconds`` stay the
        last real duration (carried over from the previous run's status file), and this run's check time goes to
        ``checked_seconds`` with ``up_to_date: true``, so a no-op rerun never shows its seconds as the stage's cost."""
        with self.lock:
            if state == "running":
                self.lines_in_stage = {"up_to_date": 0, "other": 0}
            noop = state == "done" and self.lines_in_stage["up_to_date"] > 0 and self.lines_in_stage["other"] == 0
            for stage in self.status["stages"]:
                if stage["name"] == name:
                    stage["state"] = state
                    if noop:
                        stage["up_to_date"] = True
                        stage["seconds"] = self.previous.get(name)
                        if seconds is not None:
                            stage["checked_seconds"] = round(seconds, 1)
                    elif seconds is not None:
                        stage["seconds"] = round(seconds, 1)
            if state in ("done", "failed"):
                self.status["changes"] += 1
            self.write(force=True)

    def runs(self, total: int, done: int) -> None:
        with self.lock:
            self.status["runs"].update(total=total, done=done)
            self.write(force=True)

    def log(self, line: str) -> None:
        with self.lock:
            if ": up to date" in line:  # the one line every stage (and every up-to-date run) prints when it skips
                self.lines_in_stage["up_to_date"] += 1
            elif line.strip() and not line.startswith("=== "):  # the runner's stage header is not work
                self.lines_in_stage["other"] += 1
            self.log_lines.append(line)
            self._erase()
            print(line, file=self.out, flush=True)
            self._draw()
            self.write()

    def event(self, event: dict) -> None:
        kind = event.get("kind")
        with self.lock:
            if kind == "log":
                self.log(event["line"])
                return
            if kind == "run_start":  # with where it runs (node, pid, device) when an executor ran it
                where = {k: event[k] for k in PLACE_KEYS if k in event}
                self.running[event["run"]] = {"run": event["run"], "epoch": 0, "epochs": None, "seen": 0, "of": None, "eta_s": None,
                                              **where}
            elif kind == "batch":  # keeps the place its run_start gave
                self.running[event["run"]] = {**self.running.get(event["run"], {}), **{k: v for k, v in event.items() if k != "kind"}}
            elif kind == "run_done":
                self.lines_in_stage["other"] += 1  # a run trained: real work
                self.running.pop(event["run"], None)
                self.status["runs"]["done"] += 1
                self.status["changes"] += 1
            self._erase()
            self._draw()
            self.write(force=kind != "batch")

    # output
    def lines(self) -> list[str]:
        """One status line per running run (what the terminal shows under the log)."""
        runs = self.status["runs"]
        out = []
        for r in self.running.values():
            if r.get("epochs"):
                pct = 100 * r["seen"] / r["of"] if r.get("of") else 0
                loss = f" loss {r['loss']:.3f}" if r.get("loss") is not None else ""
                on = f" on {r['node']} {r['device']}" if r.get("node") else ""
                out.append(f"[{runs['done']}/{runs['total']} runs] {r['run']}: epoch {r['epoch']}/{r['epochs']} {pct:3.0f}%{loss} "
                           f"ETA {format_seconds(r.get('eta_s'))}{on}")
            else:
                out.append(f"[{runs['done']}/{runs['total']} runs] {r['run']}: starting (building the model, tracing its graph)")
        return out

    def _erase(self) -> None:
        if self.tty and self.drawn:
            self.out.write("\x1b[1A\x1b[2K" * self.drawn)
            self.drawn = 0

    def _draw(self) -> None:
        if not self.tty:
            return
        try:
            width = max(20, os.get_terminal_size(self.out.fileno()).columns - 1)
        except (OSError, ValueError, AttributeError):  # not a real terminal (io.UnsupportedOperation is an OSError)
            width = 120
        lines = self.lines()
        for line in lines:
            self.out.write(line[:width] + "\n")
        self.out.flush()
        self.drawn = len(lines)

    def write(self, force: bool = False) -> None:
        """Rewrite the status file (atomically); at most every ``min_interval`` seconds unless forced."""
        with self.lock:
            now = time.time()
            if not force and now - self.last_write < self.min_interval:
                return
            self.last_write = now
            self.status["runs"]["running"] = list(self.running.values())
            self.status["log"] = list(self.log_lines)
            self.status["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(now))
            self.status["updated_unix"] = now
            try:
                write_json(self.status, self.path)
            except OSError:  # a full disk must not stop training; the next write tries again
                pass
