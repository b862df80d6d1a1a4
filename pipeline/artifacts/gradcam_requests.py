"""Images a user asked Grad-CAM to explain beyond the stage's own choice (``gradcam DIR --image ID``).

Why a record and not a flag: the gradcam stage decides which images to explain (every val/test error, then correct
images up to ``max_images``), and its up-to-date key includes that list. An image asked for from a card on the
dashboard would be explained once and then dropped by the next ``run`` of the preset, which knows nothing of the
request. Kept in ``gradcam/requested.json``, the request is part of what the stage reads every time: its maps stay.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipeline.artifacts.catalog import IMAGE_ID_RE, Catalog
from pipeline.artifacts.io import file_lock, read_json, read_json_object, write_json
from pipeline.core.errors import PipelineError

EVALUATED_SPLITS = ("val", "test")  # the splits evaluate scores and the dashboard shows errors of: every run predicts them


def requested_images(exp_dir: Path | str) -> list[str]:
    """The image ids asked for so far (sorted); empty when none was. A damaged record is a one-line error."""
    path = Catalog(exp_dir).gradcam_requests
    if not path.exists():
        return []
    record = read_json(path, f"delete {path} and ask again with `python -m pipeline gradcam {exp_dir} --image ID`")
    ids = record.get("images") if isinstance(record, dict) else None
    if not isinstance(ids, list) or not all(isinstance(i, str) and IMAGE_ID_RE.fullmatch(i) for i in ids):
        raise PipelineError(f"{path} is not a list of image ids; delete it and ask again with "
                            f"`python -m pipeline gradcam {exp_dir} --image ID`")
    return sorted(set(ids))


def check_explainable(image_ids: list[str], preds: pd.DataFrame, exp_dir: Path | str) -> None:
    """Refuse (one line) ids that are not images with a val/test prediction in this experiment."""
    known = set(preds.loc[preds["split"].isin(EVALUATED_SPLITS), "image_id"].astype(str))
    unknown = [i for i in image_ids if i not in known]
    if unknown:
        raise PipelineError(f"image {unknown[0]!r} has no val or test prediction in {exp_dir}: Grad-CAM explains a "
                            "model's decision on an evaluated image")


def recorded_settings(exp_dir: Path | str) -> dict:
    """The ``[gradcam]`` settings the experiment's last ``run`` recorded (``pipeline_run.json``), or {} without one.

    Why: ``gradcam DIR --image ID`` (the command a card without a map shows) must explain the image as the preset
    does (its split, ``max_images``, target, deletion steps). With the command line's defaults instead (every test
    image, ten deletion steps) one click would recompute every run's maps with other settings, and the next ``run``
    of the preset would recompute them back."""
    path = Catalog(exp_dir).pipeline_run
    if not path.exists():
        return {}
    record = read_json_object(path, f"re-run `python -m pipeline run` for {exp_dir}")  # a list in its place: one line
    config = record.get("config")
    section = config.get("gradcam") if isinstance(config, dict) else None
    return section if isinstance(section, dict) else {}


def add_requests(exp_dir: Path | str, image_ids: list[str]) -> list[str]:
    """Record ``image_ids`` beside the earlier requests (under a lock, written atomically: two requests at once both
    stay); returns every requested id."""
    catalog = Catalog(exp_dir)
    bad = [i for i in image_ids if not IMAGE_ID_RE.fullmatch(str(i))]
    if bad:
        raise PipelineError(f"not an image id: {bad[0]!r} (a file stem such as SOB_M_DC-14-2523-40-001)")
    path = catalog.gradcam_requests
    with file_lock(path.with_suffix(".lock")):  # makes the folder, or says in one line why it cannot
        ids = sorted(set(requested_images(exp_dir)) | set(image_ids))
        write_json({"images": ids}, path)
    return ids
