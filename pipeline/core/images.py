"""One PNG reader for the whole project: ``read_rgb(path) -> uint8 (H, W, 3)``.

Why one reader: training decodes with ``tf.io.decode_png(channels=3)``, while the stain stage, the index
and the dashboard use Pillow. Pillow's ``convert("RGB")`` clips a 16-bit grey image (mode ``I;16``) to
255, so the same file was a tissue image to the model and an all-white square everywhere else. This
reader returns the pixels TensorFlow's decoder returns, for every PNG colour type:

* 16-bit samples keep their high byte (``v >> 8``), as libpng's strip-16 in ``tf.io.decode_png`` does;
* palette images are expanded through their palette (transparency ignored, as with ``channels=3``);
* grey (1/2/4/8/16-bit) is replicated to three channels; grey+alpha and RGBA drop the alpha channel.

It also refuses what must never reach a decoder: files that are not PNGs, truncated or corrupt data and
decompression bombs (more than ``MAX_PIXELS`` pixels declared in the header), each as an
:class:`UnreadableImage` whose ``reason`` says why in a few words (the index stores it in rejects.parquet).
"""

from __future__ import annotations

import struct
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from pipeline.core.errors import PipelineError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MAX_PIXELS = 89_478_485  # Pillow's default bomb limit (~9459 x 9459); a BreakHis image has 322,000
SIXTEEN_BIT_GREY_MODES = ("I;16", "I;16B", "I;16L", "I")


class UnreadableImage(PipelineError):
    """An image file that cannot be decoded; ``reason`` is the short cause without the path."""

    def __init__(self, path: Path | str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason

    def __reduce__(self):  # picklable with both arguments: raised in stain's worker processes
        return (type(self), (self.path, self.reason))


def png_header_size(path: Path | str) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk, read without decoding anything."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(24)
    except OSError as exc:
        raise UnreadableImage(path, f"unreadable file ({exc.strerror or type(exc).__name__})") from None
    if len(head) == 0:
        raise UnreadableImage(path, "zero-byte file")
    if head[:8] != PNG_MAGIC:
        raise UnreadableImage(path, "not a PNG file (bad signature)")
    if len(head) < 24 or head[12:16] != b"IHDR":
        raise UnreadableImage(path, "corrupt PNG: no IHDR header")
    return struct.unpack(">II", head[16:24])


def read_rgb(path: Path | str, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode a PNG to uint8 (H, W, 3) with the same pixels as ``tf.io.decode_png(..., channels=3)``."""
    width, height = png_header_size(path)
    if width == 0 or height == 0:
        raise UnreadableImage(path, f"corrupt PNG: {width}x{height} pixels")
    if width * height > max_pixels:
        raise UnreadableImage(path, f"image too large ({width}x{height} pixels; limit {max_pixels:,}): possible decompression bomb")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's "palette images with transparency" advice: handled below
            with Image.open(path) as img:
                img.load()  # a full decode: truncated and corrupt files fail here
                return _to_rgb(img)
    except UnidentifiedImageError:
        raise UnreadableImage(path, "corrupt PNG: not decodable") from None
    except Image.DecompressionBombError:
        raise UnreadableImage(path, "image too large: possible decompression bomb") from None
    except (OSError, SyntaxError, ValueError, struct.error, EOFError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UnreadableImage(path, f"corrupt PNG: {detail}") from None


def _to_rgb(img: Image.Image) -> np.ndarray:
    if img.mode in SIXTEEN_BIT_GREY_MODES:  # 16-bit grey: Pillow's convert("RGB") would clip to white
        grey = (np.asarray(img).astype(np.uint32) >> 8).clip(0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if img.mode == "P":  # palette (with or without tRNS): expand, then drop alpha as channels=3 does
        img = img.convert("RGBA")
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))
