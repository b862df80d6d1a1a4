"""The study's recipe on one screen: build, set trainable, compile and fit one EfficientNet classifier.

Read it top to bottom, like keras-io's "Image classification via fine-tuning with EfficientNet". Every step calls
the product's own function (``pipeline/ml/models.py``, ``pipeline/ml/data.py``) with the study's settings
(``pipeline.config.TrainConfig``'s defaults), so this is what ``histocompare train`` fits. What ``train`` adds
around it is bookkeeping, not recipe: resume points, the run folder, predictions, features and ``run.json``
(``pipeline/stages/train.py``).

    python docs/recipe.py artifacts/sample --model efficientnet_b0            # an indexed, split experiment
    python docs/recipe.py artifacts/demo --model efficientnet_b0 --weights none --epochs 2 --image-size 64

``tests/test_recipe.py`` runs it (32 px, weights none, synthetic images) and checks that the model built step by
step below is the model ``train`` builds, layer for layer.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import keras
import numpy as np

if __package__ in (None, ""):  # `python docs/recipe.py` from the checkout: the product is the folder above
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.config import TrainConfig  # noqa: E402
from pipeline.core.model_specs import get_spec  # noqa: E402
from pipeline.ml.data import make_dataset  # noqa: E402
from pipeline.ml.models import (FEATURE_LAYER, HEAD_LAYER, augmentation_layers, backbone_with_weights,  # noqa: E402
                                compile_classifier, set_trainable)

# The study's settings: ImageNet weights, 40 epochs, batch 32, Adam at 1e-4 for the backbone and 1e-3 for the head,
# dropout 0.3, BatchNorm frozen, only the last 300 (V1) / 320 (V2) layers trainable, float32, augmentation on.
STUDY = TrainConfig()


def build(model_name: str, image_size: int = 0, settings: TrainConfig = STUDY, seed: int = 0):
    """1-2. The classifier, built flat, with the study's trainable layers."""
    spec = get_spec(model_name)
    size = image_size or spec.size  # the study's size per model (224 for B0 ... 380 for V2-S)

    # 1. Build. Inputs are RGB in [0, 255]: both EfficientNet families rescale and normalise inside the model.
    #    Augmentation (flips, rotation 0.1, translation 0.3, reflect fill) is part of the model and only acts in fit().
    #    The backbone is Keras's own application built on our tensor (input_tensor=), so its layers sit directly in
    #    the classifier's graph: Grad-CAM needs `top_activation` reachable from the input.
    inputs = keras.Input((size, size, 3), name="image")
    x = inputs
    for layer in augmentation_layers(seed):
        x = layer(x)
    backbone = backbone_with_weights(spec, x, settings.weights)
    x = keras.layers.GlobalAveragePooling2D(name=FEATURE_LAYER)(backbone.output)  # the features the neighbours use
    x = keras.layers.Dropout(settings.dropout, name="head_dropout")(x)
    outputs = keras.layers.Dense(2, activation="softmax", name=HEAD_LAYER, dtype="float32")(x)  # benign, malignant
    model = keras.Model(inputs, outputs, name=spec.short)

    # 2. Set trainable. Not "freeze the base, train the top, then unfreeze": the study trains from the first epoch with
    #    the last 300 (V1) / 320 (V2) layers of the model trainable (its published parameter counts say so) and every
    #    BatchNormalization frozen, which in Keras 3 also runs them in inference mode.
    set_trainable(model, spec, settings.unfreeze, settings.freeze_batchnorm)
    return model


class KeepBest(keras.callbacks.Callback):
    """5b. The kept model is the epoch with the best validation accuracy (the first one, on a tie)."""

    best, epoch, weights = None, None, None

    def on_epoch_end(self, epoch, logs=None):
        if self.best is None or logs["val_accuracy"] > self.best:
            self.best, self.epoch, self.weights = logs["val_accuracy"], epoch + 1, self.model.get_weights()


def fine_tune(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, model_name: str,
              settings: TrainConfig = STUDY, epochs: int = 0, image_size: int = 0, seed: int = 0):
    """The whole recipe: returns (the model at its best epoch, Keras's history, that epoch).

    ``x_*``: uint8 images (N, size, size, 3), as ``pipeline.ml.data.load_images`` decodes and caches them;
    ``y_*``: 0 benign, 1 malignant.
    """
    keras.utils.set_random_seed(seed)
    model = build(model_name, image_size or x_train.shape[1], settings, seed)

    # 3. Compile: one Adam whose head variables step 10x faster (Keras 3 has no MultiOptimizer; TwoRateAdam scales the
    #    rate inside the update), sparse categorical cross-entropy on the two softmax outputs, accuracy.
    compile_classifier(model, settings.lr_backbone, settings.lr_head)

    # 4. Data: shuffled batches of the cached uint8 images, cast to float [0, 255] per batch.
    train = make_dataset(x_train, y_train, settings.batch_size, shuffle=True, seed=seed)
    val = make_dataset(x_val, y_val, settings.predict_batch_size)

    # 5. Fit every epoch (no early stopping in the study) and keep the best validation accuracy.
    best = KeepBest()
    history = model.fit(train, validation_data=val, epochs=epochs or settings.epochs, verbose=0, callbacks=[best])
    model.set_weights(best.weights)
    return model, history, best.epoch


def main(argv: list[str] | None = None) -> int:
    """Fit one run on an experiment folder's train/val split and print its validation accuracy (writes nothing)."""
    from pipeline.artifacts.experiment import data_root_of, load_split_frame
    from pipeline.ml.data import load_images

    parser = argparse.ArgumentParser(prog="python docs/recipe.py", description=__doc__.splitlines()[0])
    parser.add_argument("dir", help="an indexed, split experiment folder (histocompare run --only index split)")
    parser.add_argument("--model", default="efficientnet_b0")
    parser.add_argument("--weights", default=STUDY.weights, help="imagenet (the study) | none | path")
    parser.add_argument("--epochs", type=int, default=STUDY.epochs)
    parser.add_argument("--image-size", type=int, default=0, help="0: the model's study size")
    args = parser.parse_args(argv)
    settings = TrainConfig(weights=args.weights)
    frame = load_split_frame(args.dir)
    size = args.image_size or get_spec(args.model).size
    images = load_images(Path(args.dir), data_root_of(args.dir), frame, size, write_cache=False)
    part = {s: np.flatnonzero(frame["split"].to_numpy() == s) for s in ("train", "val")}
    labels = frame["label"].to_numpy()
    model, history, epoch = fine_tune(images[part["train"]], labels[part["train"]], images[part["val"]], labels[part["val"]],
                                      args.model, settings, args.epochs, size)
    print(f"{args.model}: best epoch {epoch}, val accuracy {history.history['val_accuracy'][epoch - 1]:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
