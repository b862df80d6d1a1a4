"""Up-to-date records of the stages ("stamps"): a stage is skipped when neither its inputs nor its outputs changed.

A stage declares what its result depends on:

* ``config``: the settings that change its result, plus a version number the stage bumps when its code changes
  what it writes (settings that only change speed, such as worker counts, are left out);
* ``inputs``: files, fingerprinted by **content** (sha256);
* ``extra``: identities that are not files of the experiment, such as the raw image tree's listing.

When it finishes it records its outputs. ``stamps/<stage>.json`` keeps the key (a hash of all of the above) and
every output's fingerprint. The stage is up to date when the key is unchanged and every recorded output still
exists with the same content; then it prints one line, ``<stage>: up to date``, and writes nothing.

Content, not mtimes: an input rewritten with identical bytes (a re-index that finds the same images) leaves the
stages after it up to date. To keep the check cheap, a file whose size and ``mtime_ns`` equal the recorded ones is
not hashed again: the recorded sha256 is reused (the shortcut git and DVC take); any other file is re-hashed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.artifacts.catalog import Catalog
from pipeline.artifacts.io import read_json, write_json
from pipeline.core.errors import PipelineError
from pipeline.core.hashing import file_sha256, stable_hash

STAMP_FORMAT = 1


def fingerprint(path: Path, memo: dict | None = None) -> dict:
    """``{size, mtime_ns, sha256}`` of a file (``sha256`` None when absent); reuses ``memo`` when stat matches."""
    try:
        st = Path(path).stat()
    except FileNotFoundError:
        return {"size": None, "mtime_ns": None, "sha256": None}
    if memo and memo.get("sha256") and memo.get("size") == st.st_size and memo.get("mtime_ns") == st.st_mtime_ns:
        return memo
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": file_sha256(path, 32)}


def content_digest(path: Path) -> str | None:
    """sha256 (32 hex) of a file's content, None when absent."""
    return fingerprint(Path(path))["sha256"]


def cached_digest(path: Path | str, cache_file: Path, write: bool = True) -> str | None:
    """sha256 of a (large, outside the experiment) file, e.g. a weights file a run's hash depends on.

    Why a cache: hashing a 250 MB weights file on every ``run`` would cost seconds per run; the digest is kept in
    ``cache_file`` per absolute path with its size and ``mtime_ns`` and reused while both match (the index's rule),
    so a file whose bytes are replaced (new size or mtime) is hashed again. A damaged cache is just rebuilt.
    ``write=False`` only reads the cache (a plan must not write before its command has validated its input)."""
    path = Path(path).resolve()
    try:
        cache = read_json(cache_file) if Path(cache_file).exists() else {}
    except PipelineError:
        cache = {}
    cache = cache if isinstance(cache, dict) else {}
    memo = cache.get(str(path))
    entry = fingerprint(path, memo if isinstance(memo, dict) else None)
    if write and entry["sha256"] is not None and entry != memo:
        cache[str(path)] = entry
        try:
            write_json(cache, cache_file)
        except OSError:  # a read-only experiment still gets the right digest, just uncached
            pass
    return entry["sha256"]


def up_to_date(name: str, detail: str = "") -> None:
    """The one line every stage prints when it skips."""
    print(f"{name}: up to date{f' ({detail})' if detail else ''}", flush=True)


@dataclass
class Stamp:
    """The up-to-date record of one stage (or one part of a stage, e.g. ``stain-vahadane``)."""

    catalog: Catalog
    name: str
    config: dict
    inputs: list[Path] = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.catalog = Catalog(self.catalog) if not isinstance(self.catalog, Catalog) else self.catalog
        self.path = self.catalog.stamp(self.name)
        self.previous = self._read_previous()
        memo = {**self.previous.get("outputs", {}), **self.previous.get("inputs", {})}
        self.input_prints = {}
        for p in self.inputs:
            rel = self.catalog.relative(p)
            self.input_prints[rel] = fingerprint(Path(p), memo.get(rel))
        self.key = stable_hash({"format": STAMP_FORMAT, "config": self.config, "extra": self.extra,
                                "inputs": {rel: fp["sha256"] for rel, fp in sorted(self.input_prints.items())}}, 16)

    def _read_previous(self) -> dict:
        if not self.path.exists():
            return {}
        try:
            record = read_json(self.path)
        except PipelineError:  # a damaged record only means "not known to be up to date"
            return {}
        return record if isinstance(record, dict) else {}

    def is_current(self) -> bool:
        """True when the key matches the recorded one and every recorded output is there, unchanged."""
        if self.previous.get("key") != self.key or not isinstance(self.previous.get("outputs"), dict):
            return False
        for rel, recorded in self.previous["outputs"].items():
            try:
                path = self.catalog.resolve(rel) if not Path(rel).is_absolute() else Path(rel)
            except Exception:
                return False
            now = fingerprint(path, recorded)
            if now["sha256"] is None or now["sha256"] != recorded.get("sha256"):
                return False
        return True

    def record(self, outputs: list[Path], **details: Any) -> None:
        """Record a finished stage: its key, input and output fingerprints (written last: the stage's commit)."""
        out = {self.catalog.relative(p): fingerprint(Path(p)) for p in outputs}
        missing = [rel for rel, fp in out.items() if fp["sha256"] is None]
        if missing:
            raise RuntimeError(f"stage {self.name} did not write {missing}")
        write_json({"stage": self.name, "key": self.key, "config": self.config, "extra": self.extra,
                    "inputs": self.input_prints, "outputs": out, "details": details,
                    "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}, self.path)

    def forget(self) -> None:
        """Drop the record (the stage's outputs are about to change)."""
        self.path.unlink(missing_ok=True)
