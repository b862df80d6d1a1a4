"""Wall time of the study's protocol on N GPUs, estimated on paper from the models' sizes (no GPU was measured).

Why an estimate and how: no GPU has been available to this project. A run's cost is taken as proportional to its
backbone's published FLOPs at the study's input size (EfficientNet, Tan & Le 2019, Table 2; EfficientNetV2, Tan &
Le 2021, Table 7), anchored on one assumed training rate for B0 at 224 px (``anchor_img_s``): replace it with the
rate ``make gpu-check`` prints on your GPU and every number rescales. Prediction is taken as 3x the training rate
(no backward pass). The runs are packed on the GPUs largest first (one run per GPU at a time, as ``run`` does).
"""

from __future__ import annotations

import heapq

# GFLOPs per image at the study's input sizes (V2-S: 8.8 at 384 px, scaled to the study's 380 px)
GFLOPS = {"v1_b0": 0.39, "v1_b1": 0.70, "v1_b2": 1.0, "v1_b3": 1.8, "v1_b4": 4.2,
          "v2_b0": 0.72, "v2_b1": 1.2, "v2_b2": 1.7, "v2_b3": 3.0, "v2_s": 8.8 * (380 / 384) ** 2}
# the study's image-level split of the 7,909 BreakHis images (stack facts); the patient folds have about as many
TRAIN, VAL, TEST = 5545, 1182, 1182


def run_seconds(model: str, anchor_img_s: float, epochs: int = 40, start_s: float = 60.0) -> float:
    """One run: ``epochs`` x (train + validation pass), the final prediction of every image, and ``start_s`` for
    building the model and tracing its graph."""
    train_rate = anchor_img_s * GFLOPS["v1_b0"] / GFLOPS[model]
    predict_rate = 3 * train_rate
    return start_s + epochs * (TRAIN / train_rate + VAL / predict_rate) + (TRAIN + VAL + TEST) / predict_rate


def makespan(durations: list[float], gpus: int) -> float:
    """Longest-first packing of runs on ``gpus`` GPUs, one run each at a time: when the last GPU is done."""
    loads = [0.0] * gpus
    heapq.heapify(loads)
    for d in sorted(durations, reverse=True):
        heapq.heappush(loads, heapq.heappop(loads) + d)
    return max(loads)


def protocol_hours(gpus: int, anchor_img_s: float, experiments: int = 6, epochs: int = 40) -> float:
    """The protocol (ten backbones x ``experiments``: the image-level split and five patient folds) on ``gpus``."""
    durations = [run_seconds(m, anchor_img_s, epochs) for m in GFLOPS for _ in range(experiments)]
    return makespan(durations, gpus) / 3600
