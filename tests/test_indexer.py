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


def test_hostile_entries_are_rejected_with_reasons_and_the_index_is_written(tmp_path):
    """Non-UTF-8 names, a decompression bomb, symlink loops, a FIFO, huge widths: none aborts or vanishes."""
    import json
    import os

    from pngcraft import bomb_bytes, png_bytes

    good = _write(tmp_path, _name())
    _write(tmp_path, _name(label=1, subtype="DC", patient="10926"))
    folder = good.parent
    with open(os.fsencode(folder) + b"/SOB_B_A-14-22549AB-100-0\xff9.png", "wb") as fh:  # not UTF-8: aborted the index
        fh.write(good.read_bytes())
    (folder / "SOB_B_A-14-22549AB-100-010.png").write_bytes(bomb_bytes(20000, 20000))  # 400 Mpx declared, 130 bytes
    (folder / "SOB_B_A-14-22549AB-100-011.png").write_bytes(png_bytes(np.full((1, 40000), 90, np.uint8), 0, 8))
    (folder / "SOB_B_A-14-22549AB-100-012.png").write_bytes(png_bytes(np.full((16, 16), 40000, np.uint16), 0, 16))
    os.symlink("SOB_B_A-14-22549AB-100-013.png", folder / "SOB_B_A-14-22549AB-100-013.png")  # points at itself
    os.symlink(tmp_path / "nowhere.png", folder / "SOB_B_A-14-22549AB-100-014.png")
    os.symlink(folder, folder.parent / "200X")  # a folder link (here it would loop back into the tree)
    os.mkfifo(folder / "SOB_B_A-14-22549AB-100-015.png")  # opening it would block the index forever
    (folder / "SOB_B_A-14-12345678901-100-016.png").write_bytes(good.read_bytes())  # patient number beyond int32

    manifest, rejects = run_index(tmp_path, tmp_path / "out")
    back = pd.read_parquet(tmp_path / "out" / "rejects.parquet")
    pd.testing.assert_frame_equal(back, rejects)
    reasons = dict(zip(back.path.str.rsplit("/", n=1).str[-1], back.reason))
    assert reasons == {
        "SOB_B_A-14-22549AB-100-0\\xff9.png": "path is not valid UTF-8 (rename the file or folder)",
        "SOB_B_A-14-22549AB-100-010.png": "image too large (20000x20000 pixels; limit 89,478,485): possible decompression bomb",
        "SOB_B_A-14-22549AB-100-013.png": "broken or self-referencing symbolic link",
        "SOB_B_A-14-22549AB-100-014.png": "broken or self-referencing symbolic link",
        "200X": "symbolic link to a folder (not followed)",
        "SOB_B_A-14-22549AB-100-015.png": "not a regular file (socket, pipe or device)",
        "SOB_B_A-14-12345678901-100-016.png": "file name does not follow SOB_<B|M>_<TYPE>-<yy>-<patient>-<mag>-<seq>.png",
    }
    sizes = pd.read_parquet(tmp_path / "out" / "manifest.parquet").set_index("image_id")[["width", "height"]]
    assert sizes.loc["SOB_B_A-14-22549AB-100-011"].tolist() == [40000, 1]  # was -25536 in int16
    assert sizes.loc["SOB_B_A-14-22549AB-100-012"].tolist() == [16, 16]  # a 16-bit grey PNG is an image
    assert len(sizes) == 4 and str(sizes.width.dtype) == "int32"
    assert json.loads((tmp_path / "out" / "dataset.json").read_text())["rejects"] == 7


def test_synthetic_label_follows_the_data_not_the_preset(tmp_path):
    """Generated data carry a SYNTHETIC marker; `run` with `synthetic = false` still labels them synthetic."""
    import io
    import json
    from contextlib import redirect_stdout

    from pipeline.cli import main

    data = tmp_path / "data"
    _write(data, _name())
    _write(data, _name(label=1, subtype="DC", patient="10926"))
    (data / "SYNTHETIC").write_text("seed=0\n")
    preset = tmp_path / "preset.toml"
    preset.write_text(f'[experiment]\nname = "x"\ndata_root = "{data}"\nout_dir = "{tmp_path / "exp"}"\nsynthetic = false\n'
                      '[[runs]]\nmodel = "efficientnet_b0"\n')
    with redirect_stdout(io.StringIO()):
        assert main(["run", "--config", str(preset), "--only", "index"]) == 0
    assert json.loads((tmp_path / "exp" / "dataset.json").read_text())["synthetic"] is True
    breast = data / "BreaKHis_v1" / "histology_slides" / "breast"
    run_index(breast, tmp_path / "exp2", synthetic=False)  # the root given at its deepest level
    assert json.loads((tmp_path / "exp2" / "dataset.json").read_text())["synthetic_marker"] == str(data / "SYNTHETIC")
    (data / "SYNTHETIC").unlink()
    run_index(breast, tmp_path / "exp3")
    assert json.loads((tmp_path / "exp3" / "dataset.json").read_text())["synthetic"] is False
