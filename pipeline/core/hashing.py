"""Content hashes: config hashes, cache keys and staleness fingerprints."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pandas as pd


def stable_hash(obj: Any, length: int = 12) -> str:
    """Short content hash of any JSON-able object (config hashes, cache keys)."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def file_sha256(path: Path | str, length: int | None = None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:length] if length else h.hexdigest()


def frame_fingerprint(df: pd.DataFrame, columns: list[str] | None = None) -> str:
    """Content fingerprint of a frame: used to decide whether downstream artifacts are stale."""
    cols = columns or list(df.columns)
    values = pd.util.hash_pandas_object(df[cols].astype(str), index=False).values
    return hashlib.sha256(values.tobytes()).hexdigest()[:16]
