"""Atomic, idempotent artifact I/O.

Why: an interrupted run must never leave a half-written parquet behind, because the dashboard and
later stages trust whatever file is there. Every writer here writes to a temporary file in the same
directory and then ``os.replace``s it, which is atomic on POSIX filesystems.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pandas as pd


class PipelineError(Exception):
    """A user-facing error: the CLI prints its message (no traceback) and exits non-zero."""


@contextmanager
def atomic_path(final: Path | str, suffix: str = "") -> Iterator[Path]:
    """Yield a temp path next to ``final``; rename it onto ``final`` only if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=suffix or ".tmp", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, final)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_parquet(df: pd.DataFrame, path: Path | str) -> Path:
    """Write ``df`` to ``path`` atomically (temp file + rename)."""
    with atomic_path(path, ".parquet") as tmp:
        df.to_parquet(tmp, index=False)
    return Path(path)


def read_parquet(path: Path | str, what: str = "", hint: str = "") -> pd.DataFrame:
    """Read a parquet artifact, or raise a PipelineError that says which command makes it."""
    path = Path(path)
    if not path.exists():
        msg = f"missing artifact {path}"
        if what:
            msg += f" ({what})"
        if hint:
            msg += f"; create it with: {hint}"
        raise PipelineError(msg)
    return pd.read_parquet(path)


def write_json(obj: Any, path: Path | str) -> Path:
    """Write JSON atomically, sorted and indented so diffs between runs are readable."""
    with atomic_path(path, ".json") as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    return Path(path)


def read_json(path: Path | str) -> Any:
    return json.loads(Path(path).read_text())


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


def library_versions() -> dict[str, str]:
    """Versions of everything that can change a result; recorded in every run.json."""
    import importlib.metadata as md

    versions = {"python": platform.python_version(), "platform": platform.platform()}
    for dist in ("numpy", "pandas", "pyarrow", "scikit-learn", "scikit-image", "tensorflow", "keras", "tf-keras-vis"):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            continue
    return versions
