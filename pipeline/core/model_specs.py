"""The study's ten backbones as data: names, run-id short names, families, input sizes, weight files.

Pure data (no Keras), so configuration, artifact readers and the dashboard can order and label runs
without importing TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.core.errors import PipelineError


@dataclass(frozen=True)
class ModelSpec:
    name: str  # e.g. efficientnet_v2_b0
    short: str  # e.g. v2_b0 (used in run ids)
    family: str  # v1 | v2
    keras_fn: str  # keras.applications attribute
    size: int  # the study's input size
    weights_file: str  # Keras cache file name of the ImageNet no-top weights


MODEL_SPECS: dict[str, ModelSpec] = {
    s.name: s
    for s in [
        ModelSpec("efficientnet_b0", "v1_b0", "v1", "EfficientNetB0", 224, "efficientnetb0_notop.h5"),
        ModelSpec("efficientnet_b1", "v1_b1", "v1", "EfficientNetB1", 240, "efficientnetb1_notop.h5"),
        ModelSpec("efficientnet_b2", "v1_b2", "v1", "EfficientNetB2", 260, "efficientnetb2_notop.h5"),
        ModelSpec("efficientnet_b3", "v1_b3", "v1", "EfficientNetB3", 300, "efficientnetb3_notop.h5"),
        ModelSpec("efficientnet_b4", "v1_b4", "v1", "EfficientNetB4", 380, "efficientnetb4_notop.h5"),
        ModelSpec("efficientnet_v2_b0", "v2_b0", "v2", "EfficientNetV2B0", 224, "efficientnetv2-b0_notop.h5"),
        ModelSpec("efficientnet_v2_b1", "v2_b1", "v2", "EfficientNetV2B1", 240, "efficientnetv2-b1_notop.h5"),
        ModelSpec("efficientnet_v2_b2", "v2_b2", "v2", "EfficientNetV2B2", 260, "efficientnetv2-b2_notop.h5"),
        ModelSpec("efficientnet_v2_b3", "v2_b3", "v2", "EfficientNetV2B3", 300, "efficientnetv2-b3_notop.h5"),
        ModelSpec("efficientnet_v2_s", "v2_s", "v2", "EfficientNetV2S", 380, "efficientnetv2-s_notop.h5"),
    ]
}
MODEL_ORDER = list(MODEL_SPECS)

# The study's trainable rule, as its published parameter counts show it: BatchNorm frozen and only the
# layers in the last N of the whole classifier's `model.layers` (GAP, Dropout, Dense included) trainable.
# The study's notebooks (TF 2.8) unfroze the last 300; Keras 3's V2 graphs carry ~20 more layers in their
# tail, so 320 here is what reproduces its V2 counts. B0 and V2-B0 are shorter than N: fully trainable.
STUDY_TRAINABLE_TAIL = {"v1": 300, "v2": 320}
UNFREEZE_RULES = ("study", "all")  # "all": every (non-BN) layer trainable, for from-scratch training


def get_spec(name: str) -> ModelSpec:
    for spec in MODEL_SPECS.values():
        if name in (spec.name, spec.short):
            return spec
    raise PipelineError(f"unknown model {name!r}; choose one of: {', '.join(MODEL_SPECS)}")
