"""Distributed training on CPU stand-ins: two logical CPU devices (mirrored), two processes on 127.0.0.1 (multiworker).

Both need TensorFlow configured before it starts, so each runs in fresh processes, every one bounded by a timeout.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd

from pipeline.artifacts.predictions import load_predictions

PROJECT_ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_S = 600


def _env(**extra) -> dict:
    return {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "HISTOCOMPARE_QUIET": "1", "TF_CPP_MIN_LOG_LEVEL": "3", **extra}


MIRRORED_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    import keras
    from pipeline.config import TrainConfig
    from pipeline.ml.distribute import make_strategy
    from pipeline.ml.models import HEAD_LAYER, compile_classifier
    from pipeline.stages.train import train_run

    cfg = TrainConfig(epochs=1, batch_size=8, image_size=32, weights="none", freeze_batchnorm=False, unfreeze="all",
                      lr_backbone=1e-3, lr_head=1e-2, strategy="mirrored")
    info = train_run(sys.argv[1], "efficientnet_b0", cfg)

    # TwoRateAdam under the strategy: one step moves the head by lr_head and the backbone by lr_backbone
    # (Adam's first step moves each weight with a real gradient by the learning rate).
    strategy = make_strategy("mirrored")
    with strategy.scope():
        keras.utils.set_random_seed(0)
        inputs = keras.Input((8, 8, 3))
        x = keras.layers.Conv2D(4, 3, name="stem_conv")(inputs)
        x = keras.layers.GlobalAveragePooling2D()(x)
        model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax", name=HEAD_LAYER)(x))
        compile_classifier(model, 1e-3, 1e-2)
    head0, stem0 = model.get_layer(HEAD_LAYER).kernel.numpy(), model.get_layer("stem_conv").kernel.numpy()
    data = np.random.default_rng(0).random((8, 8, 8, 3)).astype("float32") * 255
    model.fit(data, np.array([0, 1] * 4), batch_size=8, epochs=1, verbose=0)
    moved = {name: float(np.median(np.abs(model.get_layer(name).kernel.numpy() - before)))
             for name, before in ((HEAD_LAYER, head0), ("stem_conv", stem0))}
    print("RESULT " + json.dumps({"replicas": info["replicas"], "step_replicas": strategy.num_replicas_in_sync,
                                  "moved": moved, "status": info["status"]}))
""")


def test_mirrored_on_two_logical_cpus(tmp_path, demo_experiment):
    exp = tmp_path / "exp"
    shutil.copytree(demo_experiment, exp)
    out = subprocess.run([sys.executable, "-c", MIRRORED_SCRIPT, str(exp)], capture_output=True, text=True, env=_env(),
                         cwd=PROJECT_ROOT, timeout=TIMEOUT_S)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(next(line for line in out.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert result["status"] == "complete" and result["replicas"] == 2 and result["step_replicas"] == 2
    assert abs(result["moved"]["head_dense"] / 1e-2 - 1) < 0.05 and abs(result["moved"]["stem_conv"] / 1e-3 - 1) < 0.05
    split = pd.read_parquet(exp / "split.parquet")
    rows = load_predictions(exp)
    assert sorted(rows["image_id"]) == sorted(split.loc[split["split"] != "train", "image_id"])


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _tree(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


def test_multiworker_two_processes_on_loopback(tmp_path, sample_root):
    """Worker 0 (the chief) and worker 1 train together; the chief alone writes, and predicts every image.

    The non-chief gets its own copy of the experiment, so that "writes nothing" is checked file by file.
    """
    from pipeline.artifacts.experiment import load_manifest
    from pipeline.artifacts.io import write_parquet
    from pipeline.core.splits import make_split
    from pipeline.stages.index import run_index

    chief_exp, worker_exp = tmp_path / "chief", tmp_path / "worker"
    run_index(sample_root, chief_exp)
    write_parquet(make_split(load_manifest(chief_exp), "patient", seed=0), chief_exp / "split.parquet")
    shutil.copytree(chief_exp, worker_exp)
    worker_before = _tree(worker_exp)
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for index, exp in enumerate((chief_exp, worker_exp)):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        cmd = [sys.executable, "-m", "pipeline", "train", str(exp), "--model", "efficientnet_b0", "--weights", "none",
               "--epochs", "1", "--batch-size", "16", "--image-size", "32", "--strategy", "multiworker",
               "--set", "train.unfreeze=all", "--set", "train.freeze_batchnorm=false"]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=PROJECT_ROOT,
                                      env=_env(TF_CONFIG=tf_config)))
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=TIMEOUT_S))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_stdout, stderr) in zip(procs, outputs):
        assert p.returncode == 0, stderr[-3000:]

    run = json.loads((chief_exp / "runs" / "v1_b0" / "run.json").read_text())
    assert run["replicas"] == 2 and run["strategy"] == "multiworker"
    assert {"model.keras", "history.parquet", "features.npz"} <= {p.name for p in (chief_exp / "runs" / "v1_b0").iterdir()}
    split = pd.read_parquet(chief_exp / "split.parquet")
    rows = load_predictions(chief_exp)
    expected = split.loc[split["split"] != "train", "image_id"]
    assert len(rows) == len(expected) and sorted(rows["image_id"]) == sorted(expected)  # one row per val/test image
    assert _tree(worker_exp) == worker_before  # the non-chief wrote nothing into its experiment
