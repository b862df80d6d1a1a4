"""The walk of one ``run``: how often the stages go back to the experiment folder for the same frames.

Why: issue 24 asks for the walk of one ``python -m pipeline run`` before and after the stages stopped re-reading
the manifest, the split and the stain target by folder. This tool runs one preset (by default a tiny SYNTHETIC one:
12 patients x 4 images, 32 px, one epoch, two backbones and a Macenko-stained twin, ensembles, neighbours,
evaluate, Grad-CAM; training in this process) into a fresh temporary folder and counts, per runner stage:

* ``experiment_entries``: calls of the functions defined in ``pipeline/artifacts/experiment.py`` (every function of
  the module is wrapped, in the module and wherever it was imported by name, before any stage is imported);
* ``opens``: every ``open`` (Python's ``open`` audit event, so pandas/pyarrow reads through our single-handle
  reader, ``Path.read_text`` and the stamps' hashing all count) of ``manifest.parquet``, ``split.parquet`` and a
  stain ``target.json``, split into ``parse`` (the file is read as a table/record) and ``hash`` (a stamp
  fingerprints its bytes: ``pipeline.core.hashing.file_sha256`` is on the stack);
* ``stages_calling``: which runner stages enter ``experiment.py`` or open those files.

Usage: ``python -m tools.walk --out walk.json`` (the built-in tiny preset), or ``--config PRESET.toml`` (its
``out_dir`` and ``data_root`` are moved into the temporary folder, so the walk is always of a first run), and
``--rerun`` to walk a second, up-to-date run as well. Training runs in this process (``train.workers = 1``), so
every call is seen.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

TINY = {
    "experiment": {"name": "walk", "synthetic": True, "demo_patients": 12, "demo_images_per_patient": 4, "seed": 3},
    "split": {"mode": "patient"},
    "stain": {"target": "auto"},
    "train": {"epochs": 1, "batch_size": 8, "image_size": 32, "weights": "none", "freeze_batchnorm": False,
              "lr_backbone": 1e-3, "workers": 1, "run_eagerly": True},
    "runs": [{"model": "efficientnet_b0"}, {"model": "efficientnet_v2_b0"}, {"model": "efficientnet_b0", "stain": "macenko"}],
    "ensemble": {"stacking_epochs": 2},
    "evaluate": {"bootstrap": 50},
    "gradcam": {"methods": ["gradcam"], "max_images": 4, "batch_size": 4, "deletion_steps": 2},
}
WATCHED = {"manifest.parquet": "manifest", "split.parquet": "split", "target.json": "stain_target"}


class Walk:
    """Counters filled while a run goes: the current runner stage is whatever ``Board.stage`` last set running."""

    def __init__(self) -> None:
        self.stage = "(outside a stage)"
        self.entries: Counter = Counter()  # (stage, function) -> calls
        self.opens: Counter = Counter()  # (stage, artifact, kind) -> opens

    def wrap_experiment_module(self) -> list[str]:
        """Wrap every function of ``pipeline.artifacts.experiment`` in a counter, in that module and in every loaded
        module that imported it by name. Call before the stages are imported (they import it at their top)."""
        import pipeline.artifacts.experiment as experiment

        originals = {name: fn for name, fn in vars(experiment).items()
                     if callable(fn) and getattr(fn, "__module__", None) == experiment.__name__ and hasattr(fn, "__code__")
                     and not hasattr(fn, "walk_counted")}  # wrapped once: a second call only reaches new importers
        self.wrapped = getattr(self, "wrapped", {})
        for name, fn in originals.items():
            self.wrapped[fn] = self._counted(name, fn)
            setattr(experiment, name, self.wrapped[fn])
        for module in list(sys.modules.values()):
            for attr, value in list(getattr(module, "__dict__", {}).items()):
                if module is not experiment and getattr(value, "__module__", None) == experiment.__name__ \
                        and not hasattr(value, "walk_counted") and value in self.wrapped:
                    setattr(module, attr, self.wrapped[value])
        return sorted(originals)

    def _counted(self, name, fn):
        @functools.wraps(fn)
        def counted(*args, **kwargs):
            self.entries[(self.stage, name)] += 1
            return fn(*args, **kwargs)

        counted.walk_counted = True
        return counted

    def audit(self, event: str, args: tuple) -> None:
        if event != "open" or not args or isinstance(args[0], int):
            return
        name = Path(str(args[0] if not isinstance(args[0], bytes) else args[0].decode(errors="replace"))).name
        if name not in WATCHED:
            return
        mode = args[1] if len(args) > 1 else None
        if isinstance(mode, str) and any(c in mode for c in "wax+"):
            return  # writes go through a temporary name anyway; never counted as a read
        frame, kind = sys._getframe(1), "parse"
        while frame is not None:
            if frame.f_code.co_name == "file_sha256":
                kind = "hash"
                break
            frame = frame.f_back
        self.opens[(self.stage, WATCHED[name], kind)] += 1

    def report(self, seconds: float, stages: list[str]) -> dict:
        entries_by_fn: Counter = Counter()
        entries_by_stage: Counter = Counter()
        for (stage, fn), n in self.entries.items():
            entries_by_fn[fn] += n
            entries_by_stage[stage] += n
        opens: dict = defaultdict(lambda: {"parse": 0, "hash": 0})
        opens_by_stage: dict = defaultdict(Counter)
        for (stage, artifact, kind), n in self.opens.items():
            opens[artifact][kind] += n
            opens_by_stage[stage][f"{artifact}:{kind}"] += n
        calling = sorted({s for s, _ in self.entries} | {s for (s, _, kind) in self.opens if kind == "parse"})
        return {
            "seconds": round(seconds, 1), "stages_run": stages,
            "experiment_entries": sum(self.entries.values()),
            "experiment_entries_by_function": dict(sorted(entries_by_fn.items())),
            "experiment_entries_by_stage": dict(sorted(entries_by_stage.items())),
            "opens": {k: dict(v) for k, v in sorted(opens.items())},
            "opens_by_stage": {k: dict(sorted(v.items())) for k, v in sorted(opens_by_stage.items())},
            "stages_calling": calling, "stages_calling_count": len(calling),
        }


def _config(preset: Path | None, tmp: Path):
    from pipeline.config import config_from_dict, load_config

    if preset is None:
        data = json.loads(json.dumps(TINY))
        data["experiment"].update(data_root=str(tmp / "data"), out_dir=str(tmp / "exp"))
        return config_from_dict(data)
    cfg = load_config(preset)
    cfg.experiment.data_root, cfg.experiment.out_dir = str(tmp / "data"), str(tmp / "exp")
    cfg.train.workers = 1
    return cfg


def walk(preset: Path | None = None, only: list[str] | None = None, rerun: bool = False) -> dict:
    """Run the preset once (twice with ``rerun``) in a fresh temporary folder; return the counts of each run."""
    out: dict = {}
    counter = Walk()
    counter.wrap_experiment_module()
    import pipeline.progress as progress

    stage_method = progress.Board.stage

    def tracked_stage(board, name, state, *args, **kwargs):
        if state == "running":
            counter.stage = name
        elif counter.stage == name:
            counter.stage = "(outside a stage)"
        return stage_method(board, name, state, *args, **kwargs)

    progress.Board.stage = tracked_stage
    counter.wrap_experiment_module()  # again: modules imported since (progress, config) that took a function by name
    sys.addaudithook(counter.audit)  # audit hooks cannot be removed: the counter simply stops being read after
    from pipeline.runner import run_pipeline

    counter.wrap_experiment_module()  # and the runner's and the stages' own top-level imports
    with tempfile.TemporaryDirectory(prefix="walk-") as tmp:
        cfg = _config(preset, Path(tmp))
        for label in ("first_run",) + (("rerun",) if rerun else ()):
            counter.entries.clear()
            counter.opens.clear()
            start = time.perf_counter()
            record = run_pipeline(cfg, only=only)
            out[label] = counter.report(time.perf_counter() - start, record["stages"])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.walk", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, help="a preset (default: the built-in tiny one)")
    parser.add_argument("--only", nargs="+", help="only these stages (as `run --only`)")
    parser.add_argument("--rerun", action="store_true", help="walk a second, up-to-date run too")
    parser.add_argument("--out", type=Path, help="write the counts as JSON here")
    args = parser.parse_args(argv)
    result = walk(args.config, args.only, args.rerun)
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
