"""Presets load and validate; a typo or a wrong type is an error that names the key."""

import re
import pytest
from conftest import copy_experiment

from pipeline.config import PROJECT_ROOT, EnsembleConfig, TrainConfig, config_from_dict, load_config, resolve_config
from pipeline.core.errors import PipelineError

PRESETS = sorted((PROJECT_ROOT / "pipeline" / "configs").glob("*.toml"))


# The study's recipe, from its notebooks (README "The study's recipe"): independent of TrainConfig's defaults.
STUDY_TRAIN = {"epochs": 40, "batch_size": 32, "image_size": 0, "weights": "imagenet", "lr_backbone": 1e-4, "lr_head": 1e-3,
               "dropout": 0.3, "freeze_batchnorm": True, "unfreeze": "study", "augment": True, "warmup_epochs": 0,
               "early_stopping_patience": 0, "class_weights": False, "mixed_precision": False, "resize": "square"}
STUDY_STACKING = {"stacking_epochs": 40, "stacking_batch_size": 16, "stacking_reduce_lr": True}


def test_all_four_presets_exist_and_load():
    assert {p.stem for p in PRESETS} >= {"demo", "sample", "paper", "patient"}
    for path in PRESETS:
        cfg = load_config(path)
        assert cfg.runs, path
    for name in ("paper", "patient"):
        cfg = load_config(PROJECT_ROOT / "pipeline" / "configs" / f"{name}.toml")
        assert {k: getattr(cfg.train, k) for k in STUDY_TRAIN} == STUDY_TRAIN, name
        assert {k: getattr(cfg.ensemble, k) for k in STUDY_STACKING} == STUDY_STACKING, name
        assert len({r.model for r in cfg.runs}) == 10 and any(r.stain == "vahadane" for r in cfg.runs)
        assert cfg.split.mode == name and cfg.split.ratios == [0.7, 0.15, 0.15]
    demo = load_config(PROJECT_ROOT / "pipeline" / "configs" / "demo.toml")
    assert demo.experiment.synthetic and demo.train.weights == "none"
    # Both families, and a stained twin of an unstained run: the stain comparison and the V1/V2 contrast have data.
    assert {"efficientnet_b0", "efficientnet_v2_b0"} <= {r.model for r in demo.runs}
    assert ("efficientnet_b0", "vahadane") in {(r.model, r.stain) for r in demo.runs}
    assert demo.train.unfreeze == "all"  # from scratch every layer must learn


def test_train_defaults_are_the_study_recipe():
    """`train` without --config trains with TrainConfig's defaults; they must be the study's recipe."""
    assert {k: getattr(TrainConfig(), k) for k in STUDY_TRAIN} == STUDY_TRAIN
    assert {k: getattr(EnsembleConfig(), k) for k in STUDY_STACKING} == STUDY_STACKING


BASE = {"experiment": {"name": "x", "data_root": "/tmp/x"}}


@pytest.mark.parametrize("raw,key", [
    ({**BASE, "train": {"epoch": 3}}, "train.epoch"),
    ({**BASE, "train": {"epochs": "3"}}, "train.epochs"),
    ({**BASE, "split": {"mode": "random"}}, "split.mode"),
    ({**BASE, "runs": [{"model": "resnet50"}]}, "runs[0].model"),
    ({**BASE, "runs": [{"model": "efficientnet_b0", "stain": "macenk"}]}, "runs[0].stain"),
    ({**BASE, "trian": {}}, "trian"),
    ({**BASE, "split": {"ratios": [0.5, 0.5]}}, "ratios"),
    ({**BASE, "gradcam": {"methods": ["lime"]}}, "gradcam.methods"),
    ({**BASE, "train": {"mixed_precision": "sometimes"}}, "train.mixed_precision"),
    ({**BASE, "train": {"mixed_precision": 1}}, "train.mixed_precision"),
    ({**BASE, "train": {"unfreeze": "half"}}, "train.unfreeze"),
])
def test_bad_keys_and_values_name_the_key(raw, key):
    with pytest.raises(PipelineError) as err:
        config_from_dict(raw)
    assert key.split(".")[-1].split("[")[0] in str(err.value)


def test_missing_file_lists_presets(tmp_path):
    with pytest.raises(PipelineError, match="demo"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nepochs = 1")
    with pytest.raises(PipelineError, match="not valid TOML"):
        load_config(bad)


def test_set_overrides_are_typed_and_validated_like_the_file(tmp_path):
    preset = PROJECT_ROOT / "pipeline" / "configs" / "paper.toml"
    weights = tmp_path / "b0 notop.h5"  # a path with a space, unquoted; it must exist (checked like the file's key)
    weights.write_bytes(b"\x89HDF\r\n\x1a\n")
    cfg = resolve_config(preset, ["train.epochs=3", "train.lr_head=2e-3", "train.mixed_precision=auto",
                                  f"train.weights={weights}", "split.ratios=[0.8, 0.1, 0.1]", "train.jit_compile=true"])
    assert (cfg.train.epochs, cfg.train.lr_head, cfg.train.mixed_precision) == (3, 2e-3, "auto")
    assert cfg.train.weights == str(weights) and cfg.split.ratios == [0.8, 0.1, 0.1] and cfg.train.jit_compile is True
    assert cfg.train.batch_size == 32  # untouched keys keep the preset's value
    assert resolve_config(None, ["experiment.seed=4"], require_data_root=False).experiment.seed == 4
    for bad, key in [("train.epoch=3", "train.epoch"), ("train.epochs=three", "train.epochs"), ("trian.epochs=3", "trian"),
                     ("train.strategy=ring", "train.strategy"), ("epochs=3", "section.key=value"), ("runs.model=x", "runs"),
                     ("train.mixed_precision=yes", "train.mixed_precision"), ("train.epochs=0", "train.epochs")]:
        with pytest.raises(PipelineError) as err:
            resolve_config(preset, [bad])
        assert key in str(err.value) and "\n" not in str(err.value), bad


def test_cli_train_resolves_what_run_resolves(tmp_path, monkeypatch, capsys, demo_experiment):
    """The same run from `train --config P --set ...` and inside `run --config P --set ...` gets the same arguments,
    hence the same resolved config and config hash (train_run computes both from them and the data)."""
    import inspect

    from pipeline import cli
    from pipeline.stages import train

    calls = []
    signature = inspect.signature(train.train_run)

    def capture(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        calls.append({k: v for k, v in bound.arguments.items() if k not in ("exp_dir", "force", "callbacks")})
        return {"config_hash": "x"}

    monkeypatch.setattr(train, "train_run", capture)
    copy_experiment(demo_experiment, tmp_path / "exp")  # a real manifest and split: both paths plan the run from them
    preset = tmp_path / "p.toml"
    preset.write_text((PROJECT_ROOT / "pipeline" / "configs" / "patient.toml").read_text().replace(
        'name = "patient"', f'name = "patient"\nout_dir = "{tmp_path / "exp"}"').replace("seed = 0", "seed = 7")
        .replace('[[runs]]\nmodel = "efficientnet_b0"\nstain = "vahadane"\n', ""))  # its stain target is not this test's subject
    sets = ["--set", "train.epochs=2", "--set", "train.image_size=64", "--set", "train.weights=none"]  # offline here
    assert cli.main(["train", str(tmp_path / "exp"), "--model", "efficientnet_v2_b1", "--config", str(preset), *sets]) == 0
    assert cli.main(["run", "--config", str(preset), "--only", "train", *sets]) == 0
    from_run = [c for c in calls[1:] if c["model"] == "efficientnet_v2_b1" and c["stain"] == "none"]
    assert len(from_run) == 1 and calls[0] == from_run[0]
    assert calls[0]["seed"] == 7 and calls[0]["cfg"].epochs == 2 and calls[0]["cfg"].unfreeze == "study"
    # and without --config: the study's recipe, flags on top
    assert cli.main(["train", str(tmp_path / "exp"), "--model", "efficientnet_b0", "--epochs", "5"]) == 0
    assert calls[-1]["cfg"] == TrainConfig(epochs=5) and calls[-1]["seed"] == 0


def test_train_help_says_it_uses_the_study_recipe(capsys):
    from pipeline.cli import main

    assert main(["train", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "Without --config the recipe is the study's" in text and "--set SECTION.KEY=VALUE" in text


def test_cli_config_errors_are_one_line_exit_2(tmp_path, capsys):
    from pipeline.cli import main

    preset = str(PROJECT_ROOT / "pipeline" / "configs" / "sample.toml")
    for argv, words in [(["run", "--config", preset, "--set", "train.strategy=multiworker"], "one `python -m pipeline train` per"),
                        (["run", "--config", preset, "--set", "train.epoch=3"], "unknown config key 'train.epoch'"),
                        (["train", str(tmp_path), "--model", "efficientnet_b0", "--set", "train.mixed_precision=maybe"],
                         "train.mixed_precision")]:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert words in err and "\n" not in err, err


# -- issue 22: one rule table that covers every number -------------------------------------------------------------
def _numeric_fields():
    import dataclasses
    import typing

    from pipeline.config import Config, RunSpec

    sections = {f.name: typing.get_type_hints(Config)[f.name] for f in dataclasses.fields(Config) if f.name != "runs"}
    sections["runs"] = RunSpec
    for section, cls in sections.items():
        for name, typ in typing.get_type_hints(cls).items():
            members = typing.get_args(typ) or (typ,)
            if any(t in (int, float) for t in members):
                yield f"{section}.{name}"


def test_every_numeric_setting_has_a_rule_and_every_rule_a_setting():
    from pipeline.config import LIMITS

    numeric = set(_numeric_fields())
    assert {"ensemble.stacking_batch_size", "ensemble.stacking_patience", "gradcam.workers"} <= numeric  # the walk sees them
    assert sorted(numeric - set(LIMITS)) == []
    import dataclasses
    import typing

    from pipeline.config import Config, RunSpec
    known = {f"{s.name}.{n}" for s in dataclasses.fields(Config) if s.name != "runs"
             for n in typing.get_type_hints(typing.get_type_hints(Config)[s.name])} | {f"runs.{n}" for n in typing.get_type_hints(RunSpec)}
    assert sorted(set(LIMITS) - known) == []


@pytest.mark.parametrize("text, problem", [("[ensemble]\nstacking_batch_size = 0\n", "'ensemble.stacking_batch_size' must be >= 1"),
                                           ("[ensemble]\nstacking_patience = -1\n", "'ensemble.stacking_patience' must be >= 0")])
def test_stacking_settings_are_refused_in_one_line(text, problem):
    from pipeline.config import config_from_dict
    import tomllib

    with pytest.raises(PipelineError, match=re.escape(problem)):
        config_from_dict(tomllib.loads('[experiment]\ndata_root = "/tmp"\n' + text))
