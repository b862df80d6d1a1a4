"""Stage ``split``: write ``split.parquet`` (image-level or patient-level) and report patient leakage.

Up to date when the manifest's content and the split settings are unchanged. Validate, then act: the new
split is computed (and every setting checked) before ``split.parquet`` is replaced, so a failing command
leaves the previous split, and every run trained on it, as they were.

``split --export FILE.csv`` writes the split as a publishable table (image, patient, split, fold) and
``split --from FILE.csv`` imports one, so researchers can reproduce each other's numbers on the same images.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipeline.artifacts.catalog import Catalog
from pipeline.artifacts.entries import Inputs
from pipeline.artifacts.io import atomic_path
from pipeline.artifacts.stamps import Stamp, up_to_date
from pipeline.core.errors import PipelineError
from pipeline.stages.declarations import declared_inputs
from pipeline.core.splits import export_table, import_split, leakage_report, make_split

SPLIT_VERSION = 1
ARTIFACT_SUFFIXES = (".parquet", ".json", ".keras", ".npz", ".lock")  # what the pipeline writes itself


def split_body(manifest: pd.DataFrame, mode: str, ratios: tuple[float, float, float], seed: int = 0,
               group_by: str = "patient_num", folds: int = 1) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The stage on loaded data: (split, leakage report) of a manifest. Raises on bad settings, writes nothing."""
    split = make_split(manifest, mode, ratios, seed, group_by, folds)
    return split, leakage_report(manifest, split)


def run_split(exp_dir: Path | str, mode: str, ratios: tuple[float, float, float], seed: int = 0,
              group_by: str = "patient_num", folds: int = 1, force: bool = False, inputs: Inputs | None = None) -> pd.DataFrame:
    """Make the split, write it atomically, print the leakage report; return the report.

    ``inputs``: the experiment's loaded inputs (the runner's, shared by every stage); a fresh one by default."""
    catalog = Catalog(exp_dir)
    inputs = inputs or Inputs(exp_dir)
    manifest = inputs.manifest()
    settings = {"version": SPLIT_VERSION, "mode": mode, "ratios": [float(r) for r in ratios], "seed": seed,
                "group_by": group_by, "folds": folds}
    stamp = Stamp(catalog, "split", settings, inputs=declared_inputs("split", catalog))
    if not force and stamp.is_current():
        report = leakage_report(manifest, inputs.split())
        up_to_date("split", f"{mode}, {int(report['shared_patient_num'].max())} patient(s) shared")
        return report
    split, report = split_body(manifest, mode, ratios, seed, group_by, folds)  # raises on bad settings: nothing written yet
    inputs.save("split", split)
    stamp.record([catalog.split])
    print(report.to_string(index=False))
    shared = int(report["shared_patient_num"].max())
    verdict = " (image-level split: patients leak)" if shared else " (leak-free)"
    print(f"leakage: {shared} patient(s) shared between train/val/test{verdict}")
    return report


def export_split(exp_dir: Path | str, out: Path | str) -> Path:
    """Write the experiment's split as CSV (``image_id, patient_id, patient_num, split, fold``), atomically."""
    out = Path(out)
    if out.suffix.lower() in ARTIFACT_SUFFIXES and Path(exp_dir).resolve() in out.resolve().parents:
        raise PipelineError(f"--export {out} would overwrite an artifact of the experiment; give a .csv file name")
    inputs = Inputs(exp_dir)
    table = export_table(inputs.manifest(), inputs.split())
    with atomic_path(out, ".csv") as tmp:
        table.to_csv(tmp, index=False)
    print(f"wrote {out}: {len(table)} rows, {table['fold'].nunique()} fold(s)")
    return out


def split_from_csv(exp_dir: Path | str, source: Path | str, allow_leakage: bool = False, force: bool = False,
                   inputs: Inputs | None = None) -> pd.DataFrame:
    """Import a published split: every row checked against the manifest before ``split.parquet`` is replaced."""
    catalog = Catalog(exp_dir)
    inputs = inputs or Inputs(exp_dir)
    source = Path(source)
    if not source.is_file():
        raise PipelineError(f"{source} is not a file (give the CSV written by `split --export` or one with image_id,split[,fold])")
    manifest = inputs.manifest()
    stamp = Stamp(catalog, "split", {"version": SPLIT_VERSION, "source": "csv", "allow_leakage": allow_leakage},
                  inputs=declared_inputs("split", catalog) + [source])
    if not force and stamp.is_current():
        report = leakage_report(manifest, inputs.split())
        up_to_date("split", f"imported from {source.name}, {int(report['shared_patient_num'].max())} patient(s) shared")
        return report
    try:
        table = pd.read_csv(source, dtype={"image_id": str, "split": str, "patient_id": str})
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise PipelineError(f"{source} is not a readable CSV ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})") from None
    split = import_split(manifest, table, str(source), allow_leakage)  # raises before anything is written
    report = leakage_report(manifest, split)
    inputs.save("split", split)
    stamp.record([catalog.split])
    print(report.to_string(index=False))
    print(f"imported {len(split)} rows ({split['fold'].nunique()} fold(s)) from {source}")
    return report
