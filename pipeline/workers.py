"""Run TensorFlow jobs in parallel worker processes, the cores split between them.

Why: on CPU, tracing an EfficientNet's graph is 20-60 s of single-threaded Python per model, so two
workers that each get half the cores overlap one's tracing with the other's compute. Workers are
spawned (TensorFlow is not fork-safe) and limit TensorFlow's thread pools once, at start-up.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Callable, Sequence, TypeVar

J = TypeVar("J")
R = TypeVar("R")


def _limit_tf_threads(threads: int) -> None:
    from pipeline.ml.runtime import quiet_tensorflow

    quiet_tensorflow()
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)


def map_in_workers(fn: Callable[[J], R], jobs: Sequence[J], workers: int) -> list[R]:
    """``[fn(job) for job in jobs]``, in ``workers`` spawned processes when more than one is asked for.

    ``fn`` must be a module-level function (it is pickled); results keep the order of ``jobs``.
    """
    workers = max(1, min(workers, len(jobs)))
    if workers == 1:
        return [fn(job) for job in jobs]
    threads = max(1, (os.cpu_count() or 2) // workers)
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"), initializer=_limit_tf_threads,
                             initargs=(threads,)) as pool:
        return list(pool.map(fn, jobs))
