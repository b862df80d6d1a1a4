"""Ensemble, evaluate and Grad-CAM stages on a tiny trained experiment (two members, 32 px, 1 epoch)."""

import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from pipeline.artifacts.predictions import load_predictions
from pipeline.config import EnsembleConfig, EvaluateConfig, GradcamConfig, TrainConfig

TINY = TrainConfig(epochs=1, batch_size=8, image_size=32, weights="none", freeze_batchnorm=False, lr_backbone=1e-3)


@pytest.fixture(scope="module")
def two_member_experiment(tmp_path_factory, demo_experiment, demo_root):
    """Two members trained by `run`'s parallel path (two spawned workers), as `make demo` does."""
    from pipeline.config import Config, ExperimentConfig, RunSpec
    from pipeline.runner import train_all

    exp = tmp_path_factory.mktemp("stages") / "exp"
    shutil.copytree(demo_experiment, exp)
    cfg = Config(experiment=ExperimentConfig(name="stages", data_root=str(demo_root), out_dir=str(exp)),
                 train=TrainConfig(**{**TINY.__dict__, "workers": 2}),
                 runs=[RunSpec("efficientnet_b0"), RunSpec("efficientnet_v2_b0")])
    infos = train_all(cfg)
    assert sorted(i["run_id"] for i in infos) == ["v1_b0", "v2_b0"]
    assert sorted(load_predictions(exp).run_id.unique()) == ["v1_b0", "v2_b0"]
    return exp


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
    from pipeline.core.metrics import binary_metrics
    from pipeline.stages.evaluate import run_evaluate

    exp = two_member_experiment
    metrics = run_evaluate(exp, EvaluateConfig(bootstrap=100), seed=0)
    back = pd.read_parquet(exp / "metrics.parquet")
    assert len(back) == len(metrics)
    overall = back[(back.group_type == "all") & (back.run_id == "v1_b0") & (back.split == "test")].iloc[0]
    preds = load_predictions(exp)
    rows = preds[(preds.run_id == "v1_b0") & (preds.split == "test")]
    assert overall.accuracy == pytest.approx(binary_metrics(rows.label, rows.prob_malignant)["accuracy"])
    assert overall.accuracy_lo <= overall.accuracy <= overall.accuracy_hi
    assert 0 <= overall.patient_recognition_rate <= 1
    assert {"magnification", "subtype"} <= set(back.group_type)
    assert (overall.tp + overall.fn + overall.fp + overall.tn) == len(rows)


def test_gradcam_maps_scores_and_tf_free_reading(two_member_experiment):
    from pipeline.stages.gradcam import run_gradcam

    exp = two_member_experiment
    scores = run_gradcam(exp, GradcamConfig(max_images=6, batch_size=4, deletion_steps=4), runs=["v1_b0", "v2_b0"])
    assert len(scores) == 12 and scores.deletion_auc.between(0, 1).all() and scores.mean_iou.between(0, 1).all()
    # reading cached maps must not need TensorFlow: check in a fresh interpreter
    code = (
        "import sys; from pipeline.artifacts.gradcam_cache import load_maps, load_scores;"
        f"m = load_maps({str(exp)!r}, 'gradcam', 'v1_b0'); s = load_scores({str(exp)!r}, 'gradcam');"
        "import numpy as np; v = list(m.values());"
        "assert len(v) == 6 and all(x.shape == (32, 32) and np.isfinite(x).all() and x.min() >= 0 and x.max() <= 1 for x in v);"
        "assert len(s) == 12; assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules; print('ok')"
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
