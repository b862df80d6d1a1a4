"""Progress bars with rate and ETA for every long stage (tqdm), silent when asked to be."""

from __future__ import annotations

import os
import sys
from typing import Iterable, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress(items: Iterable[T], desc: str, total: int | None = None, unit: str = "img") -> Iterable[T]:
    """Wrap ``items`` in a progress bar showing rate and ETA; disabled by HISTOCOMPARE_QUIET=1."""
    disable = os.environ.get("HISTOCOMPARE_QUIET") == "1"
    return tqdm(items, desc=desc, total=total, unit=unit, dynamic_ncols=True, disable=disable, file=sys.stderr,
                mininterval=0.5 if sys.stderr.isatty() else 5.0)
