"""Training stage: artifacts and schema, skip when up to date, resume after a real SIGKILL, validate then act."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from conftest import PROJECT_ROOT, TF_NOISE, sigkill_when_paused

from pipeline.artifacts.predictions import PREDICTION_COLUMNS, load_predictions
from pipeline.config import TrainConfig
from pipeline.core.errors import PipelineError
from pipeline.stages.train import train_run

TINY = TrainConfig(epochs=1, batch_size=8, image_size=32, weights="none", freeze_batchnorm=False, lr_backbone=1e-3, lr_head=5e-3)


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
    assert not (run_dir / "state.json").exists() and not list(run_dir.glob("*-e0*.keras"))  # no resume leftovers
    assert (run_dir / "predictions.parquet").exists()  # the run's own rows, merged into predictions.parquet
    history = pd.read_parquet(run_dir / "history.parquet")
    assert {"epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr_backbone", "lr_head", "seconds"} <= set(history.columns)
    assert history["lr_backbone"].iloc[0] == pytest.approx(TINY.lr_backbone)
    assert history["lr_head"].iloc[0] == pytest.approx(TINY.lr_head)
    assert history["phase"].eq("fine-tune").all() and history["epoch"].tolist() == [1]  # no warm-up in TINY (nor the study)
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


def snapshot(root):
    return {p.relative_to(root).as_posix(): (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(root.rglob("*")) if p.is_file()}


def test_rerun_is_skipped(trained, capsys):
    exp, info = trained
    before = snapshot(exp)
    capsys.readouterr()
    again = train_run(exp, "efficientnet_b0", TINY)
    assert capsys.readouterr().out == f"v1_b0: up to date (config {info['config_hash']})\n"
    assert again["config_hash"] == info["config_hash"]
    assert snapshot(exp) == before  # no model, parquet or npz rewritten
    # settings that change only speed are not part of the run's identity: still up to date
    train_run(exp, "efficientnet_b0", TrainConfig(**{**TINY.__dict__, "workers": 2, "predict_batch_size": 16}))
    assert "up to date" in capsys.readouterr().out and snapshot(exp) == before


def test_missing_weights_exit_2_keep_the_finished_run_and_no_tensorflow_noise(trained):
    """The issue's case: a command that cannot start destroys nothing, says one line, and TF stays quiet."""
    exp, _ = trained
    run_dir = exp / "runs" / "v1_b0"
    before = snapshot(run_dir)
    rows_before = (load_predictions(exp).run_id == "v1_b0").sum()
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # the CLI must quiet TF by itself
    proc = subprocess.run([sys.executable, "-m", "pipeline", "train", str(exp), "--model", "efficientnet_b0", "--weights",
                           "missing.weights.h5", "--image-size", "32", "--epochs", "1"], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, env={**env, "PYTHONPATH": str(PROJECT_ROOT)}, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.splitlines() == ["error: python -m pipeline train: argument --weights: must be 'imagenet', 'none' or an "
                                        "existing weights file (.h5), got 'missing.weights.h5' (see --help)"]
    assert not TF_NOISE.search(proc.stdout + proc.stderr)
    assert snapshot(run_dir) == before
    assert (load_predictions(exp).run_id == "v1_b0").sum() == rows_before > 0
    # The same through the library (a preset, no CLI argument check): train checks the weights before deleting.
    with pytest.raises(PipelineError, match="missing.weights.h5 does not exist"):
        train_run(exp, "efficientnet_b0", TrainConfig(**{**TINY.__dict__, "weights": "missing.weights.h5"}), force=True)
    assert snapshot(run_dir) == before


CHILD = r"""
import sys, time
import keras
import pipeline.stages.train as train
from pipeline.config import TrainConfig
exp, point = sys.argv[1], sys.argv[2]
# three epochs; the only resume point is the one after epoch 1 (checkpoint_seconds is huge); eager execution
# (no graph tracing) halves the time of these tiny runs and leaves the lifecycle under test the same
cfg = TrainConfig(epochs=3, batch_size=8, image_size=32, weights="none", freeze_batchnorm=False, lr_backbone=1e-3,
                  checkpoint_seconds=1e9, run_eagerly=True)

def pause():  # the parent SIGKILLs this process as soon as it reads the line
    print("PAUSED", point, flush=True)
    time.sleep(600)

class Pause(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch + 1
    def on_train_batch_end(self, batch, logs=None):
        if point == "mid-epoch" and self.epoch == 2 and batch == 1:
            pause()
    def on_epoch_end(self, epoch, logs=None):  # runs after the stage's own per-epoch commit
        if point == "after-epoch" and epoch + 1 == 2:
            pause()

if point == "predict":
    train.predict_with_features = lambda *a, **k: pause()
train.train_run(exp, "efficientnet_v2_b0", cfg, callbacks=[Pause()])
print("FINISHED", flush=True)
"""


def kill_at(exp, point):
    return sigkill_when_paused(CHILD, str(exp), point, timeout=60)


def test_resume_after_sigkill_agrees_with_itself(trained, capsys):
    """SIGKILL a real training process mid-epoch, right after an epoch, and during prediction; the rerun's
    history.parquet, run.json's best epoch and model.keras must agree (and other runs' rows survive)."""
    from pipeline.artifacts.experiment import data_root_of, load_split_frame
    from pipeline.ml.data import load_images
    from pipeline.ml.models import load_classifier

    exp, _ = trained
    run_dir = exp / "runs" / "v2_b0"
    state = lambda: json.loads((run_dir / "state.json").read_text())  # noqa: E731

    kill_at(exp, "mid-epoch")  # during epoch 2: the resume point is epoch 1
    assert state()["checkpoint_epoch"] == 1 and [h["epoch"] for h in state()["history"]] == [1]
    out = kill_at(exp, "after-epoch")  # epoch 2 committed, but the resume point is still epoch 1
    assert "resuming after epoch 1 of 3" in out
    assert state()["checkpoint_epoch"] == 1 and [h["epoch"] for h in state()["history"]] == [1, 2]
    out = kill_at(exp, "predict")  # epoch 2 is trained again from the resume point, then 3; killed while predicting
    assert "resuming after epoch 1 of 3" in out and state()["fit_complete"]
    assert not (run_dir / "run.json").exists() and not (load_predictions(exp).run_id == "v2_b0").any()

    cfg = TrainConfig(epochs=3, batch_size=8, image_size=32, weights="none", freeze_batchnorm=False, lr_backbone=1e-3,
                      checkpoint_seconds=1e9, run_eagerly=True)  # exactly CHILD's settings: the same run, resumed
    info = train_run(exp, "efficientnet_v2_b0", cfg)
    assert "v2_b0: predicting" in capsys.readouterr().out  # nothing left to train
    history = pd.read_parquet(run_dir / "history.parquet")
    assert history.epoch.tolist() == [1, 2, 3] and info["epochs_done"] == 3
    best = int(history.val_accuracy.to_numpy().argmax()) + 1  # first epoch with the best validation accuracy
    assert info["best_epoch"] == best and info["best_val_accuracy"] == pytest.approx(history.val_accuracy[best - 1])
    # model.keras is that epoch's model: its validation loss and accuracy, recomputed here, are that epoch's
    frame = load_split_frame(exp)
    val = frame[frame.split == "val"]
    images = np.asarray(load_images(exp, data_root_of(exp), val, 32))
    probs = load_classifier(run_dir / "model.keras").predict(images.astype(np.float32), verbose=0)
    y = val.label.to_numpy()
    loss = float(np.mean(-np.log(np.clip(probs[np.arange(len(y)), y], 1e-7, 1.0))))
    assert int(np.abs(history.val_loss.to_numpy() - loss).argmin()) + 1 == best
    assert loss == pytest.approx(history.val_loss[best - 1], rel=1e-3)
    assert float((probs.argmax(1) == y).mean()) == pytest.approx(info["best_val_accuracy"])
    assert not (run_dir / "state.json").exists() and not list(run_dir.glob("*-e0*.keras"))
    preds = load_predictions(exp)
    assert (preds.run_id == "v2_b0").sum() == (preds.run_id == "v1_b0").sum() > 0  # the other run's rows are kept


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


def test_real_sample_b0_predicts_every_val_test_image(sample_patient_run):
    """The session's real-sample run (conftest: patient split, 2 epochs at 64 px, from scratch)."""
    info = json.loads((sample_patient_run / "runs" / "v1_b0" / "run.json").read_text())
    preds = load_predictions(sample_patient_run)
    split = pd.read_parquet(sample_patient_run / "split.parquet")
    assert set(preds.image_id) == set(split.loc[split.split != "train", "image_id"])
    assert info["epochs_done"] == 2 and np.isfinite(preds.prob_malignant).all()
    assert "magnification" in preds and "patient_id" in preds


def test_warmup_epochs_are_history_rows_before_epoch_1():
    """Head-only warm-up epochs come back as history rows (phase "warmup", epochs 1-W..0) and never as the best epoch."""
    import keras

    from pipeline.ml.data import make_dataset
    from pipeline.stages.train import _warmup, best_epoch_of

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="body_conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    net = keras.Model(inputs, keras.layers.Dense(2, activation="softmax", name="head_dense")(x))
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (16, 8, 8, 3), dtype=np.uint8), np.arange(16) % 2
    body, head = net.get_layer("body_conv").get_weights(), net.get_layer("head_dense").get_weights()
    rows = _warmup(net, make_dataset(images, labels, 8, shuffle=True), make_dataset(images, labels, 8),
                   TrainConfig(warmup_epochs=2, lr_head=1e-2), n_train=16)
    assert [r["epoch"] for r in rows] == [-1, 0] and {r["phase"] for r in rows} == {"warmup"}
    assert all(r["lr_backbone"] == 0.0 and r["lr_head"] == 1e-2 and r["seconds"] > 0 for r in rows)
    assert all(np.array_equal(a, b) for a, b in zip(body, net.get_layer("body_conv").get_weights()))  # frozen body
    assert not all(np.array_equal(a, b) for a, b in zip(head, net.get_layer("head_dense").get_weights()))  # head trained
    assert all(layer.trainable for layer in net.layers)  # trainable flags put back for fine-tuning
    tuned = [{"epoch": 1, "val_accuracy": 0.4, "phase": "fine-tune"}, {"epoch": 2, "val_accuracy": 0.6, "phase": "fine-tune"}]
    assert best_epoch_of([{**rows[0], "val_accuracy": 0.9}, *tuned]) == (2, 0.6)
