"""The study's ten EfficientNet classifiers, built flat, with the published fine-tuning recipe.

Flat means the backbone's layers live directly in the classifier's graph (``input_tensor=``), not as
one nested layer: tf-keras-vis needs ``top_activation`` reachable from the model input for Grad-CAM.

Keras 3 has no ``MultiOptimizer``; :class:`TwoRateAdam` gives the final Dense layer its own learning
rate (the study: 1e-3 head, 1e-4 backbone) by scaling the rate inside Adam's per-variable update.
Keras is imported lazily so that light modules (config, dashboard) never pay TensorFlow's start-up.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from pipeline.core.errors import PipelineError
from pipeline.core.model_specs import STUDY_TRAINABLE_TAIL, UNFREEZE_RULES, ModelSpec, get_spec

HEAD_LAYER = "head_dense"
FEATURE_LAYER = "avg_pool"
GRADCAM_LAYER = "top_activation"


def keras_cache_dir() -> Path:
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"


def imagenet_help(specs: list[ModelSpec]) -> str:
    """One line (the CLI's errors are one line each): which files to place where, and the alternatives."""
    files = ", ".join(s.weights_file for s in specs)
    return (
        "ImageNet weights could not be downloaded (this machine seems offline). Either place the original Keras "
        f"files {files} in {keras_cache_dir()} (Keras checks their hashes, only the originals work; "
        "download them on a connected machine from https://storage.googleapis.com/keras-applications/ or run "
        "keras.applications.<Model>(weights='imagenet') there and copy ~/.keras/models), or set "
        "`weights = \"none\"` (train from scratch) or `weights = \"/path/to/file.h5\"` in the config / --weights."
    )


def check_weights_available(specs: list[ModelSpec], weights: str) -> None:
    """Fail before any training if pretrained weights cannot be had (never silently substitute others)."""
    if weights == "none":
        return
    if weights != "imagenet":
        if not Path(weights).is_file():
            raise PipelineError(f"weights file {weights} does not exist (use 'imagenet', 'none' or a path)")
        import h5py

        if not h5py.is_hdf5(weights):
            raise PipelineError(f"weights file {weights} is not an HDF5 weights file (.h5 as Keras distributes them, or .weights.h5)")
        return
    missing = [s for s in specs if not (keras_cache_dir() / s.weights_file).exists()]
    if not missing:
        return
    import socket

    try:
        socket.create_connection(("storage.googleapis.com", 443), timeout=3).close()
    except OSError:
        raise PipelineError(imagenet_help(missing)) from None


def two_rate_adam_class():
    """Create (once) and return the registered ``TwoRateAdam`` optimizer class."""
    global _TWO_RATE_ADAM
    if _TWO_RATE_ADAM is not None:
        return _TWO_RATE_ADAM
    import keras

    @keras.saving.register_keras_serializable(package="histocompare")
    class TwoRateAdam(keras.optimizers.Adam):
        """Adam whose variables under ``head_prefix`` use ``learning_rate * head_multiplier``.

        Keras 3 dropped MultiOptimizer; scaling inside ``update_step`` keeps one optimizer (one state
        to checkpoint, one set of iterations) and works under tf.distribute, since the TF backend calls
        ``update_step`` once per variable.
        """

        def __init__(self, learning_rate=1e-4, head_multiplier=10.0, head_prefix=HEAD_LAYER + "/", **kwargs):
            super().__init__(learning_rate=learning_rate, **kwargs)
            self.head_multiplier = float(head_multiplier)
            self.head_prefix = head_prefix
            self._head_indices: set[int] = set()

        def build(self, var_list):
            super().build(var_list)
            self._head_indices = {self._get_variable_index(v) for v in var_list if v.path.startswith(self.head_prefix)}

        def update_step(self, gradient, variable, learning_rate):
            if self._get_variable_index(variable) in self._head_indices:
                learning_rate = learning_rate * self.head_multiplier
            return super().update_step(gradient, variable, learning_rate)

        def get_config(self):
            config = super().get_config()
            config.update(head_multiplier=self.head_multiplier, head_prefix=self.head_prefix)
            return config

    _TWO_RATE_ADAM = TwoRateAdam
    return TwoRateAdam


_TWO_RATE_ADAM = None


def build_classifier(model_name: str, image_size: int = 0, weights: str = "imagenet", dropout: float = 0.3,
                     augment: bool = True, freeze_batchnorm: bool = True, seed: int = 0, bn_momentum: float = 0.0,
                     unfreeze: str = "study"):
    """Build the flat classifier of the study: [augmentation] -> backbone -> GAP -> Dropout -> Dense(2, softmax).

    Inputs are float RGB in [0, 255]; both families carry their own rescaling/normalisation layers.
    ``unfreeze`` is the trainable rule (:func:`set_trainable`); "study" reproduces the study's published
    parameter counts. Layers take the current global dtype policy (set it first for mixed precision).
    """
    import keras

    spec = get_spec(model_name)
    size = image_size or spec.size
    inputs = keras.Input((size, size, 3), name="image")
    x = inputs
    if augment:  # preprocessing layers are identity at inference (training=False)
        for layer in augmentation_layers(seed):
            x = layer(x)
    base = backbone_with_weights(spec, x, weights)
    features = keras.layers.GlobalAveragePooling2D(name=FEATURE_LAYER)(base.output)
    features = keras.layers.Dropout(dropout, name="head_dropout")(features)
    # float32 head: under a mixed_float16 policy the softmax must not run in half precision
    outputs = keras.layers.Dense(2, activation="softmax", name=HEAD_LAYER, dtype="float32")(features)
    model = keras.Model(inputs, outputs, name=spec.short)
    set_trainable(model, spec, unfreeze, freeze_batchnorm)
    if bn_momentum:  # from scratch, the default 0.99 leaves inference statistics far from the data for many steps
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = bn_momentum
    return model


def augmentation_layers(seed: int = 0) -> list:
    """The study's augmentation: flips, rotation 0.1, translation 0.3, reflect fill (active only in training).

    Keras refuses XLA for a model that contains RandomRotation/RandomTranslation (XLA has no kernel for their
    ImageProjectiveTransformV3) and silently trains without it, so with ``jit_compile`` the training stage
    applies these same layers in the tf.data pipeline instead (:func:`pipeline.ml.data.make_dataset`).
    """
    import keras

    return [keras.layers.RandomFlip("horizontal_and_vertical", seed=seed, name="aug_flip"),
            keras.layers.RandomRotation(0.1, fill_mode="reflect", seed=seed + 1, name="aug_rotate"),
            keras.layers.RandomTranslation(0.3, 0.3, fill_mode="reflect", seed=seed + 2, name="aug_translate")]


# Keras's ImageNet std for V1 (keras/src/applications/efficientnet.py IMAGENET_STDDEV_RGB). Its V1 ImageNet files
# store these stds as the Normalization *variance*, so Keras's ImageNet model divides once more by sqrt(std).
IMAGENET_STDDEV_RGB = (0.229, 0.224, 0.225)


def backbone_with_weights(spec: ModelSpec, x, weights: str):
    """Keras's own application, built flat on ``x`` (``input_tensor=``), with ``weights`` loaded by Keras's loaders.

    Flat: tf-keras-vis needs ``top_activation`` reachable from the classifier's input (a nested backbone
    breaks Grad-CAM). ``"imagenet"`` is Keras's own ImageNet build (V1 with its ``Rescaling(1/sqrt(std))``).
    A path is loaded with ``Model.load_weights`` (legacy ``.h5`` as Keras distributes them, or ``.weights.h5``);
    the augmentation layers in front hold no weights, so both loaders see exactly the backbone's layers.
    A V1 file is an ImageNet-convention file: it gets the same rescaling, folded into the ``Normalization``
    variance (:func:`fold_v1_imagenet_rescaling`). Every failure is a one-line :class:`PipelineError`.
    """
    import keras

    app = getattr(keras.applications, spec.keras_fn)
    if weights == "imagenet":
        try:
            return app(include_top=False, weights="imagenet", input_tensor=x)
        except Exception as exc:  # Keras raises a bare Exception on URL fetch failure
            if "fetch" in str(exc).lower():
                raise PipelineError(imagenet_help([spec])) from None
            raise PipelineError(f"could not load the ImageNet weights of {spec.name}: {_first_line(exc)}") from None
    base = app(include_top=False, weights=None, input_tensor=x)
    if weights == "none":
        return base
    path = Path(weights)
    if not path.is_file():
        raise PipelineError(f"weights file {weights} does not exist (use 'imagenet', 'none' or a path)")
    with warnings.catch_warnings(record=True) as caught:  # Keras warns about each skipped group, then raises
        warnings.simplefilter("always")
        try:
            base.load_weights(str(path))
        except Exception as exc:  # layer count or shape mismatch, not HDF5, another model ...
            raise PipelineError(f"weights file {weights} does not fit {spec.name} ({spec.keras_fn}, no top): "
                                f"{_first_line(exc)}") from None
    for w in caught:  # loaded: nothing is hidden
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if spec.family == "v1":
        fold_v1_imagenet_rescaling(base)
    return base


def fold_v1_imagenet_rescaling(base) -> None:
    """Give a V1 backbone loaded from a file what Keras's ImageNet V1 computes after its ``Normalization``:
    ``(x - mean) / sqrt(var) / sqrt(std)`` = ``(x - mean) / sqrt(var * std)``, so ``var := var * std``.

    Folded rather than inserted as a layer so that the backbone stays Keras's own graph, built once.
    """
    import keras

    norm = next(l for l in base.layers if isinstance(l, keras.layers.Normalization))
    mean, variance, count = norm.get_weights()
    norm.set_weights([mean, (variance.reshape(-1) * np.asarray(IMAGENET_STDDEV_RGB, variance.dtype)).reshape(variance.shape), count])
    norm.finalize_state()  # Normalization bakes mean/variance into constants here (Keras's loaders call it too)


def _first_line(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split())  # one line, whatever Keras/h5py put in the message
    return (text[:limit] + "...") if len(text) > limit else (text or type(exc).__name__)


def set_trainable(model, spec: ModelSpec, unfreeze: str = "study", freeze_batchnorm: bool = True) -> None:
    """The trainable rule. ``"study"``: only the layers in the last ``STUDY_TRAINABLE_TAIL[family]`` of
    ``model.layers`` (head included) train, which reproduces all ten of the study's published trainable
    parameter counts (README "Trainable layers"); ``"all"``: every layer. BatchNormalization layers are
    frozen when ``freeze_batchnorm`` (the study), which in Keras 3 also runs them in inference mode.
    """
    import keras

    if unfreeze not in UNFREEZE_RULES:
        raise PipelineError(f"unknown unfreeze rule {unfreeze!r} (one of {', '.join(UNFREEZE_RULES)})")
    layers = model.layers
    cut = max(0, len(layers) - STUDY_TRAINABLE_TAIL[spec.family]) if unfreeze == "study" else 0
    for i, layer in enumerate(layers):
        layer.trainable = i >= cut
        if freeze_batchnorm and isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False


def compile_classifier(model, lr_backbone: float = 1e-4, lr_head: float = 1e-3, jit_compile: bool | str = False):
    import keras

    optimizer = two_rate_adam_class()(learning_rate=lr_backbone, head_multiplier=lr_head / lr_backbone)
    model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(),
                  metrics=["accuracy"], jit_compile=jit_compile)
    return model


KERAS_ARCHIVE_MEMBERS = ("config.json", "model.weights.h5")


def keras_file_problem(path: Path | str) -> str | None:
    """Why a ``.keras`` file cannot be loaded (missing, truncated, corrupt zip), or None when it looks whole.

    A ``.keras`` file is a zip archive; a truncated one has no central directory, and a damaged member fails its
    CRC, which this finds without building a model (about a second for the largest backbones' checkpoints).
    """
    import zipfile

    path = Path(path)
    if not path.is_file():
        return "missing"
    try:
        if not zipfile.is_zipfile(path):
            return "not a complete .keras archive (truncated or overwritten)"
        with zipfile.ZipFile(path) as archive:
            missing = [m for m in KERAS_ARCHIVE_MEMBERS if m not in archive.namelist()]
            if missing:
                return f"the archive lacks {', '.join(missing)}"
            damaged = archive.testzip()
            if damaged:
                return f"{damaged} in the archive is damaged"
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        return f"unreadable ({exc})"
    return None


def load_classifier(path: Path | str):
    """Load a saved classifier with ``safe_mode=True`` (our optimizer class is registered first).

    A missing, truncated or corrupt file is a PipelineError naming it, not Keras's "File not found". A model built
    under ``mixed_float16`` (its layers say so) is loaded under that policy: the reloaded model takes the global
    policy, and only under ``mixed_float16`` does Keras wrap its optimizer in the ``LossScaleOptimizer`` whose
    state was saved (otherwise it skips the optimizer state with a warning).
    """
    import json
    import zipfile

    import keras

    from pipeline.ml.precision import MIXED_POLICY, dtype_policy

    problem = keras_file_problem(path)
    if problem:
        raise PipelineError(f"cannot load the model {path}: {problem}; retrain it with `python -m pipeline train ... --force`")
    two_rate_adam_class()
    with zipfile.ZipFile(path) as archive:
        config = json.loads(archive.read("config.json"))
    dtypes = [(layer.get("config") or {}).get("dtype") for layer in config.get("config", {}).get("layers", [])]
    mixed = any(isinstance(d, dict) and (d.get("config") or {}).get("name") == MIXED_POLICY for d in dtypes)
    with dtype_policy(mixed):
        return keras.models.load_model(path, safe_mode=True)
