"""``make gpu-check``: the paper recipe on a GPU, float32 vs mixed precision vs mixed precision + XLA.

Trains V1-B0 and V2-B0 for 2 epochs at 224 px on the real BreakHis sample with the ``paper`` preset's
[train] recipe (ImageNet weights when Keras's cache holds them, else ``none``, and it says which), once
per precision setting, and prints training and prediction images/s. First, ``run``'s built-in pool with two
workers given the same GPU (memory growth on) against one worker alone: B0, float32, combined training
images/s. Training images/s is the last epoch's (the first one includes graph tracing / XLA compilation); prediction images/s is a second,
timed pass over the val+test images after a warm-up pass. On a machine without a GPU it says so and
exits with status 1 (``--allow-cpu`` runs it anyway, slowly, e.g. to check the script itself).

    python -m tools.gpu_check [--epochs 2] [--image-size 224] [--allow-cpu]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("HISTOCOMPARE_QUIET", "1")

from pipeline.config import PROJECT_ROOT, resolve_config  # noqa: E402

SAMPLE = Path(os.environ.get("BREAKHIS_SAMPLE", PROJECT_ROOT.parent / "shared" / "breakhis-sample"))
MODELS = ("efficientnet_b0", "efficientnet_v2_b0")
VARIANTS = (("float32 (the study)", False, False), ("mixed_float16", True, False), ("mixed_float16 + XLA", True, True))


def _experiment(work: Path) -> Path:
    from pipeline.artifacts.catalog import Catalog
    from pipeline.artifacts.experiment import load_manifest
    from pipeline.artifacts.io import write_parquet
    from pipeline.core.splits import make_split
    from pipeline.stages.index import run_index

    exp = work / "exp"
    run_index(SAMPLE, exp)
    write_parquet(make_split(load_manifest(exp), "patient", seed=0), Catalog(exp).split)
    return exp


def _weights() -> tuple[str, str]:
    from pipeline.core.model_specs import get_spec
    from pipeline.ml.models import keras_cache_dir

    missing = [get_spec(m).weights_file for m in MODELS if not (keras_cache_dir() / get_spec(m).weights_file).exists()]
    if missing:
        return "none", f"none: ImageNet files not in {keras_cache_dir()} ({', '.join(missing)}), trained from scratch"
    return "imagenet", f"imagenet (from {keras_cache_dir()})"


def _predict_rate(exp: Path, info: dict, mixed: bool, jit: bool, batch_size: int) -> float:
    import numpy as np

    from pipeline.artifacts.catalog import Catalog
    from pipeline.artifacts.experiment import data_root_of, load_split_frame
    from pipeline.ml.data import load_images, make_dataset
    from pipeline.ml.models import load_classifier
    from pipeline.ml.precision import dtype_policy

    frame = load_split_frame(exp)
    part = frame[frame["split"] != "train"].reset_index(drop=True)
    images = np.asarray(load_images(exp, data_root_of(exp), part, info["image_size"]))
    with dtype_policy(mixed):
        model = load_classifier(Catalog(exp).run(info["run_id"]).model)
        model.jit_compile = jit
        model.predict(make_dataset(images, None, batch_size), verbose=0)  # warm-up: tracing / XLA compilation
        start = time.perf_counter()
        model.predict(make_dataset(images, None, batch_size), verbose=0)
        return len(images) / (time.perf_counter() - start)


def _two_workers_on_one_gpu(exp: Path, cfg, gpu: str) -> list[tuple[str, float, float]]:
    """``run``'s built-in pool with two workers given the same GPU (memory growth on): the two runs' combined
    training rate against one worker alone, same model and settings. Spawned workers only: this process has not
    touched the GPU yet, so it holds none of its memory."""
    from pipeline.runner import _train_job
    from pipeline.workers import map_in_workers

    exps = [exp, exp.parent / "exp-twin"]
    shutil.copytree(exp, exps[1], dirs_exist_ok=True)
    jobs = [{"exp_dir": str(e), "model": "efficientnet_b0", "cfg": cfg, "epochs": cfg.epochs, "force": True,
             "run_id": "v1_b0"} for e in exps]
    rows = []
    for label, todo, devices in (("1 worker on GPU " + gpu, jobs[:1], [gpu, gpu]), ("2 workers on GPU " + gpu, jobs, [gpu, gpu])):
        start = time.perf_counter()
        infos = map_in_workers(_train_job, todo, 2, devices=devices)  # one job: one spawned worker with the device
        wall = time.perf_counter() - start
        rows.append((label, sum(i["train_images_per_s"] for i in infos), wall))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--allow-cpu", action="store_true", help="run without a GPU too (slow; checks the script)")
    args = parser.parse_args(argv)

    from pipeline.ml.precision import gpu_present
    from pipeline.ml.runtime import quiet_tensorflow

    quiet_tensorflow()
    if not gpu_present():
        print("gpu-check: NO GPU FOUND - TensorFlow sees no GPU on this machine, so there is nothing to measure "
              "(mixed precision and XLA are GPU features; use --allow-cpu to run the check on CPU anyway).")
        if not args.allow_cpu:
            return 1
    if not (SAMPLE / "BreaKHis_v1").is_dir():
        print(f"gpu-check: the real BreakHis sample is not at {SAMPLE} (set BREAKHIS_SAMPLE)")
        return 1
    import tensorflow as tf

    from pipeline.stages.train import train_run

    weights, weights_note = _weights()
    paper = resolve_config(PROJECT_ROOT / "pipeline" / "configs" / "paper.toml").train
    devices = [d.name for d in tf.config.list_physical_devices("GPU")] or ["CPU only"]
    print(f"gpu-check: {', '.join(devices)}; TensorFlow {tf.__version__}; paper recipe, {args.epochs} epochs at "
          f"{args.image_size} px, batch {paper.batch_size}; weights {weights_note}")
    work = Path(tempfile.mkdtemp(prefix="histocompare-gpu-check-"))
    rows, shared = [], []
    try:
        exp = _experiment(work)
        if gpu_present():  # first, while this process holds no GPU memory
            gpu = (os.environ.get("CUDA_VISIBLE_DEVICES") or "0").split(",")[0]
            shared = _two_workers_on_one_gpu(exp, dataclasses.replace(paper, epochs=args.epochs, image_size=args.image_size,
                                                                      weights=weights, checkpoint_seconds=1e9), gpu)
        for model in MODELS:
            for label, mixed, jit in VARIANTS:
                cfg = dataclasses.replace(paper, epochs=args.epochs, image_size=args.image_size, weights=weights,
                                          mixed_precision=mixed, jit_compile=jit, checkpoint_seconds=1e9)
                info = train_run(exp, model, cfg, force=True)
                rows.append((model, label, info["train_images_per_s"], _predict_rate(exp, info, mixed, jit, paper.predict_batch_size),
                             info["timings_s"]["train_s"], info["mixed_precision"], info["xla"]))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n| model | setting | train img/s (epoch {args.epochs}) | predict img/s | train s (incl. tracing) | in effect |")
    print("|---|---|---|---|---|---|")
    for model, label, train_rate, predict_rate, train_s, mixed, xla in rows:
        effect = ", ".join(name for name, on in (("mixed_float16", mixed), ("XLA", xla)) if on) or "float32"
        print(f"| {model} | {label} | {train_rate:.1f} | {predict_rate:.1f} | {train_s:.0f} | {effect} |")
    if shared:  # `run` with two workers sharing one GPU (each with memory growth), float32, B0
        print(f"\n| efficientnet_b0, float32 | train img/s (sum of the runs, epoch {args.epochs}) | wall s |")
        print("|---|---|---|")
        for label, rate, wall in shared:
            print(f"| {label} | {rate:.1f} | {wall:.0f} |")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
