"""The runner's one progress display: the ETA rule, the status file the Pipeline page reads, the terminal lines, and
reports from two spawned workers reaching the parent's board."""

import io
import json

import pytest

from pipeline.artifacts.catalog import Catalog
from pipeline.artifacts.status import format_seconds, is_stale, read_status, run_eta_seconds
from pipeline.progress import Board, batch_event, set_sink


def test_eta_extrapolates_this_epoch_and_uses_the_epochs_after_the_first():
    # 3rd of 10 epochs, a quarter done after 5 s: this epoch needs 15 s more; 7 later epochs at the mean of the
    # finished epochs after the first (tracing) one, (10 + 12) / 2 = 11 s: 15 + 77 = 92 s.
    assert run_eta_seconds(3, 10, 25, 100, 5.0, [40.0, 10.0, 12.0]) == pytest.approx(92.0)
    # first epoch, half done after 30 s: 30 s more + 4 epochs at this epoch's projected 60 s
    assert run_eta_seconds(1, 5, 50, 100, 30.0, []) == pytest.approx(270.0)
    assert run_eta_seconds(1, 5, 0, 100, 0.0, []) is None  # nothing measured yet
    assert format_seconds(92) == "1:32" and format_seconds(3725) == "1:02:05" and format_seconds(None) == "?"


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_board_writes_the_status_file_and_one_line_per_running_run(tmp_path):
    catalog = Catalog(tmp_path / "exp")
    catalog.root.mkdir()
    term = FakeTerminal()
    board = Board(catalog.pipeline_status, "exp", ["data", "train", "evaluate"], out=term, min_interval=0)
    with board:
        board.runs(total=3, done=1)
        board.stage("data", "skipped")
        board.stage("train", "running")
        board.event({"kind": "run_start", "run": "v1_b0"})
        board.event(batch_event("v1_b0", 2, 4, 6, 12, 3.0, [20.0]))  # 3 s more + 2 epochs x 20 s
        board.event(batch_event("v2_b0", 1, 4, 4, 12, 2.0, []))
        board.event({"kind": "log", "line": "v1_b0 epoch 2: loss 0.5"})
        assert board.lines() == ["[1/3 runs] v1_b0: epoch 2/4  50% ETA 0:43", "[1/3 runs] v2_b0: epoch 1/4  33% ETA 0:22"]
        mid = read_status(catalog)
        board.event({"kind": "run_done", "run": "v1_b0"})
        board.stage("train", "done", 12.34)
    final = read_status(catalog)

    assert [(s["name"], s["state"]) for s in mid["stages"]] == [("data", "skipped"), ("train", "running"), ("evaluate", "waiting")]
    assert mid["state"] == "running" and mid["runs"]["done"] == 1 and mid["runs"]["total"] == 3
    assert {r["run"]: (r["epoch"], r["eta_s"]) for r in mid["runs"]["running"]} == {"v1_b0": (2, 43.0), "v2_b0": (1, 22.0)}
    assert mid["log"] == ["v1_b0 epoch 2: loss 0.5"]
    assert final["state"] == "finished" and final["runs"]["done"] == 2
    assert [r["run"] for r in final["runs"]["running"]] == []  # a finished board lists nothing as running
    assert final["stages"][1] == {"name": "train", "state": "done", "seconds": 12.3}
    assert final["changes"] == 2  # one run and one stage finished: what makes the dashboard rerun its pages
    # the terminal: the log line scrolls above the two status lines, which are erased and redrawn in place
    text = term.getvalue()
    assert "v1_b0 epoch 2: loss 0.5\n[1/3 runs] v1_b0: epoch 2/4" in text and "\x1b[2K" in text
    assert not is_stale(final)


def test_a_no_op_rerun_keeps_each_stages_last_real_duration(tmp_path):
    """Issue 27: a rerun that finds a stage up to date must not show its check time as the stage's duration."""
    path = tmp_path / "pipeline_status.json"

    def run(lines: dict[str, list[str]], seconds: dict[str, float], trained: bool = False) -> dict:
        with Board(path, "exp", ["train", "evaluate"], out=io.StringIO(), min_interval=0) as board:
            for name in ("train", "evaluate"):
                board.stage(name, "running")
                board.event({"kind": "log", "line": f"=== {name} ==="})
                for line in lines[name]:
                    board.event({"kind": "log", "line": line})
                if name == "train" and trained:
                    board.event({"kind": "run_done", "run": "v1_b0"})
                board.stage(name, "done", seconds[name])
        return {s["name"]: s for s in json.loads(path.read_text())["stages"]}

    first = run({"train": ["v1_b0 epoch 1: loss 0.5"], "evaluate": ["evaluate: 3 runs"]}, {"train": 95.0, "evaluate": 12.0},
                trained=True)
    assert (first["train"]["seconds"], first["evaluate"]["seconds"]) == (95.0, 12.0) and "up_to_date" not in first["train"]
    # the no-op rerun: both stages only print their "up to date" line (train: one per run)
    second = run({"train": ["v1_b0: up to date (config abc)"], "evaluate": ["evaluate: up to date (3 runs and ensembles)"]},
                 {"train": 0.4, "evaluate": 0.21})
    assert second["train"] == {"name": "train", "state": "done", "seconds": 95.0, "up_to_date": True, "checked_seconds": 0.4}
    assert second["evaluate"]["seconds"] == 12.0 and second["evaluate"]["checked_seconds"] == 0.2
    # a second no-op still remembers; then real work in one stage replaces only that stage's duration
    third = run({"train": ["v1_b0: up to date (config abc)"], "evaluate": ["evaluate: 4 runs"]}, {"train": 0.3, "evaluate": 7.0})
    assert third["train"]["seconds"] == 95.0 and third["train"]["up_to_date"]
    assert third["evaluate"]["seconds"] == 7.0 and "up_to_date" not in third["evaluate"]
    # a rerun of another experiment's file (or a foreign file) carries nothing over
    path.write_text("not json")
    fourth = run({"train": ["v1_b0: up to date (config abc)"], "evaluate": ["evaluate: up to date"]}, {"train": 0.3, "evaluate": 0.1})
    assert fourth["train"]["seconds"] is None and fourth["train"]["checked_seconds"] == 0.3


@pytest.mark.parametrize("exc, state, error", [(KeyboardInterrupt, "stopped", "interrupted (Ctrl-C): run again to resume"),
                                               (ValueError("bad preset"), "failed", "bad preset")])
def test_board_records_how_a_run_ended(tmp_path, exc, state, error):
    path = tmp_path / "pipeline_status.json"
    with pytest.raises(type(exc) if isinstance(exc, BaseException) else exc):
        with Board(path, "exp", ["index", "train"], out=io.StringIO()) as board:
            board.stage("index", "done", 1.0)
            board.stage("train", "running")
            raise exc
    status = json.loads(path.read_text())
    assert status["state"] == state and status["error"] == error
    assert [s["state"] for s in status["stages"]] == ["done", "failed"]


def _chatty_job(n: int) -> int:
    """A worker job that prints, reports batch progress and finishes (module-level: it is pickled)."""
    from pipeline.progress import batch_event, report

    report({"kind": "run_start", "run": f"r{n}"})
    report(batch_event(f"r{n}", 1, 2, 5, 10, 1.0, []))
    print(f"job {n} says hello")
    report({"kind": "run_done", "run": f"r{n}"})
    return n * n


def test_two_workers_report_through_the_parent(tmp_path):
    from pipeline.workers import map_in_workers

    events = []
    previous = set_sink(events.append)
    try:
        assert map_in_workers(_chatty_job, [1, 2, 3], workers=2, tensorflow=False) == [1, 4, 9]
    finally:
        set_sink(previous)
    logs = sorted(e["line"] for e in events if e["kind"] == "log")
    assert logs == ["job 1 says hello", "job 2 says hello", "job 3 says hello"]  # printed in workers, shown by the parent
    assert sorted(e["run"] for e in events if e["kind"] == "run_done") == ["r1", "r2", "r3"]
    assert [e["eta_s"] for e in events if e["kind"] == "batch"] == [3.0, 3.0, 3.0]  # 1 s more + 1 epoch of 2 s
