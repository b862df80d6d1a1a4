"""The ten backbones: flat build, the study's frozen/trainable layers, two learning rates, weights policy."""

import numpy as np
import pytest

from pipeline.core.errors import PipelineError
from pipeline.core.model_specs import MODEL_SPECS, get_spec
from pipeline.ml.models import build_classifier, check_weights_available, two_rate_adam_class


@pytest.mark.parametrize("name", list(MODEL_SPECS))
def test_builder_is_flat_with_study_trainability(name):
    import keras

    model = build_classifier(name, 32, weights="none")
    assert model.get_layer("top_activation") is not None  # reachable: Grad-CAM works on flat models only
    assert not any(isinstance(l, keras.Model) for l in model.layers)
    assert model.output_shape == (None, 2) and model.get_layer("head_dense").trainable
    bn = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
    assert bn and not any(l.trainable for l in bn)
    weighted = [l for l in model.layers if l.weights and not isinstance(l, keras.layers.BatchNormalization)
                and not l.name.startswith("head_") and not l.name.startswith("aug_")]
    trainable = [l for l in weighted if l.trainable]
    if get_spec(name).trainable_last:
        assert 0 < len(trainable) < len(weighted)  # V2B1/V2B2: only the last 300 backbone layers
        assert not model.get_layer("stem_conv").trainable
    else:
        assert len(trainable) == len(weighted)


def test_two_learning_rates_are_applied():
    """One Adam step from identical weights: head moves 10x as far with multiplier 10, backbone the same."""
    import keras

    x = np.random.default_rng(0).random((8, 32, 32, 3)).astype("float32") * 255
    y = np.array([0, 1] * 4)
    deltas = {}
    for mult in (1.0, 10.0):
        keras.utils.set_random_seed(0)
        model = build_classifier("efficientnet_b0", 32, weights="none", augment=False, dropout=0.0)
        model.compile(optimizer=two_rate_adam_class()(learning_rate=1e-2, head_multiplier=mult),
                      loss="sparse_categorical_crossentropy")
        head0 = model.get_layer("head_dense").kernel.numpy().copy()
        stem0 = model.get_layer("stem_conv").kernel.numpy().copy()
        model.train_on_batch(x, y)
        deltas[mult] = (np.abs(model.get_layer("head_dense").kernel.numpy() - head0),
                        np.abs(model.get_layer("stem_conv").kernel.numpy() - stem0))
    moved = deltas[1.0][0] > 1e-5  # well above float32 rounding of the weights themselves
    assert moved.mean() > 0.5
    np.testing.assert_allclose(deltas[10.0][0][moved] / deltas[1.0][0][moved], 10.0, rtol=1e-2)
    np.testing.assert_allclose(deltas[10.0][1], deltas[1.0][1], rtol=1e-5, atol=1e-12)


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
