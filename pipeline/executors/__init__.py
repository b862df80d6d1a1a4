"""Where ``run`` trains its runs: the built-in pool of local processes (the default) or a Ray cluster.

Why an interface: the runner decides *what* runs (every run of every experiment that is not up to date) and the
executor only *where*. Both take a list of :class:`Task` (a module-level function, its job, and a label
``experiment/run_id`` that names the run in progress events) and return one result per task, a
:class:`~pipeline.workers.JobFailed` for a task that failed for its own reasons, so one bad run does not stop
the others; the caller reports the failures at the end. Ctrl-C (KeyboardInterrupt) cancels every task.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

from pipeline.devices import place
from pipeline.progress import set_sink
from pipeline.workers import JobFailed

__all__ = ["Executor", "JobFailed", "Task", "make_executor", "run_task"]


@dataclass
class Task:
    label: str  # "experiment/run_id" (or "run_id" when there is one experiment): the run's name in progress events
    fn: Callable[[Any], Any]  # module-level (pickled by reference)
    job: Any


class Executor(Protocol):
    name: str
    slots: int  # runs at a time (for the header line; Ray: the cluster's current capacity)

    def check_storage(self, folders: list) -> None:
        """Raise PipelineError (one line) when a worker cannot see the experiment folders."""

    def map(self, tasks: list[Task]) -> list[Any]:
        """One result (or JobFailed) per task, in order."""

    def close(self) -> None:
        ...


def run_task(task: tuple) -> Any:
    """``fn(job)`` with the task's progress events renamed to its label and tagged with where it runs.

    Runs in whatever process executes the task (a pool worker, a Ray worker, the runner itself); module-level
    so that it pickles by reference.
    """
    fn, job, label = task
    where = place()
    experiment = label.partition("/")[0] if "/" in label else ""

    def relabel(event: dict) -> None:
        if experiment and event.get("kind") == "log":  # several experiments train at once: say whose line it is
            event = {**event, "line": f"[{experiment}] {event['line']}"}
        if "run" in event:
            event = {**event, "run": label}
            if event.get("kind") == "run_start":
                event.update(where)
        previous(event)

    previous = set_sink(relabel)
    try:
        return fn(job)
    finally:
        set_sink(previous)


def make_executor(kind: str, workers: int | str = 1, address: str = "", cpus_per_run: float = 1.0,
                  gpus_per_run: float = -1.0, max_retries: int = 2) -> Executor:
    """The executor a preset's ``[cluster]`` (or ``run --executor``) asks for; Ray is imported only for "ray"."""
    if kind == "ray":
        from pipeline.executors.ray_executor import RayExecutor

        return RayExecutor(address, cpus_per_run, gpus_per_run, max_retries)
    from pipeline.executors.local import LocalExecutor

    return LocalExecutor(workers)


