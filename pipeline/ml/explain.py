"""Grad-CAM, Grad-CAM++ and Faster-ScoreCAM maps with tf-keras-vis, and their deletion faithfulness score.

Maps target a class on ``top_activation`` with the softmax replaced by a linear output (``ReplaceToLinear``),
computed in batches; upsampling is tf-keras-vis's own (scipy zoom, order 1) for every method, so maps of
different methods are comparable.
"""

from __future__ import annotations

import numpy as np

from pipeline.ml.models import GRADCAM_LAYER


def make_explainer(model, method: str):
    from tf_keras_vis.gradcam import Gradcam
    from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus
    from tf_keras_vis.scorecam import Scorecam
    from tf_keras_vis.utils.model_modifiers import ReplaceToLinear

    cls = {"gradcam": Gradcam, "gradcam++": GradcamPlusPlus, "scorecam": Scorecam}[method]
    return cls(model, model_modifier=ReplaceToLinear(), clone=True)


def compute_maps(model, images: np.ndarray, classes: np.ndarray, method: str = "gradcam", batch_size: int = 16) -> np.ndarray:
    """(N, H, W) float maps in [0, 1] for ``images`` (float-convertible, 0-255) and target ``classes``."""
    import warnings

    from tf_keras_vis.utils.scores import CategoricalScore

    explainer = make_explainer(model, method)
    out = []
    for start in range(0, len(images), batch_size):
        x = np.asarray(images[start : start + batch_size], dtype=np.float32)
        kwargs = {"penultimate_layer": GRADCAM_LAYER}
        if method == "scorecam":
            kwargs["max_N"] = 10  # Faster-ScoreCAM
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cam = explainer(CategoricalScore([int(c) for c in classes[start : start + batch_size]]), x, **kwargs)
        out.append(np.nan_to_num(np.asarray(cam, dtype=np.float32), nan=0.0))
    maps = np.concatenate(out) if out else np.zeros((0,) + images.shape[1:3], np.float32)
    return np.clip(maps, 0.0, 1.0)


def deletion_auc(model, images: np.ndarray, maps: np.ndarray, classes: np.ndarray, steps: int = 10,
                 batch_size: int = 64) -> np.ndarray:
    """Mean target-class probability as the most salient pixels are greyed out (0%..90% deleted)."""
    n, h, w = maps.shape
    order = np.argsort(-maps.reshape(n, -1), axis=1)
    fractions = np.arange(steps) / steps
    probs = np.zeros((n, steps))
    grey = np.float32(127.5)
    for s, frac in enumerate(fractions):
        x = np.asarray(images, dtype=np.float32).copy()
        k = int(round(frac * h * w))
        if k:
            rows = np.repeat(np.arange(n), k)
            flat = order[:, :k].ravel()
            x.reshape(n, h * w, 3)[rows, flat] = grey
        p = model.predict(x, batch_size=batch_size, verbose=0)
        probs[:, s] = p[np.arange(n), classes]
    return probs.mean(axis=1)
