"""The protocol as one command: every run of several experiments on the executor's slots at once.

Why one schedule: a ``fold = "all"`` preset is five experiments (and the image-level one another); training them
fold after fold leaves all but one GPU idle at the end of each fold and serialises the folds. Here the cheap stages
of every experiment run first (in the driver), then *every* run of *every* experiment that is not up to date goes to
the executor as one list (largest inputs first), then each experiment's ensembles, neighbours, metrics and
Grad-CAM, and finally the fold summary of each ``fold = "all"`` preset. Each experiment stays a folder of its own,
up to date on its own: a later ``run`` of one preset skips what this one finished. ``--only``/``--force`` keep
their meaning (``--force train`` retrains every run of every experiment once).

A run that fails for its own reasons is reported at the end and its experiment stops after training; the others
go on, and the command exits non-zero.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

from pipeline.artifacts.catalog import Catalog
from pipeline.config import Config
from pipeline.core.errors import PipelineError
from pipeline.progress import Board, LineReporter, set_sink
from pipeline.workers import JobFailed

PRE = ("data", "index", "split", "stain")
POST = ("ensemble", "neighbours", "evaluate", "gradcam")


def expand(cfgs: list[Config]) -> list[Config]:
    """One config per experiment: a ``fold = "all"`` preset becomes one per fold. Two presets that write the same
    folder are an error (they would overwrite each other's runs)."""
    from pipeline.runner import fold_config

    out = []
    for cfg in cfgs:
        out += [fold_config(cfg, k) for k in range(cfg.split.folds)] if cfg.split.fold == "all" else [cfg]
    seen: dict[Path, str] = {}
    for cfg in out:
        if cfg.out_dir in seen:
            raise PipelineError(f"two experiments write {cfg.out_dir} ({seen[cfg.out_dir]} and {cfg.experiment.name}): "
                                "give each preset its own experiment.name / out_dir")
        seen[cfg.out_dir] = cfg.experiment.name
    return out


class ScheduleBoard:
    """The display of a schedule's training: each experiment's ``pipeline_status.json`` shows its own runs (the
    Pipeline page of each fold), and the terminal shows every line once."""

    def __init__(self, experiments: list[Config]):
        self.boards = {cfg.experiment.name: Board(Catalog(cfg.out_dir).pipeline_status, cfg.experiment.name, ["train"],
                                                  out=io.StringIO()) for cfg in experiments}
        self.out = sys.stdout

    def __enter__(self) -> ScheduleBoard:
        for board in self.boards.values():
            board.__enter__()
            board.stage("train", "running")
        self.previous = set_sink(self.event)
        self.real_stdout, sys.stdout = sys.stdout, LineReporter()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        sys.stdout = self.real_stdout
        set_sink(self.previous)
        for board in self.boards.values():
            if exc_type is None:
                board.stage("train", "done")
            board.__exit__(exc_type, exc, tb)

    def totals(self, name: str, total: int, done: int) -> None:
        self.boards[name].runs(total, done)

    def event(self, event: dict) -> None:
        if event.get("kind") == "log":
            print(event["line"], file=self.out, flush=True)
            for board in self.boards.values():
                board.log(event["line"])  # silent (its own StringIO); kept in each status file's log tail
            return
        name, _, run = str(event.get("run", "")).partition("/")
        if name in self.boards and run:
            self.boards[name].event({**event, "run": run})


def train_schedule(experiments: list[Config], force: bool, executor=None) -> tuple[dict[str, dict[int, dict]], list]:
    """Train every run of every experiment not up to date, on one executor; returns the new ``run.json`` per
    experiment (by run index) and the failures ``(label, error)``."""
    from pipeline.artifacts.predictions import merge_predictions
    from pipeline.executors import Task
    from pipeline.runner import _prepare_image_caches, _train_job, executor_for, plan_training

    trained: dict[str, dict[int, dict]] = {cfg.experiment.name: {} for cfg in experiments}
    entries = []  # (cfg, run index, input size, job, label)
    board = ScheduleBoard(experiments)
    for cfg in experiments:
        prefix = f"{cfg.experiment.name}/"
        jobs, infos = plan_training(cfg, force, prefix)
        board.totals(cfg.experiment.name, len(cfg.runs), len(infos))
        entries += [(cfg, i, size, job, prefix + job["run_id"]) for i, size, job in jobs]
    if not entries:
        return trained, []
    own = executor is None
    executor = executor or executor_for(experiments[0])
    failures = []
    try:
        print(f"=== train: {len(entries)} runs of {len(experiments)} experiments as one schedule on "
              f"{getattr(executor, 'describe', lambda: f'{executor.slots} local workers')()} ===", flush=True)
        with board:
            busy = [cfg for cfg in experiments if any(e[0] is cfg for e in entries)]
            executor.check_storage([cfg.out_dir for cfg in busy])
            from pipeline.ml.runtime import quiet_tensorflow

            quiet_tensorflow()  # the image caches below, or the runs themselves in this process
            if executor.slots > 1 and len(entries) > 1:
                for cfg in busy:
                    _prepare_image_caches(cfg, [(i, size, job) for c, i, size, job, _ in entries if c is cfg])
                entries.sort(key=lambda e: -e[2])  # largest inputs first (stable: preset and fold order among equals)
            results = executor.map([Task(label, _train_job, job) for _, _, _, job, label in entries])
    finally:
        if own:
            executor.close()
    for (cfg, i, _, _, label), info in zip(entries, results):
        if isinstance(info, JobFailed):
            failures.append((label, info.error))
        else:
            trained[cfg.experiment.name][i] = info
    for cfg in experiments:
        merge_predictions(cfg.out_dir)
    return trained, failures


def run_protocol(cfgs: list[Config], only: list[str] | None = None, force: list[str] | tuple[str, ...] = (),
                 executor=None) -> dict:
    """Every experiment of the presets as one schedule (see the module docstring); returns what each recorded."""
    from pipeline.runner import STAGES, protocol_dir, raise_failures, run_pipeline, with_dependents, write_fold_summary

    unknown = [s for s in list(only or []) + list(force) if s not in STAGES]
    if unknown:
        raise PipelineError(f"unknown stage(s) {unknown} (stages: {', '.join(STAGES)})")
    experiments = expand(cfgs)

    def todo(stages: tuple[str, ...]) -> list[str]:
        return [s for s in stages if not only or s in only]

    for cfg in experiments:  # the cheap stages, in the driver
        if todo(PRE):
            print(f"\n##### {cfg.experiment.name}: {', '.join(todo(PRE))} #####", flush=True)
            run_pipeline(cfg, only=todo(PRE), force=force)
    trained: dict[str, dict[int, dict]] = {cfg.experiment.name: {} for cfg in experiments}
    failures: list = []
    ray_executor = None
    try:
        if "train" in todo(STAGES):
            if executor is None and experiments[0].cluster.executor == "ray":
                from pipeline.runner import executor_for

                ray_executor = executor = executor_for(experiments[0])  # one Ray connection for training and Grad-CAM
            trained, failures = train_schedule(experiments, "train" in with_dependents(force), executor)
        failed = {label.partition("/")[0] for label, _ in failures}
        records = {}
        for cfg in experiments:
            if cfg.experiment.name in failed:
                print(f"\n##### {cfg.experiment.name}: stopped after training (a run failed) #####", flush=True)
                continue
            stages = todo(("train", *POST))
            if stages:
                print(f"\n##### {cfg.experiment.name}: {', '.join(stages)} #####", flush=True)
                records[cfg.experiment.name] = run_pipeline(cfg, only=stages, force=force, executor=executor,
                                                            trained=trained[cfg.experiment.name])
    finally:
        if ray_executor is not None:
            ray_executor.close()
    summaries = {}
    for cfg in cfgs:
        if cfg.split.fold == "all":
            summary = write_fold_summary(cfg)
            summaries[str(protocol_dir(cfg))] = str(summary) if summary else None
    if failures:
        raise_failures(failures, sum(len(c.runs) for c in experiments))
    return {"experiments": records, "summaries": summaries}
