"""Grad-CAM on demand (issue 27): ``gradcam DIR --image ID`` explains an image the stage did not choose, and the request
is recorded so that later runs of the preset keep its maps instead of dropping them; a wrong id is refused in one
line before TensorFlow starts; two requests at once both stay."""

from __future__ import annotations

import multiprocessing
import shutil

import numpy as np

import pandas as pd
import pytest

from pipeline.artifacts.catalog import Catalog
from pipeline.artifacts.gradcam_requests import add_requests, requested_images
from pipeline.artifacts.predictions import load_predictions
from pipeline.core.errors import PipelineError
from pipeline.stages.gradcam import with_requested


def _preds(rows):
    return pd.DataFrame(rows, columns=["run_id", "image_id", "split"])


def test_requested_images_join_only_when_every_run_predicted_them():
    frame = pd.DataFrame({"image_id": ["a", "b", "c", "d"], "split": ["test", "val", "train", "test"]})
    preds = _preds([("r1", "a", "test"), ("r2", "a", "test"), ("r1", "b", "val"), ("r2", "b", "val"), ("r1", "d", "test")])
    # a and b: both runs predicted them; c: a training image (no prediction); d: only r1; e: not in this fold
    assert with_requested(["x"], frame, preds, ["r1", "r2"], ["a", "b", "c", "d", "e"]) == ["a", "b", "x"]
    assert with_requested(["x"], frame, preds, ["r1"], ["d"]) == ["d", "x"]
    assert with_requested(["x"], frame, preds, ["r1", "r2"], []) == ["x"]


def _add(args):
    exp, ids = args
    for i in ids:
        add_requests(exp, [i])


def test_two_requests_at_once_both_stay(tmp_path):
    ids = [[f"SOB_B_A-14-{k}-40-{n:03d}" for n in range(15)] for k in (1, 2)]
    with multiprocessing.get_context("fork").Pool(2) as pool:
        pool.map(_add, [(str(tmp_path), ids[0]), (str(tmp_path), ids[1])])
    assert requested_images(tmp_path) == sorted(ids[0] + ids[1])


def test_a_damaged_request_record_is_one_line(tmp_path):
    path = Catalog(tmp_path).gradcam_requests
    path.parent.mkdir(parents=True)
    path.write_text('{"images": ["../../etc/passwd"]}')
    with pytest.raises(PipelineError, match="not a list of image ids"):
        requested_images(tmp_path)
    with pytest.raises(PipelineError, match="not an image id"):
        add_requests(tmp_path, ["a/b"])


def test_an_image_asked_for_from_a_card_is_explained_and_kept(sample_patient_run, tmp_path, capsys):
    """The card's exact command, ``gradcam DIR --image ID``, explains that image with the settings the experiment's run
    recorded, computing only that image (the cached maps are extended, and equal a full recomputation); a later run
    of the stage, which knows nothing of the request, keeps its maps."""
    from pipeline.artifacts.catalog import Catalog
    from pipeline.artifacts.experiment import load_split_frame
    from pipeline.artifacts.gradcam_cache import load_maps
    from pipeline.artifacts.io import read_json, write_json
    from pipeline.cli import main
    from pipeline.config import GradcamConfig
    from pipeline.stages.gradcam import images_to_explain, run_gradcam

    exp = shutil.copytree(sample_patient_run, tmp_path / "exp")
    shutil.rmtree(exp / "gradcam", ignore_errors=True)
    cfg = GradcamConfig(max_images=1, batch_size=4, deletion_steps=4)
    # what `run` records of its preset (the sample's run was trained stage by stage, so it has no record of its own)
    write_json({"config": {"gradcam": {"max_images": 1, "batch_size": 4, "deletion_steps": 4}}}, Catalog(exp).pipeline_run)
    run_gradcam(exp, cfg)  # the preset's stage: its own choice of images
    preds = load_predictions(exp)
    chosen = set(images_to_explain(load_split_frame(exp), preds, "test", 1))
    assert set(load_maps(exp, "gradcam", "v1_b0")) == chosen
    evaluated = sorted(set(preds.loc[preds["split"].isin(["val", "test"]), "image_id"]))
    extra = next(i for i in evaluated if i not in chosen)  # an image the stage would not explain by itself (a correct one)

    # an id without a val/test prediction: one line, exit 2, nothing recorded
    assert main(["gradcam", str(exp), "--image", "SOB_B_A-14-0-40-999"]) == 2
    err = capsys.readouterr().err
    assert "has no val or test prediction" in err and len(err.strip().splitlines()) == 1
    assert not Catalog(exp).gradcam_requests.exists()

    assert main(["gradcam", str(exp), "--image", extra]) == 0  # exactly what the Grad-CAM page shows
    assert read_json(Catalog(exp).gradcam_run_meta("gradcam", "v1_b0"))["computed"] == 1  # only the new image
    extended = load_maps(exp, "gradcam", "v1_b0")
    assert set(extended) == chosen | {extra} and requested_images(exp) == [extra]
    scores = pd.read_parquet(Catalog(exp).gradcam_run_scores("gradcam", "v1_b0")).set_index("image_id")

    full = run_gradcam(exp, cfg, force=True)  # the same list computed from scratch
    again = load_maps(exp, "gradcam", "v1_b0")
    for image_id in chosen | {extra}:  # maps are stored as uint8: equal to one step of rounding
        np.testing.assert_allclose(extended[image_id], again[image_id], atol=1.5 / 255)
    full = full.set_index("image_id").loc[scores.index]
    np.testing.assert_allclose(scores["deletion_auc"], full["deletion_auc"], atol=1e-4)

    run_gradcam(exp, cfg)  # a later run of the preset: up to date, and the requested map is still there
    assert extra in load_maps(exp, "gradcam", "v1_b0")
