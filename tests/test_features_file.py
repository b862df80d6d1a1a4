"""One reader for a run's ``features.npz`` (pipeline/artifacts/features.py), shared by neighbours and stacking:
rows come back in the requested order, and every broken file is one line naming the command that rewrites it."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.artifacts.features import MissingFeatures, read_features
from pipeline.core.errors import PipelineError


@pytest.fixture
def features_file(tmp_path):
    rng = np.random.default_rng(7)
    ids = np.array([f"img{i:03d}" for i in range(40)])
    feats = rng.normal(size=(40, 6)).astype(np.float16)
    path = tmp_path / "runs" / "v1_b0" / "features.npz"
    path.parent.mkdir(parents=True)
    np.savez_compressed(path, image_id=ids, features=feats)
    return path, ids, feats


def test_rows_come_back_in_the_requested_order(features_file):
    path, ids, feats = features_file
    wanted = ["img031", "img002", "img017", "img002"]
    by_hand = np.stack([feats[list(ids).index(w)] for w in wanted])
    got = read_features(path, wanted)
    assert got.dtype == np.float16 and np.array_equal(got, by_hand)
    checked = read_features(path, wanted, load=False)  # checked from the header, nothing read
    assert checked.shape == (0, 6)


def test_missing_images_are_named(features_file):
    path, _, _ = features_file
    with pytest.raises(MissingFeatures) as caught:
        read_features(path, ["img001", "elsewhere_a", "elsewhere_b"], load=False)
    assert caught.value.missing == ["elsewhere_a", "elsewhere_b"]
    assert "lacks features for 2 images" in str(caught.value) and "--model v1_b0 --force" in str(caught.value)


@pytest.mark.parametrize("damage", ["truncated", "not a zip", "wrong shape", "absent"])
def test_a_broken_file_is_one_line(features_file, damage):
    path, ids, feats = features_file
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "not a zip":
        path.write_bytes(b"features")
    elif damage == "wrong shape":
        np.savez_compressed(path, image_id=ids[:-1], features=feats)
    else:
        path.unlink()
    for load in (True, False):
        with pytest.raises(PipelineError) as caught:
            read_features(path, ["img001"], load=load)
        message = str(caught.value)
        assert "\n" not in message and str(path) in message and "--model v1_b0 --force" in message


def test_repeated_ids_are_one_line(features_file):
    path, ids, feats = features_file
    ids = ids.copy()
    ids[5] = ids[4]
    np.savez_compressed(path, image_id=ids, features=feats)
    with pytest.raises(PipelineError, match=r"repeats image ids \(e\.g\. img004\)"):
        read_features(path, ["img001"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_flipped_byte_reads_right_or_is_one_line(features_file, data):
    """Generated damage: one byte of the file changed anywhere (a zlib stream, a zip header, the .npy header). The
    reader returns the right rows or raises one PipelineError line, never another exception (zlib.error, tokenize
    errors... were tracebacks in `ensemble` before the catch was widened)."""
    path, ids, feats = features_file
    good = path.read_bytes()
    at = data.draw(st.integers(0, len(good) - 1), label="position")
    value = data.draw(st.integers(0, 255).filter(lambda v: v != good[at]), label="value")
    damaged = path.with_name("damaged.npz")
    damaged.write_bytes(good[:at] + bytes([value]) + good[at + 1:])
    wanted = ["img003", "img020"]
    try:
        got = read_features(damaged, wanted)
    except PipelineError as exc:
        assert "\n" not in str(exc)
    else:
        assert np.array_equal(got, feats[[3, 20]])
