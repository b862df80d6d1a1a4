"""``python -m pipeline run --config preset.toml``: every stage of a preset, in order; what is up to date is skipped.

Each stage decides for itself whether it is up to date (see :mod:`pipeline.artifacts.stamps`: its settings and
the content of its inputs against the record of its last run, and its outputs still there); this module only
sequences them, passes ``--force`` on to a stage and to every stage that depends on it, and records what ran,
with timings, in ``DIR/pipeline_run.json``. TensorFlow is imported only when a stage has work that needs it,
so a rerun of an unchanged preset takes seconds.
"""

from __future__ import annotations

import time

from pipeline.artifacts.catalog import Catalog
from pipeline.artifacts.io import ensure_dir, write_json
from pipeline.artifacts.provenance import library_versions
from pipeline.config import Config

STAGES = ("data", "index", "split", "stain", "train", "ensemble", "neighbours", "evaluate", "gradcam")
DEPENDS_ON = {  # stage -> the stages whose outputs it reads
    "data": (), "index": ("data",), "split": ("index",), "stain": ("split",), "train": ("split", "stain"),
    "ensemble": ("train",), "neighbours": ("train",), "evaluate": ("train", "ensemble", "neighbours"), "gradcam": ("train",),
}


def with_dependents(stages: list[str] | tuple[str, ...]) -> set[str]:
    """``stages`` and every stage that (transitively) reads their outputs: what ``--force`` redoes."""
    todo, out = list(stages), set()
    while todo:
        stage = todo.pop()
        if stage in out:
            continue
        out.add(stage)
        todo.extend(s for s, deps in DEPENDS_ON.items() if stage in deps)
    return out


def run_pipeline(cfg: Config, only: list[str] | None = None, force: list[str] | tuple[str, ...] = ()) -> dict:
    from pipeline.core.errors import PipelineError
    from pipeline.core.model_specs import get_spec
    from pipeline.ml.models import check_weights_available

    unknown = [s for s in list(only or []) + list(force) if s not in STAGES]
    if unknown:
        raise PipelineError(f"unknown stage(s) {unknown} (stages: {', '.join(STAGES)})")
    out = cfg.out_dir
    ensure_dir(out, "experiment folder")  # a file in the way is a one-line error
    todo = [s for s in STAGES if not only or s in only]
    forced = with_dependents(force)
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

        summary = generate_demo_data(cfg.data_root, seed, cfg.experiment.demo_patients, cfg.experiment.demo_images_per_patient,
                                     force="data" in forced)
        print(f"data: {summary['written']} of {summary['images']} images written" if summary["written"]
              else f"data: up to date ({summary['images']} images)")
        timings["data"] = time.perf_counter() - t
    if "index" in todo:
        t = stage("index")
        from pipeline.stages.index import run_index

        run_index(cfg.data_root, out, synthetic=cfg.experiment.synthetic, force="index" in forced)
        timings["index"] = time.perf_counter() - t
    if "split" in todo:
        t = stage("split")
        from pipeline.stages.split import run_split

        run_split(out, cfg.split.mode, tuple(cfg.split.ratios), seed, cfg.split.group_by, cfg.split.folds, force="split" in forced)
        timings["split"] = time.perf_counter() - t
    stains = sorted({r.stain for r in cfg.runs if r.stain != "none"})
    if "stain" in todo and stains:
        t = stage("stain")
        from pipeline.stages.stain import run_stain

        for method in stains:
            run_stain(out, method, target=cfg.stain.target, fold=cfg.split.fold, force="stain" in forced)
        timings["stain"] = time.perf_counter() - t
    if "train" in todo:
        t = stage(f"train ({len(cfg.runs)} runs, {cfg.train.workers} at a time)")
        train_all(cfg, force="train" in forced)
        timings["train"] = time.perf_counter() - t
    if "ensemble" in todo and cfg.ensemble.enabled:
        t = stage("ensemble")
        from pipeline.stages.ensemble import run_ensembles

        run_ensembles(out, cfg.ensemble, seed=seed, force="ensemble" in forced)
        timings["ensemble"] = time.perf_counter() - t
    if "neighbours" in todo and cfg.neighbours.enabled and cfg.runs:
        t = stage("neighbours")
        from pipeline.stages.neighbours import run_neighbours

        run_neighbours(out, cfg.neighbours, seed=seed, fold=cfg.split.fold, force="neighbours" in forced)
        timings["neighbours"] = time.perf_counter() - t
    if "evaluate" in todo:
        t = stage("evaluate")
        from pipeline.stages.evaluate import run_evaluate

        run_evaluate(out, cfg.evaluate, seed=seed, force="evaluate" in forced)
        timings["evaluate"] = time.perf_counter() - t
    if "gradcam" in todo and cfg.gradcam.enabled:
        t = stage("gradcam")
        from pipeline.stages.gradcam import run_gradcam

        run_gradcam(out, cfg.gradcam, fold=cfg.split.fold, force="gradcam" in forced)
        timings["gradcam"] = time.perf_counter() - t
    record = {"config": cfg.to_dict(), "stages": todo, "forced": sorted(forced), "timings_s": {k: round(v, 1) for k, v in timings.items()},
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


def train_all(cfg: Config, force: bool = False) -> list[dict]:
    """Train every run of the preset that is not up to date, ``cfg.train.workers`` at a time (see :mod:`pipeline.workers`).

    Finished runs are recognised here, without TensorFlow and before any worker starts. With one worker (the
    default) runs train in this process, one after the other, in preset order; with more, the largest inputs
    go first for a better packing of the queues. Ctrl-C cancels the queued runs; the running ones resume.
    """
    from pipeline.artifacts.predictions import merge_predictions
    from pipeline.stages.train import completed_info, plan_run
    from pipeline.workers import map_in_workers

    jobs, infos = [], {}
    for i, run in enumerate(cfg.runs):  # a stained run's hash includes its stain target's key (plan_run reads target.json)
        job = {"exp_dir": str(cfg.out_dir), "model": run.model, "cfg": cfg.train, "stain": run.stain, "image_size": run.image_size,
               "epochs": run.epochs, "seed": cfg.experiment.seed, "fold": cfg.split.fold, "force": force}
        plan = plan_run(job["exp_dir"], run.model, cfg.train, run.stain, run.image_size, run.epochs, job["seed"], job["fold"])
        info = None if force else completed_info(plan)
        if info is not None:
            print(f"{plan.run_id}: up to date (config {plan.config_hash})", flush=True)
            infos[i] = info
        else:
            jobs.append((i, plan.size, job))
    if jobs:
        from pipeline.ml.runtime import quiet_tensorflow

        quiet_tensorflow()
        if cfg.train.workers > 1 and len(jobs) > 1:
            _prepare_image_caches(cfg, jobs)  # decode once here, so workers never race to build the same cache
            jobs.sort(key=lambda j: -j[1])  # largest inputs first (stable: preset order among equals)
        results = map_in_workers(_train_job, [j[2] for j in jobs], cfg.train.workers)
        infos.update({i: info for (i, _, _), info in zip(jobs, results)})
    merge_predictions(cfg.out_dir)  # no-op when every run's rows are already in predictions.parquet
    return [infos[i] for i in sorted(infos)]


def _prepare_image_caches(cfg: Config, jobs: list[tuple]) -> None:
    from pipeline.artifacts.experiment import data_root_of, load_split_frame
    from pipeline.ml.data import load_images

    frame = load_split_frame(cfg.out_dir, cfg.split.fold)
    for size, stain in sorted({(size, job["stain"]) for _, size, job in jobs}):
        load_images(cfg.out_dir, data_root_of(cfg.out_dir), frame, size, cfg.train.resize, stain)
