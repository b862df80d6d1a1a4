"""``split.fold = "all"``: one experiment folder per fold (each up to date on its own), the fold summary written from
their metrics (mean and sd checked with numpy), and the compare page's grouping of those folders as one protocol."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from dashboard.experiments import protocols
from pipeline.config import config_from_dict
from pipeline.runner import run_pipeline, write_fold_summary

FOLDS = 3


@pytest.fixture(scope="module")
def preset(tmp_path_factory, dashboard_artifacts):
    root = tmp_path_factory.mktemp("folds")
    data = dashboard_artifacts.parent / "data"  # the dashboard fixture's 72 tiny BreakHis-named images (read only)
    return config_from_dict({
        "experiment": {"name": "proto", "data_root": str(data), "out_dir": str(root / "artifacts" / "proto")},
        "split": {"mode": "patient", "ratios": [0.5, 0.25, 0.25], "folds": FOLDS, "fold": "all"},
    })


def test_every_fold_gets_its_own_experiment(preset, capsys):
    run_pipeline(preset, only=["index", "split"])
    artifacts = preset.out_dir.parent
    dirs = [artifacts / f"proto-fold{k}" for k in range(FOLDS)]
    splits = [pd.read_parquet(d / "split.parquet") for d in dirs]
    for k, d in enumerate(dirs):
        record = json.loads((d / "pipeline_run.json").read_text())
        assert record["config"]["split"]["fold"] == k and record["config"]["experiment"]["name"] == f"proto-fold{k}"
        pd.testing.assert_frame_equal(splits[0], splits[k])  # one protocol: the same folds everywhere
    assert sorted(splits[0]["fold"].unique()) == list(range(FOLDS))
    capsys.readouterr()
    run_pipeline(preset, only=["index", "split"])
    out = capsys.readouterr().out
    assert out.count("split: up to date") == FOLDS and "fold summary: not written, no metrics yet" in out
    configs = {d.name: json.loads((d / "pipeline_run.json").read_text())["config"] for d in dirs}
    groups = protocols([d.name for d in dirs], configs)
    assert len(groups) == 1 and groups[0].folds == list(range(FOLDS))


def test_fold_summary_from_planted_metrics(preset, dashboard_artifacts):
    planted = (0.61, 0.74, 0.70)
    for k, acc in enumerate(planted):
        d = preset.out_dir.parent / f"proto-fold{k}"
        d.mkdir(parents=True, exist_ok=True)
        metrics = pd.read_parquet(dashboard_artifacts / "fixture" / "metrics.parquet")
        metrics.loc[metrics.run_id == "v1_b0", "accuracy"] = acc
        metrics.to_parquet(d / "metrics.parquet")
        (d / "pipeline_run.json").write_text(json.dumps({"config": {"split": {"fold": k}}}))
    out = write_fold_summary(preset)
    summary = pd.read_parquet(out)
    row = summary[(summary.run_id == "v1_b0") & (summary.split == "test")].iloc[0]
    assert row.folds == FOLDS
    assert row.accuracy_mean == pytest.approx(np.mean(planted)) and row.accuracy_sd == pytest.approx(np.std(planted, ddof=1))
    assert "patient_accuracy_mean" in summary and out.parent.name == "proto-folds"
    shutil.rmtree(out.parent)


def test_train_with_an_all_folds_preset_asks_for_a_fold(tmp_path):
    import io
    from contextlib import redirect_stderr, redirect_stdout

    from pipeline.cli import main

    preset = tmp_path / "p.toml"
    preset.write_text('[experiment]\nname = "p"\n[split]\nfolds = 3\nfold = "all"\n')
    err = io.StringIO()
    with redirect_stdout(io.StringIO()), redirect_stderr(err):
        code = main(["train", str(tmp_path / "exp"), "--model", "v1_b0", "--config", str(preset)])
    assert code == 2 and "--fold K" in err.getvalue() and len(err.getvalue().strip().splitlines()) == 1


def test_gradcam_with_no_methods_is_skipped_not_a_crash(dashboard_artifacts, tmp_path):
    """Issue 23: `[gradcam] methods = []` (a natural way to skip Grad-CAM) passed validation, and `run` with
    `fold = "all"` trained the first fold, then died in its gradcam stage: `ValueError: No objects to concatenate`."""
    from conftest import copy_experiment
    from pipeline.config import GradcamConfig
    from pipeline.stages.gradcam import run_gradcam

    exp = copy_experiment(dashboard_artifacts / "fixture", tmp_path / "fixture")
    assert run_gradcam(exp, GradcamConfig(methods=[])).empty


def test_run_skips_the_gradcam_stage_when_it_has_no_methods(dashboard_artifacts, tmp_path, capsys):
    """The stage is shown as skipped (not run) when there is nothing to explain, in every fold of the protocol."""
    from pipeline.runner import run_pipeline

    data = dashboard_artifacts.parent / "data"
    cfg = config_from_dict({"experiment": {"name": "nm", "data_root": str(data), "out_dir": str(tmp_path / "nm")},
                            "split": {"mode": "patient", "ratios": [0.5, 0.25, 0.25], "folds": 2, "fold": "all"},
                            "gradcam": {"methods": []}})
    run_pipeline(cfg, only=["index", "split", "gradcam"])
    for k in range(2):
        status = json.loads((tmp_path / f"nm-fold{k}" / "pipeline_status.json").read_text())
        assert {s["name"]: s["state"] for s in status["stages"]}["gradcam"] == "skipped"


def test_several_presets_expand_to_one_schedule_of_experiments(tmp_path):
    """`run --config image_level.toml patient.toml` (fold = "all", 3 folds): four experiments in one schedule; two
    presets writing one folder are refused before anything runs."""
    from pipeline.core.errors import PipelineError
    from pipeline.schedule import expand

    image = config_from_dict({"experiment": {"name": "img", "data_root": "x", "out_dir": str(tmp_path / "img")},
                              "split": {"mode": "paper"}})
    patient = config_from_dict({"experiment": {"name": "pat", "data_root": "x", "out_dir": str(tmp_path / "pat")},
                                "split": {"folds": 3, "fold": "all"}})
    names = [c.experiment.name for c in expand([image, patient])]
    assert names == ["img", "pat-fold0", "pat-fold1", "pat-fold2"]
    assert [c.split.fold for c in expand([patient])] == [0, 1, 2]
    with pytest.raises(PipelineError, match="two experiments write"):
        expand([image, image])
