"""Run jobs in parallel worker processes that Ctrl-C stops within seconds.

Why workers: on CPU, tracing an EfficientNet's graph is 20-60 s of single-threaded Python per model, so two
workers that each get half the cores overlap one's tracing with the other's compute. Workers are spawned
(TensorFlow is not fork-safe); a TensorFlow worker limits TensorFlow's thread pools once, at start-up.

Why not ``ProcessPoolExecutor.map``: it queues every job at once and its workers catch ``KeyboardInterrupt`` as
an ordinary job error, so after Ctrl-C the queued jobs still started and ran to completion (hours with the
paper preset). Here a worker is handed its next job only when it is free, so on Ctrl-C (to the terminal's whole
process group, or to the parent alone) no queued job starts; running jobs get SIGINT, stop at the next Python
bytecode (their last atomic checkpoint is on disk: a training run resumes from it), and any worker still alive
after a grace period is killed. The first job error stops the pool the same way and is raised in the parent.
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
import time
import traceback
from collections import deque
from multiprocessing import get_context
from multiprocessing.connection import wait
from typing import Callable, Iterator, Sequence, TypeVar

from pipeline.core.errors import PipelineError
from pipeline.progress import report

J = TypeVar("J")
R = TypeVar("R")
GRACE_SECONDS = 10.0  # a finished pool: time for workers to leave
STOP_SECONDS = 3.0  # an interrupted pool: Python code stops at once; a worker still busy in C++ after this is killed


def limit_tf_threads(threads: int) -> None:
    """Worker initializer for TensorFlow jobs: quiet start-up, memory growth on every GPU it sees (before any
    tensor: several workers can share one GPU), then ``threads`` intra/inter-op threads."""
    from pipeline.devices import enable_memory_growth
    from pipeline.ml.runtime import quiet_tensorflow

    quiet_tensorflow()
    import tensorflow as tf

    enable_memory_growth()
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)


_BLAS_LIMIT = None


def one_blas_thread() -> None:
    """Worker initializer for numpy/scikit-learn jobs (stain normalization, demo images): one BLAS/OpenMP thread per
    worker. With two workers on two cores, each worker's default two BLAS threads fight over the cores on small
    matrices; measured on Vahadane: 0.73 s per image per worker with the default, 0.52 s with one thread."""
    global _BLAS_LIMIT
    import scipy.linalg  # noqa: F401  threadpoolctl limits only the pools already loaded: load scipy's and
    import sklearn.linear_model  # noqa: F401  scikit-learn's (OpenMP) before limiting, not just numpy's
    from threadpoolctl import threadpool_limits

    _BLAS_LIMIT = threadpool_limits(limits=1)  # kept for the worker's lifetime (the limit holds until restored)


def _portable(exc: BaseException) -> BaseException:
    """The exception itself when it pickles, else a RuntimeError carrying its text."""
    try:
        pickle.dumps(exc)
        return exc
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def _report_to_parent(conn) -> None:
    """Route this worker's reports and printed lines to the parent, whose board is the one display (pipeline.progress)."""
    import threading

    from pipeline import progress

    lock = threading.Lock()

    def send(event: dict) -> None:
        with lock:
            try:
                conn.send((None, "event", event))
            except (BrokenPipeError, OSError):
                pass

    progress.set_sink(send)
    sys.stdout = progress.LineReporter()
    sys.stderr = progress.LineReporter()


def _worker_main(conn, initializer, initargs, device: str | None = None) -> None:
    from pipeline.devices import assign_device

    assign_device(device)  # first: TensorFlow (imported by the initializer or the first job) reads it once

    def stop(*_):
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second SIGINT (terminal + parent) must not cut the cleanup
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, stop)
    _thread_lock_for_progress_bars()
    _report_to_parent(conn)
    code = 0
    try:
        if initializer is not None:
            initializer(*initargs)
        while True:
            message = conn.recv()
            if message is None:
                return
            index, fn, job = message
            try:
                conn.send((index, "ok", fn(job)))
            except KeyboardInterrupt:
                code = 130
                conn.send((index, "interrupted", None))
                return
            except BaseException as exc:  # noqa: BLE001 - reported to the parent, which decides
                if not isinstance(exc, PipelineError):
                    traceback.print_exc(file=sys.stderr)
                conn.send((index, "error", _portable(exc)))
    except (KeyboardInterrupt, EOFError, BrokenPipeError):
        code = 130
    finally:
        # Leave at once: every result is sent and every artifact written atomically, and TensorFlow's interpreter
        # teardown can take longer than the parent's grace period.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _thread_lock_for_progress_bars() -> None:
    """tqdm's default lock is a multiprocessing semaphore; a worker killed after its grace period would leak it."""
    import threading

    from tqdm import tqdm

    tqdm.set_lock(threading.RLock())


class WorkerPool:
    """``workers`` spawned processes, each running one job at a time; use as a context manager.

    ``devices``: one device string per worker (``CUDA_VISIBLE_DEVICES`` in that worker), None for no change.
    """

    def __init__(self, workers: int, initializer: Callable | None = None, initargs: tuple = (),
                 devices: Sequence[str | None] | None = None):
        ctx = get_context("spawn")
        self.procs, self.conns = [], []
        devices = list(devices or [None] * workers)
        for w in range(workers):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker_main, args=(child, initializer, initargs, devices[w]), daemon=True)
            proc.start()
            child.close()
            self.procs.append(proc)
            self.conns.append(parent)

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.terminate()

    def imap_unordered(self, fn: Callable[[J], R], jobs: Sequence[J], keep_going: bool = False) -> Iterator[tuple[int, R]]:
        """Yield ``(index, fn(jobs[index]))`` as jobs finish; a free worker gets the next job, one at a time.

        ``keep_going``: a job's own error is yielded as a :class:`JobFailed` result and the other jobs go on (a
        dead worker process still stops the pool)."""
        queue = deque(enumerate(jobs))
        busy: dict[int, int] = {}  # worker -> job index

        def feed(w: int) -> None:
            if queue:
                index, job = queue.popleft()
                self.conns[w].send((index, fn, job))
                busy[w] = index

        for w in range(len(self.procs)):
            feed(w)
        while busy:
            ready = wait([self.conns[w] for w in busy] + [self.procs[w].sentinel for w in busy])
            for w in list(busy):
                conn = self.conns[w]
                if conn not in ready and self.procs[w].sentinel not in ready:
                    continue
                try:
                    index, status, payload = conn.recv()
                except (EOFError, OSError):
                    index = busy[w]
                    self.procs[w].join(1)
                    raise PipelineError(f"worker process for job {index} died (exit code {self.procs[w].exitcode}); "
                                        "completed work is saved: re-run the same command to resume") from None
                if status == "event":  # a worker's progress or log line: to this process's display
                    report(payload)
                    continue
                del busy[w]
                if status == "error" and keep_going:
                    feed(w)
                    yield index, JobFailed(payload)
                    continue
                if status == "error":
                    raise payload
                if status == "interrupted":
                    raise KeyboardInterrupt
                feed(w)
                yield index, payload

    def map(self, fn: Callable[[J], R], jobs: Sequence[J]) -> list[R]:
        results: list = [None] * len(jobs)
        for index, result in self.imap_unordered(fn, jobs):
            results[index] = result
        return results

    def close(self) -> None:
        for conn in self.conns:
            try:
                conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        for proc in self.procs:
            proc.join(GRACE_SECONDS)
            if proc.is_alive():
                proc.kill()

    def terminate(self, grace: float = STOP_SECONDS) -> None:
        """SIGINT every live worker, wait up to ``grace`` seconds in all, then kill the rest.

        Killing is safe: every artifact is written atomically and a training run resumes from the resume point
        its ``state.json`` names, whatever moment it was stopped at.
        """
        for proc in self.procs:
            if proc.is_alive() and proc.pid:
                try:
                    os.kill(proc.pid, signal.SIGINT)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + grace
        for proc in self.procs:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join(1)


class JobFailed:
    """The result of a job that raised (``keep_going``): the exception, for the caller to report at the end."""

    def __init__(self, error: BaseException):
        self.error = error

    def __repr__(self) -> str:
        return f"JobFailed({self.error!r})"


def map_in_workers(fn: Callable[[J], R], jobs: Sequence[J], workers: int, tensorflow: bool = True,
                   devices: Sequence[str | None] | None = None, keep_going: bool = False) -> list[R]:
    """``[fn(job) for job in jobs]``, in ``workers`` spawned processes when more than one is asked for.

    ``fn`` must be a module-level function (it is pickled); results keep the order of ``jobs``. With
    ``tensorflow`` each worker gets its share of the cores for TensorFlow's thread pools. ``devices``: worker
    i's ``CUDA_VISIBLE_DEVICES`` (:func:`pipeline.devices.resolve_workers`); a single worker with a device
    still runs in a spawned process, since this process may have started TensorFlow already. ``keep_going``:
    a job's own error becomes a :class:`JobFailed` result instead of stopping the other jobs.
    """
    workers = max(1, min(workers, len(jobs)))
    devices = list(devices)[:workers] if devices else None
    if workers == 1 and not (devices and devices[0] is not None):
        if not keep_going:
            return [fn(job) for job in jobs]
        out: list = []
        for job in jobs:
            try:
                out.append(fn(job))
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # noqa: BLE001 - reported by the caller at the end
                if not isinstance(exc, PipelineError):  # a bug, not bad input: its traceback, as a worker prints it
                    traceback.print_exc(file=sys.stderr)
                out.append(JobFailed(exc))
        return out
    threads = max(1, (os.cpu_count() or 2) // workers)
    init, args = (limit_tf_threads, (threads,)) if tensorflow else (None, ())
    with WorkerPool(workers, init, args, devices) as pool:
        results: list = [None] * len(jobs)
        for index, result in pool.imap_unordered(fn, jobs, keep_going):
            results[index] = result
        return results
