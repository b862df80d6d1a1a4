"""A run's pooled features (``runs/<run>/features.npz``: ``image_id`` and ``features`` of its train, val and test
images, written by ``train``), read by one function for every stage that uses them: ``neighbours`` (nearest training
images, 2-D maps) and the stacking meta-model of ``ensemble`` and ``predict``.

Why one reader: each stage used to open the file itself, with its own error wording and its own lookup of the
requested images; a truncated file or one written for another split must read the same way wherever it is met.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from pipeline.core.errors import PipelineError


class MissingFeatures(PipelineError):
    """A readable features file that lacks some of the requested images (written by an older ``train``, which kept
    only val/test, or for another split); ``missing`` holds their ids."""

    def __init__(self, path: Path, missing: Sequence[str], rerun: str):
        self.path, self.missing = path, list(missing)
        super().__init__(f"{path} lacks features for {len(self.missing)} images (e.g. {self.missing[0]}); {rerun}")


def _shape_from_header(data) -> tuple[int, ...]:
    """The shape of the ``features`` array of an open ``.npz`` from its header, without reading the array."""
    with data.zip.open("features.npy") as fh:
        version = np.lib.format.read_magic(fh)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, _ = read(fh)
    return shape


def train_rerun(path: Path) -> str:
    """The command that rewrites a trained run's features file (``predict`` names its own)."""
    return f"re-run `python -m pipeline train DIR --model {path.parent.name} --force`"


def read_features(path: Path | str, image_ids: Sequence[str], load: bool = True, rerun: str | None = None) -> np.ndarray:
    """The features of ``image_ids`` (in that order) from one run's ``features.npz``, as stored (float16).

    A missing or unreadable file is a one-line :class:`PipelineError` naming the command that rewrites it; a
    readable one without some of the images is :class:`MissingFeatures`. ``load=False`` checks the file (its ids,
    and the features' shape from the array's header) without reading the features and returns an empty ``(0, d)``
    array: a stage validates every run first, then holds one run's features at a time (eleven runs at ten times
    BreakHis are 2.4 GB of float16; issue 26). ``rerun``: how the message says to rewrite the file (default: the
    run's ``train --force``)."""
    path = Path(path)
    rerun = rerun or train_rerun(path)
    if not path.is_file():
        raise PipelineError(f"{path} is missing; {rerun} to write the pooled features")
    try:
        with np.load(path, allow_pickle=False) as data:
            ids = data["image_id"].astype(str)
            features = data["features"] if load else None
            shape = features.shape if load else tuple(_shape_from_header(data))
    except Exception as exc:  # noqa: BLE001 - a damaged file raises many kinds (zipfile, zlib, OSError, ValueError, ...)
        raise PipelineError(f"{path} is not a readable features file ({type(exc).__name__}); {rerun}") from None
    if len(shape) != 2 or shape[0] != len(ids):
        raise PipelineError(f"{path} holds {shape} features for {len(ids)} images; {rerun}")
    index = pd.Index(ids)
    if not index.is_unique:
        raise PipelineError(f"{path} repeats image ids (e.g. {index[index.duplicated()][0]}); {rerun}")
    wanted = np.asarray(image_ids, dtype=str)
    pos = index.get_indexer(wanted)
    if (pos < 0).any():
        raise MissingFeatures(path, wanted[pos < 0].tolist(), rerun)
    return features[pos] if load else np.empty((0, shape[1]), dtype=np.float16)
