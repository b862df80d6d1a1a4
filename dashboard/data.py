"""Cached, read-only access to an experiment's artifacts for the dashboard (no TensorFlow, no training).

Three promises:
* **Only the experiment and its data root are read.** Image roots come from the experiment folder: the data
  root from ``dataset.json`` (must be an absolute, existing folder) and stain caches from the catalog, whose
  stain keys are validated tokens, never paths. An image path from the manifest is resolved inside its root
  (symlinks followed, then checked); anything escaping it is refused.
* **A broken file breaks one section, not the page.** Every reader catches a corrupt parquet, JSON or image and
  reports it once on the page, naming the file and the command that rewrites it.
* **Fast reruns.** Loaders are keyed on (path, mtime, size), so a re-run of the pipeline shows up on the next
  interaction while unchanged files are served from Streamlit's cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image

from pipeline.artifacts.catalog import Catalog, check_stain_method
from pipeline.artifacts.entries import ENTRIES, entry_at
from pipeline.artifacts.home import artifacts_root as home_artifacts_root
from pipeline.artifacts.io import UnreadableArtifact, opened_inside
from pipeline.artifacts.schemas import InvalidArtifact
from pipeline.artifacts.predictions import probability_matrix
from pipeline.core.ensemble import fit_weights
from pipeline.core.errors import PipelineError
from pipeline.core.images import UnreadableImage, read_rgb
from dashboard.text import code, plain

PROJECT_ROOT = Path(__file__).resolve().parent.parent
_PROBLEMS_KEY = "_dashboard_problems"


# -- reporting problems once per script run ------------------------------------------------------------------
def reset_problems() -> None:
    """Called at the start of every script run (app.py), so each problem is shown once per run."""
    st.session_state[_PROBLEMS_KEY] = set()


def report_problem(message: str, command: str | None = None) -> None:
    """Show a problem once per run: ``message`` as plain text (it carries paths and artifact values), then the fix."""
    shown = st.session_state.setdefault(_PROBLEMS_KEY, set())
    if message not in shown:
        shown.add(message)
        st.error(plain(message) + (f" Fix: {code(command)}" if command else ""), icon=":material/broken_image:")


def artifacts_root() -> Path:
    """``$HISTOCOMPARE_ARTIFACTS``, else ``artifacts/`` of the checkout (or of the directory ``histocompare`` ran in)."""
    return home_artifacts_root()


def list_experiments(root: Path | None = None) -> list[str]:
    """Experiment folders, each external validation (``predict``) right after the experiment it validates."""
    root = root or artifacts_root()
    if not root.is_dir():
        return []
    # an experiment whose pipeline has only just started (no manifest yet) is listed too: its Pipeline page follows it
    names, skipped = [], []
    try:
        folders = sorted(root.iterdir())
    except OSError:
        return []
    for p in folders:
        try:
            p.name.encode("utf-8")  # a name that is not UTF-8 cannot be shown, linked or put in a URL
            if p.is_dir() and (Catalog(p).manifest.exists() or Catalog(p).pipeline_status.exists()):
                names.append(p.name)
        except (OSError, UnicodeError):
            skipped.append(p.name.encode("utf-8", "replace").decode("utf-8", "replace"))
    if skipped:
        _report_skipped(root, skipped)
    sources = {name: source_of(root / name) for name in names}
    return sorted(names, key=lambda n: (sources[n] if sources[n] in sources else n, sources[n] is not None, n))


def _report_skipped(root: Path, skipped: list[str]) -> None:
    """Sibling folders the picker cannot read or name: said once per script run, the other experiments still listed."""
    try:
        report_problem(f"Skipped {len(skipped)} folder(s) under {root} that cannot be read or named: {', '.join(skipped[:3])}.")
    except Exception:  # called outside a Streamlit script run (a plain import or a test): nothing to show it on
        pass


def source_of(path: Path) -> str | None:
    """The folder name of the experiment that ``path`` externally validates (``dataset.json``), or None."""
    try:
        with opened_inside(path, Catalog(path).dataset) as name:  # a link out of the experiment is not followed
            record = ENTRIES["dataset"].read(name, Catalog(path).dataset)
    except (OSError, ValueError, PipelineError):  # unreadable, a link out, not UTF-8, non-finite or too deep
        return None
    external = record.get("external") if isinstance(record, dict) else None
    name = external.get("source_name") if isinstance(external, dict) else None
    return name if isinstance(name, str) and name else None


def _stamp(path: Path) -> tuple[float, int]:
    stat = path.stat()
    return stat.st_mtime, stat.st_size


@st.cache_resource(show_spinner=False, max_entries=64)
def _read_parquet(path: str, stamp: tuple, _opened: str | None = None) -> pd.DataFrame:
    """The file read through its catalog entry (``pipeline.artifacts.entries.entry_at``: the reader and schema the
    pipeline's stages use), cached when valid. ``_opened`` (not hashed): the already opened and checked file (see
    ``Experiment._frame``).
    Shared, not copied: st.cache_data unpickled a fresh copy on every rerun (0.1-0.5 s for the ~0.5 M-row predictions
    at ten times BreakHis, issue 26). Pages only read these frames; pandas' copy-on-write keeps edits to a derived
    frame out of the shared one (tests/test_dashboard.py checks a page run leaves the cached frame unchanged)."""
    return entry_at(path).read(_opened or path, path)


@st.cache_data(show_spinner=False, max_entries=64)
def _read_json(path: str, stamp: tuple, _opened: str | None = None) -> object:
    """A JSON record read through its catalog entry (the artifact parser: finite numbers, bounded nesting)."""
    return entry_at(path).read(_opened or path, path)


def _cli_dir(path: Path) -> str:
    """How a command should name this folder: relative to the working directory when inside it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


@dataclass(frozen=True)
class Experiment:
    name: str
    path: Path

    @property
    def catalog(self) -> Catalog:
        return Catalog(self.path)

    @property
    def cli_dir(self) -> str:
        return _cli_dir(self.path)

    # -- commands that (re)create each artifact: one table, so messages stay consistent ------------------
    def command(self, artifact: str, corrupt: bool = False, model: str = "efficientnet_b0") -> str:
        d = self.cli_dir
        preset = PROJECT_ROOT / "pipeline" / "configs" / f"{self.name}.toml"
        if artifact == "predictions":
            if preset.exists() and not corrupt:
                return f"python -m pipeline run --config {_cli_dir(preset)}"
            return f"python -m pipeline train {d} --model MODEL --force (for each run), then python -m pipeline ensemble {d}"
        return {
            "manifest": f"python -m pipeline index DATA_ROOT --out {d}",
            "dataset": f"python -m pipeline index DATA_ROOT --out {d}",
            "split": f"python -m pipeline split {d} --mode patient",
            "metrics": f"python -m pipeline evaluate {d}",
            "subsets": f"python -m pipeline ensemble {d}",
            "ensembles": f"python -m pipeline ensemble {d}",
            "history": f"python -m pipeline train {d} --model {model} --force",
            "gradcam": f"python -m pipeline gradcam {d} --method gradcam",
            "stain": f"python -m pipeline stain {d} --method vahadane",
            "neighbours": f"python -m pipeline neighbours {d}",
        }[artifact]

    def _frame(self, path: Path, artifact: str, **command_args) -> pd.DataFrame | None:
        """The parquet at ``path`` or None (missing, or corrupt: then reported with the command that rewrites it)."""
        if not path.is_file():
            return None
        try:
            with opened_inside(self.path, path) as name:  # an artifact that is a link leading out is not read
                return _read_parquet(str(path), _stamp(path), name)
        except InvalidArtifact as exc:  # readable, but breaks its catalog entry: say how, and which command rewrites it
            report_problem(f"{path} {exc.problem}. Rewrite it.", self.command(artifact, corrupt=True, **command_args))
            return None
        except PipelineError as exc:
            if not isinstance(exc, UnreadableArtifact):  # outside the experiment, or cannot be opened at all
                report_problem(f"{path} is not read: {exc}.", self.command(artifact, corrupt=True, **command_args))
                return None
            reason = exc.reason.split(":")[0]
            report_problem(f"{path} cannot be read ({reason}: the file is corrupt or truncated). Rewrite it.",
                           self.command(artifact, corrupt=True, **command_args))
            return None
        except Exception as exc:  # the entry's reader raises UnreadableArtifact with pyarrow's reason
            reason = exc.reason.split(":")[0] if isinstance(exc, UnreadableArtifact) else type(exc).__name__
            report_problem(f"{path} cannot be read ({reason}: the file is corrupt or truncated). Rewrite it.",
                           self.command(artifact, corrupt=True, **command_args))
            return None

    def _json(self, path: Path, artifact: str) -> dict | None:
        if not path.is_file():
            return None
        try:
            with opened_inside(self.path, path) as name:  # an artifact that is a link leading out is not read
                data = _read_json(str(path), _stamp(path), name)
        except PipelineError as exc:
            report_problem(f"{path} is not read: {exc}.", self.command(artifact, True))
            return None
        except (OSError, ValueError) as exc:  # also non-finite numbers and nesting deeper than MAX_JSON_DEPTH
            report_problem(f"{path} cannot be read ({type(exc).__name__}: {str(exc).splitlines()[0][:80] if str(exc) else ''}). "
                           "Rewrite it.", self.command(artifact, True))
            return None
        return data if isinstance(data, dict) else None

    def is_corrupt(self, path: Path) -> bool:
        """A file that exists but could not be read (its problem has been reported)."""
        return path.is_file() and any(str(path) in p for p in st.session_state.get(_PROBLEMS_KEY, ()))

    @property
    def dataset(self) -> dict:
        return self._json(self.catalog.dataset, "dataset") or {}

    @property
    def synthetic(self) -> bool:
        return bool(self.dataset.get("synthetic"))

    @property
    def external(self) -> dict | None:
        """The ``external`` block of an external validation written by ``predict`` (source, labels); None otherwise."""
        block = self.dataset.get("external")
        return block if isinstance(block, dict) else None

    @property
    def ci_unit(self) -> str:
        """``image`` for an external folder without patient ids (its bootstrap resamples images), else ``patient``."""
        return "image" if (self.external or {}).get("ci_unit") == "image" else "patient"

    @property
    def labelled(self) -> bool:
        """False only for an external validation scored without labels: no metrics, no errors to show."""
        return self.external is None or bool(self.external.get("labels"))

    @property
    def eval_splits(self) -> list[str]:
        """The splits pages offer: ``external`` for an external validation, else test and val."""
        return ["external"] if self.external is not None else ["test", "val"]

    def data_root(self) -> Path | None:
        """The validated data root (an absolute, existing folder), or None with the reason reported.

        Same rule as ``pipeline.artifacts.experiment.data_root_of``, plus: the path must be absolute (a relative
        one would depend on where the dashboard was started).
        """
        if not self.catalog.dataset.is_file():
            report_problem(f"Images are not shown: {self.catalog.dataset} is missing.", self.command("dataset"))
            return None
        root = self.dataset.get("data_root")
        if not isinstance(root, str) or not root or not Path(root).is_absolute() or not Path(root).is_dir():
            report_problem(f"Images are not shown: {self.catalog.dataset} names data_root {root!r}, which is not an "
                           "absolute path to an existing folder.", self.command("dataset"))
            return None
        resolved = Path(root).resolve()
        here = self.path.resolve()
        if resolved == Path("/") or resolved == here or resolved in here.parents:  # would serve any file on the machine
            report_problem(f"Images are not shown: {self.catalog.dataset} names data_root {root!r}, which is / or a folder "
                           "that holds the experiments; it must be the dataset's own folder.", self.command("dataset"))
            return None
        return resolved

    def manifest(self) -> pd.DataFrame | None:
        return self._frame(self.catalog.manifest, "manifest")

    def split(self) -> pd.DataFrame | None:
        return self._frame(self.catalog.split, "split")

    def predictions(self) -> pd.DataFrame | None:
        return self._frame(self.catalog.predictions, "predictions")

    def metrics(self) -> pd.DataFrame | None:
        return self._frame(self.catalog.metrics, "metrics")

    def subsets(self) -> pd.DataFrame | None:
        return self._frame(self.catalog.subsets, "subsets")

    def neighbours(self) -> pd.DataFrame | None:
        return self._frame(self.catalog.neighbours, "neighbours")

    def embedding(self) -> pd.DataFrame | None:
        return self._frame(self.catalog.embedding, "neighbours")

    def gradcam_scores(self, method: str) -> pd.DataFrame | None:
        return self._frame(self.catalog.gradcam_scores(method), "gradcam")

    def pipeline_config(self) -> dict | None:
        """The config ``run`` recorded in ``pipeline_run.json`` (None for an experiment built stage by stage)."""
        record = self._json(self.catalog.pipeline_run, "predictions")
        config = (record or {}).get("config")
        return config if isinstance(config, dict) else None

    def hard_tie_break(self) -> str:
        """How this experiment's hard votes break ties (``ensembles.json``'s config, else the run's config, else the
        pipeline's default), so the builder scores a hard vote exactly as the ensemble stage did."""
        for source in ((self.ensembles_record() or {}).get("config"), (self.pipeline_config() or {}).get("ensemble")):
            rule = source.get("hard_tie_break") if isinstance(source, dict) else None
            if rule in ("mean_prob", "benign"):
                return rule
        return "mean_prob"

    def ensembles_record(self) -> dict | None:
        return self._json(self.catalog.ensembles, "ensembles")

    def history(self, run_id: str) -> pd.DataFrame | None:
        return self._frame(self.catalog.run(run_id).history, "history", model=run_id)

    def run_info(self, run_id: str) -> dict | None:
        return self._json(self.catalog.run(run_id).info, "history")

    def stain_target(self, method: str) -> dict | None:
        """``stain/<method>/target.json`` with its cache key validated by the catalog (a token, never a path);
        None when absent, and None with the reason reported when corrupt or hostile."""
        path = self.catalog.stain_target(check_stain_method(method))
        target = self._json(path, "stain")
        if target is None:
            return None
        try:
            self.catalog.stain_images(method, target.get("key"))
        except PipelineError as exc:
            report_problem(f"Stain-normalized images are not shown: {exc}", f"python -m pipeline stain {self.cli_dir} --method {method}")
            return None
        return target

    def stain_root(self, method: str) -> Path | None:
        """Folder of the ``method``-normalized images (derived from the catalog and a validated key), or None."""
        target = self.stain_target(method)
        if not target:
            return None
        root = self.catalog.stain_images(method, target["key"])
        return root if root.is_dir() else None

    def image_paths(self) -> dict[str, str]:
        """image_id -> path relative to the data root (from the manifest)."""
        manifest = self.manifest()
        if manifest is None:
            return {}
        return _paths_by_id(str(self.catalog.manifest), _stamp(self.catalog.manifest), manifest)


@st.cache_resource(show_spinner=False, max_entries=8, hash_funcs={pd.DataFrame: lambda _: 0})  # shared, read-only
def _paths_by_id(path: str, stamp: tuple, manifest: pd.DataFrame) -> dict[str, str]:
    # as plain lists first: iterating an Arrow-backed column yields value by value (~0.15 s at ten times BreakHis)
    return dict(zip(manifest["image_id"].astype(str).tolist(), manifest["path"].astype(str).tolist()))


def get_experiment(name: str) -> Experiment:
    return Experiment(name, artifacts_root() / name)


# -- images ------------------------------------------------------------------------------------------------
def safe_image_path(root: Path, relative: str) -> Path | None:
    """``root/relative`` if it stays inside ``root`` (after following symlinks) and is a file; None otherwise."""
    root = root.resolve()
    candidate = (root / relative).resolve()
    if candidate != root and root not in candidate.parents:
        return None
    return candidate if candidate.is_file() else None


def decode_image(path: str | Path, width: int | None = None) -> np.ndarray:
    """Decode an image as RGB uint8 with the pipeline's one reader (``pipeline.core.images.read_rgb``), so the
    dashboard shows the pixels training saw (16-bit, palette, grey and alpha PNGs included), then shrink it."""
    pixels = read_rgb(path)
    if width and pixels.shape[1] > width:
        img = Image.fromarray(pixels)
        img = img.resize((width, max(1, round(img.height * width / img.width))), Image.BILINEAR)
        return np.asarray(img)
    return pixels


@st.cache_data(show_spinner=False, max_entries=2048)
def load_image(path: str, stamp: tuple, width: int | None = None, _opened: str | None = None) -> np.ndarray:
    """Cached on (path, stamp, width); ``_opened`` (not hashed) is the already opened and checked file to decode."""
    return decode_image(_opened or path, width)


def image_for(exp: Experiment, image_id: str, width: int | None = 320, stain: str = "none") -> np.ndarray | None:
    """The (optionally stain-normalized) image of ``image_id`` as RGB, or None if missing, refused or corrupt."""
    relative = exp.image_paths().get(str(image_id))
    if relative is None:
        return None
    if Path(relative).name != f"{image_id}.png":  # the layout the index writes: a path naming another file is refused
        report_problem(f"The manifest's path {relative!r} for image {image_id!r} does not name {image_id}.png; not shown.",
                       exp.command("manifest"))
        return None
    root = exp.data_root() if stain == "none" else exp.stain_root(stain)
    if root is None:
        return None
    path = safe_image_path(root, relative)
    if path is None:
        return None
    try:
        with opened_inside(root, path) as name:  # the file opened is the one checked, whatever a link swap does
            return load_image(str(path), _stamp(path), width, name)
    except PipelineError as exc:
        if not isinstance(exc, UnreadableImage):  # opened_inside: the file left the root or cannot be opened
            report_problem(f"Image not shown: {exc}")
            return None
        return _undecodable(exp, path, stain, exc)
    except Exception as exc:  # corrupt, truncated, decompression bomb, unsupported mode
        return _undecodable(exp, path, stain, exc)


def _undecodable(exp: Experiment, path: Path, stain: str, exc: Exception) -> None:
    """Report an image that cannot be decoded, with the command that replaces it."""
    if stain == "none":
        report_problem(f"{path} cannot be decoded ({type(exc).__name__}). Replace the file, then re-index "
                       "(unreadable files go to rejects.parquet).", exp.command("manifest"))
    else:
        report_problem(f"{path} cannot be decoded ({type(exc).__name__}). Delete it and re-run the stain stage.",
                       f"python -m pipeline stain {exp.cli_dir} --method {stain}")
    return None


# -- ensembles ---------------------------------------------------------------------------------------------
@st.cache_data(show_spinner=False, max_entries=32)
def member_matrices(preds_path: str, stamp: tuple, members: tuple[str, ...], splits: tuple[str, ...] = ("val", "test")) -> dict:
    """Probability matrices of ``members`` per split (the ensemble builder's cached arrays), from the shared table
    (no second read of the file: ~0.4 s at ten times BreakHis)."""
    with opened_inside(Path(preds_path).parent, preds_path) as name:  # the experiment's own file, not a link out
        preds = _read_parquet(preds_path, stamp, name)
    return {split: probability_matrix(preds, list(members), split) for split in splits}


def validation_arrays(exp: Experiment, members: list[str] | tuple[str, ...]) -> tuple[np.ndarray, pd.DataFrame] | None:
    """(val probabilities, val rows) weighted voting fits its weights on: the experiment's own validation split or, for an
    external validation (which has none), that of the experiment it validates, never the new images. None if absent."""
    source = source_experiment(exp) if exp.external is not None else exp
    if source is None or not source.catalog.predictions.is_file():
        return None
    path = source.catalog.predictions
    try:
        return member_matrices(str(path), stamp(path), tuple(members), ("val",))["val"]
    except PipelineError:
        return None


def source_experiment(exp: Experiment) -> Experiment | None:
    """The experiment an external validation was scored with, when it is under the artifacts folder too."""
    name = (exp.external or {}).get("source_name")
    if not isinstance(name, str) or name not in list_experiments(exp.path.parent):
        return None
    return Experiment(name, exp.path.parent / name)


@st.cache_data(show_spinner=False, max_entries=1024)
def cached_weights(val_probs: np.ndarray, val_labels: np.ndarray, key: tuple) -> np.ndarray:
    """Weighted-vote weights for one member subset, fitted on validation (cached per subset)."""
    return fit_weights(val_probs, val_labels)


def stamp(path: Path) -> tuple:
    """(mtime, size) of a file: the cache key of everything derived from it."""
    return _stamp(path)
