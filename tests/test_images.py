"""One PNG reader: training (tf.io.decode_png), stain and the shared reader see the same pixels for every
colour type, 16-bit and palette images included; bombs and broken files are refused with a reason."""

import warnings

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from pngcraft import bomb_bytes, png_bytes

from pipeline.core.images import MAX_PIXELS, UnreadableImage, read_rgb

RNG = np.random.default_rng(7)
PALETTE = RNG.integers(0, 256, (16, 3))
INDEXES = RNG.integers(0, 16, (8, 8))
CASES = {  # name -> PNG bytes; every image 8 x 8 so that training's resize to 8 px is the identity
    "grey16": png_bytes(np.arange(0, 65536, 1024, dtype=np.uint16).reshape(8, 8), 0, 16),
    "grey16_trns": png_bytes(RNG.integers(0, 65536, (8, 8)), 0, 16, transparency=b"\x00\x01"),
    "rgb16": png_bytes(RNG.integers(0, 65536, (8, 8, 3)), 2, 16),
    "rgba16": png_bytes(RNG.integers(0, 65536, (8, 8, 4)), 6, 16),
    "grey_alpha16": png_bytes(RNG.integers(0, 65536, (8, 8, 2)), 4, 16),
    "palette": png_bytes(INDEXES, 3, 8, palette=PALETTE),
    "palette_trns": png_bytes(INDEXES, 3, 8, palette=PALETTE, transparency=bytes([0, 128] + [255] * 14)),
    "palette4": png_bytes(INDEXES, 3, 4, palette=PALETTE),
    "grey8": png_bytes(RNG.integers(0, 256, (8, 8)), 0, 8),
    "grey4": png_bytes(RNG.integers(0, 16, (8, 8)), 0, 4),
    "grey1": png_bytes(RNG.integers(0, 2, (8, 8)), 0, 1),
    "grey_alpha8": png_bytes(RNG.integers(0, 256, (8, 8, 2)), 4, 8),
    "rgba8": png_bytes(RNG.integers(0, 256, (8, 8, 4)), 6, 8),
}


@pytest.fixture(scope="module")
def decoded(tmp_path_factory):
    """Every case decoded by training's loader, the stain stage's loader, the dashboard's and the shared reader."""
    from dashboard.data import decode_image
    from pipeline.ml.data import load_images
    from pipeline.stages.stain import _load as stain_load

    root = tmp_path_factory.mktemp("pngs")
    for name, data in CASES.items():
        (root / f"{name}.png").write_bytes(data)
    frame = pd.DataFrame({"image_id": list(CASES), "path": [f"{n}.png" for n in CASES]})
    training = np.asarray(load_images(root / "exp", root, frame, 8))  # tf.io.decode_png + resize, as train does
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow's advice on palette transparency, for the old reader only
        return {name: {"training": training[i], "stain": stain_load(root / f"{name}.png"), "shared": read_rgb(root / f"{name}.png"),
                       "dashboard": decode_image(root / f"{name}.png"),
                       "pillow_rgb": np.asarray(Image.open(root / f"{name}.png").convert("RGB"))}
                for i, name in enumerate(CASES)}


@pytest.mark.parametrize("name", list(CASES))
def test_training_stain_and_shared_reader_agree(decoded, name):
    views = decoded[name]
    assert views["shared"].shape == (8, 8, 3) and views["shared"].dtype == np.uint8
    for who in ("stain", "shared", "dashboard"):
        diff = np.abs(views[who].astype(int) - views["training"].astype(int)).max()
        assert diff <= 1, f"{who} differs from training by {diff} grey levels on {name}"


def test_16bit_grey_is_not_white(decoded):
    """The bug this reader fixes: Pillow's convert("RGB") clips 16-bit grey to white; training sees the image."""
    expected = (np.arange(0, 65536, 1024).reshape(8, 8) >> 8).astype(np.uint8)  # the high byte of each sample
    np.testing.assert_array_equal(decoded["grey16"]["shared"][..., 0], expected)
    assert (decoded["grey16"]["pillow_rgb"] == 255).mean() > 0.98  # the old reader: white but for the one black pixel


def test_bombs_and_broken_files_are_refused_with_a_reason(tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(bomb_bytes(20000, 20000))
    assert bomb.stat().st_size < 200
    with pytest.raises(UnreadableImage) as err:
        read_rgb(bomb)
    assert "too large" in err.value.reason and "20000x20000" in err.value.reason and f"{MAX_PIXELS:,}" in err.value.reason
    cases = {"empty.png": b"", "gif.png": b"GIF89a....", "cut.png": CASES["rgb16"][:60], "zero.png": bomb_bytes(0, 5)}
    reasons = {}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(UnreadableImage) as err:
            read_rgb(tmp_path / name)
        reasons[name] = err.value.reason
        assert str(tmp_path / name) in str(err.value)
    assert reasons == {"empty.png": "zero-byte file", "gif.png": "not a PNG file (bad signature)",
                       "cut.png": reasons["cut.png"], "zero.png": "corrupt PNG: 0x5 pixels"}
    assert reasons["cut.png"].startswith("corrupt PNG")


def test_an_image_that_stopped_decoding_is_named_not_a_tensorflow_traceback(tmp_path):
    from pipeline.core.errors import PipelineError
    from pipeline.ml.data import load_images

    (tmp_path / "good.png").write_bytes(CASES["rgb16"])
    (tmp_path / "cut.png").write_bytes(CASES["rgb16"][:70])  # indexed whole, cut short later
    frame = pd.DataFrame({"image_id": ["good", "cut"], "path": ["good.png", "cut.png"]})
    with pytest.raises(PipelineError, match=r"cut.png no longer decodes as a PNG .*re-run `index`"):
        load_images(tmp_path / "exp", tmp_path, frame, 8)
    assert not (tmp_path / "exp" / "cache").exists() or not any((tmp_path / "exp" / "cache").rglob("*.npy"))


def test_an_image_swapped_for_a_link_out_of_the_root_after_index_is_refused(tmp_path):
    """Issue 22: `train` re-reads images by path (TensorFlow); one that now resolves outside the data root is refused."""
    from pipeline.core.errors import PipelineError
    from pipeline.ml.data import load_images

    root = tmp_path / "data"
    root.mkdir()
    (root / "good.png").write_bytes(CASES["rgb16"])
    (tmp_path / "secret.png").write_bytes(CASES["rgb16"])
    (root / "swapped.png").symlink_to(tmp_path / "secret.png")
    frame = pd.DataFrame({"image_id": ["good", "swapped"], "path": ["good.png", "swapped.png"]})
    with pytest.raises(PipelineError, match=r"1 image file\(s\) now resolve outside .*swapped.png -> .*secret.png"):
        load_images(tmp_path / "exp", root, frame, 8)
