"""Stacking's inner hold-out is split by patient: no patient on both inner sides, and the epoch it picks is the
one an unseen patient would pick (issue 23).

The planted experiment: every validation patient carries a strong identity signature in the members' features
(think stain), plus a weak genuine signal. A meta-model that memorises signatures keeps improving on held-out
*images* of seen patients (an image-level inner hold-out picks a late epoch), while on held-out *patients*
memorising only hurts after the genuine signal is learned (a patient-level hold-out picks an early epoch).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pipeline.core.splits import inner_holdout

P, K, EPOCHS = 8, 12, 30  # patients per class, images per patient, meta-model epochs


def planted(seed: int = 0):
    rng = np.random.default_rng(seed)
    patient = np.repeat(np.arange(2 * P), K)
    label = (patient >= P).astype(int)
    signature = rng.normal(0, 1, (2 * P, 32))[patient] + rng.normal(0, 0.1, (len(patient), 32))
    signal = (2 * label[:, None] - 1) * 0.3 + rng.normal(0, 1, (len(patient), 2))
    return np.concatenate([signal, signature], axis=1).astype(np.float32), label, patient


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_inner_holdout_keeps_each_patient_on_one_side(seed):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 9, 10)  # 10 patients of uneven size, 5 per class
    patient = np.repeat([f"p{i}" for i in range(10)], sizes)
    label = np.repeat([0] * 5 + [1] * 5, sizes)
    train, hold, how = inner_holdout(label, patient, 0.2, seed)
    assert how == "patient"
    assert sorted(np.concatenate([train, hold]).tolist()) == list(range(len(label)))
    assert not set(patient[train]) & set(patient[hold])
    assert set(label[hold]) == {0, 1} and set(label[train]) == {0, 1}  # stratified: both classes on both sides


def test_inner_holdout_falls_back_to_images_and_says_so():
    label = np.array([0] * 6 + [1] * 10)
    one_benign_patient = np.array(["b"] * 6 + ["m1"] * 5 + ["m2"] * 5)
    train, hold, how = inner_holdout(label, one_benign_patient, 0.25, 0)
    assert how == "image" and set(label[hold]) == {0, 1}
    assert inner_holdout(label, None, 0.25, 0)[2] == "image"


def test_stage_picks_the_patient_level_epoch(tmp_path):
    """Acceptance: under a patient split an image-level hold-out would pick another epoch; the stage picks the
    patient-level one and records its hold-out patients."""
    from pipeline.artifacts.catalog import Catalog
    from pipeline.artifacts.io import write_json, write_parquet
    from pipeline.artifacts.predictions import make_rows
    from pipeline.config import EnsembleConfig
    from pipeline.ml.stacking import fit_stacking
    from pipeline.stages.ensemble import run_ensembles

    x, label, patient = planted()
    n_test = 6
    ids = [f"img{i:03d}" for i in range(len(label) + n_test)]
    frame = pd.DataFrame({"image_id": ids, "split": ["val"] * len(label) + ["test"] * n_test,
                          "label": np.concatenate([label, [0, 1] * (n_test // 2)]),
                          "patient_num": np.concatenate([patient, [99] * n_test]).astype(str)})
    feats = np.concatenate([x, x[:n_test]])
    catalog = Catalog(tmp_path)
    halves = {"v1_b0": feats[:, :18], "v2_b0": feats[:, 18:]}  # the signal and signatures spread over two members
    for run_id, f in halves.items():
        files = catalog.run(run_id)
        files.dir.mkdir(parents=True)
        prob = np.clip(0.5 + 0.1 * f[:, 0], 0, 1)
        write_parquet(make_rows(run_id, "single", run_id, run_id[:2], "none", frame, prob), files.predictions)
        np.savez_compressed(files.features, image_id=np.asarray(ids), features=f)
        write_json({"status": "complete"}, files.info)

    cfg = EnsembleConfig(stacking_epochs=EPOCHS, subset_search=False)
    run_ensembles(tmp_path, cfg, seed=0)
    record = json.loads(catalog.ensembles.read_text())["stacking"]["all"]

    image_level = fit_stacking(x, label, x[:n_test], EPOCHS, 0, cfg.stacking_batch_size, val_patients=None)["best_epoch"]
    assert image_level >= 20  # memorised signatures keep paying off on held-out images of seen patients
    assert record["inner_split"] == "patient"
    assert record["best_epoch"] <= 10 < image_level  # the planted patient-level optimum is early
    held = set(record["holdout_patients"])
    assert held and held < {str(p) for p in range(2 * P)}
    assert {int(p) >= P for p in held} == {False, True}  # both classes held out
    assert record["holdout_images"] == K * len(held)  # whole patients
