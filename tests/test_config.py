"""Presets load and validate; a typo or a wrong type is an error that names the key."""

import pytest

from pipeline.config import PROJECT_ROOT, config_from_dict, load_config
from pipeline.core.errors import PipelineError

PRESETS = sorted((PROJECT_ROOT / "pipeline" / "configs").glob("*.toml"))


def test_all_four_presets_exist_and_load():
    assert {p.stem for p in PRESETS} >= {"demo", "sample", "paper", "patient"}
    for path in PRESETS:
        cfg = load_config(path)
        assert cfg.runs, path
    paper = load_config(PROJECT_ROOT / "pipeline" / "configs" / "paper.toml")
    assert paper.split.mode == "paper" and paper.train.weights == "imagenet" and paper.train.epochs == 40
    assert paper.train.lr_backbone == 1e-4 and paper.train.lr_head == 1e-3 and paper.train.freeze_batchnorm
    assert len({r.model for r in paper.runs}) == 10 and any(r.stain == "vahadane" for r in paper.runs)
    assert load_config(PROJECT_ROOT / "pipeline" / "configs" / "patient.toml").split.mode == "patient"
    demo = load_config(PROJECT_ROOT / "pipeline" / "configs" / "demo.toml")
    assert demo.experiment.synthetic and demo.train.weights == "none" and len({r.model for r in demo.runs}) == 10


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
