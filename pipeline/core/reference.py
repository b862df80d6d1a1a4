"""The study's reported numbers, kept as data (``pipeline/reference/paper_results.csv``, source in its header)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

REFERENCE_CSV = Path(__file__).resolve().parent.parent / "reference" / "paper_results.csv"


def load_reference() -> pd.DataFrame:
    """The study's reported test numbers (image-level split of full BreakHis, ImageNet weights)."""
    return pd.read_csv(REFERENCE_CSV, comment="#")


# The study's notebooks' model summaries (2-class head, after its unfreeze step): (total, trainable) parameters.
# Reproduced exactly by `unfreeze = "study"` (pipeline.core.model_specs.STUDY_TRAINABLE_TAIL); tests check all ten.
STUDY_PARAMETER_COUNTS: dict[str, tuple[int, int]] = {
    "efficientnet_b0": (4_052_133, 3_968_094), "efficientnet_b1": (6_577_801, 6_445_362),
    "efficientnet_b2": (7_771_387, 7_627_908), "efficientnet_b3": (10_786_609, 10_538_404),
    "efficientnet_b4": (17_677_409, 16_826_958), "efficientnet_v2_b0": (5_921_874, 5_800_658),
    "efficientnet_v2_b1": (6_933_686, 6_774_550), "efficientnet_v2_b2": (8_772_192, 8_506_656),
    "efficientnet_v2_b3": (12_933_696, 11_942_850), "efficientnet_v2_s": (20_333_922, 17_156_378),
}
