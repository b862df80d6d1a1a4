"""``split --export FILE.csv`` / ``split --from FILE.csv``: a published split round-trips exactly, and a bad file is one
line on stderr, exit status 2, with split.parquet untouched (unknown images, duplicates, a patient on both sides)."""

import io
import shutil
from contextlib import redirect_stderr, redirect_stdout

import pandas as pd
import pytest

from pipeline.artifacts.io import write_parquet
from pipeline.cli import main
from pipeline.core.splits import make_split


def cli(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def exp(dashboard_artifacts, tmp_path):
    """The fixture's manifest with a patient-level 2-fold split (8 patients: 2/1/1 of each class per side)."""
    d = tmp_path / "exp"
    d.mkdir()
    for name in ("manifest.parquet", "dataset.json"):
        shutil.copy(dashboard_artifacts / "fixture" / name, d / name)
    manifest = pd.read_parquet(d / "manifest.parquet")
    write_parquet(make_split(manifest, "patient", (0.5, 0.25, 0.25), seed=3, folds=2), d / "split.parquet")
    return d


def test_export_then_import_round_trips(exp, tmp_path):
    csv = tmp_path / "published.csv"
    code, _, err = cli("split", exp, "--export", csv)
    assert code == 0, err
    table = pd.read_csv(csv)
    manifest = pd.read_parquet(exp / "manifest.parquet")
    assert list(table.columns) == ["image_id", "patient_id", "patient_num", "split", "fold"]
    assert len(table) == 2 * len(manifest)
    by_image = manifest.set_index("image_id")
    assert (table["patient_num"].to_numpy() == by_image.loc[table["image_id"], "patient_num"].to_numpy()).all()
    before = pd.read_parquet(exp / "split.parquet")
    (exp / "split.parquet").unlink()
    code, out, err = cli("split", exp, "--from", csv)
    assert code == 0, err
    after = pd.read_parquet(exp / "split.parquet")
    key = ["fold", "image_id"]
    pd.testing.assert_frame_equal(before.sort_values(key).reset_index(drop=True)[["image_id", "split", "fold"]],
                                  after.sort_values(key).reset_index(drop=True)[["image_id", "split", "fold"]], check_dtype=False)
    code, out, _ = cli("split", exp, "--from", csv)  # unchanged file: nothing to do
    assert code == 0 and "up to date" in out


def _bad(kind, table, manifest):
    table = table.copy()
    if kind == "unknown":
        table.loc[0, "image_id"] = "SOB_B_A-14-9999-40-001"
    elif kind == "duplicate":
        table = pd.concat([table, table.iloc[[3]]])
    elif kind == "both sides":  # one image of a test patient moved to train
        patient = table[(table.fold == 0) & (table.split == "test")].patient_num.iloc[0]
        row = table[(table.fold == 0) & (table.patient_num == patient)].index[0]
        table.loc[row, "split"] = "train"
    return table, patient if kind == "both sides" else None


@pytest.mark.parametrize("kind,expect", [("unknown", r"1 image\(s\) the manifest does not have: SOB_B_A-14-9999-40-001"),
                                         ("duplicate", r"more than once in one fold"),
                                         ("both sides", r"1 patient\(s\) on more than one side of fold 0")])
def test_bad_files_are_one_line_errors_and_change_nothing(exp, tmp_path, kind, expect):
    import re

    good = tmp_path / "good.csv"
    cli("split", exp, "--export", good)
    bad_table, patient = _bad(kind, pd.read_csv(good), pd.read_parquet(exp / "manifest.parquet"))
    bad = tmp_path / "bad.csv"
    bad_table.to_csv(bad, index=False)
    before = (exp / "split.parquet").read_bytes()
    code, _, err = cli("split", exp, "--from", bad)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and re.search(expect, lines[0]), err
    if patient is not None:
        assert str(patient) in lines[0]
        code, _, err = cli("split", exp, "--from", bad, "--allow-leakage")  # on purpose: an image-level split
        assert code == 0, err
        split = pd.read_parquet(exp / "split.parquet")
        assert len(split) == len(bad_table)
    else:
        assert (exp / "split.parquet").read_bytes() == before


def test_split_needs_a_mode_or_a_file(exp):
    code, _, err = cli("split", exp)
    assert code == 2 and "--mode" in err and len(err.strip().splitlines()) == 1
