"""``python -m pipeline <stage> ...``: one command line for every batch stage.

Each sub-command is a thin wrapper: parse arguments, call the stage function, print a summary.
A :class:`PipelineError` becomes a one-line message and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pipeline.core.errors import PipelineError  # noqa: E402


def cmd_index(args) -> None:
    from pipeline.artifacts.catalog import Catalog
    from pipeline.stages.index import run_index, summarize

    manifest, rejects = run_index(args.data_root, args.out)
    print(summarize(manifest, rejects))
    print(f"wrote {Catalog(args.out).manifest} and rejects.parquet")


def cmd_demo_data(args) -> None:
    from pipeline.stages.demo_data import generate_demo_data

    summary = generate_demo_data(args.out_dir, args.seed, args.patients, args.images_per_patient)
    print(f"SYNTHETIC demo data: {summary['images']} images of {summary['patients']} patients "
          f"({summary['benign_patients']} benign) in {args.out_dir} ({summary['seconds']} s)")


def cmd_split(args) -> None:
    from pipeline.core.splits import parse_ratios
    from pipeline.stages.split import run_split

    run_split(args.dir, args.mode, parse_ratios(args.ratios), args.seed, args.group_by, args.folds)


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
    return cfg, seed, fold


def cmd_train(args) -> None:
    from pipeline.stages.train import train_run

    cfg, seed, fold = resolve_train_args(args)
    train_run(args.dir, args.model, cfg.train, stain=args.stain, seed=seed, fold=fold, force=args.force)


def cmd_stain(args) -> None:
    from pipeline.stages.stain import run_stain

    run_stain(args.dir, args.method, target=args.target, fold=args.fold)


def cmd_ensemble(args) -> None:
    from pipeline.config import EnsembleConfig
    from pipeline.stages.ensemble import run_ensembles

    run_ensembles(args.dir, EnsembleConfig(stacking=not args.no_stacking, hard_tie_break=args.tie_break), seed=args.seed)


def cmd_evaluate(args) -> None:
    from pipeline.config import EvaluateConfig
    from pipeline.stages.evaluate import run_evaluate

    run_evaluate(args.dir, EvaluateConfig(bootstrap=args.bootstrap), seed=args.seed)


def cmd_gradcam(args) -> None:
    from pipeline.config import GradcamConfig
    from pipeline.stages.gradcam import run_gradcam, save_panel

    if args.panel:
        out = save_panel(args.dir, args.panel, args.method, args.out)
        print(f"wrote {out}")
        return
    cfg = GradcamConfig(methods=[args.method], split=args.split, max_images=args.max_images, target=args.target)
    run_gradcam(args.dir, cfg, runs=args.runs)


def cmd_summarize_folds(args) -> None:
    from pipeline.stages.evaluate import summarize_folds

    summary = summarize_folds(args.dirs, args.out)
    cols = [c for c in ("run_id", "split", "folds", "accuracy_mean", "accuracy_sd", "f1_mean", "f1_sd") if c in summary]
    print(summary[summary["split"] == "test"][cols].round(4).to_string(index=False))
    print(f"wrote {args.out}")


def cmd_run(args) -> None:
    from pipeline.config import load_config
    from pipeline.runner import run_pipeline

    cfg = load_config(args.config, args.set or [])
    if cfg.train.strategy == "multiworker":  # every process would run every stage and write the experiment
        raise PipelineError("strategy 'multiworker' needs one `python -m pipeline train` per machine (README \"Several GPUs "
                            "or machines\"); `run` trains in one process: use 'default' or 'mirrored'")
    run_pipeline(cfg, only=args.only)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description="histocompare batch pipeline")
    parser.add_argument("--verbose", action="store_true", help="show TensorFlow's start-up and C++ log lines")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("index", help="index a BreakHis folder tree into manifest.parquet")
    p.add_argument("data_root")
    p.add_argument("--out", required=True, help="experiment folder to write (e.g. artifacts/sample)")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("demo-data", help="generate SYNTHETIC BreakHis-shaped H&E-like images")
    p.add_argument("out_dir")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--patients", type=int, default=24)
    p.add_argument("--images-per-patient", type=int, default=8)
    p.set_defaults(func=cmd_demo_data)

    p = sub.add_parser("split", help="image-level (paper) or patient-level split")
    p.add_argument("dir")
    p.add_argument("--mode", choices=["paper", "patient"], required=True)
    p.add_argument("--ratios", default="0.7,0.15,0.15")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--group-by", default="patient_num", choices=["patient_id", "patient_num"])
    p.add_argument("--folds", type=int, default=1, help="independent repeats (BreakHis protocol: 5)")
    p.set_defaults(func=cmd_split)

    p = sub.add_parser(
        "train", help="train one EfficientNet and predict val/test",
        description="Train one backbone on an experiment folder. Without --config the recipe is the study's "
                    "(pipeline.config.TrainConfig defaults: ImageNet weights, 40 epochs, batch 32, Adam 1e-4 backbone / "
                    "1e-3 head, BatchNorm frozen, the study's trainable layers, float32). With --config PRESET.toml the "
                    "preset's [train], experiment.seed and split.fold apply, exactly as in `run --config PRESET.toml`. "
                    "The flags below and --set override either.")
    p.add_argument("dir")
    p.add_argument("--model", required=True)
    p.add_argument("--config", help="preset TOML (default: none, the study's recipe)")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                   help="override one config key, repeatable (e.g. --set train.mixed_precision=auto)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--image-size", type=int)
    p.add_argument("--weights", help="imagenet | none | path to .h5 / .weights.h5")
    p.add_argument("--stain", default="none", choices=["none", "vahadane", "macenko", "reinhard"])
    p.add_argument("--strategy", choices=["default", "mirrored", "multiworker"])
    p.add_argument("--warmup-epochs", type=int)
    p.add_argument("--early-stopping-patience", type=int)
    p.add_argument("--seed", type=int, help="default: experiment.seed of the config (0)")
    p.add_argument("--fold", type=int, help="default: split.fold of the config (0)")
    p.add_argument("--force", action="store_true", help="retrain even if up to date")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("stain", help="stain-normalize every image (cached, resumable)")
    p.add_argument("dir")
    p.add_argument("--method", default="vahadane", choices=["vahadane", "macenko", "reinhard"])
    p.add_argument("--target", default="auto", help="'auto' (rule on the train split) or an image_id from train")
    p.add_argument("--fold", type=int, default=0)
    p.set_defaults(func=cmd_stain)

    p = sub.add_parser("ensemble", help="soft/hard/weighted/stacking ensembles and subset search")
    p.add_argument("dir")
    p.add_argument("--tie-break", default="mean_prob", choices=["mean_prob", "benign"])
    p.add_argument("--no-stacking", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_ensemble)

    p = sub.add_parser("evaluate", help="metrics.parquet with patient-bootstrap CIs")
    p.add_argument("dir")
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("gradcam", help="Grad-CAM heatmaps (tf-keras-vis) cached for the dashboard")
    p.add_argument("dir")
    p.add_argument("--method", default="gradcam", choices=["gradcam", "gradcam++", "scorecam"])
    p.add_argument("--split", default="test", choices=["val", "test"])
    p.add_argument("--runs", nargs="*", help="run ids (default: every single-model run)")
    p.add_argument("--max-images", type=int, default=0)
    p.add_argument("--target", default="predicted", choices=["predicted", "true"])
    p.add_argument("--panel", metavar="IMAGE_ID", help="save the study's 2x5 multi-model panel of this image as PNG")
    p.add_argument("--out", help="PNG path for --panel (default DIR/gradcam/panel_<image>_<method>.png)")
    p.set_defaults(func=cmd_gradcam)

    p = sub.add_parser("summarize-folds", help="mean +- sd across experiments trained on different folds/repeats")
    p.add_argument("dirs", nargs="+", help="experiment folders, one per fold (each with metrics.parquet)")
    p.add_argument("--out", required=True, help="parquet to write, e.g. artifacts/patient_folds.parquet")
    p.set_defaults(func=cmd_summarize_folds)

    p = sub.add_parser("run", help="run every stage of a preset, skipping what is up to date")
    p.add_argument("--config", required=True, help="pipeline/configs/<preset>.toml")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override one config key, repeatable")
    p.add_argument("--only", nargs="*", help="subset of stages: data index split stain train ensemble evaluate gradcam")
    p.set_defaults(func=cmd_run)
    return parser


TF_COMMANDS = {"train", "ensemble", "gradcam", "run"}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.verbose:
        os.environ["HISTOCOMPARE_VERBOSE"] = "1"
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
    try:
        if args.command in TF_COMMANDS:
            from pipeline.ml.runtime import quiet_tensorflow

            quiet_tensorflow()
        args.func(args)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: completed work is saved; re-run the same command to resume", file=sys.stderr)
        return 130
    return 0
