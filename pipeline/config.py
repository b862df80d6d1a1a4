"""Run presets: ``pipeline/configs/*.toml`` read with ``tomllib`` into validated dataclasses.

Why dataclasses and not a dict: an unknown key (a typo such as ``epoch = 3``) or a value of the wrong
type must be a clear error naming the key, not a silently ignored setting in a 40-epoch run.

Why one table of limits (:data:`LIMITS`): a preset and a command-line flag set the same values, so they
are checked by the same rule. ``config_from_dict`` applies it to every key of a preset, and the CLI's
argparse types (``pipeline.cli``) call :func:`setting_problem` for ``--epochs``, ``--image-size``, ``--seed``...
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from pipeline.artifacts.home import work_root
from pipeline.core.errors import PipelineError

PROJECT_ROOT = Path(__file__).resolve().parent.parent  # the code's folder: the shipped presets live under it
PRESETS = PROJECT_ROOT / "pipeline" / "configs"


@dataclass
class ExperimentConfig:
    name: str = "demo"
    data_root: str = ""  # BreakHis root; for synthetic data, where the generator writes
    out_dir: str = ""  # default artifacts/<name>
    synthetic: bool = False  # generate demo data into data_root first
    demo_patients: int = 24
    demo_images_per_patient: int = 8
    seed: int = 0


@dataclass
class SplitConfig:
    mode: str = "patient"
    ratios: list[float] = field(default_factory=lambda: [0.7, 0.15, 0.15])
    group_by: str = "patient_num"
    folds: int = 1
    fold: int | str = 0  # which fold the runs train on; "all" (run only): every fold, each in its own experiment folder
    from_csv: str = ""  # a published split to import (`split --export` format) instead of making one
    allow_leakage: bool = False  # with from_csv: accept patients on several sides (an image-level split, on purpose)


@dataclass
class StainConfig:
    # The methods come from the runs (``[[runs]] stain = "vahadane"``); this section holds what they share.
    target: str = "auto"  # "auto" (documented rule, train split only) or an image_id from the train split


@dataclass
class TrainConfig:
    """One run's training recipe. The defaults are the study's recipe (``train`` without ``--config`` uses them)."""

    epochs: int = 40
    batch_size: int = 32
    image_size: int = 0  # 0: the model's study size
    weights: str = "imagenet"  # imagenet | none | path to .h5/.weights.h5 (V1: ImageNet convention, README "Pretrained weights")
    lr_backbone: float = 1e-4
    lr_head: float = 1e-3
    dropout: float = 0.3
    freeze_batchnorm: bool = True
    unfreeze: str = "study"  # study: only the last 300 (V1) / 320 (V2) layers train, as the study's counts show | all
    bn_momentum: float = 0.0  # 0: Keras default (0.99 V1, 0.9 V2); from scratch, 0.9 lets moving stats catch up
    augment: bool = True
    resize: str = "square"  # square (the study) | pad (keep aspect ratio)
    warmup_epochs: int = 0  # head-only epochs before unfreezing (off in the study)
    early_stopping_patience: int = 0  # 0 = off (the study)
    class_weights: bool = False
    mixed_precision: bool | str = False  # false (the study: float32) | true (forced, also on CPU) | "auto" (on with a GPU)
    jit_compile: bool = False  # XLA
    strategy: str = "default"  # default | mirrored | multiworker
    run_eagerly: bool = False  # no graph tracing: for debugging and tiny smoke runs on CPU (2x faster there), slow otherwise
    predict_batch_size: int = 64
    checkpoint_seconds: float = 60.0  # resume checkpoint (weights + Adam state) at most this often; 0 = every epoch
    workers: int | str = 1  # runs trained at once by `run` (2 helps on small CPU runs); "gpus": one per visible GPU, each its own

    def result_settings(self) -> dict:
        """The settings that can change a trained model: what a run's hash covers.

        Left out: how many runs train at once, how often the resume point is written and the prediction batch
        size. They change speed, not the model or its predictions, so changing them must not retrain anything.
        """
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in SPEED_ONLY_TRAIN_KEYS}


SPEED_ONLY_TRAIN_KEYS = ("workers", "checkpoint_seconds", "predict_batch_size")


@dataclass
class RunSpec:
    model: str
    stain: str = "none"
    image_size: int = 0
    epochs: int = 0  # 0: from [train]


@dataclass
class EnsembleConfig:
    enabled: bool = True
    threshold: float = 0.5
    hard_tie_break: str = "mean_prob"  # mean_prob | benign (the study's scipy.stats.mode rule)
    stacking: bool = True
    stacking_epochs: int = 40  # the study: 40
    stacking_batch_size: int = 16  # the study: 16
    stacking_reduce_lr: bool = True  # the study: ReduceLROnPlateau (here on the inner hold-out of val, never on test)
    stacking_patience: int = 0  # 0: train every epoch, keep the best inner-hold-out epoch; N: stop after N without gain
    subset_search: bool = True


@dataclass
class EvaluateConfig:
    bootstrap: int = 1000
    ci: float = 0.95
    ece_bins: int = 10
    threshold: float | str = 0.5  # a number in (0, 1), or "validation": maximise Youden's J on val, apply to test


@dataclass
class GradcamConfig:
    enabled: bool = True
    methods: list[str] = field(default_factory=lambda: ["gradcam"])
    split: str = "test"
    max_images: int = 0  # 0: all images of the split; otherwise every misclassified image, then correct ones up to this
    target: str = "predicted"  # predicted | true
    batch_size: int = 16
    deletion_steps: int = 10
    workers: int = 1  # runs explained concurrently by `run` (spawned processes, like [train] workers)


@dataclass
class NeighboursConfig:
    enabled: bool = True
    k: int = 5  # nearest training images kept per val/test image
    tsne: bool = True  # the t-SNE map too (PCA is always made); the slow part: 576 s for one 7,909-image run on 2 busy cores
    # above this many training images a run's neighbours come from a FAISS IVF index (recall reported) instead of the
    # exact product, which grows with train x queries: ~1 min per run at 10x BreakHis (55,000) on 2 cores, ~2 h at 100x
    approximate_above: int = 200_000


@dataclass
class ClusterConfig:
    """Where `run` trains (and explains) its runs; none of it changes a result (no run hash covers it)."""

    executor: str = "local"  # local: [train] workers processes on this machine | ray: one Ray task per run
    address: str = ""  # Ray: the cluster's head (host:port); "" starts a local Ray instance (a multi-GPU workstation)
    cpus_per_run: float = 1.0  # Ray: CPUs each run asks for
    gpus_per_run: float = -1.0  # Ray: GPUs each run asks for; -1: 1 when the cluster has GPUs, else 0 (CPU-only clusters)
    max_retries: int = 2  # Ray: times a run is restarted after its worker or node was lost (it resumes from its resume point)


@dataclass
class Config:
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    stain: StainConfig = field(default_factory=StainConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    runs: list[RunSpec] = field(default_factory=list)
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    gradcam: GradcamConfig = field(default_factory=GradcamConfig)
    neighbours: NeighboursConfig = field(default_factory=NeighboursConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    @property
    def out_dir(self) -> Path:
        out = self.experiment.out_dir or f"artifacts/{self.experiment.name}"
        path = Path(out)
        return path if path.is_absolute() else work_root() / path

    @property
    def data_root(self) -> Path:
        path = Path(self.experiment.data_root)
        return path if path.is_absolute() else (work_root() / path).resolve()

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


CHOICES = {
    "split.mode": ("paper", "patient"),
    "split.group_by": ("patient_id", "patient_num"),
    "train.resize": ("square", "pad"),
    "train.strategy": ("default", "mirrored", "multiworker"),
    "train.unfreeze": ("study", "all"),
    "train.mixed_precision": (False, True, "auto"),
    "ensemble.hard_tie_break": ("mean_prob", "benign"),
    "gradcam.split": ("val", "test"),
    "gradcam.target": ("predicted", "true"),
    "runs.stain": ("none", "vahadane", "macenko", "reinhard"),
    "cluster.executor": ("local", "ray"),
}


def _at_least(low: float) -> Callable[[Any], str | None]:
    return lambda v: None if v >= low else f"must be >= {low}, got {v}"


def _above(low: float) -> Callable[[Any], str | None]:
    return lambda v: None if v > low else f"must be > {low}, got {v}"


def _fraction(v: float) -> str | None:
    return None if 0 <= v < 1 else f"must be >= 0 and < 1, got {v}"


def _open_unit(v: float) -> str | None:
    return None if 0 < v < 1 else f"must be between 0 and 1 (exclusive), got {v}"


MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 32, 1024  # EfficientNet needs >= 32 px; the study's largest input is 380


def _image_size(v: int) -> str | None:
    if v == 0 or MIN_IMAGE_SIZE <= v <= MAX_IMAGE_SIZE:
        return None
    return f"must be 0 (the model's study size) or between {MIN_IMAGE_SIZE} and {MAX_IMAGE_SIZE} pixels, got {v}"


def _seed(v: int) -> str | None:  # numpy's generators take seeds in [0, 2**32)
    return None if 0 <= v < 2**32 else f"must be between 0 and {2**32 - 1}, got {v}"


def _weights(v: str) -> str | None:
    if v in ("imagenet", "none") or Path(v).is_file():
        return None
    return f"must be 'imagenet', 'none' or an existing weights file (.h5), got {v!r}"


def _threshold(v: Any) -> str | None:
    if v == "validation" or (isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 1):
        return None
    return f"must be a number between 0 and 1 (exclusive) or \"validation\", got {v!r}"


def _name(v: str) -> str | None:  # becomes a folder name under artifacts/: never a path
    return None if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", v) else f"must be a simple name (letters, digits, . _ -), got {v!r}"


def _ratios_rule(v: Any) -> str | None:
    from pipeline.core.splits import parse_ratios

    try:
        parse_ratios(v)
    except PipelineError as exc:
        return str(exc)
    return None


# The value rules of every numeric (and a few string) settings, keyed "section.key"; runs[i] keys as "runs.key".
LIMITS: dict[str, Callable[[Any], str | None]] = {
    "experiment.name": _name,
    "experiment.seed": _seed,
    "experiment.demo_patients": _at_least(8),
    "experiment.demo_images_per_patient": _at_least(1),
    "split.folds": _at_least(1),
    "split.ratios": _ratios_rule,
    "split.fold": lambda v: None if v == "all" or (isinstance(v, int) and not isinstance(v, bool) and v >= 0) else
    f"must be >= 0 (or \"all\" in a preset), got {v!r}",
    "train.epochs": _at_least(1),
    "train.batch_size": _at_least(1),
    "train.image_size": _image_size,
    "train.weights": _weights,
    "train.lr_backbone": _above(0),
    "train.lr_head": _above(0),
    "train.dropout": _fraction,
    "train.bn_momentum": _fraction,
    "train.warmup_epochs": _at_least(0),
    "train.early_stopping_patience": _at_least(0),
    "train.predict_batch_size": _at_least(1),
    "train.checkpoint_seconds": _at_least(0),
    "train.workers": lambda v: None if v == "gpus" or (isinstance(v, int) and not isinstance(v, bool) and v >= 1) else
    f"must be >= 1 or \"gpus\" (one per visible GPU), got {v!r}",
    "cluster.cpus_per_run": _above(0),
    "cluster.gpus_per_run": lambda v: None if v == -1 or v >= 0 else f"must be >= 0 (or -1: 1 when the cluster has GPUs), got {v}",
    "cluster.max_retries": _at_least(0),
    "runs.image_size": _image_size,
    "runs.epochs": _at_least(0),  # 0: [train] epochs
    "ensemble.threshold": _open_unit,
    "ensemble.stacking_epochs": _at_least(1),
    "ensemble.stacking_batch_size": _at_least(1),
    "ensemble.stacking_patience": _at_least(0),  # 0: train every epoch, keep the best
    "evaluate.bootstrap": _at_least(1),
    "evaluate.ci": _open_unit,
    "evaluate.ece_bins": _at_least(1),
    "evaluate.threshold": _threshold,
    "gradcam.max_images": _at_least(0),
    "gradcam.batch_size": _at_least(1),
    "gradcam.deletion_steps": _at_least(1),
    "gradcam.workers": _at_least(1),
    "neighbours.k": _at_least(1),
    "neighbours.approximate_above": _at_least(1),
}


def setting_problem(key: str, value: Any) -> str | None:
    """What is wrong with ``value`` for ``key`` ("train.epochs"), or None; shared by presets and CLI flags."""
    rule = LIMITS.get(key)
    if rule is None:
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return f"must be a finite number, got {value}"
    return rule(value)


def _check_limits(obj: Any, prefix: str, rule_prefix: str) -> None:
    for f in dataclasses.fields(obj):
        problem = setting_problem(f"{rule_prefix}.{f.name}", getattr(obj, f.name))
        if problem:
            raise PipelineError(f"config key '{prefix}.{f.name}' {problem}")


def _coerce(value: Any, typ: Any, key: str) -> Any:
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):  # e.g. bool | str: a value of any member type
        members = typing.get_args(typ)
        if not any(isinstance(value, t) and not (t is int and isinstance(value, bool)) for t in members):
            names = " or ".join(t.__name__ for t in members)
            raise PipelineError(f"config key '{key}' must be {names}, got {value!r}")
        return value
    if origin is list:
        (inner,) = typing.get_args(typ)
        if not isinstance(value, list):
            raise PipelineError(f"config key '{key}' must be a list, got {value!r}")
        return [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typ in (int, float, str, bool) and (not isinstance(value, typ) or (typ is int and isinstance(value, bool))):
        raise PipelineError(f"config key '{key}' must be {typ.__name__}, got {value!r}")
    return value


def _build(cls: type, data: dict, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise PipelineError(f"config section '{prefix}' must be a table")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in known:
            raise PipelineError(f"unknown config key '{prefix}.{key}' (known: {', '.join(sorted(known))})")
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}.{key}"
        kwargs[key] = _coerce(value, hints[key], full)
        allowed = CHOICES.get(full.split("[")[0] if not prefix.startswith("runs") else f"runs.{key}")
        if allowed and kwargs[key] not in allowed:
            raise PipelineError(f"config key '{full}' must be one of {allowed}, got {kwargs[key]!r}")
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise PipelineError(f"config section '{prefix}': {exc}") from None


def section_from_dict(name: str, raw: Any) -> Any:
    """One validated section (``"gradcam"``) from a parsed table, with a preset's rules: a record an experiment wrote
    (``pipeline_run.json``) is read back under the same checks as the preset it came from."""
    section = _build(typing.get_type_hints(Config)[name], raw, name)
    _check_limits(section, name, name)
    return section


def config_from_dict(raw: dict, require_data_root: bool = True) -> Config:
    """Validate a parsed TOML document into a :class:`Config` (``train`` without a preset needs no data root)."""
    from pipeline.core.model_specs import MODEL_SPECS  # local: models imports keras lazily, this stays light

    sections = {f.name: f for f in dataclasses.fields(Config)}
    for key in raw:
        if key not in sections:
            raise PipelineError(f"unknown config section '{key}' (known: {', '.join(sections)})")
    kwargs: dict[str, Any] = {}
    for name, value in raw.items():
        if name == "runs":
            if not isinstance(value, list):
                raise PipelineError("config 'runs' must be an array of tables ([[runs]])")
            kwargs["runs"] = [_build(RunSpec, v, f"runs[{i}]") for i, v in enumerate(value)]
        else:
            kwargs[name] = _build(typing.get_type_hints(Config)[name], value, name)
    cfg = Config(**kwargs)
    for i, run in enumerate(cfg.runs):
        if run.model not in MODEL_SPECS:
            raise PipelineError(f"config key 'runs[{i}].model': unknown model {run.model!r} (known: {', '.join(MODEL_SPECS)})")
        if run.stain not in CHOICES["runs.stain"]:
            raise PipelineError(f"config key 'runs[{i}].stain' must be one of {CHOICES['runs.stain']}, got {run.stain!r}")
    from pipeline.core.splits import parse_ratios

    for name in ("experiment", "split", "train", "ensemble", "evaluate", "gradcam", "neighbours", "cluster"):
        _check_limits(getattr(cfg, name), name, name)
    for i, run in enumerate(cfg.runs):
        _check_limits(run, f"runs[{i}]", "runs")
    if cfg.split.fold != "all" and cfg.split.fold >= cfg.split.folds:
        raise PipelineError(f"config key 'split.fold' must be below split.folds ({cfg.split.folds}), got {cfg.split.fold}")
    parse_ratios(cfg.split.ratios)
    if require_data_root and not cfg.experiment.data_root:
        raise PipelineError("config key 'experiment.data_root' is required")
    check_out_dir(cfg)
    # An empty [gradcam] methods is the way to skip Grad-CAM: `run` shows the stage as skipped (tests/test_all_folds.py)
    for m in cfg.gradcam.methods:
        if m not in ("gradcam", "gradcam++", "scorecam"):
            raise PipelineError(f"config key 'gradcam.methods' has unknown method {m!r} (gradcam, gradcam++, scorecam)")
    return cfg


def check_out_dir(cfg: Config) -> None:
    """The experiment folder must not be ``/`` nor lie in (or be) the data root: a synthetic preset regenerates its
    data root when its sizes change, which would delete an experiment inside it; a real one would index itself."""
    if cfg.experiment.out_dir and Path(cfg.experiment.out_dir).resolve() == Path("/"):
        raise PipelineError("config key 'experiment.out_dir' must not be / (give a folder of its own, e.g. artifacts/NAME)")
    if not cfg.experiment.data_root:
        return
    out, data = cfg.out_dir.resolve(), cfg.data_root.resolve()
    if out == Path("/"):
        raise PipelineError("config key 'experiment.out_dir' must not be / (give a folder of its own, e.g. artifacts/NAME)")
    if out == data or data in out.parents:
        raise PipelineError(f"config key 'experiment.out_dir' ({out}) lies inside experiment.data_root ({data}); "
                            "put the experiment folder elsewhere")


def load_config(path: Path | str, overrides: Sequence[str] = ()) -> Config:
    """Read and validate a preset file, with ``section.key=value`` overrides (``--set``) applied first."""
    return resolve_config(path, overrides)


def preset_path(path: Path | str) -> Path:
    """``path`` as given when it exists; else the shipped preset it names (``pipeline/configs/demo.toml`` from any
    directory, or just ``demo``), so an installed ``histocompare run --config demo`` finds the presets it ships."""
    path = Path(path)
    if path.exists():
        return path
    for candidate in (PROJECT_ROOT / path, PRESETS / path.name, PRESETS / f"{path.name}.toml"):
        if not path.is_absolute() and candidate.is_file() and candidate.suffix == ".toml":
            return candidate
    return path


def read_preset(path: Path | str) -> dict:
    """The parsed TOML document of a preset file; every way it can be unreadable is one PipelineError."""
    path = preset_path(path)
    presets = ", ".join(sorted(p.stem for p in PRESETS.glob("*.toml")))
    if not path.exists():
        raise PipelineError(f"config file {path} does not exist (presets: {presets})")
    if not path.is_file():
        raise PipelineError(f"config {path} is a folder, not a TOML file (presets in pipeline/configs/: {presets})")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise PipelineError(f"cannot read config {path}: {exc.strerror if isinstance(exc, OSError) else 'not UTF-8 text'}") from None
    except tomllib.TOMLDecodeError as exc:
        raise PipelineError(f"{path} is not valid TOML: {exc}") from None
    except RecursionError:
        raise PipelineError(f"{path} is not valid TOML: nested too deeply") from None


def resolve_config(path: Path | str | None, overrides: Sequence[str] = (), require_data_root: bool = True) -> Config:
    """The one configuration path of ``train`` and ``run``: preset (or the defaults) + ``--set`` overrides.

    Overrides go into the parsed document before validation, so they pass the same checks as the file
    (unknown key, wrong type, allowed values) and a CLI run resolves exactly what ``run`` resolves.
    """
    raw: dict = read_preset(path) if path is not None else {}
    for item in overrides:
        apply_override(raw, item)
    return config_from_dict(raw, require_data_root=require_data_root)


def apply_override(raw: dict, item: str) -> None:
    """Set ``section.key=value`` in a parsed TOML document. The value is read as TOML (``3``, ``1e-4``, ``true``,
    ``[0.8, 0.1, 0.1]``); for a text key an unquoted value is taken as it is (``train.weights=/data/b0.h5``)."""
    key, sep, text = item.partition("=")
    section, dot, name = key.strip().partition(".")
    if not sep or not dot or not section or not name:
        raise PipelineError(f"--set expects section.key=value (e.g. train.epochs=3), got {item!r}")
    sections = {f.name: f for f in dataclasses.fields(Config)}
    if section == "runs":
        raise PipelineError("--set cannot change [[runs]]; edit the preset or use train --model")
    if section not in sections:
        raise PipelineError(f"unknown config section '{section}' in --set {item!r} (known: {', '.join(sections)})")
    hints = typing.get_type_hints(typing.get_type_hints(Config)[section])
    if name not in hints:
        raise PipelineError(f"unknown config key '{section}.{name}' (known: {', '.join(sorted(hints))})")
    text = text.strip()
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except (tomllib.TOMLDecodeError, RecursionError):
        value = text
    if hints[name] is str and not isinstance(value, str):
        value = text
    target = raw.setdefault(section, {})
    if not isinstance(target, dict):
        raise PipelineError(f"config section '{section}' must be a table")
    target[name] = value
