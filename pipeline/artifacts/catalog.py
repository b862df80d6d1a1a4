"""Every artifact of an experiment folder, declared once (a data catalog in the spirit of Kedro's).

Why one place: the stages, the runner and the dashboard all need the same paths and run ids. When each
module joins path pieces by hand, a renamed file or a hostile value (a stain key of ``../../..``) slips
through in one of them. Here every path is a property or method of :class:`Catalog`, every run id is
built and parsed by :func:`single_run_id`, :func:`ensemble_run_id` and :func:`parse_run_id`, and every
value that becomes a path component is validated first. ``artifacts/README.md`` documents the schemas.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.errors import PipelineError

STAIN_METHODS = ("vahadane", "macenko", "reinhard")
GRADCAM_METHODS = {"gradcam": "gradcam", "gradcam++": "gradcampp", "scorecam": "scorecam"}  # method -> folder
ENSEMBLE_PREFIX = "ensemble:"
STAIN_KEY_RE = re.compile(r"^[0-9a-f]{10}$")  # the stain stage's cache keys: 10 hex digits, never a path
SINGLE_RUN_RE = re.compile(r"^(?P<model>v[12]_(?:b[0-9]|s))(?:-(?P<stain>[a-z]+))?$")
ENSEMBLE_RUN_RE = re.compile(r"^ensemble:(?P<method>[a-z][a-z-]*):(?P<members>[a-z0-9_+-]+)$")
IMAGE_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")  # a PNG's file stem; becomes part of file names
RESUME_FILE_RE = re.compile(r"^(resume|best)-e[0-9]{4}\.keras$")
STAMP_NAME_RE = re.compile(r"^[a-z][a-z0-9_+-]*$")


@dataclass(frozen=True)
class RunRef:
    """A parsed run id: a single model (``v1_b0``, ``v1_b0-vahadane``) or an ensemble
    (``ensemble:soft:v1_b0+v1_b1``)."""

    run_id: str
    kind: str  # single | ensemble
    model: str = ""  # singles: short model name (v1_b0)
    stain: str = "none"  # singles: stain method or "none"
    method: str = ""  # ensembles: soft, hard, weighted, stacking, soft-best, hard-best
    members: tuple[str, ...] = ()  # ensembles: member run ids

    @property
    def family(self) -> str:
        """``v1``/``v2`` for singles; ``ensemble`` otherwise."""
        return self.model[:2] if self.kind == "single" else "ensemble"

    @property
    def base_run(self) -> str:
        """The unstained twin of a single run (itself when unstained)."""
        return self.model if self.kind == "single" else self.run_id


def single_run_id(short_model: str, stain: str = "none") -> str:
    run_id = short_model if stain == "none" else f"{short_model}-{stain}"
    parse_run_id(run_id)
    return run_id


def ensemble_run_id(method: str, members: list[str] | tuple[str, ...]) -> str:
    return parse_run_id(f"{ENSEMBLE_PREFIX}{method}:{'+'.join(members)}").run_id


def parse_run_id(run_id: str) -> RunRef:
    """Parse a run id; anything that is not one the pipeline writes is a clear error."""
    text = str(run_id)
    m = SINGLE_RUN_RE.match(text)
    if m and (m["stain"] is None or m["stain"] in STAIN_METHODS):
        return RunRef(text, "single", model=m["model"], stain=m["stain"] or "none")
    m = ENSEMBLE_RUN_RE.match(text)
    if m:
        members = tuple(m["members"].split("+"))
        if all(SINGLE_RUN_RE.match(x) for x in members):
            return RunRef(text, "ensemble", method=m["method"], members=members)
    raise PipelineError(f"not a run id the pipeline writes: {text!r} (e.g. v1_b0, v1_b0-vahadane, ensemble:soft:v1_b0+v2_b0)")


def is_run_id(run_id: str) -> bool:
    try:
        parse_run_id(run_id)
    except PipelineError:
        return False
    return True


def check_stain_method(method: str) -> str:
    if method not in STAIN_METHODS:
        raise PipelineError(f"unknown stain method {method!r} (choose one of {', '.join(STAIN_METHODS)})")
    return method


def check_stain_key(key: object) -> str:
    """A stain cache key must be a token the stain stage generated (10 hex digits), never a path."""
    if not isinstance(key, str) or not STAIN_KEY_RE.match(key):
        raise PipelineError(f"invalid stain target key {key!r} in target.json (expected 10 hex digits); "
                            "re-run `python -m pipeline stain`")
    return key


@dataclass(frozen=True)
class RunFiles:
    """The files of one run folder (``runs/<run_id>/``)."""

    dir: Path

    @property
    def model(self) -> Path:
        return self.dir / "model.keras"  # best-validation checkpoint

    def resume(self, epoch: int) -> Path:
        """Resume point after ``epoch``: weights + optimizer state (named by epoch: state.json says which is current)."""
        return self.dir / f"resume-e{int(epoch):04d}.keras"

    def resume_best(self, epoch: int) -> Path:
        """The best-validation model as of the resume point after ``epoch`` (a hard link, not a copy)."""
        return self.dir / f"best-e{int(epoch):04d}.keras"

    def resume_files(self) -> list[Path]:
        """Every resume point and best-as-of-resume model in the folder, current or stale."""
        if not self.dir.is_dir():
            return []
        return sorted(p for p in self.dir.iterdir() if RESUME_FILE_RE.match(p.name))

    @property
    def history(self) -> Path:
        return self.dir / "history.parquet"

    @property
    def info(self) -> Path:
        return self.dir / "run.json"

    @property
    def state(self) -> Path:
        return self.dir / "state.json"

    @property
    def features(self) -> Path:
        return self.dir / "features.npz"

    @property
    def predictions(self) -> Path:
        """This run's own val/test predictions; ``merge_predictions`` gathers them into the experiment's table."""
        return self.dir / "predictions.parquet"

    @property
    def tensorboard(self) -> Path:
        """TensorBoard event files (scalars per epoch): ``tensorboard --logdir artifacts/<exp>/runs`` shows every run."""
        return self.dir / "tensorboard"


@dataclass(frozen=True)
class Catalog:
    """Paths of every artifact of one experiment folder (``artifacts/<name>/``)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def name(self) -> str:
        return self.root.name

    # -- experiment-level files -------------------------------------------------------------------
    @property
    def dataset(self) -> Path:
        return self.root / "dataset.json"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.parquet"

    @property
    def rejects(self) -> Path:
        return self.root / "rejects.parquet"

    @property
    def split(self) -> Path:
        return self.root / "split.parquet"

    @property
    def predictions(self) -> Path:
        """The merged table of every completed run's and every ensemble's rows (see ``merge_predictions``)."""
        return self.root / "predictions.parquet"

    @property
    def ensemble_predictions(self) -> Path:
        """The ensemble stage's own rows (its part of the merged ``predictions.parquet``)."""
        return self.root / "ensemble_predictions.parquet"

    @property
    def adopted_predictions(self) -> Path:
        """Rows of runs that have no completed ``runs/<id>/`` part (a copy shared without ``runs/``, a pruned run
        folder, a table written by the user's own models), kept as their part so a merge never drops them."""
        return self.root / "adopted_predictions.parquet"

    @property
    def predictions_lock(self) -> Path:
        """Lock file that serialises merges of ``predictions.parquet`` between processes."""
        return self.root / ".predictions.lock"

    @property
    def subsets(self) -> Path:
        return self.root / "subsets.parquet"

    @property
    def ensembles(self) -> Path:
        return self.root / "ensembles.json"

    def stacking_model(self, group: str) -> Path:
        """The fitted stacking meta-model of one member group (``v1``, ``v2``, ``all``): ``predict`` re-applies it."""
        if not STAMP_NAME_RE.match(str(group)):
            raise PipelineError(f"invalid ensemble group name {group!r}")
        return self.root / "stacking" / f"{group}.keras"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.parquet"

    @property
    def metrics_info(self) -> Path:
        return self.root / "metrics.json"

    # -- nearest training images and 2-D maps (the neighbours stage) ----------------------------------
    @property
    def neighbours(self) -> Path:
        """k nearest training images of every val/test image, per single-model run (cosine of pooled features)."""
        return self.root / "neighbours.parquet"

    @property
    def neighbour_summary(self) -> Path:
        """Per run and split: the same-patient neighbour rate (evaluate joins it into metrics.parquet)."""
        return self.root / "neighbour_summary.parquet"

    @property
    def embedding(self) -> Path:
        """2-D PCA/t-SNE maps of every run's train/val/test features (the dashboard's embedding map)."""
        return self.root / "embedding.parquet"

    @property
    def pipeline_run(self) -> Path:
        return self.root / "pipeline_run.json"

    @property
    def pipeline_status(self) -> Path:
        """The live state of a ``run`` (stages, runs, current epoch and ETA, last log lines); the Pipeline page reads it."""
        return self.root / "pipeline_status.json"

    @property
    def fold_summary(self) -> Path:
        """Mean ± sd over the fold experiments of one protocol (``run`` with ``split.fold = "all"``): lives in the
        protocol folder ``artifacts/<name>-folds/``, next to the fold experiments ``<name>-fold<k>``."""
        return self.root / "fold_summary.parquet"

    @property
    def image_cache_dir(self) -> Path:
        return self.root / "cache" / "images"

    def image_cache(self, name: str) -> Path:
        """A decoded-image cache file (``name`` is built by ``pipeline.ml.data.cache_path`` from its key)."""
        if not re.match(r"^[a-z0-9_.-]+\.npy$", name):
            raise PipelineError(f"invalid image cache name {name!r}")
        return self.image_cache_dir / name

    @property
    def weights_digests(self) -> Path:
        """sha256 of the weights files runs were built from, keyed by path, size and mtime (see ``cached_digest``)."""
        return self.root / "cache" / "weights_sha256.json"

    # -- up-to-date records -----------------------------------------------------------------------
    @property
    def stamps_dir(self) -> Path:
        return self.root / "stamps"

    def stamp(self, name: str) -> Path:
        """The up-to-date record of one stage (``stamps/<name>.json``, see ``pipeline.artifacts.stamps``)."""
        if not STAMP_NAME_RE.match(name):
            raise PipelineError(f"invalid stage record name {name!r}")
        return self.stamps_dir / f"{name}.json"

    def resolve(self, relative: str) -> Path:
        """``root/relative`` for a path recorded relative to the experiment; refuses anything outside it."""
        path = (self.root / relative).resolve()
        root = self.root.resolve()
        if path != root and root not in path.parents:
            raise PipelineError(f"recorded artifact path {relative!r} leaves the experiment folder {self.root}")
        return path

    def relative(self, path: Path) -> str:
        """``path`` relative to the experiment folder when inside it, else its absolute form."""
        path = Path(path).resolve()
        try:
            return path.relative_to(self.root.resolve()).as_posix()
        except ValueError:
            return str(path)

    # -- runs -------------------------------------------------------------------------------------
    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    def run(self, run_id: str) -> RunFiles:
        ref = parse_run_id(run_id)
        if ref.kind != "single":
            raise PipelineError(f"{run_id!r} is an ensemble: it has no run folder")
        return RunFiles(self.runs_dir / run_id)

    def run_ids_on_disk(self) -> list[str]:
        """Run folders that hold a run id the pipeline writes (anything else is ignored)."""
        if not self.runs_dir.is_dir():
            return []
        return sorted(p.name for p in self.runs_dir.iterdir() if p.is_dir() and is_run_id(p.name))

    # -- stain normalization ----------------------------------------------------------------------
    def stain_dir(self, method: str) -> Path:
        return self.root / "stain" / check_stain_method(method)

    def stain_target(self, method: str) -> Path:
        return self.stain_dir(method) / "target.json"

    def stain_images(self, method: str, key: str) -> Path:
        """Normalized images of ``method`` for target ``key`` (validated: a key is never a path)."""
        return self.stain_dir(method) / check_stain_key(key)

    def stain_index(self, method: str, key: str) -> Path:
        """Per-image status of the normalized images of target ``key`` (resume point of the stain stage)."""
        return self.stain_images(method, key) / "index.parquet"

    def stain_run(self, method: str, key: str) -> Path:
        return self.stain_images(method, key) / "stain_run.json"

    # -- Grad-CAM ---------------------------------------------------------------------------------
    def gradcam_dir(self, method: str) -> Path:
        if method not in GRADCAM_METHODS:
            raise PipelineError(f"unknown Grad-CAM method {method!r} (choose one of {', '.join(GRADCAM_METHODS)})")
        return self.root / "gradcam" / GRADCAM_METHODS[method]

    def gradcam_maps(self, method: str, run_id: str) -> Path:
        return self.gradcam_dir(method) / f"{file_stem(run_id)}.npz"

    def gradcam_run_scores(self, method: str, run_id: str) -> Path:
        return self.gradcam_dir(method) / f"{file_stem(run_id)}.parquet"

    def gradcam_run_meta(self, method: str, run_id: str) -> Path:
        return self.gradcam_dir(method) / f"{file_stem(run_id)}.json"

    def gradcam_scores(self, method: str) -> Path:
        return self.gradcam_dir(method) / "scores.parquet"

    @property
    def gradcam_requests(self) -> Path:
        """Images asked for beyond the stage's own choice (``gradcam --image``), explained by every later run."""
        return self.root / "gradcam" / "requested.json"

    def gradcam_panel(self, method: str, image_id: str) -> Path:
        if not IMAGE_ID_RE.fullmatch(str(image_id)):
            raise PipelineError(f"not an image id: {image_id!r} (a file stem such as SOB_M_DC-14-2523-40-001)")
        return self.gradcam_dir(method) / f"panel_{image_id}_{GRADCAM_METHODS[method]}.png"


def file_stem(run_id: str) -> str:
    """A run id as a file name (``:`` is not portable)."""
    return parse_run_id(run_id).run_id.replace(":", "_")
