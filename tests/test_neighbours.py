"""The neighbours stage: features of every split, nearest training images, the same-patient neighbour rate (> 0 under
the study's image-level split, exactly 0 under a patient split, on the real sample), 2-D maps, metrics join."""

import shutil

import numpy as np
import pandas as pd
import pytest

from pipeline.cli import main
from pipeline.config import NeighboursConfig, TrainConfig
from pipeline.core.errors import PipelineError
from pipeline.core.neighbours import neighbour_table, with_neighbour_rate
from pipeline.core.projection import project_2d

# One epoch at 32 px from scratch; a low BN momentum lets the moving statistics catch up within the epoch, so the pooled
# features differ between images (with the default 0.99 they are all but identical after one epoch); every layer trains.
TINY = TrainConfig(epochs=1, batch_size=16, image_size=32, weights="none", freeze_batchnorm=False, lr_backbone=1e-3,
                   run_eagerly=True, bn_momentum=0.5, unfreeze="all")


# -- pure functions, against hand computations ------------------------------------------------------------------
def test_neighbour_table_by_hand():
    # train: t1 (patient A, along x), t2 (B, along y), t3 (A, diagonal); queries q1 (A, near x), q2 (C, near y)
    frame = pd.DataFrame({"image_id": ["t1", "t2", "t3", "q1", "q2"], "split": ["train", "train", "train", "test", "val"],
                          "label": [0, 1, 0, 0, 1], "patient_id": ["A", "B", "A", "A", "C"]})
    feats = np.array([[1, 0], [0, 1], [1, 1], [3, 0.5], [0.1, 2]], dtype=np.float16)
    rows, summary = neighbour_table("v1_b0", frame, feats, k=2)
    q1 = rows[rows.image_id == "q1"].sort_values("rank")
    # cos(q1, t1) = 3/sqrt(9.25) = 0.986; cos(q1, t3) = 3.5/(sqrt(9.25)*sqrt(2)) = 0.814; cos(q1, t2) = 0.164
    assert q1["neighbour_id"].tolist() == ["t1", "t3"]
    assert q1["similarity"].to_numpy() == pytest.approx([3 / np.sqrt(9.25), 3.5 / np.sqrt(18.5)], abs=1e-3)
    assert q1["neighbour_patient"].tolist() == ["A", "A"] and q1["neighbour_label"].tolist() == [0, 0]
    q2 = rows[rows.image_id == "q2"].sort_values("rank")
    assert q2["neighbour_id"].tolist() == ["t2", "t3"]  # cos 0.999 then (2.1)/(sqrt(4.01)*sqrt(2)) = 0.742
    # test: q1's nearest (t1) is patient A = q1's patient -> 1.0; val: q2 (C) nearest t2 (B) -> 0.0
    assert summary.set_index("split")["same_patient_neighbour_rate"].to_dict() == {"test": 1.0, "val": 0.0}
    assert summary.set_index("split")["images"].to_dict() == {"test": 1, "val": 1}


def test_a_tie_across_the_kth_place_goes_to_the_lower_index():
    from pipeline.core.neighbours import cosine_neighbours

    ref = np.array([[1, 0], [0, 1], [2, 0], [3, 0], [0, 2], [1, 1]], dtype=float)  # rows 0, 2, 3 share one direction
    idx, sim = cosine_neighbours(np.array([[1.0, 0.0], [0.0, 5.0]]), ref, k=2)
    assert idx.tolist() == [[0, 2], [1, 4]] and np.allclose(sim, 1.0)
    idx, _ = cosine_neighbours(np.array([[1.0, 0.0]]), ref, k=4)  # then the diagonal, cos 0.707
    assert idx.tolist() == [[0, 2, 3, 5]]


def test_rate_joins_only_the_runs_all_rows():
    metrics = pd.DataFrame({"run_id": ["v1_b0", "v1_b0", "v1_b0", "ensemble:soft:v1_b0+v2_b0"], "split": ["test", "test", "val", "test"],
                            "group_type": ["all", "magnification", "all", "all"], "accuracy": [0.9, 0.8, 0.7, 0.95]})
    summary = pd.DataFrame({"run_id": ["v1_b0", "v1_b0"], "split": ["test", "val"], "images": [3, 3],
                            "same_patient_neighbour_rate": [2 / 3, 1 / 3]})
    out = with_neighbour_rate(metrics, summary)
    assert len(out) == len(metrics) and out["accuracy"].tolist() == metrics["accuracy"].tolist()
    rates = out["same_patient_neighbour_rate"].tolist()
    assert rates[0] == pytest.approx(2 / 3) and rates[2] == pytest.approx(1 / 3)
    assert np.isnan(rates[1]) and np.isnan(rates[3])  # breakdown row, ensemble
    assert with_neighbour_rate(out, None)["same_patient_neighbour_rate"].isna().all()  # stale column replaced


def test_pca_map_matches_numpy_svd_and_tsne_separates_planted_clusters():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(2, 40)) * 5
    x = np.concatenate([centres[0] + rng.normal(size=(30, 40)), centres[1] + rng.normal(size=(30, 40))])
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    centred = unit - unit.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    expected = centred @ vt[:2].T
    got = project_2d(x, "pca", seed=0)
    for c in range(2):  # equal up to the sign of each axis
        assert np.allclose(np.abs(got[:, c]), np.abs(expected[:, c]), atol=1e-4)
    tsne = project_2d(x, "tsne", seed=1)
    a, b = tsne[:30], tsne[30:]
    gap = np.linalg.norm(a.mean(axis=0) - b.mean(axis=0))
    assert gap > 3 * max(a.std(axis=0).max(), b.std(axis=0).max())
    assert np.array_equal(tsne, project_2d(x, "tsne", seed=1))  # seeded: the same map again
    with pytest.raises(PipelineError, match="unknown projection"):
        project_2d(x, "umap")


# -- the stage on the real sample: paper split leaks, patient split does not --------------------------------------
def _paper_copy(src, dst):
    """A fresh experiment over the same indexed images (manifest + dataset.json), nothing trained yet."""
    from pipeline.artifacts.catalog import Catalog

    dst.mkdir(parents=True)
    for name in ("manifest", "dataset"):
        shutil.copy2(getattr(Catalog(src), name), getattr(Catalog(dst), name))
    return dst


@pytest.fixture(scope="module")
def leak_pair(tmp_path_factory, sample_patient_run):
    """The real sample under `split --mode paper` (one tiny B0 trained here) and `--mode patient` (the session's
    real-sample run), then `neighbours` on each."""
    from pipeline.stages.neighbours import run_neighbours
    from pipeline.stages.train import train_run

    base = tmp_path_factory.mktemp("leak")
    paper = _paper_copy(sample_patient_run, base / "paper")
    assert main(["split", str(paper), "--mode", "paper"]) == 0
    train_run(paper, "efficientnet_b0", TINY)
    patient = base / "patient"
    shutil.copytree(sample_patient_run, patient)
    return {mode: (exp, run_neighbours(exp, NeighboursConfig(k=3, tsne=False))) for mode, exp in (("paper", paper), ("patient", patient))}


def test_paper_split_leaks_patients_and_patient_split_does_not(leak_pair):
    paper = leak_pair["paper"][1].set_index("split")["same_patient_neighbour_rate"]
    patient = leak_pair["patient"][1].set_index("split")["same_patient_neighbour_rate"]
    assert paper["test"] > 0 and paper["val"] > 0
    assert patient["test"] == 0.0 and patient["val"] == 0.0


def test_features_cover_every_split_and_neighbours_are_the_true_nearest(leak_pair):
    from sklearn.metrics.pairwise import cosine_similarity

    from pipeline.artifacts.catalog import Catalog
    from pipeline.artifacts.experiment import load_manifest, load_split_frame

    exp = leak_pair["paper"][0]
    catalog = Catalog(exp)
    frame = load_split_frame(exp)
    with np.load(catalog.run("v1_b0").features) as data:
        ids, splits, feats = data["image_id"], data["split"], data["features"]
    assert feats.dtype == np.float16 and len(ids) == len(frame) == feats.shape[0]
    assert dict(zip(ids, splits)) == dict(zip(frame["image_id"], frame["split"]))  # train, val and test, each once
    rows = pd.read_parquet(catalog.neighbours)
    train_ids = ids[splits == "train"]
    sims = cosine_similarity(feats[splits != "train"].astype(np.float64), feats[splits == "train"].astype(np.float64))
    sim_of = {(q, t): sims[a, b] for a, q in enumerate(ids[splits != "train"]) for b, t in enumerate(train_ids)}
    top = rows[rows["rank"] == 1]
    assert sorted(top["image_id"]) == sorted(ids[splits != "train"])
    best = dict(zip(ids[splits != "train"], sims.max(axis=1)))
    # each rank-1 neighbour is a most similar training image (sklearn, float64; ties within float32 rounding)
    assert all(abs(sim_of[(q, t)] - best[q]) < 1e-4 for q, t in zip(top["image_id"], top["neighbour_id"]))
    # the rate by its definition, with patients from the manifest: test images whose nearest training image shares it
    patient = load_manifest(exp).set_index("image_id")["patient_id"]
    test_top = top[top["split"] == "test"]
    expected = np.mean(patient[test_top["image_id"]].to_numpy() == patient[test_top["neighbour_id"]].to_numpy())
    assert leak_pair["paper"][1].set_index("split").loc["test", "same_patient_neighbour_rate"] == pytest.approx(expected)


def test_planted_patient_clusters_give_the_full_leak_under_paper_and_none_under_patient(leak_pair, tmp_path):
    """Features planted so that each patient's images cluster: under the paper split every test image whose patient
    has training images finds one of them first; under the patient split none can."""
    from pipeline.artifacts.catalog import Catalog
    from pipeline.artifacts.experiment import load_split_frame
    from pipeline.stages.neighbours import run_neighbours

    rates = {}
    for mode in ("paper", "patient"):
        exp = tmp_path / mode
        exp.mkdir()
        src = Catalog(leak_pair[mode][0])
        for name in ("manifest", "dataset", "split"):
            shutil.copy2(getattr(src, name), getattr(Catalog(exp), name))
        frame = load_split_frame(exp)
        rng = np.random.default_rng(1)
        codes, patients = np.unique(frame["patient_id"], return_inverse=True)
        centres = rng.normal(size=(len(codes), 64)) * 10
        feats = (centres[patients] + rng.normal(size=(len(frame), 64))).astype(np.float16)
        Catalog(exp).run("v2_b0").dir.mkdir(parents=True)
        np.savez_compressed(Catalog(exp).run("v2_b0").features, image_id=frame["image_id"].to_numpy().astype(str), features=feats)
        rates[mode] = run_neighbours(exp, NeighboursConfig(k=2, tsne=mode == "paper")).set_index("split")["same_patient_neighbour_rate"]
        train_patients = set(frame.loc[frame.split == "train", "patient_id"])
        test = frame[frame.split == "test"]
        assert rates[mode]["test"] == pytest.approx(test["patient_id"].isin(train_patients).mean())
        maps = pd.read_parquet(Catalog(exp).embedding)
        assert set(maps["method"]) == ({"pca", "tsne"} if mode == "paper" else {"pca"})
        assert (maps.groupby("method").size() == len(frame)).all()
    assert rates["paper"]["test"] > 0.5 and rates["patient"]["test"] == 0.0


def test_rerun_is_skipped_and_evaluate_joins_the_rate(leak_pair, capsys, tmp_path):
    from pipeline.artifacts.catalog import Catalog
    from pipeline.config import EvaluateConfig
    from pipeline.stages.evaluate import run_evaluate

    exp = tmp_path / "paper"
    shutil.copytree(leak_pair["paper"][0], exp)
    catalog = Catalog(exp)
    before = {p: p.stat().st_mtime_ns for p in (catalog.neighbours, catalog.neighbour_summary, catalog.embedding)}
    assert main(["neighbours", str(exp), "--k", "3", "--no-tsne"]) == 0
    assert "neighbours: up to date" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in before} == before
    metrics = run_evaluate(exp, EvaluateConfig(bootstrap=20))
    summary = leak_pair["paper"][1].set_index("split")["same_patient_neighbour_rate"]
    rows = metrics[(metrics.run_id == "v1_b0") & (metrics.group_type == "all")].set_index("split")
    assert rows.loc["test", "same_patient_neighbour_rate"] == pytest.approx(summary["test"])
    assert metrics.loc[metrics.group_type != "all", "same_patient_neighbour_rate"].isna().all()
    maps = pd.read_parquet(catalog.embedding)
    assert set(maps["method"]) == {"pca"} and len(maps) == len(pd.read_parquet(catalog.split))


def test_old_features_are_left_out_and_corrupt_ones_are_a_one_line_error(leak_pair, tmp_path, capsys):
    from pipeline.artifacts.catalog import Catalog

    exp = tmp_path / "paper"
    shutil.copytree(leak_pair["paper"][0], exp)
    features = Catalog(exp).run("v1_b0").features
    with np.load(features) as data:
        keep = data["split"] != "train"  # as an older `train` wrote it: val/test only
        np.savez_compressed(features, image_id=data["image_id"][keep], features=data["features"][keep])
    before = Catalog(exp).neighbours.read_bytes()
    assert main(["neighbours", str(exp), "--no-tsne"]) == 2
    err = capsys.readouterr()
    assert "v1_b0 left out" in err.out and err.err.startswith("error: no run") and err.err.count("\n") == 1
    assert Catalog(exp).neighbours.read_bytes() == before  # nothing overwritten
    features.write_bytes(b"not a zip")
    assert main(["neighbours", str(exp)]) == 2
    assert "not a readable features file" in capsys.readouterr().err


def test_outputs_that_break_their_schema_replace_nothing(leak_pair, tmp_path, monkeypatch, capsys):
    """The stage saves through its catalog entries, all checked before the first is written: a 2-D map with a NaN
    coordinate (planted in the projection) is a one-line error, and neighbours.parquet, the map and the summary keep
    their old bytes (the new neighbours.parquet, of another k and valid, would otherwise be written before the map)."""
    from pipeline.artifacts.catalog import Catalog
    from pipeline.stages import neighbours as stage

    exp = tmp_path / "paper"
    shutil.copytree(leak_pair["paper"][0], exp)
    catalog = Catalog(exp)
    before = {p: p.read_bytes() for p in (catalog.neighbours, catalog.embedding, catalog.neighbour_summary)}
    real = stage.project_2d

    def with_a_nan(features, method, seed):
        xy = real(features, method, seed)
        xy[0, 0] = np.nan
        return xy

    monkeypatch.setattr(stage, "project_2d", with_a_nan)
    assert main(["neighbours", str(exp), "--k", "2", "--no-tsne", "--force"]) == 2  # k=2: a different neighbours table
    err = capsys.readouterr().err
    assert "embedding.parquet has x nan" in err and err.count("\n") == 1, err  # refused for the planted NaN, in one line
    assert {p: p.read_bytes() for p in before} == before
