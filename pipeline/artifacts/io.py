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
        yield tmp_path
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
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


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


def write_json(obj: Any, path: Path | str) -> Path:
    """Write JSON atomically, sorted and indented so diffs between runs are readable."""
    with atomic_path(path, ".json") as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    return Path(path)


def read_json(path: Path | str) -> Any:
    """Parse a JSON artifact; an unreadable or cut-short file is a PipelineError naming it."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise PipelineError(f"{path} is not a readable JSON file ({type(exc).__name__}: {_why(exc)}); "
                            "re-run the stage that writes it") from None


def write_text_if_changed(path: Path | str, text: str) -> bool:
    """Write ``text`` atomically unless the file already holds exactly it (a rerun then touches nothing)."""
    path = Path(path)
    if path.exists() and path.read_text() == text:
        return False
    with atomic_path(path, ".txt") as tmp:
        tmp.write_text(text)
    return True
