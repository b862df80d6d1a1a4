"""Where a preset's relative paths and the ``artifacts/`` folder live.

In a checkout (``python -m pipeline``, ``make``) that is the checkout, as it always was. The installed ``histocompare``
command sets ``$HISTOCOMPARE_HOME`` to the directory it was started in, so an installed pipeline writes
``./data`` and ``./artifacts`` there and never inside site-packages. ``$HISTOCOMPARE_ARTIFACTS`` (the dashboard's
``--artifacts``) still names the artifacts folder directly.
"""

from __future__ import annotations

import os
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[2]  # the folder holding pipeline/, dashboard/, pages/


def work_root() -> Path:
    """``$HISTOCOMPARE_HOME`` if set, else the checkout: relative ``data_root``/``out_dir``/``from_csv`` resolve here."""
    home = os.environ.get("HISTOCOMPARE_HOME")
    return Path(home).resolve() if home else CHECKOUT


def artifacts_root() -> Path:
    """``$HISTOCOMPARE_ARTIFACTS`` if set, else ``artifacts/`` under :func:`work_root`."""
    named = os.environ.get("HISTOCOMPARE_ARTIFACTS")
    return Path(named).resolve() if named else (work_root() / "artifacts").resolve()
