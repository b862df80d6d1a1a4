"""A retrain never loses the finished run it replaces (issue 23).

* The run hash covers a weights file's *bytes*: replacing the file in place makes the run stale (the runner's own
  skip check, ``plan_run`` + ``completed_info``, says so), while touching it with the same bytes does not.
* A retrain trains into ``runs/<id>.retrain/``: SIGKILLed in its first epoch, the finished run's ``model.keras``,
  ``run.json`` and rows (its own part and the experiment's merged table) are byte-identical to before; finished,
  the new run replaces the old one and no staging folder is left.
"""

from __future__ import annotations

import json
import os
import shutil

import pandas as pd
import pytest

from conftest import sigkill_when_paused

from pipeline.config import TrainConfig

SIZE = 32


def save_weights(path, seed: int) -> None:
    """A stand-in weights file (never real weights): a randomly initialised B0 backbone, ``save_weights`` format."""
    import keras

    keras.utils.set_random_seed(seed)
    keras.applications.EfficientNetB0(include_top=False, weights=None, input_shape=(SIZE, SIZE, 3)).save_weights(path)


def cfg_for(weights) -> TrainConfig:
    return TrainConfig(epochs=1, batch_size=8, image_size=SIZE, weights=str(weights), freeze_batchnorm=False,
                       lr_backbone=1e-3, run_eagerly=True)


CHILD = r"""
import sys, time
import keras
import pipeline.stages.train as train
from pipeline.config import TrainConfig
exp, weights = sys.argv[1], sys.argv[2]

class Pause(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):  # first epoch, first batch: the parent SIGKILLs us here
        print("PAUSED", flush=True)
        time.sleep(600)

cfg = TrainConfig(epochs=1, batch_size=8, image_size=32, weights=weights, freeze_batchnorm=False, lr_backbone=1e-3,
                  run_eagerly=True)
train.train_run(exp, "efficientnet_b0", cfg, callbacks=[Pause()])
print("FINISHED", flush=True)
"""


def kill_in_first_epoch(exp, weights) -> str:
    return sigkill_when_paused(CHILD, str(exp), str(weights), timeout=120)


def test_replaced_weights_retrain_and_a_killed_retrain_keeps_the_old_run(tmp_path, demo_experiment):
    from pipeline.artifacts.predictions import load_predictions
    from pipeline.stages.train import completed_info, plan_run, train_run

    exp = tmp_path / "exp"
    shutil.copytree(demo_experiment, exp)
    weights = tmp_path / "b0.weights.h5"
    save_weights(weights, seed=1)
    first = train_run(exp, "efficientnet_b0", cfg_for(weights))
    run_dir = exp / "runs" / "v1_b0"

    # Same bytes, new mtime: still up to date (the digest, not the path or the stat, is in the hash).
    os.utime(weights, (1_000_000_000, 1_000_000_000))
    assert completed_info(plan_run(exp, "efficientnet_b0", cfg_for(weights))) is not None
    # New bytes at the same path: the run is stale, so `run` retrains it.
    save_weights(weights, seed=2)
    plan = plan_run(exp, "efficientnet_b0", cfg_for(weights))
    assert plan.config_hash != first["config_hash"] and completed_info(plan) is None

    names = ("model.keras", "run.json", "predictions.parquet")
    before = {n: (run_dir / n).read_bytes() for n in names}
    rows_before = load_predictions(exp).query("run_id == 'v1_b0'").reset_index(drop=True)
    assert len(rows_before) > 0
    out = kill_in_first_epoch(exp, weights)
    assert "PAUSED" in out and (exp / "runs" / "v1_b0.retrain").is_dir()  # the retrain was under way, in staging
    assert not (exp / "runs" / "v1_b0.retrain" / "state.json").exists()  # killed before its first epoch ended
    assert {n: (run_dir / n).read_bytes() for n in names} == before
    pd.testing.assert_frame_equal(load_predictions(exp).query("run_id == 'v1_b0'").reset_index(drop=True), rows_before)

    second = train_run(exp, "efficientnet_b0", cfg_for(weights))  # the retrain, finished this time
    assert second["config_hash"] == plan.config_hash
    assert not (exp / "runs" / "v1_b0.retrain").exists() and not (exp / "runs" / "v1_b0.old").exists()
    assert (run_dir / "model.keras").read_bytes() != before["model.keras"]
    assert completed_info(plan_run(exp, "efficientnet_b0", cfg_for(weights)))["config_hash"] == plan.config_hash
    assert set(load_predictions(exp).query("run_id == 'v1_b0'")["image_id"]) == set(rows_before["image_id"])


def test_weights_digest_is_cached_by_size_and_mtime(tmp_path):
    """The cache answers without reading while size and mtime match, and re-hashes when either changes."""
    import hashlib

    from pipeline.artifacts.stamps import cached_digest

    path, cache = tmp_path / "w.h5", tmp_path / "cache" / "weights_sha256.json"
    path.write_bytes(b"one")
    assert cached_digest(path, cache) == hashlib.sha256(b"one").hexdigest()[:32]
    st = path.stat()
    path.write_bytes(b"two")  # same size: pin the old mtime, so only the cache can answer (with the old digest)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert cached_digest(path, cache) == hashlib.sha256(b"one").hexdigest()[:32]
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert cached_digest(path, cache) == hashlib.sha256(b"two").hexdigest()[:32]


@pytest.mark.parametrize("where", ["staged", "old"])
def test_a_swap_cut_between_its_renames_is_finished(tmp_path, where):
    """Killed between the swap's two renames, the next train call puts the committed folder in place."""
    from pipeline.artifacts.catalog import Catalog
    from pipeline.artifacts.io import write_json
    from pipeline.stages.train import _recover_swap

    files = Catalog(tmp_path).run("v1_b0")
    folder = files.dir.with_name("v1_b0.retrain" if where == "staged" else "v1_b0.old")
    folder.mkdir(parents=True)
    write_json({"status": "complete" if where == "staged" else "old"}, folder / "run.json")
    _recover_swap(files)
    assert files.dir.is_dir() and not folder.exists()
    assert json.loads((files.dir / "run.json").read_text())["status"] == ("complete" if where == "staged" else "old")


def test_planning_never_writes_the_digest_cache(tmp_path):
    """A plan (the runner's skip check, and `train` before it validates) only reads the cache: a command that then
    fails on its weights file leaves the experiment as it was."""
    from pipeline.artifacts.stamps import cached_digest

    path, cache = tmp_path / "w.h5", tmp_path / "cache" / "weights_sha256.json"
    path.write_bytes(b"not hdf5")
    assert cached_digest(path, cache, write=False) is not None and not cache.exists()
