"""What each stage of ``run`` reads, writes and depends on, declared once.

Why: the runner's stage order and its ``--force`` closure used to be written by hand beside the stages, and each
stage lists its up-to-date inputs again in its ``Stamp``: lists that must agree and that nothing checked. Here each
stage names the catalog entries it reads and writes (``pipeline.artifacts.catalog.Catalog`` attributes; ``run.X``
is ``RunFiles.X`` of each run; ``data_root`` is the image tree, ``dataset`` the record that names it) and the config
settings that change its result.
The runner derives its order (:func:`stage_order`) and each stage's upstream stages (:func:`depends_on`, hence
the ``--force`` closure) from these; ``tests/test_declarations.py`` checks that every stamp's inputs are declared
reads, that the cheap stages write what they declare, and that no two stages write one entry.

``predictions`` (the experiment's ``predictions.parquet``) is a merged view of the runs' own predictions and the
ensembles' (``merge_predictions``, called by whichever stage changed a part): a stage that reads it depends on the
stages that write its parts (:data:`VIEWS`). ``pipeline_run`` and ``stamps`` are the runner's own records.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StageDeclaration:
    name: str
    reads: tuple[str, ...]
    writes: tuple[str, ...]
    settings: tuple[str, ...] = ()  # config sections ("train") or keys ("split.fold") that change the result


DECLARATIONS: tuple[StageDeclaration, ...] = (
    StageDeclaration("data", reads=(), writes=("data_root",),
                     settings=("experiment.seed", "experiment.demo_patients", "experiment.demo_images_per_patient")),
    StageDeclaration("index", reads=("data_root",), writes=("manifest", "rejects", "dataset")),
    StageDeclaration("split", reads=("manifest",), writes=("split",),
                     settings=("split.mode", "split.ratios", "split.group_by", "split.folds", "split.from_csv",
                               "split.allow_leakage", "experiment.seed")),
    StageDeclaration("stain", reads=("data_root", "dataset", "manifest", "split"),
                     writes=("stain_target", "stain_images", "stain_index", "stain_run"),
                     settings=("stain.target", "runs.stain", "split.fold", "experiment.seed")),
    StageDeclaration("train", reads=("data_root", "dataset", "manifest", "split", "stain_target", "stain_images"),
                     writes=("run.model", "run.history", "run.info", "run.features", "run.predictions"),
                     settings=("train", "runs", "experiment.seed", "split.fold")),
    StageDeclaration("ensemble", reads=("run.predictions", "run.features", "run.info"),
                     writes=("ensemble_predictions", "ensembles", "subsets", "stacking_model"),
                     settings=("ensemble", "experiment.seed")),
    StageDeclaration("neighbours", reads=("manifest", "split", "run.features"),
                     writes=("neighbours", "neighbour_summary", "embedding"),
                     settings=("neighbours", "experiment.seed", "split.fold")),
    StageDeclaration("evaluate", reads=("predictions", "manifest", "neighbour_summary", "pipeline_run"),
                     writes=("metrics", "metrics_info"), settings=("evaluate", "experiment.seed")),
    StageDeclaration("gradcam", reads=("data_root", "dataset", "manifest", "split", "stain_target", "stain_images", "run.model",
                                        "run.info", "run.predictions", "gradcam_requests"),
                     writes=("gradcam_maps", "gradcam_run_scores", "gradcam_run_meta", "gradcam_scores", "gradcam_panel"),
                     settings=("gradcam", "split.fold")),
)
VIEWS = {"predictions": ("run.predictions", "ensemble_predictions")}  # merged entry -> the entries it is made of
RUNNER_ENTRIES = ("pipeline_run", "pipeline_status", "stamps")  # written by the runner (and stamps by every stage)


def producers(declarations: tuple[StageDeclaration, ...] = DECLARATIONS) -> dict[str, str]:
    """Entry -> the one stage that writes it (views resolve to their parts' writers elsewhere)."""
    out: dict[str, str] = {}
    for decl in declarations:
        for entry in decl.writes:
            if entry in out:
                raise ValueError(f"{entry!r} is written by both {out[entry]!r} and {decl.name!r}")
            out[entry] = decl.name
    return out


def depends_on(declarations: tuple[StageDeclaration, ...] = DECLARATIONS) -> dict[str, tuple[str, ...]]:
    """Stage -> the stages whose outputs it reads (directly), in declaration order."""
    made_by = producers(declarations)
    order = [d.name for d in declarations]
    out = {}
    for decl in declarations:
        entries = [part for entry in decl.reads for part in VIEWS.get(entry, (entry,))]
        upstream = {made_by[e] for e in entries if e in made_by and made_by[e] != decl.name}
        out[decl.name] = tuple(s for s in order if s in upstream)
    return out


def stage_order(declarations: tuple[StageDeclaration, ...] = DECLARATIONS) -> tuple[str, ...]:
    """The stages in an order where each comes after every stage it reads from (declaration order breaks ties)."""
    deps = depends_on(declarations)
    done: list[str] = []
    while len(done) < len(deps):
        ready = [s for s in deps if s not in done and all(u in done for u in deps[s])]
        if not ready:
            raise ValueError(f"the stages' reads and writes form a cycle among {sorted(set(deps) - set(done))}")
        done.append(ready[0])
    return tuple(done)


# Read entries that are not content inputs of a stamp: the image tree is identified by its listing (``extra``),
# ``dataset.json`` records timings that change on every re-index (the manifest carries its content), and
# ``pipeline_run.json`` is the runner's record of every run.
NOT_STAMPED = ("data_root", "dataset", "pipeline_run")


def declared_inputs(stage: str, catalog, declarations: tuple[StageDeclaration, ...] = DECLARATIONS) -> list:
    """The experiment-level files ``stage`` declares it reads, as paths of ``catalog``: its stamp's inputs.

    Per-run entries (``run.X``) and keyed ones (a stain method's target) are added by the stage, which knows the runs
    and methods; :data:`NOT_STAMPED` entries are left out."""
    decl = next(d for d in declarations if d.name == stage)
    return [getattr(catalog, e) for e in decl.reads if not e.startswith("run.") and e not in NOT_STAMPED
            and not callable(getattr(catalog, e))]
