"""Issue 22: a full disk, a read-only experiment and a held lock are one line each, never a traceback or a temp file.

The disk is filled by monkeypatching the writes (no subprocess, no real full filesystem): every byte the pipeline writes
goes through ``pipeline.artifacts.io.atomic_path``, whose temporary file must be gone afterwards. The tests run as any
user (root ignores file modes, so "read-only" is simulated the same way, by the error the kernel would give).
"""

from __future__ import annotations

import errno
import io
import shutil
import subprocess
import sys
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pandas as pd
import pytest

from pipeline.artifacts import io as artifacts_io
from pipeline.cli import main


def cli(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".predictions.lock"}


@pytest.fixture
def experiment(dashboard_artifacts, tmp_path) -> Path:
    exp = tmp_path / "exp"
    shutil.copytree(dashboard_artifacts / "fixture", exp, ignore=shutil.ignore_patterns("gradcam", "stain"))
    return exp


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("writer", ["parquet", "json"])
def test_a_full_disk_is_one_line_and_leaves_no_temporary_file(experiment, monkeypatch, writer):
    before = files_of(experiment)
    if writer == "parquet":
        monkeypatch.setattr(pd.DataFrame, "to_parquet", _enospc)
    else:
        monkeypatch.setattr(Path, "write_text", _enospc)
    code, _, err = cli("evaluate", experiment, "--bootstrap", "5", "--force")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("error: cannot write ") and lines[0].endswith(": No space left on device"), lines[0]
    after = files_of(experiment)
    assert [name for name in after if Path(name).name.startswith(".")] == []  # no temp file left behind
    # nothing that existed was changed (the merged table may have been rebuilt from its parts: same rows)
    assert {k: v for k, v in after.items() if k in before and k != "predictions.parquet"} == \
        {k: v for k, v in before.items() if k != "predictions.parquet"}
    old, new = (pd.read_parquet(io.BytesIO(d["predictions.parquet"])) for d in (before, after))
    assert old.groupby("run_id").size().to_dict() == new.groupby("run_id").size().to_dict()


def test_a_read_only_experiment_is_refused_in_one_line(experiment, monkeypatch):
    """The first write of `evaluate` is the predictions lock: on a read-only filesystem it fails with EROFS."""
    real_open = open

    def read_only_open(path, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+"):
            raise OSError(errno.EROFS, "Read-only file system")
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(artifacts_io, "open", read_only_open, raising=False)
    before = files_of(experiment)
    code, _, err = cli("evaluate", experiment, "--bootstrap", "5")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "cannot write" in err and "Read-only file system" in err
    assert files_of(experiment) == before


def test_a_held_lock_says_who_holds_it(tmp_path, monkeypatch, capsys):
    lock = tmp_path / ".predictions.lock"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, sys, time\n"
        f"fh = open({str(lock)!r}, 'a+b'); fcntl.flock(fh.fileno(), fcntl.LOCK_EX)\n"
        "print('held', flush=True); time.sleep(6)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.setattr(artifacts_io, "LOCK_NOTICE_SECONDS", 0.5)
        start = time.monotonic()
        with artifacts_io.file_lock(lock):
            waited = time.monotonic() - start
    finally:
        holder.wait(timeout=30)
    out = capsys.readouterr().out
    assert f"waiting for the lock held by process {holder.pid}" in out
    assert out.count("waiting for the lock") == 1 and waited >= 0.5
