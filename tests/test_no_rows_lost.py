"""Issue 22: no stage writes a predictions table with fewer runs than the one it replaces.

The experiment is the dashboard's planted fixture (tools/fixtures.py: ten members, a Vahadane twin without a run
folder, every ensemble; no training), copied without its ``runs/`` folder as a user who shares an experiment would.
The expected run ids and row counts are read from the fixture's table before any stage touches it.
"""

from __future__ import annotations

import io
import shutil
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pandas as pd
import pytest

from pipeline.cli import main


def cli(*argv: str) -> tuple[int, str]:
    err = io.StringIO()
    with redirect_stdout(io.StringIO()), redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, err.getvalue()


def singles(table: pd.DataFrame) -> dict[str, int]:
    part = table[table["kind"] == "single"]
    return part.groupby("run_id").size().to_dict()


@pytest.fixture
def copied(dashboard_artifacts, tmp_path) -> Path:
    """The fixture experiment copied without ``runs/`` (and without the stamps that described it)."""
    exp = tmp_path / "artifacts" / "copied"
    shutil.copytree(dashboard_artifacts / "fixture", exp, ignore=shutil.ignore_patterns("runs", "gradcam", "stain"))
    return exp


def test_evaluate_on_a_copy_without_runs_keeps_every_row(copied):
    before = pd.read_parquet(copied / "predictions.parquet")
    assert len(singles(before)) == 11  # ten members + the Vahadane twin
    code, err = cli("evaluate", copied, "--bootstrap", "5")
    assert code == 0, err
    after = pd.read_parquet(copied / "predictions.parquet")
    assert singles(after) == singles(before)
    assert len(after) == len(before)
    metrics = pd.read_parquet(copied / "metrics.parquet")
    assert set(before["run_id"]) <= set(metrics["run_id"])


def test_ensemble_never_rewrites_the_table_empty(copied):
    before = pd.read_parquet(copied / "predictions.parquet")
    (copied / "ensemble_predictions.parquet").unlink(missing_ok=True)
    code, err = cli("ensemble", copied, "--no-stacking")
    assert code == 0, err
    after = pd.read_parquet(copied / "predictions.parquet")
    assert singles(after) == singles(before)


def test_ensemble_with_too_few_members_refuses_and_keeps_the_table(dashboard_artifacts, tmp_path):
    """One member left (the others' rows deliberately removed from the table and no parts): exit 2, table intact."""
    exp = tmp_path / "artifacts" / "one"
    shutil.copytree(dashboard_artifacts / "fixture", exp, ignore=shutil.ignore_patterns("runs", "gradcam", "stain"))
    table = pd.read_parquet(exp / "predictions.parquet")
    table = table[table["run_id"].isin(["v1_b0", "v1_b0-vahadane"])]
    table.to_parquet(exp / "predictions.parquet")
    before = (exp / "predictions.parquet").read_bytes()
    code, err = cli("ensemble", exp, "--no-stacking")
    assert code == 2 and "at least 2 trained" in err
    after = pd.read_parquet(exp / "predictions.parquet")
    assert singles(after) == {"v1_b0": 72, "v1_b0-vahadane": 72}
    assert (exp / "predictions.parquet").read_bytes() == before or len(after) == len(table)


def test_the_fixtures_vahadane_twin_survives_the_legacy_split(dashboard_artifacts, tmp_path):
    """The fixture has run folders for the members but none for ``v1_b0-vahadane``: its rows must stay."""
    exp = tmp_path / "artifacts" / "fixture"
    shutil.copytree(dashboard_artifacts / "fixture", exp)
    code, err = cli("evaluate", exp, "--bootstrap", "5")
    assert code == 0, err
    assert "v1_b0-vahadane" in set(pd.read_parquet(exp / "predictions.parquet")["run_id"])


def test_a_retrained_run_replaces_its_adopted_rows(copied):
    """Once a run has its own completed part again, that part wins over the rows adopted from the old table."""
    from pipeline.artifacts.io import write_json, write_parquet
    from pipeline.artifacts.predictions import merge_predictions

    cli("evaluate", copied, "--bootstrap", "5")
    table = pd.read_parquet(copied / "predictions.parquet")
    fresh = table[table["run_id"] == "v1_b1"].copy()
    fresh["prob_malignant"] = 0.25
    fresh["pred"] = 0
    write_parquet(fresh, copied / "runs" / "v1_b1" / "predictions.parquet")
    write_json({"status": "complete"}, copied / "runs" / "v1_b1" / "run.json")
    merge_predictions(copied)
    after = pd.read_parquet(copied / "predictions.parquet")
    assert singles(after) == singles(table)
    assert (after.loc[after["run_id"] == "v1_b1", "prob_malignant"] == 0.25).all()


def test_run_all_stages_on_a_copy_without_runs_keeps_every_row(copied, dashboard_artifacts, tmp_path):
    """`run` with every stage (no [[runs]] to train, no Grad-CAM) over the copied experiment."""
    before = pd.read_parquet(copied / "predictions.parquet")
    data = dashboard_artifacts.parent / "data"
    preset = tmp_path / "copied.toml"
    preset.write_text(f'[experiment]\nname = "copied"\ndata_root = "{data}"\nout_dir = "{copied}"\n'
                      '[ensemble]\nstacking = false\n[evaluate]\nbootstrap = 5\n[gradcam]\nenabled = false\n')
    code, err = cli("run", "--config", preset)
    assert code == 0, err
    after = pd.read_parquet(copied / "predictions.parquet")
    assert singles(after) == singles(before)


def test_the_dashboard_shows_every_run_of_a_copy_without_runs(copied, monkeypatch, loopback):
    from conftest import render_page

    cli("evaluate", copied, "--bootstrap", "5")
    at = render_page(copied.parent, "copied", "overview", monkeypatch=monkeypatch)
    shown = set(at.dataframe[0].value["run_id"])
    assert {"v1_b0", "v2_s", "v1_b0-vahadane"} <= shown
