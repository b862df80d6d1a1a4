"""The built-in executor: ``workers`` spawned processes on this machine, one GPU each when there are GPUs."""

from __future__ import annotations

from typing import Any

from pipeline.devices import resolve_workers
from pipeline.workers import map_in_workers


class LocalExecutor:
    """``workers`` runs at a time (an int, or ``"gpus"``: one per visible GPU); see :mod:`pipeline.workers`."""

    name = "local"

    def __init__(self, workers: int | str = 1, gpus: list[str] | None = None):
        self.slots, self.devices = resolve_workers(workers, gpus)

    def check_storage(self, folders: list) -> None:  # this machine wrote them
        return None

    def map(self, tasks: list, tensorflow: bool = True) -> list[Any]:
        from pipeline.executors import run_task

        devices = self.devices if any(d is not None for d in self.devices) else None
        return map_in_workers(run_task, [(t.fn, t.job, t.label) for t in tasks], self.slots, tensorflow=tensorflow,
                              devices=devices, keep_going=True)

    def close(self) -> None:
        return None
