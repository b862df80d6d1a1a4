"""Declared stages on loaded data: the stage bodies work on frames without a folder, the runner loads each input
once for every stage of an experiment, and a stage opens only the files it declares (pipeline/artifacts/entries.py,
pipeline/stages/declarations.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, roc_auc_score

from pipeline.artifacts.catalog import Catalog
from pipeline.config import EvaluateConfig


def _manifest(patients: int = 12, per_patient: int = 4) -> pd.DataFrame:
    """An in-memory manifest: patient p's images share its label (every third patient benign)."""
    rows = []
    for p in range(patients):
        label = 0 if p % 3 == 0 else 1
        for i in range(per_patient):
            rows.append({"image_id": f"p{p:02d}_{i}", "path": f"x/p{p:02d}_{i}.png", "label": label,
                         "subtype": "A" if label == 0 else "DC", "patient_id": f"P-{p}", "patient_num": str(p),
                         "magnification": (40, 100, 200, 400)[i % 4]})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("mode", ["patient", "paper"])
def test_split_body_works_on_an_in_memory_manifest(mode):
    from pipeline.stages.split import split_body

    manifest = _manifest()
    split, report = split_body(manifest, mode, (0.5, 0.25, 0.25), seed=1)
    assert sorted(split["image_id"]) == sorted(manifest["image_id"])  # every image exactly once
    sides = split.merge(manifest, on="image_id").groupby("patient_num")["split"].nunique()
    shared = int((sides > 1).sum())  # counted here, independently of the report
    assert int(report["shared_patient_num"].iloc[0]) == shared
    if mode == "patient":
        assert shared == 0
    for side in ("train", "val", "test"):
        assert int(report[f"{side}_images"].iloc[0]) == int((split["split"] == side).sum())


def test_evaluate_body_works_on_in_memory_predictions():
    from pipeline.stages.evaluate import evaluate_body

    manifest = _manifest()
    rng = np.random.default_rng(0)
    chosen = manifest.sample(24, random_state=0).reset_index(drop=True)
    preds = []
    for run in ("v1_b0", "v2_b0"):
        prob = np.clip(chosen["label"] * 0.4 + rng.uniform(0, 0.6, len(chosen)), 0, 1)
        preds.append(pd.DataFrame({"run_id": run, "kind": "single", "model": run, "family": run[:2], "stain": "none",
                                   "image_id": chosen["image_id"], "split": np.where(np.arange(24) < 12, "val", "test"),
                                   "label": chosen["label"], "prob_malignant": prob, "pred": (prob >= 0.5).astype(int)}))
    preds = pd.concat(preds, ignore_index=True)  # no patient columns: the body takes them from the manifest
    metrics = evaluate_body(preds, manifest, None, EvaluateConfig(bootstrap=20), seed=0)
    for (run, split), part in preds.groupby(["run_id", "split"]):
        row = metrics[(metrics.run_id == run) & (metrics.split == split) & (metrics.group_type == "all")].iloc[0]
        assert row["accuracy"] == pytest.approx(accuracy_score(part["label"], part["prob_malignant"] >= 0.5))
        assert row["roc_auc"] == pytest.approx(roc_auc_score(part["label"], part["prob_malignant"]))
        patients = chosen.set_index("image_id").loc[part["image_id"], "patient_id"].nunique()
        assert row["patients"] == patients
        for mag, sub in part.merge(manifest[["image_id", "magnification"]], on="image_id").groupby("magnification"):
            got = metrics[(metrics.run_id == run) & (metrics.split == split) & (metrics.group_type == "magnification")
                          & (metrics.group == str(mag))].iloc[0]
            assert got["accuracy"] == pytest.approx(accuracy_score(sub["label"], sub["prob_malignant"] >= 0.5))
    assert metrics["same_patient_neighbour_rate"].isna().all()  # no neighbour summary given


class _Opens:
    """Every ``open`` of a file (Python's audit event) while a runner stage runs, by stage. One audit hook per test
    process (hooks cannot be removed); it records only while a recorder is active."""

    active: _Opens | None = None
    installed = False

    def __init__(self) -> None:
        self.stage = None
        self.opened: dict[str, list[tuple[Path, bool]]] = {}  # stage -> [(path, while hashing)]

    @classmethod
    def hook(cls, event: str, args: tuple) -> None:
        rec = cls.active
        if rec is None or rec.stage is None or event != "open" or not args or isinstance(args[0], int):
            return
        mode, flags = (args[1] if len(args) > 1 else None), (args[2] if len(args) > 2 else 0)
        if isinstance(mode, str) and any(c in mode for c in "wax+"):
            return
        if isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            return  # a write (a temporary file of an atomic write): reads are what must be declared
        frame, hashing = sys._getframe(1), False
        while frame is not None and not hashing:
            hashing = frame.f_code.co_name == "file_sha256"
            frame = frame.f_back
        path = args[0].decode(errors="replace") if isinstance(args[0], bytes) else str(args[0])
        rec.opened.setdefault(rec.stage, []).append((Path(path), hashing))


def _entry_of(path: Path, catalog: Catalog, data_root: Path) -> str:
    """The catalog entry (declarations' names) a file belongs to."""
    path = Path(path).resolve()
    if data_root.resolve() in path.parents:
        return "data_root"
    root = catalog.root.resolve()
    if root not in path.parents:
        return "elsewhere"  # the interpreter's own files (modules imported on first use): not the experiment's
    for name in ("manifest", "rejects", "dataset", "split", "pipeline_run", "pipeline_status"):
        if path == getattr(catalog, name).resolve():
            return name
    rel = path.relative_to(root).parts
    if rel[0] == "stamps":
        return "stamps"
    if rel[0] == "stain" and len(rel) >= 3:
        if rel[2] == "target.json":
            return "stain_target"
        if len(rel) == 4 and rel[3] == "index.parquet":
            return "stain_index"
        if len(rel) == 4 and rel[3] == "stain_run.json":
            return "stain_run"
        return "stain_images"
    return "/".join(rel)


def test_the_runner_loads_each_input_once_and_each_stage_opens_only_what_it_declares(tmp_path, monkeypatch):
    import pipeline.progress as progress
    from pipeline.config import config_from_dict
    from pipeline.runner import run_pipeline
    from pipeline.stages.declarations import DECLARATIONS, RUNNER_ENTRIES

    cfg = config_from_dict({"experiment": {"name": "opens", "data_root": str(tmp_path / "data"), "out_dir": str(tmp_path / "exp"),
                                           "synthetic": True, "demo_patients": 8, "demo_images_per_patient": 2},
                            "runs": [{"model": "efficientnet_b0", "stain": "reinhard"}]})
    if not _Opens.installed:
        sys.addaudithook(_Opens.hook)
        _Opens.installed = True
    rec = _Opens()
    stage_method = progress.Board.stage

    def tracked(board, name, state, *args, **kwargs):
        rec.stage = name if state == "running" else None
        return stage_method(board, name, state, *args, **kwargs)

    monkeypatch.setattr(progress.Board, "stage", tracked)
    _Opens.active = rec
    try:
        run_pipeline(cfg, only=["data", "index", "split", "stain"])
    finally:
        _Opens.active = None
    catalog = Catalog(cfg.out_dir)
    declared = {d.name: d for d in DECLARATIONS}
    assert set(rec.opened) >= {"index", "split", "stain"}  # the recorder saw the stages (not vacuous)
    for stage, opened in rec.opened.items():
        entries = {_entry_of(p, catalog, cfg.data_root) for p, _ in opened}
        allowed = set(declared[stage].reads) | set(declared[stage].writes) | set(RUNNER_ENTRIES) | {"elsewhere"}
        assert entries <= allowed, f"{stage} opened undeclared {entries - allowed}"
    # every declared output of each stage that ran is there
    key = catalog.stain_target("reinhard")
    assert key.exists()
    import json

    stain_key = json.loads(key.read_text())["key"]
    outputs = {"manifest": catalog.manifest, "rejects": catalog.rejects, "dataset": catalog.dataset, "split": catalog.split,
               "stain_target": key, "stain_images": catalog.stain_images("reinhard", stain_key),
               "stain_index": catalog.stain_index("reinhard", stain_key), "stain_run": catalog.stain_run("reinhard", stain_key),
               "data_root": cfg.data_root}
    for stage in ("data", "index", "split", "stain"):
        for entry in declared[stage].writes:
            assert outputs[entry].exists(), f"{stage} declares {entry} but did not write {outputs[entry]}"
    # loaded once: split parses the manifest, stain reuses it; split.parquet is parsed once (by stain, after split wrote it)
    parsed = [(s, _entry_of(p, catalog, cfg.data_root)) for s, opened in rec.opened.items() for p, hashing in opened if not hashing]
    assert [s for s, e in parsed if e == "manifest"] == ["split"]
    assert [s for s, e in parsed if e == "split"] == ["stain"]


def test_inputs_notice_a_file_replaced_behind_them(demo_experiment, tmp_path):
    """A held frame is reused only while its file is unchanged: a split rewritten by anyone is read again."""
    import shutil

    from pipeline.artifacts.entries import Inputs
    from pipeline.artifacts.io import write_parquet

    exp = tmp_path / "exp"
    shutil.copytree(demo_experiment, exp)
    inputs = Inputs(exp)
    first = inputs.split()
    assert inputs.split().equals(first)
    changed = first.assign(split=np.where(first["split"] == "val", "test", first["split"]))
    write_parquet(changed, Catalog(exp).split)
    assert (inputs.split()["split"] == "val").sum() == 0 and (first["split"] == "val").sum() > 0


def test_the_dashboard_reads_catalog_files_only_through_the_entries():
    """No dashboard or page module reads a parquet or JSON artifact by itself: the readers and the schema check
    are reached only through pipeline/artifacts/entries.py (checked on the source, like tests/test_layers.py)."""
    import ast

    from conftest import PROJECT_ROOT

    readers = {"check_frame", "read_parquet_file", "read_parquet", "parse_json", "read_json", "read_json_object"}
    bad = []
    for path in sorted(p for folder in ("dashboard", "pages") for p in (PROJECT_ROOT / folder).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pipeline."):
                bad += [f"{path.name} imports {a.name}" for a in node.names if a.name in readers]
            if isinstance(node, ast.Attribute) and node.attr in ("read_parquet", "loads", "load") and \
                    isinstance(node.value, ast.Name) and node.value.id in ("pd", "json", "pq"):
                bad.append(f"{path.name}:{node.lineno} calls {node.value.id}.{node.attr}")
    assert not bad, bad


def test_the_pipeline_and_the_dashboard_load_a_table_through_the_same_entry(tmp_path):
    """One predictions file, read by the pipeline's entry and by the dashboard's cached reader: a valid one gives the
    file's own rows to both; one with a prediction out of contract is refused by both with the same problem."""
    from dashboard.data import _read_parquet, _stamp
    from pipeline.artifacts.entries import ENTRIES
    from pipeline.artifacts.schemas import InvalidArtifact

    manifest = _manifest(4, 2)
    prob = np.linspace(0.1, 0.9, len(manifest))
    preds = pd.DataFrame({"run_id": "v1_b0", "kind": "single", "model": "efficientnet_b0", "family": "v1", "stain": "none",
                          "image_id": manifest["image_id"], "split": "test", "label": manifest["label"],
                          "prob_malignant": prob, "pred": (prob >= 0.5).astype(int)})
    catalog = Catalog(tmp_path / "exp")
    catalog.root.mkdir()
    path = catalog.predictions
    preds.to_parquet(path, index=False)
    pd.testing.assert_frame_equal(ENTRIES["predictions"].load(catalog), preds)
    pd.testing.assert_frame_equal(_read_parquet(str(path), _stamp(path)), preds)

    preds.loc[3, "pred"] = 7  # planted: a prediction is 0 or 1
    preds.to_parquet(path, index=False)
    problems = []
    for read in (lambda: ENTRIES["predictions"].load(catalog), lambda: _read_parquet(str(path), _stamp(path))):
        with pytest.raises(InvalidArtifact) as caught:
            read()
        problems.append(caught.value.problem)
    assert problems == ["has pred 7 (allowed: 0, 1)"] * 2


def test_index_saves_the_manifest_through_its_entry(demo_root, tmp_path, monkeypatch):
    """``index`` writes the manifest with the entry's save(): a table that breaks the manifest's contract (planted:
    label 2) is refused before anything is written, and the previous manifest, rejects and dataset.json stay."""
    import pipeline.stages.index as index
    from pipeline.artifacts.schemas import InvalidArtifact

    exp = tmp_path / "exp"
    index.run_index(demo_root, exp, verbose=False)
    catalog = Catalog(exp)
    before = {p: p.read_bytes() for p in (catalog.manifest, catalog.rejects, catalog.dataset)}
    real = index.index_dataset

    def foreign(root):
        manifest, rejects = real(root)
        return manifest.assign(label=manifest["label"].where(manifest.index != 0, 2)), rejects

    monkeypatch.setattr(index, "index_dataset", foreign)
    with pytest.raises(InvalidArtifact) as caught:
        index.run_index(demo_root, exp, force=True, verbose=False)
    assert caught.value.problem == "has label 2 (allowed: -1, 0, 1)"
    assert {p: p.read_bytes() for p in before} == before
