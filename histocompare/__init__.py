"""histocompare, installed: the one top-level import name this distribution puts on ``sys.path``.

Why a wrapper package: the project's own top-level folders are ``pipeline``, ``dashboard`` and ``pages`` (the design
asks for them, and every module imports them by those names). Installed as they are, such generic names would clash
with any other distribution that ships a ``pipeline`` or ``pages`` package. So the wheel ships the three trees as
files of this package, under ``histocompare/_app/``, and :func:`use_app_root` puts that private folder at the front of
``sys.path`` (and of ``PYTHONPATH``, for the subprocesses the launcher and the dashboard start) only when the
``histocompare`` command runs. Nothing else in an environment ever sees ``pipeline`` or ``pages``.

In a checkout (or an editable install) there is no ``_app`` folder: the trees are the checkout's own folders.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent


def app_root() -> Path:
    """The folder that holds ``pipeline/``, ``dashboard/`` and ``pages/``: ``_app`` in a wheel, else the checkout."""
    shipped = _HERE / "_app"
    return shipped if (shipped / "pipeline" / "cli.py").is_file() else _HERE.parent


def use_app_root(home: str | os.PathLike[str] | None = None) -> Path:
    """Make ``import pipeline`` (and ``dashboard``) resolve to this distribution's trees, here and in subprocesses.

    ``home`` (default: the current directory, unless ``$HISTOCOMPARE_HOME`` is set) is where a preset's relative
    ``data_root``/``out_dir`` and the dashboard's ``artifacts/`` resolve: an installed command never writes inside
    site-packages.
    """
    root = str(app_root())
    if root not in sys.path:
        sys.path.insert(0, root)
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != root]
    os.environ["PYTHONPATH"] = os.pathsep.join([root, *parts])
    os.environ.setdefault("HISTOCOMPARE_HOME", str(Path(home or os.getcwd()).resolve()))
    return Path(root)
