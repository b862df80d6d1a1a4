"""Heatmap maths without TensorFlow: colouring, overlaying, top-region agreement and the study's 2x5 panel.

Shared by the Grad-CAM stage (agreement scores, the panel PNG) and the dashboard (overlays).
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

# A compact 'jet'-like colormap (blue -> cyan -> yellow -> red), enough for qualitative overlays.
_ANCHORS = np.array([0.0, 0.35, 0.65, 1.0])
_COLOURS = np.array([[0, 0, 160], [0, 220, 255], [255, 230, 0], [220, 0, 0]], dtype=np.float64)


def colorize(heat: np.ndarray) -> np.ndarray:
    heat = np.clip(np.asarray(heat, dtype=np.float64), 0, 1)
    return np.stack([np.interp(heat, _ANCHORS, _COLOURS[:, c]) for c in range(3)], axis=-1).astype(np.uint8)


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Blend a [0, 1] heatmap (any size; resized bilinearly) over an RGB uint8 image."""
    h, w = image.shape[:2]
    if heat.shape != (h, w):
        heat = np.asarray(Image.fromarray((np.clip(heat, 0, 1) * 255).astype(np.uint8)).resize((w, h), Image.BILINEAR)) / 255.0
    return (image.astype(np.float64) * (1 - alpha) + colorize(heat) * alpha).round().astype(np.uint8)


def top_region(heat: np.ndarray, fraction: float = 0.2) -> np.ndarray:
    """Boolean mask of the most salient ``fraction`` of pixels."""
    flat = heat.ravel()
    k = max(1, int(round(fraction * flat.size)))
    cut = np.partition(flat, flat.size - k)[flat.size - k]
    return heat >= cut


def region_iou(a: np.ndarray, b: np.ndarray, fraction: float = 0.2, size: int = 64) -> float:
    """IoU of the top-``fraction`` regions of two maps, compared on a common ``size`` grid."""
    def grid(m):
        return np.asarray(Image.fromarray((np.clip(m, 0, 1) * 255).astype(np.uint8)).resize((size, size), Image.BILINEAR)) / 255.0
    ra, rb = top_region(grid(a), fraction), top_region(grid(b), fraction)
    union = (ra | rb).sum()
    return float((ra & rb).sum() / union) if union else 1.0


def panel(image: np.ndarray, maps: dict[str, np.ndarray], probs: dict[str, tuple[float, float]], label: int,
          tile: int = 220, alpha: float = 0.45) -> Image.Image:
    """The study's 2 x 5 mosaic: V1 row B0-B4, V2 row B0-S; each tile labelled with P(true) / P(pred)."""
    rows = [["v1_b0", "v1_b1", "v1_b2", "v1_b3", "v1_b4"], ["v2_b0", "v2_b1", "v2_b2", "v2_b3", "v2_s"]]
    small = np.asarray(Image.fromarray(image).resize((tile, int(tile * image.shape[0] / image.shape[1]))))
    header, labels = 24, 34
    row_h = header + small.shape[0] + labels
    canvas = Image.new("RGB", (tile * 5, row_h * 2), "white")
    draw = ImageDraw.Draw(canvas)
    for r, names in enumerate(rows):
        top = r * row_h
        family_probs = [probs[n][0] for n in names if n in probs]
        mean = f"{np.mean(family_probs):.2f}" if family_probs else "-"
        draw.text((4, top + 6), f"{'V1' if r == 0 else 'V2'} family mean P(true)={mean}  "
                  f"(true class: {'malignant' if label else 'benign'}; Grad-CAM is qualitative)", fill="black")
        for c, name in enumerate(names):
            x, y = c * tile, top + header
            if name in maps:
                canvas.paste(Image.fromarray(overlay(small, maps[name], alpha)), (x, y))
                p_true, p_pred = probs.get(name, (float("nan"), float("nan")))
                draw.text((x + 4, y + small.shape[0] + 2), f"{name}  P(true)={p_true:.2f}", fill="black")
                draw.text((x + 4, y + small.shape[0] + 16), f"P(pred)={p_pred:.2f}", fill="black")
            else:
                draw.rectangle([x + 2, y + 2, x + tile - 2, y + small.shape[0] - 2], outline="grey")
                draw.text((x + 8, y + 8), f"{name}: not trained", fill="grey")
    return canvas
