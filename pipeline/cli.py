"""``python -m pipeline <stage> ...``: one command line for every batch stage.

Each sub-command is a thin wrapper: parse arguments, call the stage function, print a summary.
Bad input gets one line on stderr and exit status 2, never a traceback: a :class:`PipelineError` becomes
``error: ...``, and argparse's own errors (unknown flags, values its types refuse) are printed on one line
too. Flag values are checked by argparse types built on the same rules as presets
(:func:`pipeline.config.setting_problem`), so ``--epochs 0`` fails before TensorFlow is even imported;
the TensorFlow commands start it only after their cheap checks (split, fold, stain target) have passed.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pipeline.core.errors import PipelineError  # noqa: E402


class OneLineParser(argparse.ArgumentParser):
    """argparse with a one-line error (``error: <prog>: <message>``) instead of usage + message."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {self.prog}: {message} (see --help)\n")


def setting(key: str, parse: type = int):
    """An argparse type for the config setting ``key``: parse the text, then apply the preset's rule."""

    def convert(text: str):
        from pipeline.config import setting_problem

        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if parse is int else 'a number'}, got {text!r}") from None
        problem = setting_problem(key, value)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value

    convert.__name__ = key
    return convert


def _number_or_text(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


def _checked(check):
    """An argparse type from a function that raises PipelineError for a bad value."""

    def convert(text: str):
        try:
            return check(text)
        except PipelineError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = check.__name__
    return convert


def _model_name(text: str) -> str:
    from pipeline.core.model_specs import get_spec

    return get_spec(text).name


def _single_run_id(text: str) -> str:
    from pipeline.artifacts.catalog import parse_run_id

    if parse_run_id(text).kind != "single":
        raise PipelineError(f"{text!r} is an ensemble; Grad-CAM explains single-model runs (e.g. v1_b0)")
    return text


def _ratios(text: str) -> tuple[float, float, float]:
    from pipeline.core.splits import parse_ratios

    return parse_ratios(text)


def _start_tensorflow() -> None:
    """Import TensorFlow quietly, once the command's cheap checks have passed (``ensemble`` starts it itself,
    only if it fits a stacking model)."""
    from pipeline.ml.runtime import quiet_tensorflow

    quiet_tensorflow()


def cmd_index(args) -> None:
    from pipeline.artifacts.catalog import Catalog
    from pipeline.stages.index import run_index

    run_index(args.data_root, args.out, force=args.force)
    print(f"manifest: {Catalog(args.out).manifest}")


def cmd_demo_data(args) -> None:
    from pipeline.stages.demo_data import generate_demo_data

    summary = generate_demo_data(args.out_dir, args.seed, args.patients, args.images_per_patient)
    print(f"SYNTHETIC demo data: {summary['images']} images of {summary['patients']} patients "
          f"({summary['benign_patients']} benign, {summary['written']} written now) in {args.out_dir} ({summary['seconds']} s)")


def cmd_split(args) -> None:
    from pipeline.core.errors import PipelineError
    from pipeline.stages.split import export_split, run_split, split_from_csv

    if args.export and args.source:
        raise PipelineError("give --export or --from, not both")
    if args.export:
        export_split(args.dir, args.export)
    elif args.source:
        split_from_csv(args.dir, args.source, args.allow_leakage, force=args.force)
    elif args.mode is None:
        raise PipelineError("split needs --mode paper|patient (or --from FILE.csv, or --export FILE.csv)")
    else:
        run_split(args.dir, args.mode, args.ratios, args.seed, args.group_by, args.folds, force=args.force)


def _train_overrides(args) -> list[str]:
    """``train``'s shortcut flags as ``--set train.key=value`` overrides (applied before the explicit --set).

    The flags are the ``train`` rows of :data:`COMMANDS` keyed ``train.*``, read from the table rather than listed
    again here, so a row added to the table cannot be parsed and then silently dropped."""
    train = next(c for c in COMMANDS if c.name == "train")
    sets = []
    for row in train.args:
        if row.key and row.key.startswith("train."):
            long_flag = next(f for f in row.flags if f.startswith("--"))  # argparse's dest: the first long option
            value = getattr(args, row.options.get("dest") or long_flag[2:].replace("-", "_"), None)
            if value is not None:
                sets.append(f"{row.key}={value}")
    return sets + list(args.set or [])


def resolve_train_args(args):
    """The run ``train`` would start: (Config, seed, fold), resolved like the same run inside ``run``."""
    from pipeline.config import resolve_config

    cfg = resolve_config(args.config, _train_overrides(args), require_data_root=False)
    seed = cfg.experiment.seed if args.seed is None else args.seed
    fold = cfg.split.fold if args.fold is None else args.fold
    if fold == "all":  # `run` trains every fold into its own folder; one `train` trains one fold
        raise PipelineError("the preset says split.fold = \"all\": give the fold this run trains on with --fold K "
                            "(or use `run`, which trains every fold into its own experiment folder)")
    return cfg, seed, fold


def cmd_train(args) -> None:
    from pipeline.artifacts.entries import Inputs

    cfg, seed, fold = resolve_train_args(args)  # a bad preset or --set: before anything is read
    inputs = Inputs(args.dir)  # loaded once here, used again by the run
    inputs.split_frame(fold)  # missing/corrupt manifest or split, or a fold it lacks: before TensorFlow
    if args.stain != "none":
        inputs.require_stain_target(args.stain)  # absent, hostile or corrupt target.json
    _start_tensorflow()
    from pipeline.stages.train import train_run

    train_run(args.dir, args.model, cfg.train, stain=args.stain, seed=seed, fold=fold, force=args.force, inputs=inputs)


def cmd_stain(args) -> None:
    from pipeline.stages.stain import run_stain

    run_stain(args.dir, args.method, target=args.target, fold=args.fold, force=args.force)


def cmd_ensemble(args) -> None:
    from pipeline.config import EnsembleConfig
    from pipeline.stages.ensemble import run_ensembles

    run_ensembles(args.dir, EnsembleConfig(stacking=not args.no_stacking, hard_tie_break=args.tie_break), seed=args.seed,
                  force=args.force)


def cmd_evaluate(args) -> None:
    from pipeline.config import EvaluateConfig
    from pipeline.stages.evaluate import run_evaluate

    run_evaluate(args.dir, EvaluateConfig(bootstrap=args.bootstrap, threshold=args.threshold), seed=args.seed, force=args.force)


def cmd_neighbours(args) -> None:
    from pipeline.config import NeighboursConfig
    from pipeline.stages.neighbours import run_neighbours

    run_neighbours(args.dir, NeighboursConfig(k=args.k, tsne=not args.no_tsne), seed=args.seed, fold=args.fold, force=args.force)


def cmd_gradcam(args) -> None:
    from pipeline.config import GradcamConfig
    from pipeline.stages.gradcam import run_gradcam, save_panel

    if args.panel and args.image:
        raise PipelineError("--panel draws cached maps and --image computes new ones: run them as two commands")
    if args.panel:
        out = save_panel(args.dir, args.panel, args.method, args.out)
        print(f"wrote {out}")
        return
    from pipeline.stages.gradcam import check_completed_runs

    check_completed_runs(args.dir, args.runs or [])
    cfg = GradcamConfig(methods=[args.method], split=args.split, max_images=args.max_images, target=args.target)
    if args.image:  # checked and recorded before TensorFlow starts: a wrong id costs nothing
        from pipeline.artifacts.gradcam_requests import add_requests, check_explainable, recorded_settings
        from pipeline.artifacts.predictions import load_predictions
        from pipeline.config import section_from_dict

        check_explainable(args.image, load_predictions(args.dir), args.dir)
        recorded = recorded_settings(args.dir)
        if recorded:  # the preset's own settings: only the asked-for images are new work (see recorded_settings)
            cfg = section_from_dict("gradcam", recorded)
            cfg.methods = [args.method]
            print(f"gradcam: the settings {os.path.basename(os.path.abspath(args.dir))}'s run recorded (split {cfg.split}, max_images "
                  f"{cfg.max_images}, target {cfg.target}), plus {len(args.image)} requested image(s)", flush=True)
        add_requests(args.dir, args.image)
    _start_tensorflow()
    run_gradcam(args.dir, cfg, runs=args.runs, force=args.force)


def cmd_summarize_folds(args) -> None:
    from pipeline.stages.evaluate import summarize_folds

    summary = summarize_folds(args.dirs, args.out)
    cols = [c for c in ("run_id", "split", "folds", "accuracy_mean", "accuracy_sd", "f1_mean", "f1_sd") if c in summary]
    print(summary[summary["split"] == "test"][cols].round(4).to_string(index=False))
    print(f"wrote {args.out}")


def cmd_predict(args) -> None:
    from pipeline.stages.predict import print_image_scores, run_predict

    if args.image:
        if args.data or args.out or args.labels:
            raise PipelineError("--image scores single files and writes nothing: give it without --data/--out/--labels")
        print_image_scores(args.exp, args.image)
        return
    if not (args.data and args.out):
        raise PipelineError("predict needs --data ROOT --out NEW_EXP (or --image FILE ...)")
    preds = run_predict(args.exp, args.data, args.out, args.labels, bootstrap=args.bootstrap, seed=args.seed, force=args.force)
    print(f"predictions: {len(preds)} rows of {preds['run_id'].nunique()} runs and ensembles in {args.out}")


def cmd_export(args) -> None:
    from pipeline.stages.export import run_export

    run_export(args.exp, args.ensemble, args.out)


def cmd_run(args) -> None:
    from pipeline.config import load_config
    from pipeline.runner import run_pipeline
    from pipeline.schedule import run_protocol

    overrides = list(args.set or [])
    if args.executor:
        overrides.append(f"cluster.executor={args.executor}")
    if args.address:
        if (args.executor or "ray") != "ray":
            raise PipelineError("--address is the Ray cluster's address: use it with --executor ray")
        overrides += ["cluster.executor=ray", f"cluster.address={args.address}"]
    cfgs = [load_config(path, overrides) for path in args.config]
    for cfg in cfgs:
        if cfg.train.strategy == "multiworker":  # every process would run every stage and write the experiment
            raise PipelineError("strategy 'multiworker' needs one `python -m pipeline train` per machine (README \"Several GPUs "
                                "or machines\"); `run` schedules whole runs instead: use 'default' with --executor ray")
    if len(cfgs) == 1 and cfgs[0].split.fold != "all":
        run_pipeline(cfgs[0], only=args.only, force=args.force or ())
    else:  # the protocol as one command: every run of every experiment in one schedule
        run_protocol(cfgs, only=args.only, force=args.force or ())


# ---------------------------------------------------------------------------------------------------------------
# The command line as a table: one Command per sub-command, one Arg per argument. A flag that sets a config key
# names it (``key``): its value is checked by the preset's rule (pipeline.config.LIMITS), its choices are the
# preset's (pipeline.config.CHOICES) and, with ``default=PRESET_DEFAULT``, its default is the preset's, so a flag and
# the same key in a TOML file cannot drift apart. ``build_parser`` only walks the table.
# ---------------------------------------------------------------------------------------------------------------

PRESET_DEFAULT = "<the config's default>"  # sentinel: take the default of Arg.key from pipeline.config's dataclasses


@dataclass(frozen=True)
class Arg:
    """One argument of a sub-command: its flags (or positional name), help, and how its value is checked.

    ``key`` ("train.epochs") ties a flag to a config setting; ``parse`` turns the text into the value that setting's
    rule checks (int unless told). ``check`` is for values no config key holds (a model name, a run id): a function
    that raises PipelineError. ``choices`` may be a function, called when the parser is built (the stage list comes
    from the runner, which the CLI imports only then); ``{choices}`` in the help is replaced by them. ``options``
    are argparse's other keywords (default, nargs, metavar, dest, required, action).
    """

    flags: tuple[str, ...]
    help: str | None = None
    key: str | None = None
    parse: Callable[[str], Any] = int
    check: Callable[[str], Any] | None = None
    choices: Sequence[str] | Callable[[], Sequence[str]] | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def keywords(self) -> dict[str, Any]:
        """argparse's keywords for this argument, with the type, choices and default derived from ``key``."""
        from pipeline.config import CHOICES, LIMITS

        kw = dict(self.options)
        choices = self.choices() if callable(self.choices) else self.choices
        if choices is None and self.key in CHOICES:
            choices = list(CHOICES[self.key])
        if choices is not None:
            kw["choices"] = choices
        if self.key in LIMITS:
            kw["type"] = setting(self.key, self.parse)
        elif self.check is not None:
            kw["type"] = _checked(self.check)
        if kw.get("default") is PRESET_DEFAULT:
            kw["default"] = _preset_default(self.key)
        if self.help is not None:
            kw["help"] = self.help.replace("{choices}", " ".join(choices or ()))
        return kw


def arg(*flags: str, help: str | None = None, key: str | None = None, parse: Callable[[str], Any] = int,
        check: Callable[[str], Any] | None = None, choices: Sequence[str] | Callable[[], Sequence[str]] | None = None,
        **options: Any) -> Arg:
    """An :class:`Arg` written like ``add_argument``: flags first, argparse's keywords after."""
    return Arg(flags, help, key, parse, check, choices, options)


@dataclass(frozen=True)
class Command:
    """One sub-command: its name, the one-line help of ``--help``, its arguments and the function that runs it."""

    name: str
    help: str
    handler: Callable[[argparse.Namespace], None]
    args: tuple[Arg, ...]
    description: str | None = None


def _preset_default(key: str | None) -> Any:
    """The default of config key ``key`` ("evaluate.bootstrap"; "runs.stain" for a run's field)."""
    import dataclasses

    from pipeline.config import Config, RunSpec

    section, name = str(key).split(".")
    if section == "runs":
        return next(f.default for f in dataclasses.fields(RunSpec) if f.name == name)
    return getattr(getattr(Config(), section), name)


def _stages() -> tuple[str, ...]:
    from pipeline.runner import STAGES

    return STAGES


# rows several sub-commands share
DIR = arg("dir")
EXP = arg("exp", help="the trained experiment folder")
SEED = arg("--seed", key="experiment.seed", default=PRESET_DEFAULT)
FOLD = arg("--fold", key="split.fold", default=PRESET_DEFAULT)
BOOTSTRAP = arg("--bootstrap", key="evaluate.bootstrap", default=PRESET_DEFAULT)
SET = "SECTION.KEY=VALUE"


def force(help: str | None = None) -> Arg:
    """``--force``: redo the work even if it is up to date (each sub-command says what that means for it)."""
    return arg("--force", action="store_true", help=help)


TRAIN_DESCRIPTION = (
    "Train one backbone on an experiment folder. Without --config the recipe is the study's "
    "(pipeline.config.TrainConfig defaults: ImageNet weights, 40 epochs, batch 32, Adam 1e-4 backbone / "
    "1e-3 head, BatchNorm frozen, the study's trainable layers, float32). With --config PRESET.toml the "
    "preset's [train], experiment.seed and split.fold apply, exactly as in `run --config PRESET.toml`. "
    "The flags below and --set override either.")

GLOBAL_ARGS = (arg("--verbose", action="store_true", help="show TensorFlow's start-up and C++ log lines"),)

COMMANDS: tuple[Command, ...] = (
    Command("index", "index a BreakHis folder tree into manifest.parquet", cmd_index, (
        arg("data_root"),
        arg("--out", required=True, help="experiment folder to write (e.g. artifacts/sample)"),
        force("re-index even if the image tree is unchanged"),
    )),
    Command("demo-data", "generate SYNTHETIC BreakHis-shaped H&E-like images", cmd_demo_data, (
        arg("out_dir"),
        SEED,
        arg("--patients", key="experiment.demo_patients", default=PRESET_DEFAULT),
        arg("--images-per-patient", key="experiment.demo_images_per_patient", default=PRESET_DEFAULT),
    )),
    Command("split", "image-level (paper) or patient-level split", cmd_split, (
        DIR,
        arg("--mode", key="split.mode"),
        arg("--export", metavar="FILE.csv", help="write the split (image_id, patient_id, patient_num, split, fold) and stop"),
        arg("--from", dest="source", metavar="FILE.csv", help="import a published split (image_id, split[, fold])"),
        arg("--allow-leakage", action="store_true", help="with --from: accept patients on several sides (image-level)"),
        arg("--ratios", check=_ratios, default=(0.7, 0.15, 0.15), help="train,val,test (default 0.7,0.15,0.15)"),
        SEED,
        arg("--group-by", key="split.group_by", default=PRESET_DEFAULT),
        arg("--folds", key="split.folds", default=PRESET_DEFAULT, help="independent repeats (BreakHis protocol: 5)"),
        force("re-split even if up to date"),
    )),
    Command("train", "train one EfficientNet and predict val/test", cmd_train, (
        DIR,
        arg("--model", required=True, check=_model_name, help="e.g. efficientnet_b0 or v1_b0"),
        arg("--config", help="preset TOML (default: none, the study's recipe)"),
        arg("--set", action="append", metavar=SET,
            help="override one config key, repeatable (e.g. --set train.mixed_precision=auto)"),
        arg("--epochs", key="train.epochs"),
        arg("--batch-size", key="train.batch_size"),
        arg("--image-size", key="train.image_size", help="0 (the model's study size) or 32-1024"),
        arg("--weights", key="train.weights", parse=str, help="imagenet | none | path to .h5 / .weights.h5"),
        arg("--stain", key="runs.stain", default=PRESET_DEFAULT),
        arg("--strategy", key="train.strategy"),
        arg("--warmup-epochs", key="train.warmup_epochs"),
        arg("--early-stopping-patience", key="train.early_stopping_patience"),
        arg("--seed", key="experiment.seed", help="default: experiment.seed of the config (0)"),
        arg("--fold", key="split.fold", help="default: split.fold of the config (0)"),
        force("retrain even if up to date"),
    ), description=TRAIN_DESCRIPTION),
    Command("stain", "stain-normalize every image (cached, resumable)", cmd_stain, (
        DIR,
        arg("--method", default="vahadane", choices=["vahadane", "macenko", "reinhard"]),
        arg("--target", default=PRESET_DEFAULT, key="stain.target",
            help="'auto' (rule on the train split) or an image_id from train"),
        FOLD,
        force("normalize every image again"),
    )),
    Command("ensemble", "soft/hard/weighted/stacking ensembles and subset search", cmd_ensemble, (
        DIR,
        arg("--tie-break", key="ensemble.hard_tie_break", default=PRESET_DEFAULT),
        arg("--no-stacking", action="store_true"),
        SEED,
        force("recompute even if up to date"),
    )),
    Command("evaluate", "metrics.parquet with patient-bootstrap CIs", cmd_evaluate, (
        DIR,
        BOOTSTRAP,
        arg("--threshold", key="evaluate.threshold", parse=_number_or_text, default=PRESET_DEFAULT,
            help='decision threshold in (0, 1), or "validation" (maximise Youden\'s J on val, apply to test)'),
        SEED,
        force("recompute even if up to date"),
    )),
    Command("neighbours", "nearest training images of every val/test image, same-patient rate, 2-D maps", cmd_neighbours, (
        DIR,
        arg("--k", key="neighbours.k", default=PRESET_DEFAULT, help="nearest training images kept per image (default 5)"),
        arg("--no-tsne", action="store_true", help="only the PCA map (t-SNE takes the longest)"),
        SEED,
        FOLD,
        force("recompute even if up to date"),
    )),
    Command("gradcam", "Grad-CAM heatmaps (tf-keras-vis) cached for the dashboard", cmd_gradcam, (
        DIR,
        arg("--method", default="gradcam", choices=["gradcam", "gradcam++", "scorecam"]),
        arg("--split", key="gradcam.split", default=PRESET_DEFAULT),
        arg("--runs", nargs="*", check=_single_run_id, help="run ids (default: every single-model run)"),
        arg("--max-images", key="gradcam.max_images", default=PRESET_DEFAULT,
            help="0: every image of the split; else every misclassified image, then correct ones up to this many "
                 "(the other evaluated split's errors are explained too, never capped)"),
        arg("--target", key="gradcam.target", default=PRESET_DEFAULT),
        arg("--image", nargs="+", metavar="IMAGE_ID", help="also explain these val/test images (recorded in "
            "gradcam/requested.json, so every later run keeps their maps): the command a card without a map shows"),
        arg("--panel", metavar="IMAGE_ID", help="save the study's 2x5 multi-model panel of this image as PNG"),
        arg("--out", help="PNG path for --panel (default DIR/gradcam/panel_<image>_<method>.png)"),
        force("recompute maps even if up to date"),
    )),
    Command("summarize-folds", "mean +- sd across experiments trained on different folds/repeats", cmd_summarize_folds, (
        arg("dirs", nargs="+", help="experiment folders, one per fold (each with metrics.parquet)"),
        arg("--out", required=True, help="parquet to write, e.g. artifacts/patient_folds.parquet"),
    )),
    Command("predict", "external validation: apply EXP's models and ensembles to new images", cmd_predict, (
        EXP,
        arg("--data", help="BreakHis-layout tree or any folder of PNG images"),
        arg("--out", help="new experiment folder to write (every image in split 'external')"),
        arg("--labels", help="CSV with image (relative path), label (0/1 or benign/malignant), optional patient"),
        arg("--image", nargs="+", metavar="FILE", help="print each model's probability and each ensemble's decision"),
        BOOTSTRAP,
        SEED,
        force("score every image again even if up to date"),
    )),
    Command("export", "one Keras model of an ensemble (members + combination rule), for deployment", cmd_export, (
        EXP,
        arg("--ensemble", required=True, metavar="RUN_ID", help="e.g. ensemble:soft:v1_b0+v2_b0"),
        arg("--out", required=True, help="FILE.keras to write"),
    )),
    Command("run", "run every stage of a preset, skipping what is up to date", cmd_run, (
        arg("--config", required=True, nargs="+", help="pipeline/configs/<preset>.toml; several presets (e.g. the "
            "image-level one and a fold = \"all\" one) train as one schedule"),
        arg("--set", action="append", metavar=SET, help="override one config key, repeatable"),
        arg("--executor", key="cluster.executor", help="where runs train: local worker processes (default) or "
            "Ray tasks ([cluster] executor)"),
        arg("--address", metavar="HOST:PORT", help="the Ray cluster to use (implies --executor ray); without it "
            "Ray starts a local instance"),
        arg("--only", nargs="+", choices=_stages, metavar="STAGE", help="subset of stages: {choices}"),
        arg("--force", nargs="+", metavar="STAGE", choices=_stages,
            help="redo these stages and every stage that depends on them, even if up to date"),
    )),
)


def build_parser(commands: Sequence[Command] = COMMANDS) -> argparse.ArgumentParser:
    """The argparse parser of ``commands``: every sub-command with its arguments, in table order."""
    parser = OneLineParser(prog=os.environ.get("HISTOCOMPARE_PROG", "python -m pipeline"), description="histocompare batch pipeline")
    for a in GLOBAL_ARGS:
        parser.add_argument(*a.flags, **a.keywords())
    sub = parser.add_subparsers(dest="command", required=True)
    for command in commands:
        p = sub.add_parser(command.name, help=command.help, description=command.description)
        for a in command.args:
            p.add_argument(*a.flags, **a.keywords())
        p.set_defaults(func=command.handler)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit status (0 done, 2 bad input, 130 interrupted)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help (0), or argparse's one-line error (2)
        return exc.code if isinstance(exc.code, int) else 2
    if args.verbose:
        os.environ["HISTOCOMPARE_VERBOSE"] = "1"
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
    try:
        args.func(args)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: completed work is saved; re-run the same command to resume", file=sys.stderr)
        return 130
    return 0
