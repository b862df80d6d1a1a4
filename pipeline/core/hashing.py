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


def listing_digest(root: Path | str, relative_paths: list[str] | None = None) -> str:
    """Identity of a file tree from its listing: (relative path, size, mtime_ns) of each file, hashed.

    Used for the raw image tree, where hashing (or decoding) thousands of PNGs on every check is what an
    up-to-date check must avoid. A file replaced in place changes its size or mtime; a copied tree (new
    mtimes) is re-examined, and content fingerprints further down the pipeline keep that cheap.
    ``relative_paths``: only these files (a missing one counts as missing); default: every file under root.
    """
    root = Path(root)
    if relative_paths is None:
        relative_paths = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    h = hashlib.sha256()
    for rel in relative_paths:  # names that are not UTF-8 (the index rejects them) still hash: surrogateescape
        try:
            st = (root / rel).stat()
            h.update(f"{rel}\t{st.st_size}\t{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
        except OSError:  # vanished, or a symlink loop
            h.update(f"{rel}\tmissing\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:16]
