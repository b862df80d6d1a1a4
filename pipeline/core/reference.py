"""The study's reported numbers, kept as data (``pipeline/reference/paper_results.csv``, source in its header)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

REFERENCE_CSV = Path(__file__).resolve().parent.parent / "reference" / "paper_results.csv"


def load_reference() -> pd.DataFrame:
    """The study's reported test numbers (image-level split of full BreakHis, ImageNet weights)."""
    return pd.read_csv(REFERENCE_CSV, comment="#")
