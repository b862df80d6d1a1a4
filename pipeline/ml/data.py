"""Input pipeline: decode + resize every image once per (size, resize mode, stain), then feed tf.data.

Why a cache: PNG decoding of 700x460 images costs ~5 ms each, which on 2 cores is a real share of a
small model's step. The cache is a ``.npy`` array of uint8 images (memory-mapped when read), so later epochs,
other models at the same size, prediction and Grad-CAM never decode a PNG again. It lives under the
experiment folder (never next to the dataset).

Keyed on everything that determines its pixels: the ordered image ids, size, resize mode, stain method, the
stain target's key, and the identity of the very files decoded (relative path, size and mtime of each source
PNG: a stat, not a read). Re-staining onto another target, or replacing an image, therefore decodes afresh
instead of silently serving the old pixels.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.artifacts.catalog import Catalog
from pipeline.artifacts.experiment import normalized_root, read_stain_target, stain_root_for
from pipeline.artifacts.io import atomic_path
from pipeline.core.errors import PipelineError
from pipeline.core.hashing import listing_digest, stable_hash
from pipeline.progress import progress


def image_source_root(exp_dir: Path, data_root: Path, stain: str, stain_target: dict | None = None) -> Path:
    """Where the PNGs of a run come from: the dataset, or the stain-normalized copy under the experiment.
    ``stain_target``: the method's ``target.json`` when the caller has loaded it already (else it is read here)."""
    if stain == "none":
        return data_root
    return normalized_root(exp_dir, stain) if stain_target is None else stain_root_for(exp_dir, stain, stain_target)


def source_identity(exp_dir: Path, data_root: Path, frame: pd.DataFrame, stain: str, stain_target: dict | None = None) -> dict:
    """What the decoded pixels of ``frame`` depend on besides size and resize mode (see the module docstring)."""
    if stain == "none":
        return {"stain": "none", "files": listing_digest(data_root, frame["path"].tolist())}
    target = read_stain_target(exp_dir, stain) if stain_target is None else stain_target
    root = stain_root_for(exp_dir, stain, target)
    return {"stain": stain, "stain_key": target["key"], "files": listing_digest(root, frame["path"].tolist())}


def cache_path(exp_dir: Path, image_ids: list[str], size: int, resize: str, stain: str, source: dict) -> Path:
    """The cache file of these images at ``size``/``resize`` from the sources identified by ``source``."""
    key = stable_hash({"ids": list(image_ids), "size": size, "resize": resize, "stain": stain, "source": source})
    return Catalog(exp_dir).image_cache(f"{stain}_{size}px_{resize}_{key}.npy")


def cache_file(exp_dir: Path, data_root: Path, frame: pd.DataFrame, size: int, resize: str = "square", stain: str = "none") -> Path:
    """The cache file ``load_images`` uses for these arguments (e.g. to delete it for a cold-cache benchmark)."""
    source = source_identity(Path(exp_dir), Path(data_root), frame, stain)
    return cache_path(Path(exp_dir), frame["image_id"].tolist(), size, resize, stain, source)


def load_images(exp_dir: Path, data_root: Path, frame: pd.DataFrame, size: int, resize: str = "square",
                stain: str = "none", write_cache: bool = True, stain_target: dict | None = None) -> np.ndarray:
    """Return a (N, size, size, 3) uint8 array for ``frame`` (rows with ``image_id`` and ``path``), cached.

    ``write_cache=False`` (a multi-worker non-chief, which must not write into the experiment) decodes
    without storing; an existing cache is still read.
    """
    exp_dir = Path(exp_dir)
    ids = frame["image_id"].tolist()
    if stain != "none" and stain_target is None:
        stain_target = read_stain_target(exp_dir, stain)  # once, for the source folder and the cache key below
    root = image_source_root(exp_dir, Path(data_root), stain, stain_target)
    paths = [str(root / p) for p in frame["path"]]
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        hint = "re-run `index`" if stain == "none" else f"re-run `stain --method {stain}`"
        raise PipelineError(f"{len(missing)} image file(s) listed in the manifest are missing, e.g. {missing[0]}; {hint}")
    real_root = root.resolve()
    leaving = [p for p in paths if real_root not in Path(p).resolve().parents]
    if leaving:  # a file swapped for a link after `index` checked it: TensorFlow would read wherever it points
        raise PipelineError(f"{len(leaving)} image file(s) now resolve outside {root}, e.g. {leaving[0]} -> "
                            f"{Path(leaving[0]).resolve()}; replace them and re-run `index`")
    target = cache_path(exp_dir, ids, size, resize, stain, source_identity(exp_dir, Path(data_root), frame, stain, stain_target))
    if target.exists():
        return np.load(target, mmap_mode="r")
    import tensorflow as tf

    def _load(path):
        img = tf.io.decode_png(tf.io.read_file(path), channels=3)
        img = tf.image.resize_with_pad(img, size, size) if resize == "pad" else tf.image.resize(img, (size, size))
        return tf.cast(tf.clip_by_value(tf.round(img), 0, 255), tf.uint8)

    ds = tf.data.Dataset.from_tensor_slices(paths).map(_load, num_parallel_calls=tf.data.AUTOTUNE).batch(64)
    ds = ds.prefetch(tf.data.AUTOTUNE)
    start = time.perf_counter()
    if not write_cache:  # a non-chief worker: the same streamed write, into a private temporary file
        scratch = tempfile.NamedTemporaryFile(prefix="histocompare-decode-", suffix=".npy", delete=False)
        scratch.close()
        try:
            _decode_into(Path(scratch.name), ds, len(paths), size, paths, root, stain)
            return np.load(scratch.name, mmap_mode="r")  # the mapping keeps the data after the name is gone
        finally:
            Path(scratch.name).unlink(missing_ok=True)
    with atomic_path(target, ".npy") as tmp:
        _decode_into(tmp, ds, len(paths), size, paths, root, stain)
    with atomic_path(target.with_suffix(".json"), ".json") as tmp:
        tmp.write_text(json.dumps({"images": len(ids), "size": size, "resize": resize, "stain": stain,
                                   "seconds": round(time.perf_counter() - start, 2)}))
    return np.load(target, mmap_mode="r")


def _decode_into(path: Path, ds, n: int, size: int, paths: list[str], root: Path, stain: str) -> None:
    """Write the decoded batches of ``ds`` one after another into the ``.npy`` file at ``path``.

    Why streamed: a split larger than memory must still be cacheable (issue 26). The header is written first, then
    each batch is appended as it arrives, so at most a few batches (prefetch) are ever in memory. Plain writes rather
    than a writable memory map (``open_memmap``): a map's dirty pages count in the process's resident memory until the
    kernel writes them back, a write's pages are only page cache."""
    import tensorflow as tf

    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False,
              "shape": (n, size, size, 3)}
    i = 0
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_2_0(fh, header)
        try:
            for batch in progress(ds, desc=f"decode {size}px ({stain})", total=-(-n // 64), unit="batch"):
                fh.write(memoryview(np.ascontiguousarray(batch.numpy(), dtype=np.uint8)))
                i += len(batch)
        except tf.errors.InvalidArgumentError as exc:  # a file changed since `index` checked it
            bad = _first_undecodable(paths[i : i + 64])
            raise PipelineError(f"{bad or 'an image under ' + str(root)} no longer decodes as a PNG "
                                f"({str(exc.message).splitlines()[0]}); re-run `index` to reject it") from None
    if i != n:
        raise PipelineError(f"decoded {i} of {n} images under {root}; re-run the stage")


def _first_undecodable(paths: list[str]) -> str | None:
    """The first of ``paths`` the shared reader refuses (to name the file in the error)."""
    from pipeline.core.images import UnreadableImage, read_rgb

    for path in paths:
        try:
            read_rgb(path)
        except UnreadableImage:
            return path
    return None


IN_MEMORY_BYTES = 2 * 1024**3  # above this, make_dataset reads batches from the cache's memory map instead of a tensor


def make_dataset(images: np.ndarray, labels: np.ndarray | None, batch_size: int, shuffle: bool = False, seed: int = 0,
                 augment: list | None = None, rows: np.ndarray | None = None, in_memory_bytes: int = IN_MEMORY_BYTES):
    """tf.data over cached uint8 images: shuffle indices, gather a batch, cast to float [0, 255].

    ``rows``: the positions in ``images`` (e.g. the training rows of a memory-mapped cache) that make up the dataset,
    in order; ``labels`` (if any) has one entry per row. All of ``images`` by default.
    ``augment``: Keras augmentation layers applied to each training batch here, outside the model (used when
    the training step is XLA-compiled, which cannot hold them; see ``pipeline.ml.models.augmentation_layers``).

    Up to ``in_memory_bytes`` the rows are copied into one tensor and batches are ``tf.gather``-ed from it (pure
    TensorFlow ops: an earlier ``tf.numpy_function`` gather took the GIL once per batch and ran at 0.72x of in-memory
    tensors, `make bench`). Above it (a split larger than memory), each batch is read from the memory map in row
    order, so only the batches in flight are in memory. The images stay uint8 (4x smaller than float) until the
    batch is cast, and shuffling indices rather than images keeps no second copy in a shuffle buffer.
    """
    import tensorflow as tf

    rows = np.arange(len(images)) if rows is None else np.asarray(rows, dtype=np.int64)
    shape = tuple(images.shape[1:])
    indices = tf.data.Dataset.range(len(rows))
    if shuffle:
        indices = indices.shuffle(len(rows), seed=seed, reshuffle_each_iteration=True)
    indices = indices.batch(batch_size)
    if len(rows) * int(np.prod(shape)) * images.dtype.itemsize <= in_memory_bytes:
        images_t = tf.convert_to_tensor(np.asarray(images[rows]))

        def pixels(i):
            return tf.cast(tf.gather(images_t, i), tf.float32)
    else:
        def read(i: np.ndarray) -> np.ndarray:
            pos = rows[i]
            order = np.argsort(pos, kind="stable")  # ascending offsets: sequential reads of the map
            out = np.empty((len(pos),) + shape, dtype=images.dtype)
            out[order] = images[pos[order]]
            return out

        def pixels(i):
            x = tf.numpy_function(read, [i], tf.as_dtype(images.dtype), stateful=False)
            x.set_shape((None,) + shape)
            return tf.cast(x, tf.float32)
    if labels is None:
        return indices.map(pixels, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
    labels_t = tf.convert_to_tensor(np.asarray(labels, dtype=np.int32))
    ds = indices.map(lambda i: (pixels(i), tf.gather(labels_t, i)), num_parallel_calls=tf.data.AUTOTUNE)
    if augment:
        def apply(x, y):
            for layer in augment:
                x = layer(x, training=True)
            return x, y

        ds = ds.map(apply, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)
