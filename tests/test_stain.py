"""Vahadane/Macenko/Reinhard on planted stains; the cached, resumable stain stage with explicit fallbacks."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.core.stain import StainError, angle_degrees, fit_target, macenko_stain_matrix, normalize, od_to_rgb, vahadane_stain_matrix

H_TRUE = np.array([0.65, 0.70, 0.29])
E_TRUE = np.array([0.07, 0.99, 0.11])


def planted_image(h=H_TRUE, e=E_TRUE, seed=0, size=(200, 300)):
    """Beer-Lambert image with sparse H (nuclei) and E (stroma) concentrations and some background."""
    rng = np.random.default_rng(seed)
    matrix = np.stack([h / np.linalg.norm(h), e / np.linalg.norm(e)])
    conc = np.zeros(size + (2,))
    nuclei = rng.random(size) < 0.25
    stroma = ~nuclei & (rng.random(size) < 0.85)
    conc[nuclei, 0] = rng.uniform(0.5, 1.5, nuclei.sum())
    conc[nuclei, 1] = rng.uniform(0.0, 0.2, nuclei.sum())
    conc[stroma, 1] = rng.uniform(0.3, 1.0, stroma.sum())
    return od_to_rgb(conc @ matrix), matrix


def test_vahadane_recovers_planted_matrix_h_first():
    img, truth = planted_image()
    est = vahadane_stain_matrix(img)
    assert est.shape == (2, 3) and (est >= 0).all()
    angles = angle_degrees(est, truth)
    assert angles.max() < 5.0, angles  # H first, both vectors within 5 degrees


def test_macenko_recovers_planted_matrix():
    img, truth = planted_image(seed=1)
    assert angle_degrees(macenko_stain_matrix(img), truth).max() < 8.0


@pytest.mark.parametrize("method", ["vahadane", "macenko", "reinhard"])
def test_self_normalization_is_near_identity(method):
    img, _ = planted_image(seed=2)
    out = normalize(img, fit_target(img, method), seed=0)
    assert out.shape == img.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - img.astype(int)).mean() < 6


def test_normalization_moves_colours_towards_target():
    src, _ = planted_image(h=np.array([0.45, 0.80, 0.40]), e=np.array([0.2, 0.95, 0.25]), seed=3)
    tgt, _ = planted_image(seed=4)
    out = normalize(src, fit_target(tgt, "vahadane"))
    before = np.abs(src.reshape(-1, 3).mean(0) - tgt.reshape(-1, 3).mean(0)).sum()
    after = np.abs(out.reshape(-1, 3).mean(0) - tgt.reshape(-1, 3).mean(0)).sum()
    assert after < before / 2


def test_blank_image_is_refused():
    with pytest.raises(StainError, match="tissue"):
        vahadane_stain_matrix(np.full((100, 100, 3), 250, np.uint8))


def test_stain_stage_cache_resume_and_fallback(demo_experiment, tmp_path, capsys):
    from pipeline.artifacts.experiment import data_root_of
    from pipeline.artifacts.experiment import normalized_root
    from pipeline.core.errors import PipelineError
    from pipeline.stages.stain import run_stain

    exp = tmp_path / "exp"
    shutil.copytree(demo_experiment, exp)
    # Replace one test image by a blank slide in a private copy of the data: it must fall back explicitly.
    data = tmp_path / "data"
    shutil.copytree(data_root_of(exp), data)
    info = json.loads((exp / "dataset.json").read_text())
    info["data_root"] = str(data)
    (exp / "dataset.json").write_text(json.dumps(info))
    manifest = pd.read_parquet(exp / "manifest.parquet")
    split = pd.read_parquet(exp / "split.parquet")
    blank_id = split.loc[split.split == "test", "image_id"].iloc[0]
    blank_path = data / manifest.set_index("image_id").loc[blank_id, "path"]
    Image.fromarray(np.full((460, 700, 3), 248, np.uint8)).save(blank_path)

    index = run_stain(exp, "vahadane")
    assert len(index) == len(manifest)
    assert index.set_index("image_id").loc[blank_id, "status"].startswith("fallback")
    assert (index.status == "ok").sum() == len(manifest) - 1
    target = json.loads((exp / "stain" / "vahadane" / "target.json").read_text())
    assert target["target_image_id"] in set(split.loc[split.split == "train", "image_id"])
    root = normalized_root(exp, "vahadane")
    assert all((root / p).exists() for p in manifest.path)
    assert not any(data.rglob("stain"))  # nothing written next to the dataset

    capsys.readouterr()
    before = {p: p.stat().st_mtime_ns for p in (exp / "stain").rglob("*") if p.is_file()}
    run_stain(exp, "vahadane")
    assert capsys.readouterr().out == f"stain vahadane: up to date ({len(manifest)} images)\n"  # re-run does nothing
    assert {p: p.stat().st_mtime_ns for p in (exp / "stain").rglob("*") if p.is_file()} == before
    victim = root / manifest.path.iloc[3]
    victim.unlink()  # as if interrupted before this image
    run_stain(exp, "vahadane")
    assert "1 normalized now" in capsys.readouterr().out and victim.exists()

    # Validate, then act: a stain command that cannot finish leaves the current target and its images in place.
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (exp / "stain").rglob("*") if p.is_file()}
    test_id = split.loc[split.split == "test", "image_id"].iloc[1]
    with pytest.raises(PipelineError, match="not a training image"):
        run_stain(exp, "vahadane", target=test_id)
    (data / manifest.path.iloc[5]).unlink()  # a source image vanished
    with pytest.raises(PipelineError, match="1 image file.* missing"):
        run_stain(exp, "vahadane", force=True)
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (exp / "stain").rglob("*") if p.is_file()} == before


def test_target_must_come_from_train(demo_experiment, tmp_path):
    from pipeline.core.errors import PipelineError
    from pipeline.stages.stain import run_stain

    exp = tmp_path / "exp"
    shutil.copytree(demo_experiment, exp)
    split = pd.read_parquet(exp / "split.parquet")
    test_id = split.loc[split.split == "test", "image_id"].iloc[0]
    with pytest.raises(PipelineError, match="not a training image"):
        run_stain(exp, "vahadane", target=test_id)


def test_vahadane_matches_staintools_on_real_images(sample_root):
    """Cross-check against staintools + spams (`make test` installs them into .bench-extra: `make bench-baselines`)."""
    staintools = pytest.importorskip("staintools", reason="staintools + spams-bin not installed (optional: make bench-baselines)")
    paths = sorted(sample_root.rglob("*.png"))[::80][:4]
    for path in paths:
        img = np.array(Image.open(path).convert("RGB"))
        theirs = staintools.VahadaneStainExtractor.get_stain_matrix(img.copy())
        ours = vahadane_stain_matrix(img)
        assert angle_degrees(ours, theirs).max() < 3.0, path.name
