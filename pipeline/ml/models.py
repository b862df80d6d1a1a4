"""The study's ten EfficientNet classifiers, built flat, with the published fine-tuning recipe.

Flat means the backbone's layers live directly in the classifier's graph (``input_tensor=``), not as
one nested layer: tf-keras-vis needs ``top_activation`` reachable from the model input for Grad-CAM.

Keras 3 has no ``MultiOptimizer``; :class:`TwoRateAdam` gives the final Dense layer its own learning
rate (the study: 1e-3 head, 1e-4 backbone) by scaling the rate inside Adam's per-variable update.
Keras is imported lazily so that light modules (config, dashboard) never pay TensorFlow's start-up.
"""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.core.errors import PipelineError
from pipeline.core.model_specs import ModelSpec, get_spec

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
        if not Path(weights).exists():
            raise PipelineError(f"weights file {weights} does not exist (use 'imagenet', 'none' or a path)")
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
                     augment: bool = True, freeze_batchnorm: bool = True, seed: int = 0, bn_momentum: float = 0.0):
    """Build the flat classifier of the study: [augmentation] -> backbone -> GAP -> Dropout -> Dense(2, softmax).

    Inputs are float RGB in [0, 255]; both families carry their own rescaling/normalisation layers.
    Pretrained weights are loaded into a standalone backbone first and copied by layer name, so the
    augmentation layers in front of the backbone cannot disturb Keras's weight loading.
    """
    import keras

    spec = get_spec(model_name)
    size = image_size or spec.size
    app = getattr(keras.applications, spec.keras_fn)
    inputs = keras.Input((size, size, 3), name="image")
    x = inputs
    if augment:  # preprocessing layers are identity at inference (training=False)
        x = keras.layers.RandomFlip("horizontal_and_vertical", seed=seed, name="aug_flip")(x)
        x = keras.layers.RandomRotation(0.1, fill_mode="reflect", seed=seed + 1, name="aug_rotate")(x)
        x = keras.layers.RandomTranslation(0.3, 0.3, fill_mode="reflect", seed=seed + 2, name="aug_translate")(x)
    base = app(include_top=False, weights=None, input_tensor=x, pooling=None)
    if weights != "none":
        load_backbone_weights(base, app, spec, size, weights)
    features = keras.layers.GlobalAveragePooling2D(name=FEATURE_LAYER)(base.output)
    features = keras.layers.Dropout(dropout, name="head_dropout")(features)
    # float32 head: under a mixed_float16 policy the softmax must not run in half precision
    outputs = keras.layers.Dense(2, activation="softmax", name=HEAD_LAYER, dtype="float32")(features)
    model = keras.Model(inputs, outputs, name=spec.short)
    set_trainable(model, base, spec, freeze_batchnorm)
    if bn_momentum:  # from scratch, the default 0.99 leaves inference statistics far from the data for many steps
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = bn_momentum
    return model


def load_backbone_weights(base, app, spec: ModelSpec, size: int, weights: str) -> None:
    source = "imagenet" if weights == "imagenet" else str(weights)
    try:
        donor = app(include_top=False, weights=source, input_shape=(size, size, 3))
    except Exception as exc:  # Keras raises a bare Exception on URL fetch failure
        if weights == "imagenet" and ("URL fetch failure" in str(exc) or "fetch" in str(exc).lower()):
            raise PipelineError(imagenet_help([spec])) from None
        raise PipelineError(f"could not load weights {weights!r} for {spec.name}: {exc}") from None
    for layer in donor.layers:
        if layer.weights:
            base.get_layer(layer.name).set_weights(layer.get_weights())


def set_trainable(model, base, spec: ModelSpec, freeze_batchnorm: bool = True) -> None:
    """The study's recipe: BN layers frozen, the rest trainable (V2B1/B2: only the last 300 backbone layers)."""
    import keras

    backbone_layers = [l for l in base.layers if not isinstance(l, keras.layers.InputLayer)]
    cut = len(backbone_layers) - spec.trainable_last if spec.trainable_last else 0
    for i, layer in enumerate(backbone_layers):
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

    A missing, truncated or corrupt file is a PipelineError naming it, not Keras's "File not found".
    """
    import keras

    problem = keras_file_problem(path)
    if problem:
        raise PipelineError(f"cannot load the model {path}: {problem}; retrain it with `python -m pipeline train ... --force`")
    two_rate_adam_class()
    return keras.models.load_model(path, safe_mode=True)
