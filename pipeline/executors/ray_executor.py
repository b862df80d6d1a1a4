"""``run --executor ray``: every training (and Grad-CAM) run is a Ray task, placed by Ray on any node's GPU.

Why tasks and not actors: a run is one function call that writes its artifacts into the experiment folder and
returns its ``run.json``; Ray retries a task whose worker or node was lost (``max_retries``, system failures
only) and the retried run resumes from its last resume point (``pipeline.stages.train``), while an error of the
run itself (bad weights file, a class missing from a split) is not retried: it is reported once, at the end, and
the other runs go on. The cheap stages (index, split, ensemble, evaluate) stay in the driver.

Artifacts are written by the workers straight into the experiment folder, so that folder must be on storage
every node mounts; a probe task on every node checks it before any training. Progress: a task's printed lines
and batch events go to a small actor that the driver drains twice a second into its own display
(``pipeline.progress``), tagged with the node, pid and device of the worker.
"""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path
from typing import Any

from pipeline.config import PROJECT_ROOT
from pipeline.core.errors import PipelineError
from pipeline.progress import report
from pipeline.workers import JobFailed

POLL_SECONDS = 0.5
PROBE_FILE = ".ray-storage-probe"
_setup_done = False


def _remote_setup(cpus: float) -> None:
    """Once per Ray worker process: quiet TensorFlow, memory growth on its GPU(s), its share of the cores."""
    global _setup_done
    if _setup_done:
        return
    from pipeline.devices import enable_memory_growth
    from pipeline.ml.runtime import quiet_tensorflow

    quiet_tensorflow()
    import tensorflow as tf

    enable_memory_growth()
    threads = max(1, int(cpus))
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:  # TensorFlow already initialised in this process
        pass
    _setup_done = True


def _remote_run(fn, job, label: str, events, cpus: float, tensorflow: bool) -> Any:
    """A Ray task: the run, with its printed lines and progress events sent to the driver's event actor."""
    from pipeline import progress
    from pipeline.executors import run_task

    def send(event: dict) -> None:
        try:
            events.put.remote(event)
        except Exception:  # noqa: BLE001 - a lost driver must not fail the run; its artifacts are on disk
            pass

    previous = progress.set_sink(send)
    stdout, stderr = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = progress.LineReporter(), progress.LineReporter()
    try:
        if tensorflow:
            _remote_setup(cpus)
        return run_task((fn, job, label))
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        sys.stdout, sys.stderr = stdout, stderr
        progress.set_sink(previous)


def _probe(path: str, token: str) -> tuple[bool, str]:
    """On one node: is the driver's probe file in the experiment folder, with the driver's token?"""
    import socket

    probe = Path(path) / PROBE_FILE
    try:
        seen = probe.read_text() == token
    except OSError:
        seen = False
    return seen, socket.gethostname()


class _Events:
    """A Ray actor that holds the tasks' progress events until the driver drains them."""

    def __init__(self) -> None:
        self.events: list[dict] = []

    def put(self, event: dict) -> None:
        self.events.append(event)

    def drain(self) -> list[dict]:
        out, self.events = self.events, []
        return out


class RayExecutor:
    """Tasks on a Ray cluster (``address``) or on a Ray instance started here (no address)."""

    name = "ray"

    def __init__(self, address: str = "", cpus_per_run: float = 1.0, gpus_per_run: float = -1.0, max_retries: int = 2):
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        if not address:  # Ray's single-machine mode (read when ray is imported): every Ray socket on 127.0.0.1
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        import ray

        self.ray = ray
        self.started_here = not ray.is_initialized()
        if self.started_here:
            kwargs: dict = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False,
                            # workers import `pipeline` from the project, wherever the cluster was started
                            "job_config": ray.job_config.JobConfig(code_search_path=[str(PROJECT_ROOT)])}
            try:
                if address:
                    ray.init(address=address, **kwargs)
                else:  # a local instance (a multi-GPU workstation): bound to loopback only
                    ray.init(_node_ip_address="127.0.0.1", num_cpus=os.cpu_count(), **kwargs)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise PipelineError(f"cannot connect to Ray at {address or 'a new local instance'}: {first}") from None
        resources = ray.cluster_resources()
        self.gpus_per_run = gpus_per_run if gpus_per_run >= 0 else (1.0 if resources.get("GPU", 0) > 0 else 0.0)
        self.cpus_per_run, self.max_retries = cpus_per_run, max_retries
        by_cpu = resources.get("CPU", 1) / max(cpus_per_run, 1e-9)
        by_gpu = resources.get("GPU", 0) / self.gpus_per_run if self.gpus_per_run else by_cpu
        self.slots = max(1, int(min(by_cpu, by_gpu)))
        self.events = ray.remote(num_cpus=0)(_Events).remote()

    def describe(self) -> str:
        return (f"Ray ({self.slots} at a time, {self.cpus_per_run:g} CPU + {self.gpus_per_run:g} GPU per run, "
                f"up to {self.max_retries} retries of a lost worker)")

    def check_storage(self, folders: list) -> None:
        """Before any training: every alive node must read a file the driver has just written in each folder."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        ray, token = self.ray, uuid.uuid4().hex
        folders = [Path(f).resolve() for f in folders]
        for folder in folders:
            (folder / PROBE_FILE).write_text(token)
        try:
            probe = ray.remote(num_cpus=0, max_retries=0)(_probe)
            refs = []
            for node in (n for n in ray.nodes() if n.get("Alive")):
                strategy = NodeAffinitySchedulingStrategy(node_id=node["NodeID"], soft=False)
                refs += [(node.get("NodeManagerAddress", "?"), folder,
                          probe.options(scheduling_strategy=strategy).remote(str(folder), token)) for folder in folders]
            for address, folder, ref in refs:
                seen, host = ray.get(ref, timeout=120)
                if not seen:
                    raise PipelineError(f"the experiment folder {folder} is not visible from Ray node {host} ({address}): "
                                        "put it on storage every node mounts at the same path")
        finally:
            for folder in folders:
                (folder / PROBE_FILE).unlink(missing_ok=True)

    def map(self, tasks: list, tensorflow: bool = True) -> list[Any]:
        ray = self.ray
        remote = ray.remote(_remote_run).options(num_cpus=self.cpus_per_run, num_gpus=self.gpus_per_run,
                                                 max_retries=self.max_retries, retry_exceptions=False)
        refs = {remote.remote(t.fn, t.job, t.label, self.events, self.cpus_per_run, tensorflow): i for i, t in enumerate(tasks)}
        results: list[Any] = [None] * len(tasks)
        pending = list(refs)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1, timeout=POLL_SECONDS)
                self._forward_events()
                for ref in done:
                    results[refs[ref]] = self._result(ref, tasks[refs[ref]].label)
            self._forward_events()
        except KeyboardInterrupt:
            for ref in pending:  # a running run is killed: its last resume point is on disk
                ray.cancel(ref, force=True)
            raise
        return results

    def _result(self, ref, label: str) -> Any:
        ray = self.ray
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as exc:  # the run's own error (not retried)
            cause = getattr(exc, "cause", None)
            return JobFailed(cause if isinstance(cause, BaseException) else PipelineError(str(exc).splitlines()[0]))
        except ray.exceptions.RayError as exc:  # the worker or node was lost more often than max_retries allows
            return JobFailed(PipelineError(f"{label}: Ray lost its worker {self.max_retries + 1} times "
                                           f"({type(exc).__name__}); re-run the same command to resume"))

    def _forward_events(self) -> None:
        for event in self.ray.get(self.events.drain.remote()):
            report(event)

    def close(self) -> None:
        if self.started_here:
            try:
                self.ray.kill(self.events)
            except Exception:  # noqa: BLE001 - shutting down anyway
                pass
            self.ray.shutdown()
