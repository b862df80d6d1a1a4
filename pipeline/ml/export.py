"""``export``: one Keras model per ensemble, for a deployment or a colleague (no pipeline needed to run it).

The model takes RGB images as float 0-255 of any size (a batch shares one size) and returns the ensemble's score,
the ``prob_malignant`` its rows in ``predictions.parquet`` hold: the (weighted) mean probability for soft and
weighted voting, the share of malignant votes for hard voting, the meta-model's probability for stacking.
Inside the graph, each member sees exactly the pixels the pipeline gives it: :class:`CachedPixels` resizes to the
member's own input size (bilinear, as the image cache), then rounds and clips to 0..255 as the cache's uint8 does.
Stacking features pass through :class:`Float16Features` because the pipeline stores pooled features as float16.

Loading needs only Keras and these registered layers: ``import pipeline.ml.export`` then
``keras.models.load_model(path, safe_mode=True)`` (no Lambda layers, nothing unsafe).
"""

from __future__ import annotations

import keras
import numpy as np

PACKAGE = "histocompare"


@keras.saving.register_keras_serializable(package=PACKAGE)
class CachedPixels(keras.layers.Layer):
    """Resize to ``size`` x ``size`` (bilinear, no antialiasing), round and clip to 0..255: the image cache's pixels."""

    def __init__(self, size: int, **kwargs):
        super().__init__(**kwargs)
        self.size = int(size)

    def call(self, images):
        resized = keras.ops.image.resize(images, (self.size, self.size), interpolation="bilinear")
        return keras.ops.clip(keras.ops.round(resized), 0.0, 255.0)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.size, self.size, input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "size": self.size}


@keras.saving.register_keras_serializable(package=PACKAGE)
class Float16Features(keras.layers.Layer):
    """Round features to float16 and back, as ``features.npz`` stores them for the stacking meta-model."""

    def call(self, x):
        return keras.ops.cast(keras.ops.cast(x, "float16"), "float32")


@keras.saving.register_keras_serializable(package=PACKAGE)
class EnsembleScore(keras.layers.Layer):
    """The pipeline's ensemble score from the members' softmax outputs (``pipeline.core.ensemble``'s rules)."""

    def __init__(self, method: str, weights: list[float] | None = None, threshold: float = 0.5, **kwargs):
        super().__init__(**kwargs)
        if method not in ("soft", "hard", "weighted"):
            raise ValueError(f"EnsembleScore: unknown method {method!r}")
        self.method, self.threshold = method, float(threshold)
        self.member_weights = [float(w) for w in weights] if weights is not None else None

    def call(self, member_outputs):
        probs = keras.ops.stack([out[:, 1] for out in member_outputs], axis=1)  # (images, members)
        if self.method == "soft":
            return keras.ops.mean(probs, axis=1)
        if self.method == "hard":
            return keras.ops.mean(keras.ops.cast(probs >= self.threshold, "float32"), axis=1)
        w = np.asarray(self.member_weights, dtype=np.float32)
        return keras.ops.sum(probs * (w / w.sum())[None, :], axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0],)

    def get_config(self):
        return {**super().get_config(), "method": self.method, "weights": self.member_weights, "threshold": self.threshold}


@keras.saving.register_keras_serializable(package=PACKAGE)
class MalignantColumn(keras.layers.Layer):
    """Column 1 (malignant) of a softmax output."""

    def call(self, x):
        return x[:, 1]

    def compute_output_shape(self, input_shape):
        return (input_shape[0],)


def build_ensemble_model(members: dict[str, tuple[keras.Model, int]], method: str, weights: list[float] | None = None,
                         threshold: float = 0.5, meta_model: keras.Model | None = None, feature_layer: str = "") -> keras.Model:
    """One model: image -> every member at its own size -> the combination rule. ``members``: run id -> (model, size)."""
    image = keras.Input((None, None, 3), name="image")
    outputs, features = [], []
    for run_id, (model, size) in members.items():
        pixels = CachedPixels(size, name=f"pixels_{run_id}")(image)
        if method == "stacking":
            both = keras.Model(model.input, [model.output, model.get_layer(feature_layer).output], name=run_id)
            _, feats = both(pixels, training=False)  # inference always: augmentation and dropout off
            features.append(Float16Features(name=f"features_{run_id}")(feats))
        else:
            model.name = run_id
            outputs.append(model(pixels, training=False))
    if method == "stacking":
        joined = keras.layers.Concatenate(name="features")(features) if len(features) > 1 else features[0]
        meta_model.name = "stacking"
        score = MalignantColumn(name="prob_malignant")(meta_model(joined, training=False))
    else:
        score = EnsembleScore(method, weights, threshold, name="prob_malignant")(outputs)
    return keras.Model(image, score, name="histocompare_ensemble")
