"""Training stage: artifacts and schema, skip when up to date, resume after interruption, bad input."""

import json
import shutil

import keras
import numpy as np
import pandas as pd
import pytest

from pipeline.artifacts.predictions import PREDICTION_COLUMNS, load_predictions
from pipeline.config import TrainConfig
from pipeline.core.errors import PipelineError
from pipeline.stages.train import train_run

TINY = TrainConfig(epochs=1, batch_size=8, image_size=32, weights="none", freeze_batchnorm=False, lr_backbone=1e-3, lr_head=5e-3)


class InterruptAfter(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.epoch:
            raise KeyboardInterrupt


@pytest.fixture(scope="module")
def trained(tmp_path_factory, demo_experiment):
    exp = tmp_path_factory.mktemp("trained") / "exp"
    shutil.copytree(demo_experiment, exp)
    info = train_run(exp, "efficientnet_b0", TINY)
    return exp, info


def test_run_writes_every_artifact(trained):
    exp, info = trained
    run_dir = exp / "runs" / "v1_b0"
    for name in ("model.keras", "history.parquet", "run.json", "features.npz"):
        assert (run_dir / name).exists(), name
    assert not (run_dir / "last.keras").exists()
    history = pd.read_parquet(run_dir / "history.parquet")
    assert {"epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr_backbone", "lr_head", "seconds"} <= set(history.columns)
    assert history["lr_backbone"].iloc[0] == pytest.approx(TINY.lr_backbone)
    assert history["lr_head"].iloc[0] == pytest.approx(TINY.lr_head)
    run = json.loads((run_dir / "run.json").read_text())
    for key in ("resolved_config", "versions", "data_fingerprint", "best_epoch", "timings_s", "config_hash"):
        assert key in run
    assert run["versions"]["tensorflow"].startswith("2.") and run["resolved_config"]["seed"] == 0


def test_predictions_cover_val_and_test_and_round_trip(trained):
    exp, _ = trained
    preds = load_predictions(exp)
    split = pd.read_parquet(exp / "split.parquet")
    expected = set(split.loc[split.split.isin(["val", "test"]), "image_id"])
    rows = preds[preds.run_id == "v1_b0"]
    assert set(rows.image_id) == expected and len(rows) == len(expected)
    assert set(PREDICTION_COLUMNS) <= set(preds.columns)
    assert rows.prob_malignant.between(0, 1).all()
    assert ((rows.prob_malignant >= 0.5).astype(int) == rows.pred).all()
    back = pd.read_parquet(exp / "predictions.parquet")
    pd.testing.assert_frame_equal(back, preds)


def test_rerun_is_skipped(trained, capsys):
    exp, info = trained
    mtime = (exp / "runs" / "v1_b0" / "model.keras").stat().st_mtime
    again = train_run(exp, "efficientnet_b0", TINY)
    assert "up to date" in capsys.readouterr().out
    assert again["config_hash"] == info["config_hash"]
    assert (exp / "runs" / "v1_b0" / "model.keras").stat().st_mtime == mtime


def test_interrupted_run_resumes(trained, capsys):
    exp, _ = trained
    cfg = TrainConfig(**{**TINY.__dict__, "epochs": 2})
    with pytest.raises(KeyboardInterrupt):
        train_run(exp, "efficientnet_v2_b0", cfg, callbacks=[InterruptAfter(1)])
    run_dir = exp / "runs" / "v2_b0"
    state = json.loads((run_dir / "state.json").read_text())
    assert state["epochs_done"] == 1 and (run_dir / "last.keras").exists() and not (run_dir / "run.json").exists()
    assert not (load_predictions(exp).run_id == "v2_b0").any()
    info = train_run(exp, "efficientnet_v2_b0", cfg)
    assert "resuming after epoch 1" in capsys.readouterr().out
    history = pd.read_parquet(run_dir / "history.parquet")
    assert history.epoch.tolist() == [1, 2] and info["epochs_done"] == 2
    preds = load_predictions(exp)
    assert (preds.run_id == "v2_b0").sum() == (preds.run_id == "v1_b0").sum()  # the other run's rows are kept


def test_clear_errors(tmp_path, trained):
    exp, _ = trained
    with pytest.raises(PipelineError, match="unknown model"):
        train_run(exp, "efficientnet_b9", TINY)
    empty = tmp_path / "nosplit"
    empty.mkdir()
    shutil.copy(exp / "manifest.parquet", empty / "manifest.parquet")
    with pytest.raises(PipelineError, match="split"):
        train_run(empty, "efficientnet_b0", TINY)
    bad = tmp_path / "oneclass"
    shutil.copytree(exp, bad)
    split = pd.read_parquet(bad / "split.parquet")
    manifest = pd.read_parquet(bad / "manifest.parquet")
    benign = set(manifest.loc[manifest.label == 0, "image_id"])
    split.loc[split.image_id.isin(benign) & (split.split == "train"), "split"] = "val"
    split.to_parquet(bad / "split.parquet")
    with pytest.raises(PipelineError, match="train split has no benign"):
        train_run(bad, "efficientnet_b0", TINY)


def test_real_sample_b0_predicts_every_val_test_image(sample_root, tmp_path):
    from pipeline.artifacts.experiment import load_manifest
    from pipeline.artifacts.io import write_parquet
    from pipeline.core.splits import make_split
    from pipeline.stages.index import run_index

    run_index(sample_root, tmp_path)
    write_parquet(make_split(load_manifest(tmp_path), "patient", seed=0), tmp_path / "split.parquet")
    cfg = TrainConfig(epochs=2, batch_size=16, image_size=64, weights="none", freeze_batchnorm=False, lr_backbone=1e-3, lr_head=5e-3)
    info = train_run(tmp_path, "efficientnet_b0", cfg)
    preds = load_predictions(tmp_path)
    split = pd.read_parquet(tmp_path / "split.parquet")
    assert set(preds.image_id) == set(split.loc[split.split != "train", "image_id"])
    assert info["epochs_done"] == 2 and np.isfinite(preds.prob_malignant).all()
    assert "magnification" in preds and "patient_id" in preds
