"""docs/recipe.py, the study's recipe on one screen, is the recipe ``train`` fits: the model it builds step by step is
``build_classifier``'s (and has the study's published parameter counts), and its fit keeps the best epoch."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from conftest import PROJECT_ROOT
from pipeline.config import TrainConfig
from pipeline.core.reference import STUDY_PARAMETER_COUNTS


@pytest.fixture(scope="module")
def recipe():
    spec = importlib.util.spec_from_file_location("recipe", PROJECT_ROOT / "docs" / "recipe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _trainable(model) -> int:
    return int(sum(np.prod(w.shape) for w in model.trainable_weights))


def test_the_recipe_fits_trains_model_and_keeps_the_best_epoch(recipe):
    """One B0 at 32 px, 2 epochs on planted synthetic images (weights none: the study's are ImageNet's)."""
    from pipeline.ml.models import build_classifier

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (24, 32, 32, 3), dtype=np.uint8)
    y = np.arange(24) % 2
    x[y == 1, :, :, 0] = 255  # a planted, learnable difference: malignant images are red
    settings = TrainConfig(weights="none", batch_size=8, predict_batch_size=8)
    model, history, epoch = recipe.fine_tune(x[:16], y[:16], x[16:], y[16:], "efficientnet_b0", settings, epochs=2)
    val = history.history["val_accuracy"]
    assert len(val) == 2 and epoch == int(np.argmax(val)) + 1
    probs = model.predict(x[16:].astype("float32"), verbose=0)
    assert probs.shape == (8, 2) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    assert np.mean(probs.argmax(axis=1) == y[16:]) == pytest.approx(val[epoch - 1])  # the kept weights are that epoch's

    def layers(model):  # names aside (Keras numbers repeated auto-names: rescaling, rescaling_1, ...)
        return [(type(l).__name__, l.trainable, [tuple(w.shape) for w in l.weights]) for l in model.layers]

    product = build_classifier("efficientnet_b0", 32, weights="none")  # what `train` builds, with the study's defaults
    assert layers(model) == layers(product) and len(model.layers) > 200
    assert [l.name for l in model.layers][-3:] == [l.name for l in product.layers][-3:] == ["avg_pool", "head_dropout", "head_dense"]
    assert (model.count_params(), _trainable(model)) == STUDY_PARAMETER_COUNTS["efficientnet_b0"]  # the published counts
