"""Run by test_decode_cache.py in a fresh interpreter: decode a split whose cache is larger than the memory this
process may still grow by, and print the numbers as one JSON line.

Why a subprocess and RLIMIT_DATA: the limit must hold TensorFlow's process, not pytest's. RLIMIT_AS is impractical
(TensorFlow reserves gigabytes of address space it never touches); RLIMIT_DATA counts private writable memory
(heap, anonymous maps, malloc arenas) but not the page cache of a written file, which is what a streamed cache uses.
ru_maxrss (peak resident memory) is reported too.
"""

import json
import resource
import sys
from pathlib import Path

import numpy as np
import pandas as pd


def vm_data() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmData:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmData")


def main(root: Path, n: int, size: int) -> None:
    from PIL import Image

    from pipeline.ml.data import load_images

    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / f"i{i}.png")
    frame = pd.DataFrame({"image_id": [f"i{i}" for i in range(n)], "path": [f"i{i}.png" for i in range(n)]})
    load_images(root / "warm", root, frame.iloc[:128], size)  # TensorFlow, tf.data and its thread pools up first
    cache_bytes = n * size * size * 3
    headroom = cache_bytes // 2
    limit = vm_data() + headroom
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    images = load_images(root / "exp", root, frame, size)
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"cache_bytes": cache_bytes, "headroom_bytes": headroom, "rss_growth_bytes": rss_after - rss_before,
                      "shape": list(images.shape), "memmap": isinstance(images, np.memmap),
                      "checksum": int(np.asarray(images[:, ::37, ::37], dtype=np.int64).sum())}))


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
