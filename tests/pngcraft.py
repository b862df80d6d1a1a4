"""Hand-built PNG files (any colour type and bit depth, forged headers) for decoder and indexer tests.

Pillow cannot write 16-bit RGB or grey+alpha PNGs, and a decompression bomb must not take 1.2 GB to make:
writing the chunks directly gives both in a few bytes.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # PNG colour type -> samples per pixel


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def ihdr(width: int, height: int, bit_depth: int, color_type: int) -> bytes:
    return chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0))


def png_bytes(pixels: np.ndarray, color_type: int, bit_depth: int = 8, palette: np.ndarray | None = None,
              transparency: bytes | None = None) -> bytes:
    """Encode ``pixels`` (H x W, or H x W x samples) as a PNG; bit depths below 8 are packed per row."""
    pixels = np.asarray(pixels)
    height, width = pixels.shape[:2]
    rows = pixels.reshape(height, width * CHANNELS[color_type])
    if bit_depth == 16:
        raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in rows)
    elif bit_depth == 8:
        raw = b"".join(b"\x00" + row.astype(np.uint8).tobytes() for row in rows)
    else:  # 1, 2, 4 bits: pack samples MSB first
        per_byte = 8 // bit_depth
        out = []
        for row in rows.astype(np.uint8):
            padded = np.zeros(-(-len(row) // per_byte) * per_byte, np.uint8)
            padded[: len(row)] = row
            groups = padded.reshape(-1, per_byte)
            shifts = bit_depth * np.arange(per_byte - 1, -1, -1)
            out.append(b"\x00" + (groups << shifts).sum(axis=1).astype(np.uint8).tobytes())
        raw = b"".join(out)
    data = SIGNATURE + ihdr(width, height, bit_depth, color_type)
    if palette is not None:
        data += chunk(b"PLTE", np.asarray(palette, np.uint8).tobytes())
    if transparency is not None:
        data += chunk(b"tRNS", transparency)
    return data + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def bomb_bytes(width: int = 20000, height: int = 20000) -> bytes:
    """A PNG whose header declares ``width x height`` pixels, followed by a few bytes of (incomplete) data."""
    return SIGNATURE + ihdr(width, height, 8, 0) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
