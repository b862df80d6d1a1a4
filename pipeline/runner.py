"""``python -m pipeline run --config preset.toml``: every stage of a preset, in order; what is up to date is skipped.

Each stage decides for itself whether it is up to date (see :mod:`pipeline.artifacts.stamps`: its settings and
the content of its inputs against the record of its last run, and its outputs still there); this module only
sequences them (the order and stage table follow :mod:`pipeline.stages.declarations`), hands every stage the
experiment's inputs loaded once (:class:`pipeline.artifacts.entries.Inputs`), passes ``--force`` on to a stage and to
every stage that depends on it, and records what ran, with timings, in ``DIR/pipeline_run.json``. TensorFlow is
imported only when a stage has work that needs it, so a rerun of an unchanged preset takes seconds.
"""

from __future__ import annotations

import copy
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pipeline.artifacts.catalog import Catalog
from pipeline.artifacts.entries import Inputs
from pipeline.artifacts.io import ensure_dir, write_json
from pipeline.artifacts.provenance import library_versions
from pipeline.artifacts.home import work_root
from pipeline.config import Config
from pipeline.progress import Board, LineReporter, report, set_sink
from pipeline.stages.declarations import DECLARATIONS, depends_on, stage_order
from pipeline.workers import JobFailed

# Derived from what each stage declares it reads and writes (pipeline/stages/declarations.py), not written by hand.
STAGES = stage_order(DECLARATIONS)
DEPENDS_ON = depends_on(DECLARATIONS)  # stage -> the stages whose outputs it reads


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


def fold_config(cfg: Config, fold: int) -> Config:
    """The config of fold ``fold`` of a ``split.fold = "all"`` preset: its own experiment ``<name>-fold<k>``."""
    out = copy.deepcopy(cfg)
    out.experiment.name = f"{cfg.experiment.name}-fold{fold}"
    if cfg.experiment.out_dir:
        out.experiment.out_dir = f"{cfg.experiment.out_dir.rstrip('/')}-fold{fold}"
    out.split.fold = fold
    return out


def protocol_dir(cfg: Config) -> Path:
    """Where the fold summary of a ``split.fold = "all"`` preset goes: ``<out_dir>-folds`` (not an experiment)."""
    return cfg.out_dir.parent / f"{cfg.out_dir.name}-folds"


def run_all_folds(cfg: Config, only: list[str] | None = None, force: list[str] | tuple[str, ...] = ()) -> dict:
    """Every fold of the preset (one experiment folder each) as one schedule, then the fold summary."""
    from pipeline.schedule import run_protocol

    return run_protocol([cfg], only, force)


def write_fold_summary(cfg: Config) -> Path | None:
    """``fold_summary.parquet`` of the protocol when every fold has metrics; None (and says why) otherwise."""
    from pipeline.stages.evaluate import summarize_folds

    dirs = [fold_config(cfg, k).out_dir for k in range(cfg.split.folds)]
    missing = [d.name for d in dirs if not Catalog(d).metrics.exists()]
    if missing:
        print(f"fold summary: not written, no metrics yet for {', '.join(missing)}")
        return None
    out = Catalog(protocol_dir(cfg)).fold_summary
    summary = summarize_folds(dirs, out)
    test = summary[summary["split"] == "test"]
    cols = [c for c in ("run_id", "folds", "accuracy_mean", "accuracy_sd", "patient_accuracy_mean", "roc_auc_mean") if c in test]
    print(test[cols].round(4).to_string(index=False))
    print(f"fold summary: wrote {out}")
    return out


@dataclass
class StageCall:
    """What the runner hands each stage of one experiment: the preset, the inputs it has loaded (each entry read
    once and shared, see :class:`pipeline.artifacts.entries.Inputs`) and its own choices (``--force``, executor)."""

    cfg: Config
    inputs: Inputs
    forced: set[str]
    board: Board
    executor: object = None
    trained: dict[int, dict] | None = None

    @property
    def out(self) -> Path:
        return self.cfg.out_dir

    @property
    def stains(self) -> list[str]:
        return sorted({r.stain for r in self.cfg.runs if r.stain != "none"})


def _data(call: StageCall) -> None:
    from pipeline.stages.demo_data import generate_demo_data

    cfg = call.cfg
    summary = generate_demo_data(cfg.data_root, cfg.experiment.seed, cfg.experiment.demo_patients,
                                 cfg.experiment.demo_images_per_patient, force="data" in call.forced)
    print(f"data: {summary['written']} of {summary['images']} images written" if summary["written"]
          else f"data: up to date ({summary['images']} images)")


def _index(call: StageCall) -> None:
    from pipeline.stages.index import run_index

    run_index(call.cfg.data_root, call.out, synthetic=call.cfg.experiment.synthetic, force="index" in call.forced)


def _split(call: StageCall) -> None:
    from pipeline.stages.split import run_split, split_from_csv

    s, force = call.cfg.split, "split" in call.forced
    if s.from_csv:  # relative paths are relative to the project, like data_root
        source = s.from_csv if Path(s.from_csv).is_absolute() else work_root() / s.from_csv
        split_from_csv(call.out, source, s.allow_leakage, force=force, inputs=call.inputs)
    else:
        run_split(call.out, s.mode, tuple(s.ratios), call.cfg.experiment.seed, s.group_by, s.folds, force=force,
                  inputs=call.inputs)


def _stain(call: StageCall) -> None:
    from pipeline.stages.stain import run_stain

    for method in call.stains:
        run_stain(call.out, method, target=call.cfg.stain.target, fold=call.cfg.split.fold, force="stain" in call.forced,
                  inputs=call.inputs)


def _train(call: StageCall) -> None:
    train_all(call.cfg, force="train" in call.forced, board=call.board, executor=call.executor, trained=call.trained,
              inputs=call.inputs)


def _ensemble(call: StageCall) -> None:
    from pipeline.stages.ensemble import run_ensembles

    run_ensembles(call.out, call.cfg.ensemble, seed=call.cfg.experiment.seed, force="ensemble" in call.forced,
                  inputs=call.inputs)


def _neighbours(call: StageCall) -> None:
    from pipeline.stages.neighbours import run_neighbours

    run_neighbours(call.out, call.cfg.neighbours, seed=call.cfg.experiment.seed, fold=call.cfg.split.fold,
                   force="neighbours" in call.forced, inputs=call.inputs)


def _evaluate(call: StageCall) -> None:
    from pipeline.stages.evaluate import run_evaluate

    run_evaluate(call.out, call.cfg.evaluate, seed=call.cfg.experiment.seed, force="evaluate" in call.forced,
                 inputs=call.inputs)


def _gradcam(call: StageCall) -> None:
    from pipeline.stages.gradcam import run_gradcam

    cfg, force = call.cfg, "gradcam" in call.forced
    if cfg.cluster.executor == "ray" or call.executor is not None:  # one task per (method, run), like training
        where = call.executor or executor_for(cfg)
        try:
            run_gradcam(call.out, cfg.gradcam, fold=cfg.split.fold, force=force, executor=where, inputs=call.inputs)
        finally:
            if call.executor is None:
                where.close()
    else:
        run_gradcam(call.out, cfg.gradcam, fold=cfg.split.fold, force=force, inputs=call.inputs)


def _train_header(cfg: Config) -> str:
    per = f"{cfg.train.workers} at a time)" if cfg.cluster.executor == "local" else "one Ray task each)"
    return f"train ({len(cfg.runs)} runs, {per}"


# stage -> (what it does, whether this preset runs it, its header line); the order and the --force closure come from
# the declarations (STAGES, DEPENDS_ON), and tests/test_declarations.py checks that every declared stage is here.
ACTIONS: dict[str, tuple[Callable[[StageCall], None], Callable[[Config], bool], Callable[[Config], str]]] = {
    "data": (_data, lambda c: c.experiment.synthetic, lambda c: "data (SYNTHETIC demo images)"),
    "index": (_index, lambda c: True, lambda c: "index"),
    "split": (_split, lambda c: True, lambda c: "split"),
    "stain": (_stain, lambda c: any(r.stain != "none" for r in c.runs), lambda c: "stain"),
    "train": (_train, lambda c: True, _train_header),
    "ensemble": (_ensemble, lambda c: c.ensemble.enabled, lambda c: "ensemble"),
    "neighbours": (_neighbours, lambda c: c.neighbours.enabled and bool(c.runs), lambda c: "neighbours"),
    "evaluate": (_evaluate, lambda c: True, lambda c: "evaluate"),
    "gradcam": (_gradcam, lambda c: c.gradcam.enabled and bool(c.gradcam.methods), lambda c: "gradcam"),  # methods = []: skipped
}
WRITES = {d.name: d.writes for d in DECLARATIONS}  # what the runner forgets of its loaded inputs after each stage


def run_pipeline(cfg: Config, only: list[str] | None = None, force: list[str] | tuple[str, ...] = (), executor=None,
                 trained: dict[int, dict] | None = None) -> dict:
    """Every stage of one experiment (``fold = "all"``: of every fold, as one schedule, see :mod:`pipeline.schedule`).

    ``executor``: where training and Grad-CAM runs go (default: the preset's ``[cluster]``); ``trained``: runs a
    schedule has already trained (see :func:`train_all`). The experiment's inputs are loaded once and shared by
    the stages (:class:`~pipeline.artifacts.entries.Inputs`); after each stage what it declares it writes is dropped.
    """
    from pipeline.core.errors import PipelineError

    if cfg.split.fold == "all":
        from pipeline.schedule import run_protocol

        return run_protocol([cfg], only, force)
    unknown = [s for s in list(only or []) + list(force) if s not in STAGES]
    if unknown:
        raise PipelineError(f"unknown stage(s) {unknown} (stages: {', '.join(STAGES)})")
    todo = _stages_to_run(cfg, only)
    if cfg.runs and "train" in todo:  # fail before hours of work if pretrained weights are unavailable
        from pipeline.core.model_specs import get_spec
        from pipeline.ml.models import check_weights_available

        check_weights_available([get_spec(r.model) for r in cfg.runs], cfg.train.weights)
    catalog = Catalog(cfg.out_dir)
    board = Board(catalog.pipeline_status, catalog.name, list(STAGES))
    call = StageCall(cfg, Inputs(cfg.out_dir), with_dependents(force), board, executor, trained)
    timings: dict[str, float] = {}
    real_stdout = sys.stdout
    previous_sink = set_sink(board.event)
    try:
        with board:
            sys.stdout = LineReporter()  # every printed line goes through the board: the log tail and the terminal
            board.runs(len(cfg.runs), 0)
            for name in STAGES:
                action, enabled, header = ACTIONS[name]
                if name not in todo or not enabled(cfg):
                    board.stage(name, "skipped")
                    continue
                print(f"=== {header(cfg)} ===", flush=True)
                board.stage(name, "running")
                t = time.perf_counter()
                try:
                    action(call)
                finally:
                    call.inputs.forget(WRITES[name])
                timings[name] = time.perf_counter() - t
                board.stage(name, "done", timings[name])
            record = {"config": cfg.to_dict(), "stages": todo, "forced": sorted(call.forced),
                      "timings_s": {k: round(v, 1) for k, v in timings.items()},
                      "versions": library_versions(), "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
            write_json(record, catalog.pipeline_run)
            print(f"pipeline finished: {record['timings_s']}")
            sys.stdout.flush()
    finally:
        sys.stdout = real_stdout
        set_sink(previous_sink)
    return record


def _stages_to_run(cfg: Config, only: list[str] | None) -> list[str]:
    """The stages ``only`` names (all by default), in order; the experiment folder is checked to be one here."""
    ensure_dir(cfg.out_dir, "experiment folder")  # a file in the way is a one-line error
    todo = [s for s in STAGES if not only or s in only]
    if cfg.experiment.synthetic and "index" in todo and "data" not in todo and not cfg.data_root.exists():
        todo.insert(0, "data")  # a synthetic preset's images are the index's input, made from the preset alone
    return todo


def _train_job(job: dict) -> dict:
    """One training run (module-level so a spawned worker can unpickle it); reports its start and end to the board."""
    import keras

    from pipeline.stages.train import train_run

    job = dict(job)
    run_id = job.pop("run_id")
    report({"kind": "run_start", "run": run_id})
    keras.backend.clear_session()
    info = train_run(**job)
    report({"kind": "run_done", "run": run_id})
    return info


def plan_training(cfg: Config, force: bool = False, label_prefix: str = "",
                  inputs: Inputs | None = None) -> tuple[list[tuple[int, int, dict]], dict[int, dict]]:
    """The runs of the preset still to train, as ``(index, input size, job)``, and the finished ones' ``run.json``.

    Finished runs are recognised here, without TensorFlow and before any worker starts. ``label_prefix``
    (``"experiment/"``) names the runs in progress events when several experiments train in one schedule. ``inputs``:
    the experiment's loaded inputs, shared with the runs (a run in a spawned worker loads its own).
    """
    from pipeline.stages.train import completed_info, plan_run

    inputs = inputs or Inputs(cfg.out_dir)
    jobs, infos = [], {}
    for i, run in enumerate(cfg.runs):  # a stained run's hash includes its stain target's key (plan_run reads target.json)
        job = {"exp_dir": str(cfg.out_dir), "model": run.model, "cfg": cfg.train, "stain": run.stain, "image_size": run.image_size,
               "epochs": run.epochs, "seed": cfg.experiment.seed, "fold": cfg.split.fold, "force": force, "inputs": inputs}
        plan = plan_run(job["exp_dir"], run.model, cfg.train, run.stain, run.image_size, run.epochs, job["seed"], job["fold"],
                        inputs)
        info = None if force else completed_info(plan)
        if info is not None:
            print(f"{label_prefix}{plan.run_id}: up to date (config {plan.config_hash})", flush=True)
            infos[i] = info
        else:
            jobs.append((i, plan.size, {**job, "run_id": plan.run_id}))
    return jobs, infos


def train_all(cfg: Config, force: bool = False, board: Board | None = None, executor=None,
              trained: dict[int, dict] | None = None, inputs: Inputs | None = None) -> list[dict]:
    """Train every run of the preset that is not up to date on ``executor`` (default: the preset's ``[cluster]``;
    the built-in pool runs ``cfg.train.workers`` at a time, see :mod:`pipeline.executors`).

    With one local worker (the default) runs train in this process, one after the other, in preset order; with
    more, the largest inputs go first for a better packing of the queues. Ctrl-C cancels the queued runs; the
    running ones resume. A run that fails for its own reasons does not stop the others: the failures are raised
    together at the end. ``trained``: runs a schedule has already trained (index -> run.json), not redone.
    """
    from pipeline.artifacts.predictions import merge_predictions

    inputs = inputs or Inputs(cfg.out_dir)
    jobs, infos = plan_training(cfg, force and trained is None, inputs=inputs)
    jobs = [j for j in jobs if j[0] not in (trained or {})]
    infos.update(trained or {})
    if board is not None:
        board.runs(len(cfg.runs), len(infos))
    if jobs:
        from pipeline.executors import Task

        failures = []
        own = executor is None
        executor = executor or executor_for(cfg)
        try:
            from pipeline.ml.runtime import quiet_tensorflow

            executor.check_storage([cfg.out_dir])
            quiet_tensorflow()  # the image caches below, or the runs themselves in this process
            if executor.slots > 1 and len(jobs) > 1:
                _prepare_image_caches(cfg, jobs, inputs)  # decode once here, so workers never race to build the same cache
                jobs.sort(key=lambda j: -j[1])  # largest inputs first (stable: preset order among equals)
            results = executor.map([Task(j[2]["run_id"], _train_job, j[2]) for j in jobs])
        finally:
            if own:
                executor.close()
        for (i, _, job), info in zip(jobs, results):
            if isinstance(info, JobFailed):
                failures.append((job["run_id"], info.error))
            else:
                infos[i] = info
        merge_predictions(cfg.out_dir)
        if failures:
            raise_failures(failures, len(jobs))
    merge_predictions(cfg.out_dir)  # no-op when every run's rows are already in predictions.parquet
    return [infos[i] for i in sorted(infos)]


def executor_for(cfg: Config):
    """The executor of the preset's ``[cluster]`` section (the built-in pool unless it says ``ray``)."""
    from pipeline.executors import make_executor

    c = cfg.cluster
    return make_executor(c.executor, cfg.train.workers, c.address, c.cpus_per_run, c.gpus_per_run, c.max_retries)


def raise_failures(failures: list[tuple[str, BaseException]], total: int) -> None:
    """One line per failed run (its own one-line error), then one PipelineError: the command exits non-zero."""
    from pipeline.core.errors import PipelineError

    lines = [f"{label}: {(str(error).strip() or type(error).__name__).splitlines()[0]}" for label, error in failures]
    if total == 1:  # the only run: its own one-line error, as before there were schedules
        raise PipelineError(lines[0])
    for line in lines:
        print(f"failed: {line}", flush=True)
    names = ", ".join(label for label, _ in failures)
    raise PipelineError(f"{len(failures)} of {total} runs failed ({names}); the others finished: see the lines above")


def _prepare_image_caches(cfg: Config, jobs: list[tuple], inputs: Inputs | None = None) -> None:
    from pipeline.ml.data import load_images

    inputs = inputs or Inputs(cfg.out_dir)
    frame = inputs.split_frame(cfg.split.fold)
    for size, stain in sorted({(size, job["stain"]) for _, size, job in jobs}):
        load_images(cfg.out_dir, inputs.data_root(), frame, size, cfg.train.resize, stain,
                    stain_target=inputs.stain_target(stain) if stain != "none" else None)
