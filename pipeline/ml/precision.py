"""Mixed precision (``mixed_float16``) as a scoped setting, and the optimizer behind Keras's loss scaling.

Why scoped: Keras's dtype policy is process-global. ``run`` trains several runs in one process and the
test suite builds many models in one process, so a run that turns mixed precision on must restore the
previous policy when it ends, also when it fails.
Why ``inner_optimizer``: under ``mixed_float16`` ``Model.compile`` wraps the optimizer in a
``LossScaleOptimizer``; our own attributes (``head_multiplier``) live on the wrapped optimizer.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

MIXED_POLICY = "mixed_float16"


def gpu_present() -> bool:
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def resolve_mixed_precision(setting: bool | str) -> bool:
    """``"auto"``: on exactly when a GPU is present; ``True`` forces it (also on CPU, slow); ``False``: float32."""
    if setting == "auto":
        return gpu_present()
    return bool(setting)


@contextmanager
def dtype_policy(mixed: bool) -> Iterator[None]:
    """Build, train and predict under ``mixed_float16`` when ``mixed``; the previous global policy comes back after."""
    import keras

    previous = keras.mixed_precision.global_policy()
    if mixed:
        keras.mixed_precision.set_global_policy(MIXED_POLICY)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def inner_optimizer(optimizer):
    """The optimizer that applies the updates (unwraps Keras's ``LossScaleOptimizer``)."""
    return getattr(optimizer, "inner_optimizer", optimizer)
