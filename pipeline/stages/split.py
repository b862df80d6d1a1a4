"""Stage ``split``: write ``split.parquet`` (image-level or patient-level) and report patient leakage.

Up to date when the manifest's content and the split settings are unchanged. Validate, then act: the new
split is computed (and every setting checked) before ``split.parquet`` is replaced, so a failing command
leaves the previous split, and every run trained on it, as they were.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipeline.artifacts.catalog import Catalog
from pipeline.artifacts.experiment import load_manifest, load_split
from pipeline.artifacts.io import write_parquet
from pipeline.artifacts.stamps import Stamp, up_to_date
from pipeline.core.splits import leakage_report, make_split

SPLIT_VERSION = 1


def run_split(exp_dir: Path | str, mode: str, ratios: tuple[float, float, float], seed: int = 0,
              group_by: str = "patient_num", folds: int = 1, force: bool = False) -> pd.DataFrame:
    """Make the split, write it atomically, print the leakage report; return the report."""
    catalog = Catalog(exp_dir)
    manifest = load_manifest(exp_dir)
    settings = {"version": SPLIT_VERSION, "mode": mode, "ratios": [float(r) for r in ratios], "seed": seed,
                "group_by": group_by, "folds": folds}
    stamp = Stamp(catalog, "split", settings, inputs=[catalog.manifest])
    if not force and stamp.is_current():
        report = leakage_report(manifest, load_split(exp_dir))
        up_to_date("split", f"{mode}, {int(report['shared_patient_num'].max())} patient(s) shared")
        return report
    split = make_split(manifest, mode, ratios, seed, group_by, folds)  # raises on bad settings: nothing written yet
    report = leakage_report(manifest, split)
    write_parquet(split, catalog.split)
    stamp.record([catalog.split])
    print(report.to_string(index=False))
    shared = int(report["shared_patient_num"].max())
    verdict = " (image-level split: patients leak)" if shared else " (leak-free)"
    print(f"leakage: {shared} patient(s) shared between train/val/test{verdict}")
    return report
