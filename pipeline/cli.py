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


TRAIN_FLAGS = ("epochs", "batch_size", "image_size", "weights", "strategy", "warmup_epochs", "early_stopping_patience")


def _train_overrides(args) -> list[str]:
    """``train``'s shortcut flags as ``--set train.key=value`` overrides (applied before the explicit --set)."""
    sets = []
    for key in TRAIN_FLAGS:
        value = getattr(args, key, None)
        if value is not None:
            sets.append(f"train.{key}={value}")
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

    if args.panel:
        out = save_panel(args.dir, args.panel, args.method, args.out)
        print(f"wrote {out}")
        return
    from pipeline.stages.gradcam import check_completed_runs

    check_completed_runs(args.dir, args.runs or [])
    _start_tensorflow()
    cfg = GradcamConfig(methods=[args.method], split=args.split, max_images=args.max_images, target=args.target)
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


def build_parser() -> argparse.ArgumentParser:
    from pipeline.runner import STAGES

    parser = OneLineParser(prog=os.environ.get("HISTOCOMPARE_PROG", "python -m pipeline"), description="histocompare batch pipeline")
    parser.add_argument("--verbose", action="store_true", help="show TensorFlow's start-up and C++ log lines")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("index", help="index a BreakHis folder tree into manifest.parquet")
    p.add_argument("data_root")
    p.add_argument("--out", required=True, help="experiment folder to write (e.g. artifacts/sample)")
    p.add_argument("--force", action="store_true", help="re-index even if the image tree is unchanged")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("demo-data", help="generate SYNTHETIC BreakHis-shaped H&E-like images")
    p.add_argument("out_dir")
    p.add_argument("--seed", type=setting("experiment.seed"), default=0)
    p.add_argument("--patients", type=setting("experiment.demo_patients"), default=24)
    p.add_argument("--images-per-patient", type=setting("experiment.demo_images_per_patient"), default=8)
    p.set_defaults(func=cmd_demo_data)

    p = sub.add_parser("split", help="image-level (paper) or patient-level split")
    p.add_argument("dir")
    p.add_argument("--mode", choices=["paper", "patient"])
    p.add_argument("--export", metavar="FILE.csv", help="write the split (image_id, patient_id, patient_num, split, fold) and stop")
    p.add_argument("--from", dest="source", metavar="FILE.csv", help="import a published split (image_id, split[, fold])")
    p.add_argument("--allow-leakage", action="store_true", help="with --from: accept patients on several sides (image-level)")
    p.add_argument("--ratios", type=_checked(_ratios), default=(0.7, 0.15, 0.15), help="train,val,test (default 0.7,0.15,0.15)")
    p.add_argument("--seed", type=setting("experiment.seed"), default=0)
    p.add_argument("--group-by", default="patient_num", choices=["patient_id", "patient_num"])
    p.add_argument("--folds", type=setting("split.folds"), default=1, help="independent repeats (BreakHis protocol: 5)")
    p.add_argument("--force", action="store_true", help="re-split even if up to date")
    p.set_defaults(func=cmd_split)

    p = sub.add_parser(
        "train", help="train one EfficientNet and predict val/test",
        description="Train one backbone on an experiment folder. Without --config the recipe is the study's "
                    "(pipeline.config.TrainConfig defaults: ImageNet weights, 40 epochs, batch 32, Adam 1e-4 backbone / "
                    "1e-3 head, BatchNorm frozen, the study's trainable layers, float32). With --config PRESET.toml the "
                    "preset's [train], experiment.seed and split.fold apply, exactly as in `run --config PRESET.toml`. "
                    "The flags below and --set override either.")
    p.add_argument("dir")
    p.add_argument("--model", required=True, type=_checked(_model_name), help="e.g. efficientnet_b0 or v1_b0")
    p.add_argument("--config", help="preset TOML (default: none, the study's recipe)")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                   help="override one config key, repeatable (e.g. --set train.mixed_precision=auto)")
    p.add_argument("--epochs", type=setting("train.epochs"))
    p.add_argument("--batch-size", type=setting("train.batch_size"))
    p.add_argument("--image-size", type=setting("train.image_size"), help="0 (the model's study size) or 32-1024")
    p.add_argument("--weights", type=setting("train.weights", str), help="imagenet | none | path to .h5 / .weights.h5")
    p.add_argument("--stain", default="none", choices=["none", "vahadane", "macenko", "reinhard"])
    p.add_argument("--strategy", choices=["default", "mirrored", "multiworker"])
    p.add_argument("--warmup-epochs", type=setting("train.warmup_epochs"))
    p.add_argument("--early-stopping-patience", type=setting("train.early_stopping_patience"))
    p.add_argument("--seed", type=setting("experiment.seed"), help="default: experiment.seed of the config (0)")
    p.add_argument("--fold", type=setting("split.fold"), help="default: split.fold of the config (0)")
    p.add_argument("--force", action="store_true", help="retrain even if up to date")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("stain", help="stain-normalize every image (cached, resumable)")
    p.add_argument("dir")
    p.add_argument("--method", default="vahadane", choices=["vahadane", "macenko", "reinhard"])
    p.add_argument("--target", default="auto", help="'auto' (rule on the train split) or an image_id from train")
    p.add_argument("--fold", type=setting("split.fold"), default=0)
    p.add_argument("--force", action="store_true", help="normalize every image again")
    p.set_defaults(func=cmd_stain)

    p = sub.add_parser("ensemble", help="soft/hard/weighted/stacking ensembles and subset search")
    p.add_argument("dir")
    p.add_argument("--tie-break", default="mean_prob", choices=["mean_prob", "benign"])
    p.add_argument("--no-stacking", action="store_true")
    p.add_argument("--seed", type=setting("experiment.seed"), default=0)
    p.add_argument("--force", action="store_true", help="recompute even if up to date")
    p.set_defaults(func=cmd_ensemble)

    p = sub.add_parser("evaluate", help="metrics.parquet with patient-bootstrap CIs")
    p.add_argument("dir")
    p.add_argument("--bootstrap", type=setting("evaluate.bootstrap"), default=1000)
    p.add_argument("--threshold", type=setting("evaluate.threshold", _number_or_text), default=0.5,
                   help='decision threshold in (0, 1), or "validation" (maximise Youden\'s J on val, apply to test)')
    p.add_argument("--seed", type=setting("experiment.seed"), default=0)
    p.add_argument("--force", action="store_true", help="recompute even if up to date")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("neighbours", help="nearest training images of every val/test image, same-patient rate, 2-D maps")
    p.add_argument("dir")
    p.add_argument("--k", type=setting("neighbours.k"), default=5, help="nearest training images kept per image (default 5)")
    p.add_argument("--no-tsne", action="store_true", help="only the PCA map (t-SNE takes the longest)")
    p.add_argument("--seed", type=setting("experiment.seed"), default=0)
    p.add_argument("--fold", type=setting("split.fold"), default=0)
    p.add_argument("--force", action="store_true", help="recompute even if up to date")
    p.set_defaults(func=cmd_neighbours)

    p = sub.add_parser("gradcam", help="Grad-CAM heatmaps (tf-keras-vis) cached for the dashboard")
    p.add_argument("dir")
    p.add_argument("--method", default="gradcam", choices=["gradcam", "gradcam++", "scorecam"])
    p.add_argument("--split", default="test", choices=["val", "test"])
    p.add_argument("--runs", nargs="*", type=_checked(_single_run_id), help="run ids (default: every single-model run)")
    p.add_argument("--max-images", type=setting("gradcam.max_images"), default=0,
                   help="0: every image of the split; else every misclassified image, then correct ones up to this many "
                        "(the other evaluated split's errors are explained too, never capped)")
    p.add_argument("--target", default="predicted", choices=["predicted", "true"])
    p.add_argument("--panel", metavar="IMAGE_ID", help="save the study's 2x5 multi-model panel of this image as PNG")
    p.add_argument("--out", help="PNG path for --panel (default DIR/gradcam/panel_<image>_<method>.png)")
    p.add_argument("--force", action="store_true", help="recompute maps even if up to date")
    p.set_defaults(func=cmd_gradcam)

    p = sub.add_parser("summarize-folds", help="mean +- sd across experiments trained on different folds/repeats")
    p.add_argument("dirs", nargs="+", help="experiment folders, one per fold (each with metrics.parquet)")
    p.add_argument("--out", required=True, help="parquet to write, e.g. artifacts/patient_folds.parquet")
    p.set_defaults(func=cmd_summarize_folds)

    p = sub.add_parser("predict", help="external validation: apply EXP's models and ensembles to new images")
    p.add_argument("exp", help="the trained experiment folder")
    p.add_argument("--data", help="BreakHis-layout tree or any folder of PNG images")
    p.add_argument("--out", help="new experiment folder to write (every image in split 'external')")
    p.add_argument("--labels", help="CSV with image (relative path), label (0/1 or benign/malignant), optional patient")
    p.add_argument("--image", nargs="+", metavar="FILE", help="print each model's probability and each ensemble's decision")
    p.add_argument("--bootstrap", type=setting("evaluate.bootstrap"), default=1000)
    p.add_argument("--seed", type=setting("experiment.seed"), default=0)
    p.add_argument("--force", action="store_true", help="score every image again even if up to date")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("export", help="one Keras model of an ensemble (members + combination rule), for deployment")
    p.add_argument("exp", help="the trained experiment folder")
    p.add_argument("--ensemble", required=True, metavar="RUN_ID", help="e.g. ensemble:soft:v1_b0+v2_b0")
    p.add_argument("--out", required=True, help="FILE.keras to write")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("run", help="run every stage of a preset, skipping what is up to date")
    p.add_argument("--config", required=True, nargs="+", help="pipeline/configs/<preset>.toml; several presets (e.g. the "
                   "image-level one and a fold = \"all\" one) train as one schedule")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override one config key, repeatable")
    p.add_argument("--executor", choices=["local", "ray"], help="where runs train: local worker processes (default) or "
                   "Ray tasks ([cluster] executor)")
    p.add_argument("--address", metavar="HOST:PORT", help="the Ray cluster to use (implies --executor ray); without it "
                   "Ray starts a local instance")
    p.add_argument("--only", nargs="+", choices=STAGES, metavar="STAGE", help=f"subset of stages: {' '.join(STAGES)}")
    p.add_argument("--force", nargs="+", metavar="STAGE", choices=list(STAGES),
                   help="redo these stages and every stage that depends on them, even if up to date")
    p.set_defaults(func=cmd_run)
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
