"""Indexer: the real sample's counts, and every kind of bad input ends in rejects.parquet."""

import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import PROJECT_ROOT
from PIL import Image

from pipeline.core.breakhis import ParsedName
from pipeline.core.errors import PipelineError
from pipeline.stages.index import index_dataset, run_index


def _write(root, parsed: ParsedName, size=(700, 460)):
    d = root / "BreaKHis_v1" / "histology_slides" / "breast" / parsed.relative_dir()
    d.mkdir(parents=True, exist_ok=True)
    path = d / parsed.file_name()
    Image.fromarray(np.full((size[1], size[0], 3), 200, np.uint8)).save(path)
    return path


def _name(label=0, subtype="A", patient="22549AB", mag=100, seq=1):
    return ParsedName(label=label, subtype=subtype, year="14", patient_id=patient, patient_num=int(patient.rstrip("ABCDEFG")),
                      magnification=mag, seq=seq)


def test_sample_counts(sample_root, tmp_path):
    manifest, rejects = run_index(sample_root, tmp_path)
    assert len(manifest) == 322 and len(rejects) == 0
    assert (manifest.label == 0).sum() == 174 and (manifest.label == 1).sum() == 148
    assert manifest.subtype.nunique() == 8
    assert manifest.patient_id.nunique() == 22 and manifest.patient_num.nunique() == 19
    assert set(manifest.magnification) == {40, 100, 200, 400}
    assert {(700, 460), (700, 456)} >= set(zip(manifest.width, manifest.height))
    assert (manifest.height == 456).any()
    assert manifest.image_id.is_unique
    back = pd.read_parquet(tmp_path / "manifest.parquet")
    assert list(back.columns)[:3] == ["image_id", "path", "label"] and len(back) == 322


@pytest.mark.parametrize("level", ["", "BreaKHis_v1", "BreaKHis_v1/histology_slides/breast"])
def test_root_at_any_level(tmp_path, level):
    _write(tmp_path, _name())
    _write(tmp_path, _name(label=1, subtype="DC", patient="10926"))
    manifest, _ = index_dataset(tmp_path / level if level else tmp_path)
    assert len(manifest) == 2
    assert manifest.path.str.endswith(".png").all()


def test_bad_files_are_rejected_with_reasons(tmp_path):
    good = _write(tmp_path, _name())
    _write(tmp_path, _name(patient="22549AB", seq=2), size=(700, 456))
    folder = good.parent
    (folder / "SOB_B_A-14-22549AB-100-003.png").write_bytes(b"")  # zero-byte
    truncated = folder / "SOB_B_A-14-22549AB-100-004.png"
    truncated.write_bytes(good.read_bytes()[:200])
    (folder / "SOB_B_A-14-22549AB-100-005.png").write_bytes(b"GIF89a not a png at all")
    (folder / "notes.txt").write_text("hello")
    (folder / "SOB_B_A-14-22549AB-400-006.png").write_bytes(good.read_bytes())  # 400 in a 100X folder
    shutil.copy(good, folder.parent / "SOB_B_A-14-22549AB-100-007.png")  # not inside a magnification folder
    manifest, rejects = index_dataset(tmp_path)
    assert len(manifest) == 2 and set(manifest.height) == {460, 456}
    reasons = dict(zip(rejects.path.str.rsplit("/", n=1).str[-1], rejects.reason))
    assert reasons["SOB_B_A-14-22549AB-100-003.png"] == "zero-byte file"
    assert reasons["SOB_B_A-14-22549AB-100-004.png"].startswith("corrupt PNG")
    assert reasons["SOB_B_A-14-22549AB-100-005.png"].startswith("not a PNG")
    assert reasons["notes.txt"].startswith("not a PNG")
    assert "magnification" in reasons["SOB_B_A-14-22549AB-400-006.png"]
    assert "disagreement" in reasons["SOB_B_A-14-22549AB-100-007.png"]
    assert len(rejects) == 6


def test_empty_or_missing_root_is_a_clear_error(tmp_path):
    with pytest.raises(PipelineError, match="does not exist"):
        run_index(tmp_path / "nope", tmp_path / "out")
    (tmp_path / "data" / "benign").mkdir(parents=True)
    with pytest.raises(PipelineError, match="no valid BreakHis images"):
        run_index(tmp_path / "data", tmp_path / "out")
    (tmp_path / "flat").mkdir()
    with pytest.raises(PipelineError, match="does not look like BreakHis"):
        run_index(tmp_path / "flat", tmp_path / "out")


def test_cli_exit_code_and_message(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pipeline", "index", str(tmp_path / "missing"), "--out", str(tmp_path)],
                          cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert proc.returncode == 2
    assert "does not exist" in proc.stderr and "Traceback" not in proc.stderr
