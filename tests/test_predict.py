"""External validation (`predict`): the experiment's own models and ensembles, applied to a folder of new images.

The acceptance test: two tiny backbones trained on the real sample's training patients, then the sample's test
patients given back as a *new* folder (flat + labels CSV, and BreakHis layout). Those images were scored by the
experiment itself when it trained, so its predictions.parquet is an independent answer for every single run, and
the ensembles must equal the pure ensemble functions applied to the new scores with the recorded parameters.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from pipeline.artifacts.catalog import Catalog
from pipeline.config import EnsembleConfig, TrainConfig
from pipeline.core.ensemble import combine

TINY = TrainConfig(epochs=1, batch_size=32, image_size=32, weights="none", freeze_batchnorm=False, lr_backbone=1e-3, run_eagerly=True)


@pytest.fixture(scope="module")
def trained_sample(tmp_path_factory, sample_root):
    from pipeline.artifacts.experiment import load_manifest
    from pipeline.artifacts.io import write_parquet
    from pipeline.core.splits import make_split
    from pipeline.stages.ensemble import run_ensembles
    from pipeline.stages.index import run_index
    from pipeline.stages.train import train_run

    exp = tmp_path_factory.mktemp("predict") / "exp"
    run_index(sample_root, exp, verbose=False)
    write_parquet(make_split(load_manifest(exp), "patient", seed=0), exp / "split.parquet")
    for model in ("efficientnet_b0", "efficientnet_v2_b0"):
        train_run(exp, model, TINY)
    # threshold 0.4, not 0.5: the stage and `predict` must decide stacking at the same recorded threshold (issue 23)
    run_ensembles(exp, EnsembleConfig(stacking_epochs=3, threshold=0.4), seed=0)
    return exp


@pytest.fixture(scope="module")
def test_images(trained_sample, sample_root):
    """The experiment's test rows (image_id, path, label, patient_id): the images handed back as 'new' data."""
    from pipeline.artifacts.experiment import load_split_frame

    frame = load_split_frame(trained_sample)
    return frame[frame["split"] == "test"].reset_index(drop=True)


@pytest.fixture(scope="module")
def flat_prediction(tmp_path_factory, trained_sample, test_images, sample_root):
    from pipeline.stages.predict import run_predict

    base = tmp_path_factory.mktemp("flat")
    folder = base / "images"
    folder.mkdir()
    for _, row in test_images.iterrows():
        shutil.copyfile(sample_root / row["path"], folder / f"{row['image_id']}.png")
    labels = pd.DataFrame({"image": test_images["image_id"] + ".png",
                           "label": np.where(test_images["label"] == 1, "malignant", "benign"), "patient": test_images["patient_id"]})
    labels.to_csv(base / "labels.csv", index=False)
    out = base / "external"
    preds = run_predict(trained_sample, folder, out, base / "labels.csv", bootstrap=20)
    return out, preds, folder, base / "labels.csv"


def own_rows(exp, image_ids) -> pd.DataFrame:
    preds = pd.read_parquet(Catalog(exp).predictions)
    return preds[(preds["split"] == "test") & preds["image_id"].isin(image_ids)]


def test_single_runs_equal_the_experiments_own_predictions(flat_prediction, trained_sample, test_images):
    out, preds, _, _ = flat_prediction
    own = own_rows(trained_sample, test_images["image_id"])
    singles = preds[preds["kind"] == "single"]
    assert sorted(singles["run_id"].unique()) == ["v1_b0", "v2_b0"]
    assert (preds["split"] == "external").all()
    both = singles.merge(own, on=["run_id", "image_id"], suffixes=("", "_own"), validate="one_to_one")
    assert len(both) == len(singles) == 2 * len(test_images)
    np.testing.assert_allclose(both["prob_malignant"], both["prob_malignant_own"], atol=1e-5)
    assert (both["label"] == both["label_own"]).all()  # labels from the CSV equal the names' labels
    assert (both["patient_id"] == both["patient_id_own"]).all()


def test_ensembles_equal_the_pure_functions_and_the_experiments_own_rows(flat_prediction, trained_sample, test_images):
    out, preds, _, _ = flat_prediction
    record = json.loads(Catalog(trained_sample).ensembles.read_text())
    wide = preds[preds["kind"] == "single"].pivot(index="image_id", columns="run_id", values="prob_malignant")
    own = own_rows(trained_sample, test_images["image_id"])
    seen = set()
    for group, names in record["groups"].items():
        probs = wide[names].to_numpy().T
        weights = np.array([record["weights"][group][n] for n in names])
        for method in ("soft", "hard", "weighted"):
            run_id = f"ensemble:{method}:{'+'.join(names)}"
            rows = preds[preds["run_id"] == run_id].set_index("image_id").loc[wide.index]
            expected = combine(probs, method, record["config"]["threshold"], record["config"]["hard_tie_break"], weights)
            np.testing.assert_allclose(rows["prob_malignant"], expected.score, atol=1e-6)
            assert (rows["pred"].to_numpy() == expected.pred).all()
            mine = own[own["run_id"] == run_id].set_index("image_id").loc[wide.index]  # the experiment's own test rows
            np.testing.assert_allclose(rows["prob_malignant"], mine["prob_malignant"], atol=1e-5)
            seen.add(run_id)
        # stacking: the saved meta-model on the new features reproduces the experiment's own test rows (nothing refitted)
        run_id = f"ensemble:stacking:{'+'.join(names)}"
        mine = own[own["run_id"] == run_id].set_index("image_id").loc[wide.index]
        rows = preds[preds["run_id"] == run_id].set_index("image_id").loc[wide.index]
        np.testing.assert_allclose(rows["prob_malignant"], mine["prob_malignant"], atol=1e-5)
        threshold = record["config"]["threshold"]
        assert threshold == 0.4 and (mine["pred"].to_numpy() == (mine["prob_malignant"].to_numpy() >= threshold)).all()
        assert (rows["pred"].to_numpy() == (rows["prob_malignant"].to_numpy() >= threshold)).all()  # the source's rule
        seen.add(run_id)
    ensembles = set(preds.loc[preds["kind"] == "ensemble", "run_id"])
    assert seen <= ensembles and set(own.loc[own["kind"] == "ensemble", "run_id"]) == ensembles


def test_the_new_folder_is_an_ordinary_experiment_with_metrics(flat_prediction, trained_sample, test_images):
    from pipeline.artifacts.experiment import load_split_frame

    out, preds, _, _ = flat_prediction
    frame = load_split_frame(out)
    assert set(frame["split"]) == {"external"} and len(frame) == len(test_images)
    dataset = json.loads(Catalog(out).dataset.read_text())
    assert dataset["external"]["source_experiment"] == str(trained_sample.resolve()) and dataset["external"]["labels"]
    metrics = pd.read_parquet(Catalog(out).metrics)
    row = metrics[(metrics["run_id"] == "v1_b0") & (metrics["group_type"] == "all")].iloc[0]
    singles = preds[preds["run_id"] == "v1_b0"]
    assert row["split"] == "external"
    assert row["accuracy"] == pytest.approx((singles["pred"] == singles["label"]).mean())


def test_a_rerun_on_unchanged_inputs_does_nothing_and_a_lost_run_is_redone(flat_prediction, trained_sample, capsys):
    from pipeline.stages.predict import run_predict

    out, preds, folder, labels = flat_prediction
    catalog = Catalog(out)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet")}
    capsys.readouterr()
    run_predict(trained_sample, folder, out, labels, bootstrap=20)
    said = capsys.readouterr().out
    assert "predict v1_b0: up to date" in said and "predict ensembles: up to date" in said
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet")} == before
    shutil.rmtree(catalog.run("v2_b0").dir)  # an interrupted run: only the missing run is scored again
    again = run_predict(trained_sample, folder, out, labels, bootstrap=20)
    said = capsys.readouterr().out
    assert "predict v1_b0: up to date" in said and "predict v2_b0: up to date" not in said
    pd.testing.assert_frame_equal(again.sort_values(["run_id", "image_id"]).reset_index(drop=True),
                                  preds.sort_values(["run_id", "image_id"]).reset_index(drop=True), atol=1e-6)


def test_breakhis_layout_without_labels_file_gives_the_same_scores(tmp_path, flat_prediction, trained_sample, test_images,
                                                                  sample_root):
    from pipeline.stages.predict import run_predict

    _, flat, _, _ = flat_prediction
    for rel in test_images["path"]:
        (tmp_path / "bh" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(sample_root / rel, tmp_path / "bh" / rel)
    preds = run_predict(trained_sample, tmp_path / "bh", tmp_path / "out", bootstrap=20)
    both = preds.merge(flat, on=["run_id", "image_id"], suffixes=("", "_flat"), validate="one_to_one")
    assert len(both) == len(flat)
    np.testing.assert_allclose(both["prob_malignant"], both["prob_malignant_flat"], atol=1e-6)
    assert (both["subtype"] != "unknown").all() and (both["label"] == both["label_flat"]).all()  # from the file names


def test_single_image_scores_are_printed_per_model_and_ensemble(trained_sample, test_images, sample_root, capsys):
    from pipeline.cli import main

    row = test_images.iloc[0]
    own = own_rows(trained_sample, [row["image_id"]])
    capsys.readouterr()
    assert main(["predict", str(trained_sample), "--image", str(sample_root / row["path"])]) == 0
    out = capsys.readouterr().out
    for _, r in own.iterrows():
        line = next(x for x in out.splitlines() if x.strip().startswith(r["run_id"] + " "))
        assert f"{r['prob_malignant']:.4f}" in line and ("malignant" if r["pred"] == 1 else "benign") in line


@pytest.mark.parametrize("method", ["weighted", "stacking"])
def test_exported_ensemble_equals_the_pipelines_rows_on_the_test_images(method, tmp_path, trained_sample, test_images,
                                                                        sample_root):
    import keras

    import pipeline.ml.export  # noqa: F401  (registers the export's layers: all that loading needs)
    from pipeline.core.images import read_rgb
    from pipeline.stages.export import run_export

    record = json.loads(Catalog(trained_sample).ensembles.read_text())
    run_id = f"ensemble:{method}:{'+'.join(record['groups']['all'])}"
    out = run_export(trained_sample, run_id, tmp_path / "ensemble.keras")
    model = keras.models.load_model(out, safe_mode=True)
    own = own_rows(trained_sample, test_images["image_id"]).query("run_id == @run_id").set_index("image_id")
    images = [read_rgb(sample_root / p).astype(np.float32) for p in test_images["path"]]  # full size: the model resizes
    by_shape: dict = {}
    for image_id, image in zip(test_images["image_id"], images):
        by_shape.setdefault(image.shape, []).append((image_id, image))
    for group in by_shape.values():
        scores = keras.ops.convert_to_numpy(model(np.stack([im for _, im in group])))
        np.testing.assert_allclose(scores, own.loc[[i for i, _ in group], "prob_malignant"], atol=1e-5)


def test_a_stained_twin_normalizes_new_images_onto_the_sources_recorded_target(tmp_path, demo_experiment, demo_root):
    """No new target is fitted on the new images: each is normalized onto the source's target.json (macenko: fast)."""
    from pipeline.artifacts.experiment import load_split_frame
    from pipeline.artifacts.io import write_json
    from pipeline.core.images import read_rgb
    from pipeline.core.stain import StainTarget, fit_target, normalize
    from pipeline.stages.predict import _prepare_stain

    source = tmp_path / "source"
    shutil.copytree(demo_experiment, source)
    frame = load_split_frame(source)
    target = fit_target(read_rgb(demo_root / frame["path"].iloc[0]), "macenko", 0)
    record = {"method": "macenko", "key": "0123456789", "seed": 0, "target": target.to_dict(), "target_image_id": frame["image_id"].iloc[0]}
    write_json(record, Catalog(source).stain_target("macenko"))
    new = tmp_path / "new"
    new_images = frame.iloc[5:8]
    _prepare_stain(source, new, demo_root, "macenko", new_images)
    assert json.loads(Catalog(new).stain_target("macenko").read_text()) == record
    for rel in new_images["path"]:
        written = read_rgb(Catalog(new).stain_images("macenko", "0123456789") / rel)
        expected = normalize(read_rgb(demo_root / rel), StainTarget.from_dict(record["target"]), 0)
        np.testing.assert_array_equal(written, expected)
