"""Distributed training on CPU stand-ins: two logical CPU devices (mirrored), two processes on 127.0.0.1 (multiworker).

Both need TensorFlow configured before it starts, so each runs in fresh processes, every one bounded by a timeout.
The multi-worker test takes ~3 min on 2 cores: marked ``slow``, `make test` runs it in its own pytest call after the rest.
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
import pytest

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
    from pipeline.cli import main
    from pipeline.ml.distribute import make_strategy
    from pipeline.ml.models import HEAD_LAYER, compile_classifier

    exp, weights = sys.argv[1], sys.argv[2]
    code = main(["train", exp, "--model", "efficientnet_b0", "--weights", weights, "--epochs", "1", "--batch-size", "16",
                 "--image-size", "32", "--strategy", "mirrored"])

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
    print("RESULT " + json.dumps({"code": code, "step_replicas": strategy.num_replicas_in_sync, "moved": moved}))
""")


def perturbed_b0_file(path: Path, size: int = 32) -> Path:
    """A no-top EfficientNetB0 weights file whose every weight differs from Keras's initial values."""
    import keras
    import numpy as np

    donor = keras.applications.EfficientNetB0(include_top=False, weights=None, input_shape=(size, size, 3))
    rng = np.random.default_rng(0)
    donor.set_weights([w if w.dtype.kind != "f" else (w * rng.uniform(0.8, 1.2, w.shape) + (w == 0) * rng.normal(0, 0.05, w.shape))
                       .astype(w.dtype) for w in donor.get_weights()])
    donor.save_weights(path)
    return path


def test_mirrored_trains_from_a_weights_file_on_two_logical_cpus(tmp_path, demo_experiment):
    """The issue's acceptance command (`train EXP --model efficientnet_b0 --weights FILE.weights.h5 --epochs 1
    --batch-size 16`, at 32 px on the synthetic test experiment to stay cheap; README "Acceptance runs" gives the
    real-sample run) on two mirrored replicas: it trains, every BatchNormalization layer of the saved model equals
    the file's as Keras's own application reads it (the study's recipe freezes BatchNorm), and the run predicts
    every val/test image once."""
    import keras
    import numpy as np

    from pipeline.ml.models import load_classifier

    exp = tmp_path / "exp"
    shutil.copytree(demo_experiment, exp)
    weights = perturbed_b0_file(tmp_path / "b0.weights.h5")
    out = subprocess.run([sys.executable, "-c", MIRRORED_SCRIPT, str(exp), str(weights)], capture_output=True, text=True,
                         env=_env(), cwd=PROJECT_ROOT, timeout=TIMEOUT_S)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(next(line for line in out.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert result["code"] == 0, out.stderr[-3000:]
    assert result["step_replicas"] == 2
    assert abs(result["moved"]["head_dense"] / 1e-2 - 1) < 0.05 and abs(result["moved"]["stem_conv"] / 1e-3 - 1) < 0.05

    run = json.loads((exp / "runs" / "v1_b0" / "run.json").read_text())
    assert run["replicas"] == 2 and run["strategy"] == "mirrored"
    split = pd.read_parquet(exp / "split.parquet")
    rows = load_predictions(exp)
    assert sorted(rows["image_id"]) == sorted(split.loc[split["split"] != "train", "image_id"])

    saved = load_classifier(exp / "runs" / "v1_b0" / "model.keras")
    reference = keras.applications.EfficientNetB0(include_top=False, weights=None, input_shape=(32, 32, 3))
    reference.load_weights(str(weights))
    expected = {l.name: l.get_weights() for l in reference.layers if isinstance(l, keras.layers.BatchNormalization)}
    got = {l.name: l.get_weights() for l in saved.layers if isinstance(l, keras.layers.BatchNormalization)}
    assert got.keys() == expected.keys() and len(got) == 49
    for name, values in expected.items():
        for a, b in zip(got[name], values):
            np.testing.assert_array_equal(a, b, err_msg=name)
    # and training changed the weights it was allowed to change
    assert not np.array_equal(saved.get_layer("top_conv").kernel.numpy(), reference.get_layer("top_conv").kernel.numpy())


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


@pytest.mark.slow  # two TensorFlow processes, ~3 min on 2 cores: `make test` runs it alone, after the rest
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
