"""Weights policy (offline ImageNet, bad paths) and the `weights = "none"` build.

Flat build, trainable rule and parameter counts of all ten: tests/test_weights.py; the two learning
rates: tests/test_precision.py (float32 and mixed_float16)."""

import numpy as np
import pytest

from pipeline.core.errors import PipelineError
from pipeline.core.model_specs import get_spec
from pipeline.core.reference import STUDY_PARAMETER_COUNTS
from pipeline.ml.models import build_classifier, check_weights_available


def test_weights_none_builds_the_study_counts():
    """`weights = "none"` builds the graph that tests/test_weights.py checks for all ten with weights loaded."""
    model = build_classifier("efficientnet_v2_b1", 32, weights="none")  # partial window: layer order matters
    trainable = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    assert (model.count_params(), trainable) == STUDY_PARAMETER_COUNTS["efficientnet_v2_b1"]


def test_imagenet_offline_names_the_files(tmp_path, monkeypatch):
    import socket

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(socket, "create_connection", offline)
    with pytest.raises(PipelineError) as err:
        check_weights_available([get_spec("efficientnet_b0"), get_spec("efficientnet_v2_s")], "imagenet")
    msg = str(err.value)
    assert "efficientnetb0_notop.h5" in msg and "efficientnetv2-s_notop.h5" in msg and str(tmp_path) in msg
    assert 'weights = "none"' in msg
    (tmp_path / "models").mkdir()
    for f in ("efficientnetb0_notop.h5", "efficientnetv2-s_notop.h5"):
        (tmp_path / "models" / f).write_bytes(b"x")
    check_weights_available([get_spec("efficientnet_b0"), get_spec("efficientnet_v2_s")], "imagenet")


def test_weights_none_and_bad_path():
    check_weights_available([get_spec("efficientnet_b0")], "none")
    with pytest.raises(PipelineError, match="does not exist"):
        check_weights_available([get_spec("efficientnet_b0")], "/nope/weights.h5")
    with pytest.raises(PipelineError, match="unknown model"):
        get_spec("resnet50")
