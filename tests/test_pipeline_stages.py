"""`run` of a small preset twice (nothing rewritten), `--force`, Ctrl-C, and the ensemble, evaluate and Grad-CAM
stages on its tiny trained experiment (two members, 32 px, 1 epoch)."""

import copy
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from conftest import PROJECT_ROOT
from tools.fixtures import tiny_preset

from pipeline.artifacts.predictions import load_predictions
from pipeline.config import EnsembleConfig, EvaluateConfig, GradcamConfig



def small_preset(data, out, extra_runs: str = "") -> str:
    """The issue's small preset: synthetic data, two backbones, one epoch, ensembles, evaluation, Grad-CAM on."""
    return tiny_preset("small", data, out, train="lr_backbone = 1e-3\nworkers = 2", body=SMALL_BODY.format(extra_runs=extra_runs))


SMALL_BODY = """[[runs]]
model = "efficientnet_b0"
[[runs]]
model = "efficientnet_v2_b0"
{extra_runs}
[ensemble]
stacking_epochs = 5

[evaluate]
bootstrap = 100

[gradcam]
methods = ["gradcam"]
max_images = 6
batch_size = 4
deletion_steps = 4
"""


def files_of(root, suffixes=(".parquet", ".keras", ".npz")):
    """(inode, mtime_ns, size) of every artifact file: equal maps mean no such file was rewritten."""
    return {p.relative_to(root).as_posix(): (p.stat().st_ino, p.stat().st_mtime_ns, p.stat().st_size)
            for p in sorted(root.rglob("*")) if p.is_file() and p.suffix in suffixes}


@pytest.fixture(scope="module")
def pipeline_twice(tmp_path_factory, demo_root):
    """`run` of the small preset, then `run` again: the second must rewrite nothing (as `make demo` twice)."""
    from pipeline.config import load_config
    from pipeline.runner import run_pipeline

    base = tmp_path_factory.mktemp("pipeline")
    data = base / "data"
    shutil.copytree(demo_root, data)  # the session's SYNTHETIC tree (seed 3, 12 x 4): the data stage finds it complete
    preset = base / "small.toml"
    preset.write_text(small_preset(data, base / "exp"))
    cfg = load_config(preset)
    run_pipeline(cfg)
    first_status = json.loads((base / "exp" / "pipeline_status.json").read_text())
    before = files_of(base)
    second = run_pipeline(cfg)
    return {"exp": base / "exp", "data": data, "cfg": cfg, "before": before, "after": files_of(base), "second": second,
            "first_status": first_status}


@pytest.fixture(scope="module")
def two_member_experiment(pipeline_twice):
    """Two members trained by `run`'s parallel path (two spawned workers), as `make demo` does."""
    exp = pipeline_twice["exp"]
    assert sorted(load_predictions(exp).query("kind == 'single'").run_id.unique()) == ["v1_b0", "v2_b0"]
    return exp


def test_second_run_of_an_unchanged_preset_rewrites_nothing(pipeline_twice, capsys):
    before, after = pipeline_twice["before"], pipeline_twice["after"]
    assert any(k.endswith("model.keras") for k in before) and any(k.endswith(".npz") for k in before)
    assert sum(k.endswith(".parquet") for k in before) >= 10
    assert after == before


def test_a_second_run_in_a_fresh_interpreter_does_not_import_tensorflow(pipeline_twice):
    """The README's "does not import TensorFlow": `python -X importtime -m pipeline run` (a new process, so nothing
    was imported before) lists every module it imports; neither tensorflow nor keras may be among them."""
    exp = pipeline_twice["exp"]
    before = files_of(exp.parent)
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "pipeline", "run", "--config", str(exp.parent / "small.toml")],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
                          cwd=PROJECT_ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "pandas" in imported and "pipeline.runner" in imported  # the listing is real
    assert not {m for m in imported if m.split(".")[0] in ("tensorflow", "keras")}
    assert files_of(exp.parent) == before


def test_run_records_its_status_and_shows_the_workers_output(pipeline_twice):
    """The status file the Pipeline page reads: every stage's end state, the runs, and the log tail, where the lines
    the two spawned training workers printed arrive through the parent's one display."""
    status = pipeline_twice["first_status"]
    assert status["state"] == "finished" and status["error"] is None
    states = {s["name"]: s["state"] for s in status["stages"]}
    assert states == {"data": "done", "index": "done", "split": "done", "stain": "skipped", "train": "done",
                      "ensemble": "done", "neighbours": "done", "evaluate": "done", "gradcam": "done"}
    assert status["runs"] == {"total": 2, "done": 2, "running": []}
    log = "\n".join(status["log"])
    assert "v1_b0 epoch 1: loss" in log and "v2_b0: val acc" in log  # printed inside the workers
    assert status["log"][-1].startswith("pipeline finished")


def test_each_run_writes_readable_tensorboard_scalars(two_member_experiment):
    """Event files readable with TensorFlow alone, holding the same per-epoch values as history.parquet."""
    import tensorflow as tf

    from pipeline.artifacts.catalog import Catalog

    for run in ("v1_b0", "v2_b0"):
        files = Catalog(two_member_experiment).run(run)
        history = pd.read_parquet(files.history)
        found = {}
        for split in ("train", "validation"):
            for path in sorted((files.tensorboard / split).glob("events.out.tfevents.*")):
                for record in tf.data.TFRecordDataset(str(path)):
                    event = tf.compat.v1.Event.FromString(record.numpy())
                    for value in event.summary.value:
                        assert value.metadata.plugin_data.plugin_name == "scalars"
                        found[(split, value.tag, event.step)] = float(tf.make_ndarray(value.tensor))
        assert found[("train", "epoch_loss", 1)] == pytest.approx(history.loss.iloc[0], rel=1e-6)
        assert found[("validation", "epoch_accuracy", 1)] == pytest.approx(history.val_accuracy.iloc[0], rel=1e-6)
        assert found[("train", "epoch_learning_rate", 1)] == pytest.approx(history.lr_backbone.iloc[0], rel=1e-6)


def test_failing_ensemble_keeps_the_previous_ensembles_and_force_redoes_dependents(pipeline_twice, tmp_path, capsys):
    from pipeline.core.errors import PipelineError
    from pipeline.runner import run_pipeline
    from pipeline.stages.ensemble import run_ensembles

    exp = tmp_path / "exp"
    shutil.copytree(pipeline_twice["exp"], exp)
    before = files_of(exp, (".parquet", ".json", ".npz", ".keras"))
    features = exp / "runs" / "v2_b0" / "features.npz"
    good = features.read_bytes()
    features.write_bytes(good[: len(good) // 2])  # a truncated features file
    with pytest.raises(PipelineError, match="features.npz is not a readable features file"):
        run_ensembles(exp, pipeline_twice["cfg"].ensemble, seed=3, force=True)
    features.write_bytes(good)
    after = files_of(exp, (".parquet", ".json", ".npz", ".keras"))
    assert {k: v for k, v in after.items() if "features" not in k} == {k: v for k, v in before.items() if "features" not in k}

    # run --force ensemble: the ensembles and the evaluation are redone; training and Grad-CAM are not
    cfg = copy.deepcopy(pipeline_twice["cfg"])
    cfg.experiment.out_dir = str(exp)
    capsys.readouterr()
    run_pipeline(cfg, force=["ensemble"])
    out = capsys.readouterr().out
    assert "ensemble: up to date" not in out and "evaluate: up to date" not in out
    assert "v1_b0: up to date" in out and "gradcam gradcam v1_b0: up to date" in out
    redone = files_of(exp)
    for name in ("ensemble_predictions.parquet", "metrics.parquet"):
        assert redone[name][:2] != before[name][:2], name
    for name in ("runs/v1_b0/model.keras", "runs/v2_b0/predictions.parquet", "gradcam/gradcam/scores.parquet"):
        assert redone[name] == before[name], name


def test_ensembles_and_subset_search(two_member_experiment):
    from pipeline.artifacts.predictions import probability_matrix
    from pipeline.core.ensemble import soft_vote
    from pipeline.stages.ensemble import run_ensembles

    exp = two_member_experiment
    run_ensembles(exp, EnsembleConfig(stacking_epochs=5), seed=0)
    preds = load_predictions(exp)
    soft_id = "ensemble:soft:v1_b0+v2_b0"
    assert {soft_id, "ensemble:hard:v1_b0+v2_b0", "ensemble:weighted:v1_b0+v2_b0", "ensemble:stacking:v1_b0+v2_b0"} <= set(preds.run_id)
    p, meta = probability_matrix(preds, ["v1_b0", "v2_b0"], "test")
    rows = preds[(preds.run_id == soft_id) & (preds.split == "test")].set_index("image_id").loc[meta.image_id]
    np.testing.assert_allclose(rows.prob_malignant, soft_vote(p).score, rtol=1e-6)
    stacking = preds[preds.run_id == "ensemble:stacking:v1_b0+v2_b0"]
    assert set(stacking.split) == {"val", "test"}  # val rows = inner hold-out only
    assert (stacking.split == "val").sum() < (preds[(preds.run_id == soft_id)].split == "val").sum()
    subsets = pd.read_parquet(exp / "subsets.parquet")
    assert len(subsets) == 2 * 3 and subsets.groupby("method").val_rank.min().eq(1).all()
    # re-running replaces the ensemble rows instead of duplicating them
    run_ensembles(exp, EnsembleConfig(stacking=False), seed=0)
    again = load_predictions(exp)
    assert (again.run_id == soft_id).sum() == (preds.run_id == soft_id).sum()
    assert not (again.run_id == "ensemble:stacking:v1_b0+v2_b0").any()


def test_evaluate_writes_metrics_with_cis(two_member_experiment):
    from sklearn.metrics import accuracy_score, roc_auc_score

    from pipeline.stages.evaluate import run_evaluate

    exp = two_member_experiment
    metrics = run_evaluate(exp, EvaluateConfig(bootstrap=100), seed=0)
    back = pd.read_parquet(exp / "metrics.parquet")
    assert len(back) == len(metrics)
    overall = back[(back.group_type == "all") & (back.run_id == "v1_b0") & (back.split == "test")].iloc[0]
    preds = load_predictions(exp)
    rows = preds[(preds.run_id == "v1_b0") & (preds.split == "test")]
    assert overall.accuracy == pytest.approx(accuracy_score(rows.label, rows.prob_malignant >= 0.5))  # independent: sklearn
    assert overall.roc_auc == pytest.approx(roc_auc_score(rows.label, rows.prob_malignant))
    assert overall.accuracy_lo <= overall.accuracy <= overall.accuracy_hi
    assert 0 <= overall.patient_recognition_rate <= 1
    assert {"magnification", "subtype"} <= set(back.group_type)
    assert (overall.tp + overall.fn + overall.fp + overall.tn) == len(rows)


def test_gradcam_maps_scores_and_tf_free_reading(two_member_experiment):
    from pipeline.stages.gradcam import run_gradcam

    exp = two_member_experiment
    scores = run_gradcam(exp, GradcamConfig(max_images=6, batch_size=4, deletion_steps=4), runs=["v1_b0", "v2_b0"])
    preds = pd.read_parquet(exp / "predictions.parquet")
    test = preds[preds["split"] == "test"]
    errors = test.loc[test["pred"] != test["label"], "image_id"].nunique()  # every error is explained, then up to 6
    val = preds[preds["split"] == "val"]
    val_errors = val.loc[val["pred"] != val["label"], "image_id"].nunique()  # and every val error (issue 27)
    n = min(max(6, errors), test["image_id"].nunique()) + val_errors
    assert len(scores) == 2 * n and scores.deletion_auc.between(0, 1).all() and scores.mean_iou.between(0, 1).all()
    # reading cached maps must not need TensorFlow: check in a fresh interpreter
    code = (
        "import sys; from pipeline.artifacts.gradcam_cache import load_maps, load_scores;"
        f"m = load_maps({str(exp)!r}, 'gradcam', 'v1_b0'); s = load_scores({str(exp)!r}, 'gradcam');"
        "import numpy as np; v = list(m.values());"
        f"assert len(v) == {n} and all(x.shape == (32, 32) and np.isfinite(x).all() and x.min() >= 0 and x.max() <= 1 for x in v);"
        f"assert len(s) == {2 * n}; assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules; print('ok')"
    )
    import os

    from conftest import PROJECT_ROOT

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(exp.parent),
                         env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})
    assert out.stdout.strip() == "ok", out.stderr[-2000:]


def test_gradcam_changes_when_weights_are_randomized(demo_experiment):
    """Adebayo et al.'s sanity check: a map that survives weight randomization explains nothing.

    Built at 96 px so that top_activation is 3x3 (at 32 px it is 1x1 and every map is constant).
    """
    import keras

    from pipeline.artifacts.experiment import data_root_of, load_split_frame
    from pipeline.ml.data import load_images
    from pipeline.ml.explain import compute_maps
    from pipeline.ml.models import build_classifier

    frame = load_split_frame(demo_experiment).query("split == 'test'").head(4)
    images = np.asarray(load_images(demo_experiment, data_root_of(demo_experiment), frame, 96))
    classes = np.array([1, 0, 1, 0])
    for name in ("efficientnet_b0", "efficientnet_v2_b0"):
        keras.utils.set_random_seed(0)
        model = build_classifier(name, 96, "none")
        before = compute_maps(model, images, classes)
        assert before.shape == (4, 96, 96) and np.isfinite(before).all() and before.min() >= 0 and before.max() <= 1
        assert before.std() > 0.01  # not a constant map
        rng = np.random.default_rng(123)
        for layer in model.layers:
            if layer.weights and layer.name.startswith(("block6", "block7", "top_conv", "head")):
                layer.set_weights([rng.normal(0, 0.2, w.shape).astype(w.dtype) for w in layer.get_weights()])
        after = compute_maps(model, images, classes)
        assert np.abs(after - before).mean() > 0.05, name


def test_panel_renders():
    """The 2x5 panel from a planted map: the V1-B0 tile carries the heatmap, an untrained tile stays plain."""
    from pipeline.core.heatmaps import panel

    heat = np.zeros((8, 8), np.float32)
    heat[:4] = 1.0  # top half hot
    img = np.full((460, 700, 3), 200, np.uint8)
    out = np.asarray(panel(img, {"v1_b0": heat}, {"v1_b0": (0.7, 0.7)}, label=1))
    assert out.shape[1] == 5 * 220
    tile_top, tile_bottom = out[24 + 10, 10:210].astype(int), out[24 + 130, 10:210].astype(int)
    assert tile_top[:, 0].mean() > tile_bottom[:, 0].mean() + 20  # red overlay where the map is hot
    untrained = out[24 + 100, 240:420]  # second tile (v1_b1) has no map: white inside its grey outline
    assert (untrained == 255).all()


def test_gradcam_unknown_run_is_a_clear_error(two_member_experiment):
    from pipeline.core.errors import PipelineError
    from pipeline.stages.gradcam import run_gradcam

    with pytest.raises(PipelineError, match="no completed run 'v1_b7'.*v1_b0"):
        run_gradcam(two_member_experiment, GradcamConfig(max_images=2), runs=["v1_b7"])


def test_ctrl_c_stops_run_cancels_queued_runs_keeps_finished_ones(pipeline_twice, tmp_path):
    """SIGINT to a real `run` (the parent only) with two workers: the queued run never starts, the finished runs
    stay, the running ones keep a resume point, and the command ends within the workers' grace period."""
    import os
    import signal
    import time

    from conftest import PROJECT_ROOT, TF_NOISE
    from pipeline.stages.train import _resume_state, plan_run

    exp = tmp_path / "exp"
    shutil.copytree(pipeline_twice["exp"], exp)
    long_runs = {"v1_b1": "efficientnet_b1", "v2_b1": "efficientnet_v2_b1", "v1_b2": "efficientnet_b2"}
    extra = "".join(f'[[runs]]\nmodel = "{m}"\nepochs = 50\n' for m in long_runs.values())
    preset = tmp_path / "long.toml"
    preset.write_text(small_preset(pipeline_twice["data"], exp, extra))
    finished = {r: files_of(exp / "runs" / r, (".keras", ".parquet", ".npz", ".json")) for r in ("v1_b0", "v2_b0")}
    rows = load_predictions(exp).groupby("run_id").size()

    def checkpoint(run_id):
        state = exp / "runs" / run_id / "state.json"
        return json.loads(state.read_text()).get("checkpoint_epoch", 0) if state.exists() else 0

    log = tmp_path / "run.log"
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "pipeline", "run", "--config", str(preset)], cwd=PROJECT_ROOT,
                                stdout=out, stderr=subprocess.STDOUT, env={**env, "PYTHONPATH": str(PROJECT_ROOT)})
        deadline = time.monotonic() + 600
        while not (checkpoint("v1_b1") or checkpoint("v2_b1")):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        sent = time.monotonic()
        os.kill(proc.pid, signal.SIGINT)
        proc.wait(60)  # a hang fails here; the measured time is printed (see README)
        print(f"run stopped {time.monotonic() - sent:.1f} s after SIGINT")
    text = log.read_text()
    assert proc.returncode == 130, text[-3000:]
    assert "interrupted: completed work is saved" in text and not TF_NOISE.search(text)
    assert not (exp / "runs" / "v1_b2").exists() and "v1_b2" not in text  # the queued run never started
    for run_id in ("v1_b1", "v2_b1"):
        assert not (exp / "runs" / run_id / "run.json").exists()
    cfg = pipeline_twice["cfg"]
    plan = plan_run(exp, "efficientnet_b1" if checkpoint("v1_b1") else "efficientnet_v2_b1", cfg.train, epochs=50, seed=3)
    state = _resume_state(plan.files, plan.config_hash)
    assert state is not None and state["epochs_done"] >= 1  # a rerun continues after that epoch
    for run_id, before in finished.items():
        assert files_of(exp / "runs" / run_id, (".keras", ".parquet", ".npz", ".json")) == before
    assert load_predictions(exp).groupby("run_id").size().equals(rows)
