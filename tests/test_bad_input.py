"""Bad input, as a careless user, a flaky disk or a hostile artifact would give it.

The table runs every row through the CLI (in-process ``pipeline.cli.main``; a few rows as real
subprocesses) and checks the promise of the README's "Errors" section: exit status 2, exactly one line on
stderr that names the problem, no traceback, and every file that existed before is byte-identical after
(and no file was added).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pytest
from conftest import PROJECT_ROOT
from pngcraft import png_bytes

from pipeline.artifacts.catalog import Catalog
from pipeline.artifacts.io import write_parquet
from pipeline.cli import main
from pipeline.core.breakhis import ParsedName
from pipeline.core.errors import PipelineError


# -- row set-ups: each gets (tmp, exp, data) and plants the bad input ------------------------------------------
def truncate(path: Path, keep: int = 100) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def set_data_root(exp: Path, value) -> None:
    info = json.loads((exp / "dataset.json").read_text())
    (exp / "dataset.json").write_text(json.dumps({**info, "data_root": value}))


def stain_target(key) -> Callable:
    def setup(tmp: Path, exp: Path, data: Path) -> None:
        (exp / "stain" / "vahadane").mkdir(parents=True)
        (exp / "stain" / "vahadane" / "target.json").write_text(json.dumps({"method": "vahadane", "key": key}))
    return setup


def keep_patients(benign: int, malignant: int) -> Callable:
    """Rewrite the manifest to the first ``benign`` and ``malignant`` patients."""
    def setup(tmp: Path, exp: Path, data: Path) -> None:
        manifest = pd.read_parquet(exp / "manifest.parquet")
        nums = manifest.groupby("label")["patient_num"].unique()
        keep = list(sorted(nums[0])[:benign]) + list(sorted(nums[1])[:malignant])
        write_parquet(manifest[manifest.patient_num.isin(keep)], exp / "manifest.parquet")
    return setup


def manifest_row(column: str, value: str) -> Callable:
    """Plant a hostile value in the first manifest row (the index never writes one)."""
    def setup(tmp: Path, exp: Path, data: Path) -> None:
        manifest = pd.read_parquet(exp / "manifest.parquet")
        manifest.loc[0, column] = value
        write_parquet(manifest, exp / "manifest.parquet")
    return setup


def preset(text: str) -> Callable:
    def setup(tmp: Path, exp: Path, data: Path) -> None:
        (tmp / "preset.toml").write_text(text.format(data=data, tmp=tmp))
    return setup


def mini_dataset(tmp: Path, exp: Path, data: Path) -> None:
    """Two tiny, valid BreakHis-named images under tmp/mini (a dataset the row may write next to)."""
    for label, subtype, patient in ((0, "A", "22549AB"), (1, "DC", "10926")):
        name = ParsedName(label=label, subtype=subtype, year="14", patient_id=patient, patient_num=int(patient.rstrip("AB")),
                          magnification=100, seq=1)
        folder = tmp / "mini" / "BreaKHis_v1" / "histology_slides" / "breast" / name.relative_dir()
        folder.mkdir(parents=True)
        (folder / name.file_name()).write_bytes(png_bytes(np.full((8, 8, 3), 180), 2))


def only_bad_images(tmp: Path, exp: Path, data: Path) -> None:
    folder = tmp / "bad" / "breast" / "benign"
    folder.mkdir(parents=True)
    (folder / "SOB_B_A-14-1-100-001.png").write_bytes(b"")


def a_file(name: str) -> Callable:
    def setup(tmp: Path, exp: Path, data: Path) -> None:
        (tmp / name).write_text("not a folder")
    return setup


def chain(*setups: Callable) -> Callable:
    def setup(tmp: Path, exp: Path, data: Path) -> None:
        for s in setups:
            s(tmp, exp, data)
    return setup


def at(relative: str, action: Callable[[Path], None]) -> Callable:
    return lambda tmp, exp, data: action(exp / relative)


def write_bytes(content: bytes) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(content)


def fake_trained_run(tmp: Path, exp: Path, data: Path) -> None:
    """A run folder that counts as trained (complete run.json, its rows, a model file): predict validates its images
    before it ever loads a model, so the model file need not be one."""
    run = exp / "runs" / "v1_b0"
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"status": "complete", "image_size": 32, "stain": "none"}))
    (run / "model.keras").write_bytes(b"not loaded")
    write_parquet(pd.DataFrame({"run_id": ["v1_b0"]}), run / "predictions.parquet")


def image_folder(*names: str, labels: str | None = None) -> Callable:
    """tmp/imgs with a valid 8x8 PNG per ``.png`` name (other names get text), and tmp/labels.csv when given."""
    def setup(tmp: Path, exp: Path, data: Path) -> None:
        (tmp / "imgs").mkdir()
        for name in names:
            content = png_bytes(np.full((8, 8, 3), 180), 2) if name.endswith(".png") else b"some notes"
            (tmp / "imgs" / name).write_bytes(content)
        if labels is not None:
            (tmp / "labels.csv").write_text(labels)
    return setup


def wrong_schema_split(path: Path) -> None:
    write_parquet(pd.DataFrame({"image_id": ["a"], "split": ["train"]}), path)


DEEP_JSON = "[" * 100_000 + "]" * 100_000  # RecursionError in json.loads


def text_at(relative: str, text: str) -> Callable:
    """Write ``text`` at ``relative`` under tmp (``{exp}`` and ``{tmp}`` are formatted in)."""
    def setup(tmp: Path, exp: Path, data: Path) -> None:
        path = Path(relative.format(exp=exp, tmp=tmp))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return setup


def planted_predictions(mutate: Callable[[pd.DataFrame], pd.DataFrame] = lambda t: t) -> Callable:
    """A predictions table of two runs over the experiment's val/test images (no run folders), then ``mutate``d."""
    def setup(tmp: Path, exp: Path, data: Path) -> None:
        from pipeline.artifacts.predictions import make_rows

        frame = pd.read_parquet(exp / "manifest.parquet").merge(pd.read_parquet(exp / "split.parquet"), on="image_id")
        frame = frame[frame["split"] != "train"].reset_index(drop=True)
        rows = [make_rows(run, "single", run, run[:2], "none", frame, np.linspace(0.1, 0.9, len(frame))) for run in ("v1_b0", "v2_b0")]
        write_parquet(mutate(pd.concat(rows, ignore_index=True)), exp / "predictions.parquet")
    return setup


def set_value(column: str, value) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def mutate(table: pd.DataFrame) -> pd.DataFrame:
        table = table.copy()
        if column == "label":
            table[column] = table[column].astype("int64")
        table.loc[0, column] = value
        return table
    return mutate


def dummy_metrics(tmp: Path, exp: Path, data: Path) -> None:
    write_parquet(pd.DataFrame({"run_id": ["v1_b0"], "split": ["test"], "group_type": ["all"], "group": ["all"],
                                "accuracy": [0.5]}), exp / "metrics.parquet")


SPLIT_CSV = "image_id,split,fold\n"
SYNTH_PRESET = '[experiment]\nname = "x"\nsynthetic = true\ndata_root = "{tmp}/demo"\nout_dir = "%s"\n'


GOOD_PRESET = '[experiment]\nname = "x"\ndata_root = "{data}"\nout_dir = "{tmp}/out"\n'
RUNS = '[[runs]]\nmodel = "efficientnet_b0"\n'


@dataclass(frozen=True)
class Row:
    id: str
    argv: str  # split on spaces after formatting {exp}, {tmp}, {data}
    expect: str  # regex the one stderr line must match
    setup: Callable | None = None
    subprocess: bool = False


ROWS = [
    # command line itself
    Row("no-command", "", r"required: command"),
    Row("unknown-command", "trian {exp}", r"invalid choice: 'trian'"),
    # index
    Row("index-missing-root", "index {tmp}/nope --out {tmp}/exp2", r"data root .*nope does not exist"),
    Row("index-out-is-a-file", "index {tmp}/mini --out {tmp}/afile", r"--out .*afile is a file", chain(mini_dataset, a_file("afile")),
        subprocess=True),
    Row("index-out-inside-dataset", "index {tmp}/mini --out {tmp}/mini/BreaKHis_v1/histology_slides/breast/exp",
        r"inside the dataset", mini_dataset),
    Row("index-no-valid-images-keeps-old-rejects", "index {tmp}/bad --out {exp}",
        r"no valid BreakHis images .*1 files rejected: 1 x folder/name disagreement",
        only_bad_images),
    Row("index-root-not-breakhis", "index {exp} --out {tmp}/exp2", r"does not look like BreakHis"),
    # demo-data
    Row("demo-data-into-real-folder", "demo-data {exp}", r"no SYNTHETIC marker"),
    Row("demo-data-too-few-patients", "demo-data {tmp}/d --patients 3", r"--patients: must be >= 8"),
    Row("demo-data-under-a-file", "demo-data {tmp}/afile/d", r"afile.*(Not a directory|is a file)", a_file("afile")),
    # split
    Row("split-ratios-letters", "split {exp} --mode patient --ratios a,b,c", r"--ratios: ratios must be three positive numbers.*'a,b,c'",
        subprocess=True),
    Row("split-ratios-two", "split {exp} --mode patient --ratios 0.7,0.3", r"--ratios: ratios must be three"),
    Row("split-ratios-sum", "split {exp} --mode patient --ratios 0.7,0.2,0.2", r"summing to 1"),
    Row("split-ratios-nan", "split {exp} --mode patient --ratios nan,0.5,0.5", r"--ratios"),
    Row("split-folds-zero", "split {exp} --mode patient --folds 0", r"--folds: must be >= 1, got 0"),
    Row("split-seed-negative", "split {exp} --mode patient --seed -1", r"--seed: must be between 0 and"),
    Row("split-mode-unknown", "split {exp} --mode random", r"--mode: invalid choice: 'random'"),
    Row("split-paper-two-patients", "split {exp} --mode paper", r"paper split .*leaves val without benign images", keep_patients(1, 1)),
    Row("split-patient-too-few", "split {exp} --mode patient", r"class 'benign' has 2 patient group", keep_patients(2, 3)),
    Row("split-truncated-manifest", "split {exp} --mode patient", r"manifest.parquet is not a readable parquet file",
        at("manifest.parquet", truncate)),
    Row("split-missing-manifest", "split {tmp}/empty --mode patient", r"missing artifact .*manifest.parquet"),
    # train: argument values (argparse types sharing the presets' rules), then artifacts (before TensorFlow starts)
    Row("train-epochs-zero", "train {exp} --model efficientnet_b0 --epochs 0", r"--epochs: must be >= 1, got 0"),
    Row("train-epochs-text", "train {exp} --model efficientnet_b0 --epochs abc", r"--epochs: expected an integer, got 'abc'"),
    Row("train-batch-zero", "train {exp} --model efficientnet_b0 --batch-size 0", r"--batch-size: must be >= 1"),
    Row("train-size-negative", "train {exp} --model efficientnet_b0 --image-size -5", r"--image-size: must be 0 .* got -5"),
    Row("train-size-seven", "train {exp} --model efficientnet_b0 --image-size 7", r"--image-size: .*between 32 and 1024.* got 7",
        subprocess=True),
    Row("train-size-huge", "train {exp} --model efficientnet_b0 --image-size 40000", r"--image-size: .*got 40000"),
    Row("train-warmup-negative", "train {exp} --model efficientnet_b0 --warmup-epochs -1", r"--warmup-epochs: must be >= 0"),
    Row("train-patience-negative", "train {exp} --model efficientnet_b0 --early-stopping-patience -2", r"--early-stopping-patience"),
    Row("train-seed-negative", "train {exp} --model efficientnet_b0 --seed -1", r"--seed: must be between 0"),
    Row("train-unknown-model", "train {exp} --model resnet50", r"--model: unknown model 'resnet50'"),
    Row("train-no-model", "train {exp}", r"required: --model"),
    Row("train-weights-missing-file", "train {exp} --model efficientnet_b0 --weights {tmp}/nope.h5", r"--weights: .*existing weights file"),
    Row("train-fold-out-of-range", "train {exp} --model efficientnet_b0 --fold 5", r"fold 5 not in split.parquet"),
    Row("train-fold-negative", "train {exp} --model efficientnet_b0 --fold -1", r"--fold: must be >= 0"),
    Row("train-missing-experiment", "train {tmp}/nowhere --model efficientnet_b0", r"missing artifact .*manifest.parquet"),
    Row("train-truncated-split", "train {exp} --model efficientnet_b0", r"split.parquet is not a readable parquet file",
        at("split.parquet", truncate)),
    Row("train-split-wrong-schema", "train {exp} --model efficientnet_b0", r"split.parquet lacks column\(s\) fold",
        at("split.parquet", wrong_schema_split)),
    Row("train-stain-key-traversal", "train {exp} --model efficientnet_b0 --stain vahadane", r"invalid stain target key '../../..'",
        stain_target("../../..")),
    Row("train-stain-key-absolute", "train {exp} --model efficientnet_b0 --stain vahadane", r"invalid stain target key '/etc'",
        stain_target("/etc")),
    Row("train-stain-key-not-text", "train {exp} --model efficientnet_b0 --stain vahadane", r"invalid stain target key \[1\]",
        stain_target([1])),
    Row("train-missing-stain-target", "train {exp} --model efficientnet_b0 --stain macenko", r"run `python -m pipeline stain .*macenko"),
    # stain
    Row("stain-data-root-nowhere", "stain {exp}", r"dataset.json names data_root '/nonexistent/breakhis'",
        lambda tmp, exp, data: set_data_root(exp, "/nonexistent/breakhis")),
    Row("stain-data-root-a-file", "stain {exp}", r"not an existing folder",
        lambda tmp, exp, data: set_data_root(exp, str(exp / "manifest.parquet"))),
    Row("stain-data-root-not-text", "stain {exp}", r"names data_root 42", lambda tmp, exp, data: set_data_root(exp, 42)),
    Row("stain-dataset-json-garbage", "stain {exp}", r"dataset.json is not a readable JSON file", at("dataset.json", truncate)),
    Row("stain-target-not-train", "stain {exp} --target SOB_X", r"stain target 'SOB_X' is not a training image"),
    Row("stain-fold-missing", "stain {exp} --fold 3", r"fold 3 not in split.parquet"),
    Row("stain-manifest-path-escapes", "stain {exp}", r"manifest.parquet has path '../../../../tmp/x.png', which leaves the data root",
        manifest_row("path", "../../../../tmp/x.png")),
    Row("split-manifest-id-is-a-path", "split {exp} --mode patient", r"has image_id '../x', not a file stem",
        manifest_row("image_id", "../x")),
    Row("stain-method-unknown", "stain {exp} --method photoshop", r"--method: invalid choice"),
    # ensemble / evaluate / gradcam / summarize-folds
    Row("ensemble-no-runs", "ensemble {exp}", r"ensembles need at least 2 trained"),
    Row("ensemble-truncated-predictions", "ensemble {exp}", r"predictions.parquet is not a readable parquet file",
        at("predictions.parquet", write_bytes(b"PAR1 cut short"))),
    Row("evaluate-truncated-predictions", "evaluate {exp}", r"predictions.parquet is not a readable parquet file",
        at("predictions.parquet", write_bytes(b"PAR1 cut short"))),
    Row("evaluate-bootstrap-zero", "evaluate {exp} --bootstrap 0", r"--bootstrap: must be >= 1"),
    Row("gradcam-unknown-run", "gradcam {exp} --runs v1_b7", r"no completed run 'v1_b7'"),
    Row("gradcam-run-id-path", "gradcam {exp} --runs ../../etc", r"--runs: not a run id the pipeline writes: '../../etc'"),
    Row("gradcam-run-id-ensemble", "gradcam {exp} --runs ensemble:soft:v1_b0+v2_b0", r"is an ensemble"),
    Row("gradcam-max-images-negative", "gradcam {exp} --max-images -1", r"--max-images: must be >= 0"),
    Row("gradcam-panel-unknown-image", "gradcam {exp} --panel SOB_X", r"no predictions for image 'SOB_X'"),
    # predict (external validation)
    Row("predict-no-trained-runs", "predict {exp} --data {data} --out {tmp}/new", r"has no trained runs"),
    Row("predict-no-valid-image", "predict {exp} --data {tmp}/imgs --out {tmp}/new",
        r"no valid image under .*imgs \(2 files rejected: 1 x not a PNG file \(bad signature\); 1 x not a PNG file \(extension\)",
        chain(fake_trained_run, image_folder("notes.txt"), lambda tmp, exp, data: (tmp / "imgs" / "cut.png").write_bytes(b"\x89PNG"))),
    Row("predict-labels-name-missing-image", "predict {exp} --data {tmp}/imgs --out {tmp}/new --labels {tmp}/labels.csv",
        r"labels.csv names 1 image\(s\) that are not valid images of the folder, e.g. 'b.png' \(no such image",
        chain(fake_trained_run, image_folder("a.png", labels="image,label\na.png,benign\nb.png,malignant\n"))),
    Row("predict-labels-bad-value", "predict {exp} --data {tmp}/imgs --out {tmp}/new --labels {tmp}/labels.csv",
        r"label 'maybe' is not 0/1 or benign/malignant",
        chain(fake_trained_run, image_folder("a.png", labels="image,label\na.png,maybe\n"))),
    Row("predict-out-is-source", "predict {exp} --data {tmp}/imgs --out {exp}", r"not the source experiment",
        chain(fake_trained_run, image_folder("a.png"))),
    Row("predict-no-data", "predict {exp}", r"predict needs --data ROOT --out NEW_EXP"),
    Row("predict-image-not-png", "predict {exp} --image {tmp}/imgs/notes.txt", r"--image .*notes.txt: not a PNG file \(bad signature\)",
        chain(fake_trained_run, image_folder("notes.txt"))),
    Row("summarize-folds-no-metrics", "summarize-folds {exp} --out {tmp}/folds.parquet", r"metrics.parquet is missing"),
    # run (presets share the CLI's rules)
    Row("run-config-folder", "run --config {tmp}", r"is a folder, not a TOML file"),
    Row("run-config-missing", "run --config {tmp}/nope.toml", r"does not exist \(presets: demo"),
    Row("run-only-typo", "run --config {tmp}/preset.toml --only trian", r"--only: invalid choice: 'trian'", preset(GOOD_PRESET + RUNS)),
    Row("run-seed-negative", "run --config {tmp}/preset.toml", r"'experiment.seed' must be between 0",
        preset(GOOD_PRESET + "seed = -1\n" + RUNS)),
    Row("run-image-size-seven", "run --config {tmp}/preset.toml", r"'train.image_size' must be 0 .*got 7",
        preset(GOOD_PRESET + "[train]\nimage_size = 7\n" + RUNS)),
    Row("run-run-image-size", "run --config {tmp}/preset.toml", r"'runs\[0\].image_size' must be 0",
        preset(GOOD_PRESET + '[[runs]]\nmodel = "efficientnet_b0"\nimage_size = 7\n')),
    Row("run-fold-beyond-folds", "run --config {tmp}/preset.toml", r"'split.fold' must be below split.folds",
        preset(GOOD_PRESET + "[split]\nfold = 1\n" + RUNS)),
    Row("run-name-is-a-path", "run --config {tmp}/preset.toml", r"'experiment.name' must be a simple name",
        preset(GOOD_PRESET.replace('name = "x"', 'name = "../../x"') + RUNS)),
    Row("run-unknown-key", "run --config {tmp}/preset.toml", r"unknown config key 'train.epoch'",
        preset(GOOD_PRESET + "[train]\nepoch = 3\n")),
    Row("run-invalid-toml", "run --config {tmp}/preset.toml", r"is not valid TOML", preset("[train\nepochs = 1")),
    Row("run-not-utf8", "run --config {tmp}/preset.toml", r"not UTF-8",
        lambda tmp, exp, data: (tmp / "preset.toml").write_bytes(b"\xff\xfe[")),
    Row("run-out-dir-a-file", "run --config {tmp}/preset.toml --only index", r"experiment folder .*out exists and is a file",
        chain(a_file("out"), preset(GOOD_PRESET + RUNS))),
    # issue 22: data loss and one-line errors found by a careless user, a copied folder and hostile artifacts
    Row("split-from-header-only", "split {exp} --from {tmp}/s.csv", r"s.csv has no rows", text_at("{tmp}/s.csv", SPLIT_CSV)),
    Row("split-from-fold-65536", "split {exp} --from {tmp}/s.csv", r"fold value\(s\) .*65536",
        text_at("{tmp}/s.csv", SPLIT_CSV + "x,train,65536\n")),
    Row("split-from-fold-1e20", "split {exp} --from {tmp}/s.csv", r"fold value\(s\) .*1e\+?20",
        text_at("{tmp}/s.csv", SPLIT_CSV + "x,train,1e20\n")),
    Row("split-from-fold-inf", "split {exp} --from {tmp}/s.csv", r"fold value\(s\) .*inf",
        text_at("{tmp}/s.csv", SPLIT_CSV + "x,train,inf\n")),
    Row("split-export-onto-split", "split {exp} --export {exp}/split.parquet", r"--export .*split.parquet.* artifact"),
    Row("summarize-folds-out-is-input", "summarize-folds {exp} --out {exp}/metrics.parquet", r"--out .*inside the input experiment",
        dummy_metrics),
    Row("summarize-folds-foreign-run-record", "summarize-folds {exp} --out {tmp}/f.parquet", r"pipeline_run.json is not a record",
        chain(dummy_metrics, text_at("{exp}/pipeline_run.json", "[1, 2]"))),
    Row("run-synthetic-out-inside-data-root", "run --config {tmp}/preset.toml", r"out_dir.* inside .*data_root",
        preset(SYNTH_PRESET % "{tmp}/demo/exp" + RUNS)),
    Row("run-out-dir-slash", "run --config {tmp}/preset.toml", r"'experiment.out_dir' must not be /", preset(SYNTH_PRESET % "/" + RUNS)),
    Row("run-out-dir-is-data-root", "run --config {tmp}/preset.toml", r"out_dir.* inside .*data_root",
        preset(GOOD_PRESET.replace("{tmp}/out", "{data}") + RUNS)),
    Row("run-toml-5000-deep", "run --config {tmp}/preset.toml", r"preset.toml is not valid TOML.*nested",
        lambda tmp, exp, data: (tmp / "preset.toml").write_text("x = " + "[" * 5000 + "]" * 5000)),
    Row("stain-dataset-json-deep", "stain {exp}", r"dataset.json is not a readable JSON file .*nested",
        text_at("{exp}/dataset.json", DEEP_JSON)),
    Row("stain-dataset-json-1e999", "stain {exp}", r"dataset.json is not a readable JSON file .*not finite",
        text_at("{exp}/dataset.json", '{"data_root": 1e999}')),
    Row("train-stain-target-deep", "train {exp} --model efficientnet_b0 --stain vahadane", r"target.json is not a readable JSON file",
        text_at("{exp}/stain/vahadane/target.json", DEEP_JSON)),
    Row("evaluate-predictions-label-2", "evaluate {exp}", r"predictions.parquet has label 2 ", planted_predictions(set_value("label", 2))),
    Row("evaluate-predictions-nan-prob", "evaluate {exp}", r"predictions.parquet has prob_malignant nan",
        planted_predictions(set_value("prob_malignant", float("nan")))),
    Row("evaluate-predictions-duplicate-key", "evaluate {exp}", r"predictions.parquet has duplicate rows for \(run_id, split, image_id\)",
        planted_predictions(lambda t: pd.concat([t, t.iloc[:1]], ignore_index=True))),
    Row("evaluate-predictions-foreign-columns", "evaluate {exp}", r"predictions.parquet lacks column\(s\) run_id",
        planted_predictions(lambda t: t.rename(columns={"run_id": "run"}))),
    Row("predict-labels-duplicate-columns", "predict {exp} --data {tmp}/imgs --out {tmp}/new --labels {tmp}/labels.csv",
        r"labels.csv has duplicate column\(s\) label",
        chain(fake_trained_run, image_folder("a.png", labels="image,label, Label\na.png,benign,malignant\n"))),
    Row("ensemble-predictions-categorical-kind-bad", "ensemble {exp}", r"predictions.parquet has kind 'mystery'",
        planted_predictions(lambda t: t.assign(kind=pd.Categorical(["mystery"] * len(t))))),
]


def snapshot(folder: Path) -> dict[str, str]:
    """Content hash of every file (and link target) under ``folder``, except the empty lock file the predictions
    merge takes (it is created once and kept: deleting a lock file others may wait on would race)."""
    out = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        if path.name == Catalog(path.parent).predictions_lock.name and path.stat().st_size == 0:
            continue
        if path.is_symlink():
            out[rel] = "link:" + os.readlink(path)
        elif path.is_file():
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def base_experiment(tmp_path_factory, demo_experiment) -> Path:
    """A copy of the session's indexed + split demo experiment (no runs, no predictions)."""
    base = tmp_path_factory.mktemp("bad_input") / "exp"
    shutil.copytree(demo_experiment, base)
    return base


def run_cli(argv: list[str], in_process: bool) -> tuple[int, str]:
    if in_process:
        err = io.StringIO()
        with redirect_stdout(io.StringIO()), redirect_stderr(err):
            code = main(argv)
        return code, err.getvalue()
    proc = subprocess.run([sys.executable, "-m", "pipeline", *argv], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "HISTOCOMPARE_QUIET": "1"}, timeout=120)
    return proc.returncode, proc.stderr


def test_the_table_has_at_least_30_rows_with_unique_ids():
    assert len(ROWS) >= 30 and len({r.id for r in ROWS}) == len(ROWS)
    assert 2 <= sum(r.subprocess for r in ROWS) <= 4


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(row, base_experiment, demo_root, tmp_path):
    exp = tmp_path / "exp"
    shutil.copytree(base_experiment, exp)
    if row.setup:
        row.setup(tmp_path, exp, demo_root)
    before = snapshot(tmp_path)
    argv = [a.format(exp=exp, tmp=tmp_path, data=demo_root) for a in row.argv.split()]
    code, stderr = run_cli(argv, in_process=not row.subprocess)
    lines = stderr.strip().splitlines()
    assert code == 2, stderr
    assert "Traceback" not in stderr
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ") and re.search(row.expect, lines[0]), lines[0]
    assert snapshot(tmp_path) == before, "files changed or appeared"


def test_bad_training_flags_fail_before_tensorflow_is_imported(base_experiment, tmp_path):
    """Argument and artifact checks of `train` run before the 10-second TensorFlow import."""
    code = (
        "import io, sys; from contextlib import redirect_stderr; from pipeline.cli import main\n"
        f"exp = {str(base_experiment)!r}\n"
        "rows = [['--epochs', '0'], ['--image-size', '7'], ['--batch-size', '0'], ['--fold', '5'], ['--model', 'x']]\n"
        "codes = []\n"
        "for extra in rows:\n"
        "    with redirect_stderr(io.StringIO()):\n"
        "        codes.append(main(['train', exp, '--model', 'efficientnet_b0', *extra]))\n"
        "print(codes, 'tensorflow' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})
    assert out.stdout.strip() == "[2, 2, 2, 2, 2] False", out.stderr[-2000:]


# -- guards the table relies on, tested directly ------------------------------------------------------------------
@pytest.mark.parametrize("key", ["../../..", "/etc", "..", "0123456789/..", "ABCDEF0123", "0123456789a", "", None, 123, ["x"]])
def test_stain_keys_are_tokens_never_paths(key, tmp_path):
    from pipeline.artifacts.catalog import Catalog, check_stain_key
    from pipeline.artifacts.experiment import normalized_root, read_stain_target

    with pytest.raises(PipelineError, match="invalid stain target key"):
        check_stain_key(key)
    with pytest.raises(PipelineError, match="invalid stain target key"):
        Catalog(tmp_path).stain_images("vahadane", key)
    (tmp_path / "stain" / "vahadane").mkdir(parents=True)
    (tmp_path / "stain" / "vahadane" / "target.json").write_text(json.dumps({"key": key}))
    with pytest.raises(PipelineError, match="invalid stain target key"):
        read_stain_target(tmp_path, "vahadane")
    with pytest.raises(PipelineError, match="invalid stain target key"):
        normalized_root(tmp_path, "vahadane")


def test_a_generated_stain_key_resolves_inside_the_experiment(tmp_path):
    from pipeline.artifacts.experiment import normalized_root

    (tmp_path / "stain" / "macenko" / "0123456789").mkdir(parents=True)
    (tmp_path / "stain" / "macenko" / "target.json").write_text(json.dumps({"key": "0123456789"}))
    assert normalized_root(tmp_path, "macenko") == tmp_path / "stain" / "macenko" / "0123456789"


@pytest.mark.parametrize("record", [{"data_root": "/nonexistent"}, {"data_root": __file__}, {"data_root": 7}, {"data_root": ""}, {},
                                    ["/tmp"]])
def test_data_root_must_be_an_existing_folder(record, tmp_path):
    from pipeline.artifacts.experiment import data_root_of

    with pytest.raises(PipelineError, match="dataset.json is missing"):
        data_root_of(tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps(record))
    with pytest.raises(PipelineError, match="not an existing folder"):
        data_root_of(tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps({"data_root": str(tmp_path)}))
    assert data_root_of(tmp_path) == tmp_path


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_atomic_writes_respect_the_umask(umask, tmp_path):
    from pipeline.artifacts.io import write_json

    old = os.umask(umask)
    try:
        write_json({"a": 1}, tmp_path / "x.json")
        write_parquet(pd.DataFrame({"a": [1]}), tmp_path / "x.parquet")
        plain = tmp_path / "plain"
        plain.write_text("")  # what open() gives under this umask
    finally:
        os.umask(old)
    expected = plain.stat().st_mode & 0o777
    assert expected == 0o666 & ~umask
    assert (tmp_path / "x.json").stat().st_mode & 0o777 == expected
    assert (tmp_path / "x.parquet").stat().st_mode & 0o777 == expected


# -- a truncated resume checkpoint ---------------------------------------------------------------------------------
def test_truncated_or_damaged_keras_files_are_detected(tmp_path):
    import keras

    from pipeline.ml.models import keras_file_problem, load_classifier

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.save(tmp_path / "whole.keras")
    data = (tmp_path / "whole.keras").read_bytes()
    (tmp_path / "cut.keras").write_bytes(data[: len(data) // 2])
    damaged = bytearray(data)
    start = data.index(b"\x89HDF")  # inside the stored weights member
    damaged[start + 100] ^= 0xFF
    (tmp_path / "damaged.keras").write_bytes(bytes(damaged))
    assert keras_file_problem(tmp_path / "whole.keras") is None
    assert "truncated" in keras_file_problem(tmp_path / "cut.keras")
    assert "damaged" in keras_file_problem(tmp_path / "damaged.keras")
    assert keras_file_problem(tmp_path / "absent.keras") == "missing"
    with pytest.raises(PipelineError, match=r"cannot load the model .*cut.keras: not a complete .keras archive"):
        load_classifier(tmp_path / "cut.keras")


def test_a_truncated_resume_checkpoint_means_a_fresh_start(tmp_path, capsys):
    """The resume decision (``_resume_state``) continues from an intact resume point; a cut-short checkpoint gets one
    line and a fresh start instead of Keras's "File not found" on every re-run until --force, and a damaged
    state.json means a fresh start too. (Checked on a small Keras model: an end-to-end run with an interrupted
    EfficientNet took 128 s on this machine, over the test budget.)"""
    import keras

    from pipeline.artifacts.catalog import RunFiles
    from pipeline.artifacts.io import write_json
    from pipeline.stages.train import STATE_VERSION, _resume_state

    files = RunFiles(tmp_path)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.save(files.resume(1))
    model.save(files.resume_best(1))
    history = [{"epoch": 1, "val_accuracy": 0.5}]
    write_json({"version": STATE_VERSION, "config_hash": "h", "checkpoint_epoch": 1, "history": history}, files.state)
    state = _resume_state(files, "h")
    assert state is not None and state["epochs_done"] == 1 and state["best_epoch"] == 1 and capsys.readouterr().out == ""
    truncate(files.resume(1), files.resume(1).stat().st_size // 3)
    assert _resume_state(files, "h") is None
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and f"the resume checkpoint {files.resume(1)} is unusable (not a complete .keras archive" in out[0]
    assert out[0].endswith("starting the run again from epoch 1")
    files.state.write_text('{"version": 2, "config_')  # cut short mid-write by a crash outside atomic_path
    assert _resume_state(files, "h") is None


def test_stain_replaces_a_hostile_target_instead_of_refusing_forever(tmp_path, capsys):
    """`stain` is the command every stain-key error points to, so it must not refuse the file it rewrites."""
    from pipeline.stages.stain import _previous_target

    stain_target("../../..")(tmp_path, tmp_path, tmp_path)
    assert _previous_target(tmp_path, "vahadane") == {}
    assert "ignoring the previous stain target (invalid stain target key '../../..'" in capsys.readouterr().out
    (tmp_path / "stain" / "vahadane" / "target.json").write_text(json.dumps({"key": "0123456789", "rule": "auto"}))
    assert _previous_target(tmp_path, "vahadane") == {"key": "0123456789", "rule": "auto"}
