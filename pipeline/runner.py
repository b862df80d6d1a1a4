"""``python -m pipeline run --config preset.toml``: every stage of a preset, in order, idempotently.

Each stage decides for itself whether it is up to date (config hash + input fingerprints), so this
module only sequences them and records what ran, with timings, in ``DIR/pipeline_run.json``.
"""

from __future__ import annotations

import time

from pipeline.artifacts.catalog import Catalog
from pipeline.artifacts.io import ensure_dir, write_json
from pipeline.artifacts.provenance import library_versions
from pipeline.config import Config

STAGES = ("data", "index", "split", "stain", "train", "ensemble", "evaluate", "gradcam")


def run_pipeline(cfg: Config, only: list[str] | None = None) -> dict:
    from pipeline.core.model_specs import get_spec
    from pipeline.ml.models import check_weights_available

    out = cfg.out_dir
    ensure_dir(out, "experiment folder")  # a file in the way is a one-line error
    todo = [s for s in STAGES if not only or s in only]
    timings: dict[str, float] = {}
    seed = cfg.experiment.seed

    def stage(name: str):
        print(f"\n=== {name} ===", flush=True)
        return time.perf_counter()

    if cfg.runs and "train" in todo:  # fail before hours of work if pretrained weights are unavailable
        check_weights_available([get_spec(r.model) for r in cfg.runs], cfg.train.weights)

    if "data" in todo and cfg.experiment.synthetic:
        t = stage("data (SYNTHETIC demo images)")
        from pipeline.stages.demo_data import generate_demo_data

        print(generate_demo_data(cfg.data_root, seed, cfg.experiment.demo_patients, cfg.experiment.demo_images_per_patient,
                                 workers=max(2, cfg.train.workers)))
        timings["data"] = time.perf_counter() - t
    if "index" in todo:
        t = stage("index")
        from pipeline.stages.index import run_index, summarize

        print(summarize(*run_index(cfg.data_root, out, synthetic=cfg.experiment.synthetic)))
        timings["index"] = time.perf_counter() - t
    if "split" in todo:
        t = stage("split")
        from pipeline.stages.split import run_split

        run_split(out, cfg.split.mode, tuple(cfg.split.ratios), seed, cfg.split.group_by, cfg.split.folds)
        timings["split"] = time.perf_counter() - t
    stains = sorted({r.stain for r in cfg.runs if r.stain != "none"})
    if "stain" in todo and stains:
        t = stage("stain")
        from pipeline.stages.stain import run_stain

        for method in stains:
            run_stain(out, method, target=cfg.stain.target, fold=cfg.split.fold)
        timings["stain"] = time.perf_counter() - t
    if "train" in todo:
        t = stage(f"train ({len(cfg.runs)} runs, {cfg.train.workers} at a time)")
        train_all(cfg)
        timings["train"] = time.perf_counter() - t
    if "ensemble" in todo and cfg.ensemble.enabled:
        t = stage("ensemble")
        from pipeline.stages.ensemble import run_ensembles

        run_ensembles(out, cfg.ensemble, seed=seed)
        timings["ensemble"] = time.perf_counter() - t
    if "evaluate" in todo:
        t = stage("evaluate")
        from pipeline.stages.evaluate import run_evaluate

        run_evaluate(out, cfg.evaluate, seed=seed, threshold=cfg.ensemble.threshold)
        timings["evaluate"] = time.perf_counter() - t
    if "gradcam" in todo and cfg.gradcam.enabled:
        t = stage("gradcam")
        from pipeline.stages.gradcam import run_gradcam

        run_gradcam(out, cfg.gradcam, fold=cfg.split.fold, workers=cfg.train.workers)
        timings["gradcam"] = time.perf_counter() - t
    record = {"config": cfg.to_dict(), "stages": todo, "timings_s": {k: round(v, 1) for k, v in timings.items()},
              "versions": library_versions(), "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
    write_json(record, Catalog(out).pipeline_run)
    print(f"\npipeline finished: {record['timings_s']}")
    return record


def _train_job(job: dict) -> dict:
    """One training run (module-level so a spawned worker can unpickle it)."""
    import keras

    from pipeline.stages.train import train_run

    keras.backend.clear_session()
    return train_run(**job)


def train_all(cfg: Config) -> list[dict]:
    """Train every run of the preset, ``cfg.train.workers`` at a time (see :mod:`pipeline.workers`).

    With one worker (the default) runs train in this process, one after the other, in preset order.
    """
    from pipeline.core.model_specs import get_spec
    from pipeline.workers import map_in_workers

    jobs = []
    for run in cfg.runs:  # a stained run's hash includes its stain target's key (train_run reads target.json)
        jobs.append({"exp_dir": str(cfg.out_dir), "model": run.model, "cfg": cfg.train, "stain": run.stain,
                     "image_size": run.image_size, "epochs": run.epochs, "seed": cfg.experiment.seed, "fold": cfg.split.fold})
    if cfg.train.workers > 1 and len(jobs) > 1:
        _prepare_image_caches(cfg)  # decode once here, so workers never race to build the same cache
        jobs.sort(key=lambda j: -get_spec(j["model"]).size)  # biggest backbones first: better packing of the queues
    return map_in_workers(_train_job, jobs, cfg.train.workers)


def _prepare_image_caches(cfg: Config) -> None:
    from pipeline.artifacts.experiment import data_root_of, load_split_frame
    from pipeline.ml.data import load_images
    from pipeline.stages.train import input_size

    frame = load_split_frame(cfg.out_dir, cfg.split.fold)
    wanted = {(input_size(r.model, r.image_size, cfg.train), r.stain) for r in cfg.runs}
    for size, stain in sorted(wanted):
        load_images(cfg.out_dir, data_root_of(cfg.out_dir), frame, size, cfg.train.resize, stain)
