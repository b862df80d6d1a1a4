"""Mixed precision (forced on CPU, as a GPU run would use it), XLA, and the two learning rates behind them.

The history test uses different backbone and head rates and compares them with the configured values, which
the optimizer does not echo: it records its own learning rate and multiplier."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from pipeline.artifacts.predictions import load_predictions
from pipeline.config import TrainConfig
from pipeline.ml.models import HEAD_LAYER, compile_classifier, load_classifier
from pipeline.ml.precision import dtype_policy, inner_optimizer, resolve_mixed_precision
from pipeline.stages.train import train_run

# Different rates for backbone and head, so a history that reported one for the other would fail.
LR_BACKBONE, LR_HEAD = 2e-4, 3e-3
MIXED = TrainConfig(epochs=1, batch_size=8, image_size=32, weights="none", freeze_batchnorm=False, unfreeze="all",
                    lr_backbone=LR_BACKBONE, lr_head=LR_HEAD, mixed_precision=True)


def tiny_classifier():
    """Conv "backbone" + the classifier's head names: what TwoRateAdam keys on, at a fraction of B0's tracing time."""
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="stem_conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    outputs = keras.layers.Dense(2, activation="softmax", name=HEAD_LAYER, dtype="float32")(x)
    return keras.Model(inputs, outputs)


def one_step(lr_backbone: float, lr_head: float, mixed: bool):
    """|weight change| of the head and the stem after one optimizer step that was really applied."""
    x = np.random.default_rng(0).random((8, 8, 8, 3)).astype("float32") * 255
    y = np.array([0, 1] * 4)
    with dtype_policy(mixed):
        model = compile_classifier(tiny_classifier(), lr_backbone, lr_head)
        head0 = model.get_layer(HEAD_LAYER).kernel.numpy().copy()
        stem0 = model.get_layer("stem_conv").kernel.numpy().copy()
        for _ in range(10):  # a loss-scaled step with overflowing gradients is skipped (and the scale halved)
            model.train_on_batch(x, y)
            if int(inner_optimizer(model.optimizer).iterations.numpy()) == 1:
                break
        assert int(inner_optimizer(model.optimizer).iterations.numpy()) == 1
        assert (type(model.optimizer).__name__ == "LossScaleOptimizer") == mixed
    return (np.abs(model.get_layer(HEAD_LAYER).kernel.numpy() - head0), np.abs(model.get_layer("stem_conv").kernel.numpy() - stem0))


@pytest.mark.parametrize("mixed", [False, True])
def test_two_learning_rates_are_applied(mixed):
    """Adam's first step moves every weight with a gradient well above epsilon by the learning rate itself
    (m/sqrt(v) = sign(g) after bias correction): the head by lr_head, the backbone by lr_backbone."""
    head, stem = one_step(1e-3, 1e-2, mixed)
    for delta, lr in ((head, 1e-2), (stem, 1e-3)):
        moved = delta[delta > lr / 100]
        assert moved.size > 0.5 * delta.size
        np.testing.assert_allclose(np.median(moved), lr, rtol=0.02)


def test_mixed_precision_trains_one_epoch(tmp_path, demo_experiment):
    import keras

    exp = tmp_path / "exp"
    shutil.copytree(demo_experiment, exp)
    before = keras.mixed_precision.global_policy().name
    info = train_run(exp, "efficientnet_b0", MIXED)
    assert keras.mixed_precision.global_policy().name == before == "float32"  # the global policy is restored
    run = json.loads((exp / "runs" / "v1_b0" / "run.json").read_text())
    assert info["mixed_precision"] is True and run["mixed_precision"] is True and run["xla"] is False
    history = pd.read_parquet(exp / "runs" / "v1_b0" / "history.parquet")
    assert history["lr_backbone"].tolist() == pytest.approx([LR_BACKBONE]) and history["lr_head"].tolist() == pytest.approx([LR_HEAD])
    assert np.isfinite(history["loss"]).all()

    model = load_classifier(exp / "runs" / "v1_b0" / "model.keras")
    assert model.get_layer("stem_conv").compute_dtype == "float16"  # the backbone really ran in half precision
    assert model.get_layer(HEAD_LAYER).compute_dtype == "float32"
    assert type(model.optimizer).__name__ == "LossScaleOptimizer"  # reloaded with its loss-scale state (a resume needs it)
    x = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    probs = keras.ops.convert_to_numpy(model(x, training=False))
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)  # a float16 softmax sums to 1 only within ~1e-3
    rows = load_predictions(exp)
    assert rows["prob_malignant"].dtype == np.float32 and rows["prob_malignant"].between(0, 1).all() and len(rows)


def tiny_build_classifier(name, size, weights, dropout, augment, *args, **kwargs):
    """Stand-in for build_classifier with the names train_run relies on: XLA-compiling B0's training step takes
    ~3 min on 2 CPU cores. What is tested here is the wiring; an XLA run of the real B0 is in README "Mixed precision"."""
    import keras

    from pipeline.ml.models import augmentation_layers

    inputs = keras.Input((size, size, 3))
    x = inputs
    for layer in augmentation_layers() if augment else []:
        x = layer(x)
    x = keras.layers.Conv2D(4, 3, name="stem_conv")(x)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    return keras.Model(inputs, keras.layers.Dense(2, activation="softmax", name=HEAD_LAYER, dtype="float32")(x))


def test_xla_is_in_effect_with_augmentation_in_the_input_pipeline(tmp_path, demo_experiment, monkeypatch):
    """Keras silently drops jit_compile for a model holding RandomRotation/RandomTranslation (XLA has no kernel for
    their ImageProjectiveTransformV3): with jit_compile the run must augment in tf.data and really compile."""
    from pipeline.stages import train

    exp = tmp_path / "exp"
    shutil.copytree(demo_experiment, exp)
    monkeypatch.setattr(train, "build_classifier", tiny_build_classifier)
    cfg = TrainConfig(**{**MIXED.__dict__, "mixed_precision": False, "jit_compile": True})
    info = train_run(exp, "efficientnet_b0", cfg)
    assert info["status"] == "complete" and info["xla"] is True
    assert np.isfinite(pd.read_parquet(exp / "runs" / "v1_b0" / "history.parquet")["loss"]).all()
    model = load_classifier(exp / "runs" / "v1_b0" / "model.keras")
    assert not any(layer.name.startswith("aug_") for layer in model.layers)


def test_augmentation_in_the_input_pipeline_changes_training_images_only():
    """With XLA the study's augmentation runs in tf.data: training batches are transformed, shapes and labels kept."""
    from pipeline.ml.data import make_dataset
    from pipeline.ml.models import augmentation_layers

    images = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(8) % 2
    plain = next(iter(make_dataset(images, labels, 8)))
    augmented = next(iter(make_dataset(images, labels, 8, augment=augmentation_layers(0))))
    assert augmented[0].shape == plain[0].shape and (augmented[1].numpy() == plain[1].numpy()).all()
    assert np.abs(augmented[0].numpy() - plain[0].numpy()).mean() > 10  # flips/rotations/shifts of random pixels


def test_auto_means_gpu_present(monkeypatch):
    from pipeline.ml import precision

    assert resolve_mixed_precision(True) and not resolve_mixed_precision(False)
    for present in (True, False):
        monkeypatch.setattr(precision, "gpu_present", lambda present=present: present)
        assert resolve_mixed_precision("auto") is present
