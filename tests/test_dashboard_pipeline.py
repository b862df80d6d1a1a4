"""The Pipeline page and the pages that fill in while a pipeline runs, under AppTest, from planted artifacts: a
status file as the runner writes it, and an experiment whose predictions exist but whose metrics do not yet."""

import json
import re
import shutil
import time

import pandas as pd
import pytest
from conftest import render_page



pytestmark = pytest.mark.usefixtures("loopback")  # conftest: AppTest has no server, the app is told it listens on 127.0.0.1


def planted_status(updated: float) -> dict:
    """What ``pipeline.progress.Board`` writes mid-training (schema in pipeline/artifacts/status.py)."""
    stages = [("data", "done", 12.0), ("index", "done", 1.5), ("split", "done", 0.4), ("stain", "done", 40.2),
              ("train", "running", None), ("ensemble", "waiting", None), ("evaluate", "waiting", None), ("gradcam", "waiting", None)]
    return {"version": 1, "experiment": "live", "pid": 4242, "state": "running", "started": "2026-11-27T08:00:00",
            "updated": "2026-11-27T08:05:00", "updated_unix": updated, "error": None, "changes": 7,
            "stages": [{"name": n, "state": s, "seconds": t} for n, s, t in stages],
            "runs": {"total": 11, "done": 3, "running": [
                {"run": "v1_b0", "epoch": 4, "epochs": 10, "seen": 48, "of": 96, "eta_s": 43.0, "loss": 0.612, "accuracy": 0.7},
                {"run": "v2_b1", "epoch": 0, "epochs": None, "seen": 0, "of": None, "eta_s": None}]},
            "log": ["=== train (11 runs, 2 at a time) ===", "v1_b0 epoch 3: loss 0.6500 acc 0.700"]}


def open_pipeline_page(monkeypatch, artifacts, experiment="live"):
    return render_page(artifacts, experiment, "pipeline_status", monkeypatch)


def unescaped(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def test_pipeline_page_shows_stages_runs_eta_and_log_of_a_running_pipeline(tmp_path, monkeypatch):
    exp = tmp_path / "live"
    exp.mkdir()  # only the status file: the pipeline has just started, no manifest yet, and the experiment is listed
    monkeypatch.setattr("pipeline.artifacts.status.STALE_SECONDS", 3600)  # a slow first render must not make it stale
    (exp / "pipeline_status.json").write_text(json.dumps(planted_status(time.time())))
    at = open_pipeline_page(monkeypatch, tmp_path)

    stages = at.dataframe[0].value
    assert list(stages["stage"]) == ["data", "index", "split", "stain", "train", "ensemble", "evaluate", "gradcam"]
    assert [s.split()[-1] for s in stages["state"]] == ["done"] * 4 + ["running"] + ["waiting"] * 3
    assert {m.label: m.value for m in at.metric}["Runs trained"] == "3 / 11"
    bars = [unescaped(p.proto.text) for p in at.get("progress")]
    assert "v1_b0: epoch 4/10 (50% of this epoch, loss 0.612), ETA 0:43" in bars
    assert any("v2_b1: starting" in unescaped(c.value) for c in at.caption)
    assert at.code[0].value.splitlines() == ["=== train (11 runs, 2 at a time) ===", "v1_b0 epoch 3: loss 0.6500 acc 0.700"]
    assert any("Running: stage **train**" in unescaped(i.value) for i in at.info)
    # every page's sidebar says the pipeline is running and which stage
    assert any("Pipeline running: train, 3/11 runs, current run ETA 0:43" in unescaped(c.value) for c in at.sidebar.caption)


def test_pipeline_page_says_when_the_pipeline_stopped_updating(tmp_path, monkeypatch):
    exp = tmp_path / "live"
    exp.mkdir()
    (exp / "pipeline_status.json").write_text(json.dumps(planted_status(time.time() - 600)))
    at = open_pipeline_page(monkeypatch, tmp_path)
    assert any(re.search(r"has not updated its status for 10:\d\d", w.value) for w in at.warning)  # 600 s ago
    assert not at.sidebar.caption or not any("Pipeline running" in c.value for c in at.sidebar.caption)


@pytest.mark.parametrize("content", ['{"version": 1, "state": "running", "updated_unix": "x", "pid": "abc", "runs": 5}',
                                     '{"version": 1, "state": "running", "stages": [{"name": 1}]}', '{"version": 1, "runs": {'])
def test_pipeline_page_reports_a_damaged_status_file(tmp_path, monkeypatch, content):
    exp = tmp_path / "live"
    exp.mkdir()
    (exp / "pipeline_status.json").write_text(content)
    at = open_pipeline_page(monkeypatch, tmp_path)  # asserts no exception
    assert any("pipeline_status.json" in unescaped(e.value) for e in at.error)


def test_pipeline_page_without_a_status_says_what_to_run(dashboard_artifacts, monkeypatch):
    at = open_pipeline_page(monkeypatch, dashboard_artifacts, experiment="fixture")
    assert any("No pipeline run recorded for fixture" in unescaped(i.value) and "python -m pipeline run" in i.value for i in at.info)


def test_overview_lists_finished_runs_before_the_metrics_exist(dashboard_artifacts, tmp_path, monkeypatch):
    root = tmp_path / "artifacts"
    shutil.copytree(dashboard_artifacts / "fixture", root / "fixture")
    (root / "fixture" / "metrics.parquet").unlink()  # evaluate has not run yet
    preds = pd.read_parquet(root / "fixture" / "predictions.parquet")
    test = preds[preds["split"] == "test"]
    expected = {run: sum(int(p == l) for p, l in zip(g["pred"], g["label"])) / len(g) for run, g in test.groupby("run_id")}

    at = render_page(root, "fixture", monkeypatch=monkeypatch)
    table = next(d.value for d in at.dataframe if "accuracy" in d.value.columns and "images" in d.value.columns)
    assert dict(zip(table["run_id"], table["accuracy"])) == pytest.approx(expected)
    assert any(s.value.startswith("Runs finished so far") for s in at.subheader)


def test_training_curves_one_colour_per_run_and_a_log_scale(dashboard_artifacts, monkeypatch):
    from tools.fixtures import MEMBERS

    at = render_page(dashboard_artifacts, "fixture", "training_curves", monkeypatch, runs=list(MEMBERS)[:4])
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    lines = [t for t in spec["data"] if t.get("mode") != "markers"]
    by_run = {}
    for trace in lines:
        run, kind = trace["name"].rsplit(" ", 1)
        by_run.setdefault(run, {})[kind] = trace["line"]
    assert len(by_run) == 4
    assert len({parts["train"]["color"] for parts in by_run.values()}) == 4  # four runs, four colours
    assert all(p["train"]["color"] == p["val"]["color"] and p["train"].get("dash") == "dot" and "dash" not in p["val"]
               for p in by_run.values())
    assert spec["layout"]["yaxis"]["type"] == "log"  # loss: log scale by default, so one spike cannot flatten the rest
    at.toggle(key="curves_log_loss").set_value(False).run()
    assert json.loads(at.get("plotly_chart")[0].proto.spec)["layout"]["yaxis"].get("type") in (None, "linear")


def test_pipeline_page_says_where_a_remote_run_trains(tmp_path, monkeypatch):
    """A run on a Ray worker (or a GPU worker of the pool) carries node, pid and device in the status file."""
    monkeypatch.setattr("pipeline.artifacts.status.STALE_SECONDS", 3600)  # a slow first render must not make it stale
    status = planted_status(time.time())
    status["runs"]["running"][0].update(node="gpu-node-2", pid=777, device="GPU 1")
    exp = tmp_path / "live"
    exp.mkdir()
    (exp / "pipeline_status.json").write_text(json.dumps(status))
    at = open_pipeline_page(monkeypatch, tmp_path)
    bars = [unescaped(p.proto.text) for p in at.get("progress")]
    assert "v1_b0: epoch 4/10 (50% of this epoch, loss 0.612), ETA 0:43, on gpu-node-2 GPU 1" in bars


def test_pipeline_page_keeps_the_last_real_duration_after_a_no_op_rerun(tmp_path, monkeypatch):
    """Issue 27: the runner's board writes two runs (real work, then a rerun where every stage is up to date); the
    page shows each stage's real duration with "up to date", and people's dates, not ISO timestamps."""
    import io

    from pipeline.progress import Board

    path = tmp_path / "live" / "pipeline_status.json"
    path.parent.mkdir()
    for seconds, line in ((95.0, "v1_b0 epoch 1: loss 0.5"), (0.4, "v1_b0: up to date (config abc)")):
        with Board(path, "live", ["train"], out=io.StringIO(), min_interval=0) as board:
            board.stage("train", "running")
            board.event({"kind": "log", "line": line})
            board.stage("train", "done", seconds)
    at = open_pipeline_page(monkeypatch, tmp_path)
    table = at.dataframe[0].value
    assert table.loc[0, "seconds"] == 95.0 and table.loc[0, "state"].endswith("up to date")
    finished = next(s.value for s in at.success if s.value.startswith("Finished at"))
    when = json.loads(path.read_text())["updated"]  # e.g. 2026-12-06T06:05:09
    day, clock = when.split("T")
    year, month, dom = day.split("-")
    assert finished == f"Finished at {int(dom)} {time.strftime('%b', time.strptime(month, '%m'))} {year}, {clock}."


def test_training_curves_table_reads_n_a_not_none(dashboard_artifacts, monkeypatch):
    """Issue 27: the fixture's run.json records no test accuracy or images/s: the table says n/a, never None."""
    from tools.fixtures import MEMBERS

    run = list(MEMBERS)[0]
    info = json.loads((dashboard_artifacts / "fixture" / "runs" / run / "run.json").read_text())
    assert "test_accuracy" not in info and "train_images_per_s" not in info  # what this test is about
    at = render_page(dashboard_artifacts, "fixture", "training_curves", monkeypatch, runs=[run])
    row = at.dataframe[0].value.iloc[0]
    assert row["best val accuracy"] == f"{info['best_val_accuracy']:.4f}"
    assert row["test accuracy"] == "n/a" and row["img/s"] == "n/a"
    assert "None" not in {str(v) for v in row.to_numpy()}
