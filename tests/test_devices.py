"""One run per GPU on one machine, proven without a GPU: an injected device list (``HISTOCOMPARE_GPUS``) gives each
spawned worker exactly its own ``CUDA_VISIBLE_DEVICES`` before TensorFlow starts, ``workers = "gpus"`` is one worker
per device, and memory growth is switched on before any tensor exists (checked against TensorFlow's own context)."""

import os
import subprocess
import sys
import time

import pytest

from conftest import PROJECT_ROOT
from pipeline.devices import place, resolve_workers, visible_gpus
from pipeline.executors import Task
from pipeline.executors.local import LocalExecutor


def _seen(_job) -> dict:
    """In a spawned worker: what it was given, and whether TensorFlow was already loaded when the job ran."""
    time.sleep(0.3)  # both workers get work: neither can take every job
    return {"pid": os.getpid(), "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"), "tf": "tensorflow" in sys.modules,
            "place": place()["device"]}


def test_visible_gpus_from_the_injected_list_then_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("HISTOCOMPARE_GPUS", "3, 7")
    assert visible_gpus() == ["3", "7"]
    monkeypatch.setenv("HISTOCOMPARE_GPUS", "")
    assert visible_gpus() == []
    monkeypatch.delenv("HISTOCOMPARE_GPUS")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,2")
    assert visible_gpus() == ["1", "2"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert visible_gpus() == []


def test_workers_gpus_is_one_worker_per_visible_gpu():
    assert resolve_workers("gpus", ["0", "1", "2"]) == (3, ["0", "1", "2"])
    assert resolve_workers("gpus", []) == (1, [None])  # no GPU: one worker, environment untouched
    assert resolve_workers(4, ["5", "6"]) == (4, ["5", "6", "5", "6"])  # more workers than GPUs: shared round robin
    assert resolve_workers(2, []) == (2, [None, None])


def test_each_spawned_worker_sees_exactly_its_own_device(monkeypatch):
    monkeypatch.setenv("HISTOCOMPARE_GPUS", "3,7")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    executor = LocalExecutor("gpus")
    assert executor.slots == 2
    results = executor.map([Task(f"r{i}", _seen, i) for i in range(6)], tensorflow=False)
    by_pid: dict[int, set] = {}
    for r in results:
        by_pid.setdefault(r["pid"], set()).add(r["cuda"])
        assert r["tf"] is False  # the device was set before TensorFlow could read it
        assert r["place"] == f"GPU {r['cuda']}"
    assert len(by_pid) == 2 and sorted(next(iter(v)) for v in by_pid.values()) == ["3", "7"]
    assert all(len(v) == 1 for v in by_pid.values())  # a worker never sees another worker's device
    assert os.getpid() not in by_pid and "CUDA_VISIBLE_DEVICES" not in os.environ  # the parent is left alone


def _fails_on_two(job: int) -> int:
    from pipeline.core.errors import PipelineError

    if job == 2:
        raise PipelineError("run 2 has no benign images")
    return job * 10


@pytest.mark.parametrize("workers", [1, 2])
def test_a_failing_run_does_not_stop_the_others(workers, capsys):
    """In this process (1 worker) or in spawned workers: the failed job's error comes back once, every other job
    finishes, and the schedule ends with one line per failure and a non-zero exit (a PipelineError)."""
    from pipeline.core.errors import PipelineError
    from pipeline.runner import raise_failures
    from pipeline.workers import JobFailed

    results = LocalExecutor(workers, gpus=[]).map([Task(f"e/r{i}", _fails_on_two, i) for i in range(5)], tensorflow=False)
    assert [r for r in results if not isinstance(r, JobFailed)] == [0, 10, 30, 40]
    assert isinstance(results[2], JobFailed) and str(results[2].error) == "run 2 has no benign images"
    with pytest.raises(PipelineError, match=r"1 of 5 runs failed \(e/r2\)"):
        raise_failures([("e/r2", results[2].error)], 5)
    assert "failed: e/r2: run 2 has no benign images" in capsys.readouterr().out
    with pytest.raises(PipelineError, match=r"^e/r2: run 2 has no benign images$"):  # a schedule of one run
        raise_failures([("e/r2", results[2].error)], 1)


SCRIPT = r"""
import json, sys
from pipeline.ml.runtime import quiet_tensorflow
quiet_tensorflow()
import tensorflow as tf
from tensorflow.python.eager import context

fake = tf.config.PhysicalDevice("/physical_device:GPU:0", "GPU")
calls = []
tf.config.list_physical_devices = lambda kind=None: [fake] if kind == "GPU" else []
tf.config.experimental.set_memory_growth = lambda dev, on: calls.append(
    {"device": dev.name, "on": on, "runtime_started": context.context()._context_handle is not None})
from pipeline.workers import limit_tf_threads
limit_tf_threads(1)  # the local pool's worker initializer
from pipeline.executors.ray_executor import _remote_setup
_remote_setup(1)  # a Ray task's set-up
before = context.context()._context_handle is not None
tf.constant(1.0) + 1  # the first tensor
after = context.context()._context_handle is not None
print(json.dumps({"calls": calls, "before": before, "after": after}))
"""


def test_memory_growth_is_set_before_any_tensor():
    import json

    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})
    assert out.returncode == 0, out.stderr[-2000:]
    record = json.loads(out.stdout.strip().splitlines()[-1])
    assert record["calls"] == [{"device": "/physical_device:GPU:0", "on": True, "runtime_started": False}] * 2
    assert record["before"] is False and record["after"] is True  # the probe does see the runtime start


@pytest.mark.parametrize("workers", ["gpus", 0, "two"])
def test_workers_setting(workers):
    from pipeline.config import config_from_dict
    from pipeline.core.errors import PipelineError

    if workers == "gpus":
        assert config_from_dict({"train": {"workers": "gpus"}}, require_data_root=False).train.workers == "gpus"
    else:
        with pytest.raises(PipelineError, match="train.workers' must be >= 1 or \"gpus\""):
            config_from_dict({"train": {"workers": workers}}, require_data_root=False)
