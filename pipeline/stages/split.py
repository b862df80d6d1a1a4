"""Stage ``split``: write ``split.parquet`` (image-level or patient-level) and report patient leakage."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipeline.artifacts.catalog import Catalog
from pipeline.artifacts.experiment import load_manifest
from pipeline.artifacts.io import write_parquet
from pipeline.core.splits import leakage_report, make_split


def run_split(exp_dir: Path | str, mode: str, ratios: tuple[float, float, float], seed: int = 0,
              group_by: str = "patient_num", folds: int = 1) -> pd.DataFrame:
    """Make the split, write it atomically, print the leakage report; return the report."""
    manifest = load_manifest(exp_dir)
    split = make_split(manifest, mode, ratios, seed, group_by, folds)
    write_parquet(split, Catalog(exp_dir).split)
    report = leakage_report(manifest, split)
    print(report.to_string(index=False))
    shared = int(report["shared_patient_num"].max())
    verdict = " (image-level split: patients leak)" if shared else " (leak-free)"
    print(f"leakage: {shared} patient(s) shared between train/val/test{verdict}")
    return report
