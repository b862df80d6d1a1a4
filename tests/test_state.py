"""Pipeline state without TensorFlow: up-to-date records, no lost rows, no torn reads, validate-then-act, run hashes."""

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from conftest import PROJECT_ROOT
from pipeline.artifacts.catalog import Catalog
from pipeline.artifacts.io import read_parquet_file, write_json, write_parquet
from pipeline.artifacts.stamps import Stamp
from pipeline.core.errors import PipelineError

ENV = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}


def snapshot(root):
    """(inode, mtime_ns, size) of every file under ``root``: equal snapshots mean nothing was rewritten."""
    return {p.relative_to(root).as_posix(): (p.stat().st_ino, p.stat().st_mtime_ns, p.stat().st_size)
            for p in sorted(root.rglob("*")) if p.is_file()}


# -- up-to-date records -------------------------------------------------------------------------------------
def test_stamp_follows_content_not_mtime(tmp_path):
    catalog = Catalog(tmp_path)
    src, out = tmp_path / "in.txt", tmp_path / "out.txt"
    src.write_text("a")
    out.write_text("result")
    Stamp(catalog, "demo", {"k": 1}, inputs=[src]).record([out])
    assert Stamp(catalog, "demo", {"k": 1}, inputs=[src]).is_current()
    time.sleep(0.01)
    src.write_text("a")  # same bytes, new mtime: still current
    assert Stamp(catalog, "demo", {"k": 1}, inputs=[src]).is_current()
    assert not Stamp(catalog, "demo", {"k": 2}, inputs=[src]).is_current()  # other settings
    src.write_text("b")  # new content
    assert not Stamp(catalog, "demo", {"k": 1}, inputs=[src]).is_current()
    src.write_text("a")
    out.write_text("tampered")  # an output that changed is not up to date either
    assert not Stamp(catalog, "demo", {"k": 1}, inputs=[src]).is_current()
    out.unlink()
    assert not Stamp(catalog, "demo", {"k": 1}, inputs=[src]).is_current()


def test_force_redoes_a_stage_and_its_dependents():
    from pipeline.runner import with_dependents

    assert with_dependents(["train"]) == {"train", "ensemble", "neighbours", "evaluate", "gradcam"}
    assert with_dependents(["neighbours"]) == {"neighbours", "evaluate"}
    assert with_dependents(["ensemble"]) == {"ensemble", "evaluate"}
    assert with_dependents(["index"]) == {"index", "split", "stain", "train", "ensemble", "neighbours", "evaluate", "gradcam"}
    assert with_dependents([]) == set()


def test_index_and_split_skip_when_unchanged_and_react_to_content(demo_experiment, tmp_path, capsys):
    from pipeline.artifacts.experiment import data_root_of
    from pipeline.stages.index import run_index
    from pipeline.stages.split import run_split

    exp = tmp_path / "exp"
    data = tmp_path / "data"
    shutil.copytree(data_root_of(demo_experiment), data)
    run_index(data, exp)
    run_split(exp, "patient", (0.7, 0.15, 0.15))
    before = snapshot(exp)
    capsys.readouterr()
    run_index(data, exp)
    run_split(exp, "patient", (0.7, 0.15, 0.15))
    assert capsys.readouterr().out.splitlines() == ["index: up to date (48 images)", "split: up to date (patient, 0 patient(s) shared)"]
    assert snapshot(exp) == before
    # A touched image (new mtime, same bytes) is re-indexed, but the manifest's content is the same: split stays.
    image = sorted(data.rglob("*.png"))[0]
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))
    run_index(data, exp)
    run_split(exp, "patient", (0.7, 0.15, 0.15))
    out = capsys.readouterr().out
    assert "index: up to date" not in out and "split: up to date" in out
    # Another seed is another split.
    run_split(exp, "patient", (0.7, 0.15, 0.15), seed=1)
    assert "up to date" not in capsys.readouterr().out


# -- validate, then act -------------------------------------------------------------------------------------
def test_failing_split_keeps_the_previous_split(demo_experiment, tmp_path):
    from pipeline.stages.split import run_split

    exp = tmp_path / "exp"
    shutil.copytree(demo_experiment, exp)
    before = snapshot(exp)
    with pytest.raises(PipelineError, match="folds"):
        run_split(exp, "patient", (0.7, 0.15, 0.15), folds=0)
    with pytest.raises(PipelineError, match="group"):
        run_split(exp, "patient", (0.7, 0.15, 0.15), group_by="ward")
    assert snapshot(exp) == before


def test_reindexing_an_empty_tree_changes_nothing(demo_experiment, tmp_path):
    from pipeline.stages.index import run_index

    exp = tmp_path / "exp"
    shutil.copytree(demo_experiment, exp)
    before = snapshot(exp)
    empty = tmp_path / "empty" / "BreaKHis_v1" / "histology_slides" / "breast" / "benign"
    empty.mkdir(parents=True)
    (empty / "notes.txt").write_text("not an image")
    with pytest.raises(PipelineError, match="no valid BreakHis images.*1 files rejected.*nothing in .* was changed"):
        run_index(tmp_path / "empty", exp)
    assert snapshot(exp) == before  # the old manifest never sits beside new rejects


# -- no lost rows, no torn reads ----------------------------------------------------------------------------
WRITER = r"""
import sys, time
import numpy as np, pandas as pd
from pipeline.artifacts.catalog import Catalog
from pipeline.artifacts.io import write_json, write_parquet
from pipeline.artifacts.predictions import make_rows, merge_predictions
exp, run_id, rounds, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
import fcntl, os
real_flock, contended = fcntl.flock, [0]

def counting_flock(fd, op):  # the lock's own call, counting the times it found another holder
    if op & fcntl.LOCK_EX:
        try:
            return real_flock(fd, op | fcntl.LOCK_NB)
        except BlockingIOError:
            contended[0] += 1
            if op & fcntl.LOCK_NB:  # the lock polls without blocking (to say who holds it): its own retry follows
                raise
    return real_flock(fd, op)

fcntl.flock = counting_flock
files = Catalog(exp).run(run_id)
frame = pd.DataFrame({"image_id": [f"img{i:03d}" for i in range(40)], "split": ["val", "test"] * 20, "label": [0, 1] * 20})
rows0 = make_rows(run_id, "single", run_id, run_id[:2], "none", frame, np.zeros(40))  # warm every import before the barrier
open(go + "." + run_id, "w").close()  # the barrier: ready ...
while not os.path.exists(go):  # ... then wait for everyone's go
    time.sleep(0.001)
for k in range(rounds):
    rows = make_rows(run_id, "single", run_id, run_id[:2], "none", frame, np.full(40, (k + 1) / (rounds + 1)))
    write_parquet(rows, files.predictions)
    write_json({"run_id": run_id, "status": "complete"}, files.info)
    merge_predictions(exp)
print("contended", contended[0], flush=True)
"""


def test_concurrent_runs_lose_no_rows(tmp_path):
    """Six processes finish runs at the same moment, five times each: every run's latest rows survive the merges."""
    exp, go, rounds = tmp_path / "exp", tmp_path / "go", 5
    runs = ["v1_b0", "v1_b1", "v1_b2", "v2_b0", "v2_b1", "v2_b2"]
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(exp), r, str(rounds), str(go)], env=ENV, cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in runs]
    deadline = time.time() + 120
    while not all((tmp_path / f"go.{r}").exists() for r in runs):  # a real barrier: every writer ready, then go
        assert time.time() < deadline and all(p.poll() is None for p in procs), "a writer never got ready"
        time.sleep(0.01)
    go.write_text("go")
    waits = 0
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-2000:]
        waits += int(out.split("contended")[-1])
    assert waits > 0  # the writers really raced: some merge had to wait for another's lock
    merged = pd.read_parquet(exp / "predictions.parquet")
    assert merged.groupby("run_id").size().to_dict() == {r: 40 for r in runs}
    final = rounds / (rounds + 1)
    assert np.allclose(merged["prob_malignant"], final)  # each run's last write, not an older one


READER_WRITER = r"""
import sys
import numpy as np, pandas as pd
from pipeline.artifacts.io import write_parquet
path, n = sys.argv[1], int(sys.argv[2])
for version in range(n):
    rows = 20000 + 1000 * (version % 7)
    write_parquet(pd.DataFrame({"version": np.full(rows, version), "x": np.arange(rows, dtype=np.float64)}), path)
print("done", flush=True)
"""


def test_reader_never_sees_a_torn_parquet(tmp_path):
    """A reader loop while another process replaces the file over and over: every read is one whole version."""
    path = tmp_path / "table.parquet"
    write_parquet(pd.DataFrame({"version": np.full(20000, -1), "x": np.arange(20000, dtype=np.float64)}), path)
    writer = subprocess.Popen([sys.executable, "-c", READER_WRITER, str(path), "150"], env=ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    reads, versions, failures = 0, set(), []
    while writer.poll() is None:
        try:
            df = read_parquet_file(path)
        except Exception as exc:  # noqa: BLE001 - a torn read is exactly what this test counts
            failures.append(repr(exc))
            continue
        reads += 1
        version = int(df["version"].iloc[0])
        versions.add(version)
        expected = 20000 + 1000 * (version % 7) if version >= 0 else 20000
        assert (df["version"] == version).all() and len(df) == expected and df["x"].iloc[-1] == expected - 1
    assert writer.returncode == 0, writer.stderr.read()[-2000:]
    assert not failures, f"{len(failures)} torn reads of {reads + len(failures)}, e.g. {failures[0]}"
    assert reads >= 20 and len(versions) >= 5  # the loop really raced the writer


def test_legacy_experiment_tables_are_split_into_parts(tmp_path):
    """An experiment written before per-run parts existed keeps every row through its first merge."""
    from pipeline.artifacts.predictions import make_rows, merge_predictions

    catalog = Catalog(tmp_path)
    frame = pd.DataFrame({"image_id": ["a", "b"], "split": ["val", "test"], "label": [0, 1]})
    table = pd.concat([make_rows("v1_b0", "single", "efficientnet_b0", "v1", "none", frame, np.array([0.2, 0.8])),
                       make_rows("ensemble:soft:v1_b0+v2_b0", "ensemble", "soft", "all", "none", frame, np.array([0.3, 0.7]))])
    write_parquet(table, catalog.predictions)
    write_json({"status": "complete"}, catalog.run("v1_b0").info)
    merge_predictions(tmp_path)
    merged = pd.read_parquet(catalog.predictions)
    assert sorted(merged.run_id.unique()) == ["ensemble:soft:v1_b0+v2_b0", "v1_b0"] and len(merged) == 4
    assert catalog.run("v1_b0").predictions.exists() and catalog.ensemble_predictions.exists()


# -- what the run hash covers, and the image cache key -------------------------------------------------------
def test_run_hash_covers_only_what_changes_the_model(demo_experiment):
    from pipeline.config import TrainConfig
    from pipeline.stages.train import plan_run

    base = TrainConfig(epochs=1, image_size=32, weights="none")
    h = plan_run(demo_experiment, "efficientnet_b0", base).config_hash
    for speed_only in ({"workers": 4}, {"checkpoint_seconds": 0.0}, {"predict_batch_size": 8}):
        assert plan_run(demo_experiment, "efficientnet_b0", TrainConfig(**{**base.__dict__, **speed_only})).config_hash == h
    for result in ({"lr_backbone": 3e-4}, {"batch_size": 16}, {"augment": False}, {"epochs": 2}):
        assert plan_run(demo_experiment, "efficientnet_b0", TrainConfig(**{**base.__dict__, **result})).config_hash != h


def test_dead_config_keys_are_gone():
    from pipeline.config import config_from_dict

    base = {"experiment": {"name": "x", "data_root": "/tmp/x"}}
    for section, key in (("stain", "method"), ("ensemble", "top_subsets")):
        with pytest.raises(PipelineError, match=f"unknown config key '{section}.{key}'"):
            config_from_dict({**base, section: {key: "vahadane" if key == "method" else 3}})
    assert config_from_dict({**base, "gradcam": {"workers": 2}}).gradcam.workers == 2


def test_image_cache_follows_the_stain_target_and_the_source_files(demo_experiment, tmp_path):
    """Re-staining onto another target must give the new pixels, not the cached old ones (decoded by TensorFlow)."""
    from PIL import Image

    from pipeline.artifacts.experiment import data_root_of, load_split_frame
    from pipeline.ml.data import cache_file, load_images

    exp, root = tmp_path / "exp", tmp_path / "data"
    shutil.copytree(demo_experiment, exp)
    shutil.copytree(data_root_of(demo_experiment), root)
    write_json({**json.loads(Catalog(exp).dataset.read_text()), "data_root": str(root)}, Catalog(exp).dataset)
    catalog = Catalog(exp)
    frame = load_split_frame(exp).head(6)

    def stain_as(key, transform):  # a stain target whose normalized images are transform(original)
        for rel in frame.path:
            dst = catalog.stain_images("macenko", key) / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            with Image.open(root / rel) as img:
                Image.fromarray(transform(np.asarray(img.convert("RGB")))).save(dst)
        write_json({"key": key, "method": "macenko"}, catalog.stain_target("macenko"))

    stain_as("aaaaaaaaaa", lambda x: x)
    same = np.asarray(load_images(exp, root, frame, 32, stain="macenko")).astype(int)
    plain = np.asarray(load_images(exp, root, frame, 32)).astype(int)
    assert np.abs(same - plain).max() <= 1
    stain_as("bbbbbbbbbb", lambda x: 255 - x)
    inverted = np.asarray(load_images(exp, root, frame, 32, stain="macenko")).astype(int)
    assert np.abs(inverted - (255 - plain)).max() <= 1  # the new target's pixels, not the cache of the old one
    # a source image replaced in place (new size/mtime) is another cache entry
    before = cache_file(exp, root, frame, 32)
    victim = root / frame.path.iloc[0]
    with Image.open(victim) as img:
        rotated = img.convert("RGB").rotate(90)
    rotated.save(victim)
    assert cache_file(exp, root, frame, 32) != before
