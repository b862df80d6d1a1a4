"""Atomic writes and single-handle reads of artifacts.

Why atomic: an interrupted run must never leave a half-written parquet behind, because the dashboard and
later stages trust whatever file is there. Every writer writes a temporary file in the same directory and
``os.replace``s it onto the target, which is atomic on POSIX filesystems.

Why one handle: pyarrow opens a path more than once while reading it, so a reader racing a writer's
rename could see the old footer and the new body ("unexpected end of stream"). Opening the file once and
reading from that handle pins one inode: a concurrent replace never yields a torn read.

Why errors are converted here: an output path that is a file, a folder that cannot be created, a truncated
parquet or a JSON file cut short are bad input, not bugs. The library errors they raise (``OSError``,
pyarrow's ``ArrowInvalid``, ``JSONDecodeError``) become a :class:`PipelineError` that names the file, at the
one place they occur, so the CLI prints one line instead of a traceback.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pandas as pd
import pyarrow as pa

from pipeline.core.errors import PipelineError


class UnreadableArtifact(PipelineError):
    """An artifact file that exists but cannot be read; ``reason`` is the underlying error in one line."""

    def __init__(self, message: str, path: Path | str, reason: str):
        super().__init__(message)
        self.path, self.reason = Path(path), reason


def _why(exc: BaseException) -> str:
    """A short, one-line cause: the OS's words for OSErrors, else the exception's first line or its type."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def ensure_dir(path: Path | str, what: str = "folder") -> Path:
    """Create ``path`` (and its parents) or explain in one line why it cannot be a folder."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise PipelineError(f"{what} {path} exists and is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PipelineError(f"cannot create {what} {path}: {_why(exc)}") from None
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(final: Path | str, suffix: str = "") -> Iterator[Path]:
    """Yield a temp path next to ``final``; rename it onto ``final`` only if the block succeeds.

    The file gets the permissions a plain ``open()`` would give it (the umask is respected), so a lab can
    share an experiment folder; ``mkstemp`` alone would leave every artifact at 0600.
    """
    final = Path(final)
    if final.is_dir():
        raise PipelineError(f"cannot write {final}: it is a folder; give a file name")
    ensure_dir(final.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=suffix or ".tmp", dir=final.parent)
    except OSError as exc:
        raise PipelineError(f"cannot write {final}: {_why(exc)}") from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        try:
            yield tmp_path
        except OSError as exc:  # the writer's own OSError: a full disk, a quota, a read-only remount mid-write
            raise PipelineError(f"cannot write {final}: {_why(exc)}") from None
        try:
            if tmp_path.exists():
                os.chmod(tmp_path, 0o666 & ~_umask())
            os.replace(tmp_path, final)
        except OSError as exc:
            raise PipelineError(f"cannot write {final}: {_why(exc)}") from None
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_link(src: Path | str, dst: Path | str) -> Path:
    """Make ``dst`` another name of ``src``'s current content, atomically (hard link + rename; no copy).

    Writers replace files by rename, so the link keeps the old content alive even after ``src`` is replaced:
    this is how a resume point remembers which best model it belongs to at no cost in disk or time.
    """
    src, dst = Path(src), Path(dst)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.link")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:  # a filesystem without hard links: copy instead
        import shutil

        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
    return dst


@contextmanager
def file_lock(path: Path | str) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (created if absent) for the block: one writer at a time.

    ``flock`` is released by the kernel when the holder dies, so a killed worker never leaves a stale lock.
    """
    import fcntl

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(path, "a+b")
    except OSError as exc:  # a read-only experiment, a full disk: one line, not a traceback
        raise PipelineError(f"cannot write {path}: {_why(exc)} (a read-only experiment can be read, not changed)") from None
    with fh:
        _acquire(fh, path)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


LOCK_NOTICE_SECONDS = 3.0  # a wait longer than this is said once, with the holder's process id


def _acquire(fh: Any, path: Path) -> None:
    """Take the lock; when another process holds it for more than LOCK_NOTICE_SECONDS, say who, once, and keep waiting."""
    import fcntl
    import time

    start, told = time.monotonic(), False
    while True:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        if not told and time.monotonic() - start >= LOCK_NOTICE_SECONDS:
            holder = lock_holder(path)
            print(f"waiting for the lock held by process {holder if holder is not None else '(unknown)'} on {path}", flush=True)
            told = True
        time.sleep(0.1)


def lock_holder(path: Path | str) -> int | None:
    """The process id holding an flock on ``path`` (Linux ``/proc/locks``), or None when it cannot be told."""
    try:
        st = os.stat(path)
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if "->" in fields or len(fields) < 6 or fields[1] != "FLOCK":
            continue
        try:
            _, _, inode = fields[5].split(":")
            if int(inode) == st.st_ino:
                return int(fields[4])
        except ValueError:
            continue
    return None


def write_parquet(df: pd.DataFrame, path: Path | str) -> Path:
    """Write ``df`` to ``path`` atomically (temp file + rename)."""
    with atomic_path(path, ".parquet") as tmp:
        df.to_parquet(tmp, index=False)
    return Path(path)


def read_parquet_file(path: Path | str, hint: str = "", columns: list[str] | None = None) -> pd.DataFrame:
    """Read a parquet file (only ``columns`` when given) through one open handle (see the module docstring).

    A missing, unreadable, truncated or non-parquet file is a :class:`PipelineError` naming the file
    (and ``hint``, the command that re-creates it), never a raw ``ArrowInvalid``.
    """
    try:
        with open(path, "rb") as fh:
            return pd.read_parquet(fh, columns=columns)
    except (OSError, ValueError, pa.ArrowException) as exc:  # ArrowInvalid is a ValueError and an ArrowException
        reason = f"{type(exc).__name__}: {_why(exc)}"
        raise UnreadableArtifact(f"{path} is not a readable parquet file ({reason}); re-create it{' with: ' + hint if hint else ''}",
                                 path, reason) from None


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
    return read_parquet_file(path, hint)


@contextmanager
def opened_inside(root: Path | str, path: Path | str) -> Iterator[str]:
    """Open ``path`` once, check that the *opened* file lies inside ``root``, and yield a name of that very file.

    Why: a path checked with ``resolve()`` and then opened again can be swapped for a symlink in between. Here the
    file is opened first and the open descriptor's real path (``/proc/self/fd/N``) is what
    is checked; readers then open ``/proc/self/fd/N``, which is the checked inode whatever the name points to now.
    (Links are followed on open, so a dataset whose files are links inside it keeps working; a link that leads out
    is refused by the check.) Raises PipelineError when the opened file is outside ``root`` or cannot be opened.
    """
    root = Path(root).resolve()
    named = Path(path).resolve()
    if named != root and root not in named.parents:  # a link that already leads out is not even opened
        raise PipelineError(f"{path} resolves to {named}, outside {root}")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise PipelineError(f"cannot open {path}: {_why(exc)}") from None
    try:
        proc = f"/proc/self/fd/{fd}"
        real = Path(os.readlink(proc)) if os.path.islink(proc) else Path(path).resolve()
        if real != root and root not in real.parents:
            raise PipelineError(f"{path} resolves to {real}, outside {root}")
        yield proc if os.path.exists(proc) else str(real)
    finally:
        os.close(fd)


def write_json(obj: Any, path: Path | str) -> Path:
    """Write JSON atomically, sorted and indented so diffs between runs are readable."""
    with atomic_path(path, ".json") as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    return Path(path)


MAX_JSON_DEPTH = 64  # the deepest artifact the pipeline writes nests 6 levels (a stamp's fingerprints)


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 parses as infinity
        raise ValueError(f"number {text[:20]} is not finite")
    return value


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a finite number")


def _depth(obj: Any) -> int:
    """Nesting depth, computed without recursion (a hostile file must not exhaust the stack here either)."""
    deepest, todo = 0, [(obj, 1)]
    while todo:
        item, depth = todo.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            if depth > MAX_JSON_DEPTH:
                return depth
            todo.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


def parse_json(text: str) -> Any:
    """``json.loads`` for artifacts: only finite numbers, nesting at most MAX_JSON_DEPTH; else ValueError.

    Why: ``NaN``, ``Infinity`` and ``1e999`` are valid to Python's parser and then crash arithmetic and
    formatting far from the file; a 100,000-deep array raises RecursionError, which no reader expects.
    """
    try:
        obj = json.loads(text, parse_float=_finite, parse_constant=_no_constant)
    except RecursionError:
        raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels") from None
    if _depth(obj) > MAX_JSON_DEPTH:
        raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels")
    return obj


def read_json(path: Path | str, hint: str = "re-run the stage that writes it") -> Any:
    """Parse a JSON artifact; an unreadable, cut-short, non-finite or too deeply nested file is a PipelineError
    naming it (the one-line message says which command rewrites it)."""
    try:
        return parse_json(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise UnreadableArtifact(f"{path} is not a readable JSON file ({type(exc).__name__}: {_why(exc)}); {hint}",
                                 path, f"{type(exc).__name__}: {_why(exc)}") from None


def read_json_object(path: Path | str, hint: str = "re-run the stage that writes it") -> dict:
    """``read_json`` for records that must be a JSON object (``run.json``, ``target.json``): a list or a number in
    their place is refused in one line, not an AttributeError at the first ``.get``."""
    record = read_json(path, hint)
    if not isinstance(record, dict):
        raise UnreadableArtifact(f"{path} is not a JSON object (found {type(record).__name__}); {hint}", path, "not an object")
    return record


def write_text_if_changed(path: Path | str, text: str) -> bool:
    """Write ``text`` atomically unless the file already holds exactly it (a rerun then touches nothing)."""
    path = Path(path)
    if path.exists() and path.read_text() == text:
        return False
    with atomic_path(path, ".txt") as tmp:
        tmp.write_text(text)
    return True
