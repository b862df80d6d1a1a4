"""Which GPU a training process may use, found without importing TensorFlow, and TensorFlow set up to share it.

Why here and not in TensorFlow: a process's GPUs are fixed by ``CUDA_VISIBLE_DEVICES`` when TensorFlow starts,
and TensorFlow maps nearly all memory of every GPU it sees unless memory growth is on. So the parent finds the
GPUs (``nvidia-smi -L``, or the ``CUDA_VISIBLE_DEVICES`` it was itself given), gives each worker one device
string before the worker imports TensorFlow, and the worker turns on memory growth before its first tensor.
``HISTOCOMPARE_GPUS`` (a comma-separated list, ``""`` for none) overrides the discovery: tests inject a device
list with it, and a user can keep GPUs away from the pipeline.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys

GPUS_ENV = "HISTOCOMPARE_GPUS"
DEVICE_ENV = "HISTOCOMPARE_DEVICE"  # the device string a worker was given ("" on CPU), read back into run.json


def visible_gpus() -> list[str]:
    """The device strings of the GPUs this process may hand out (``["0", "1"]``; ``[]`` without a GPU)."""
    if GPUS_ENV in os.environ:
        return [d.strip() for d in os.environ[GPUS_ENV].split(",") if d.strip()]
    if "CUDA_VISIBLE_DEVICES" in os.environ:  # what we were given is what we can give
        return [d.strip() for d in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if d.strip() and d.strip() != "-1"]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]


def resolve_workers(workers: int | str, gpus: list[str] | None = None) -> tuple[int, list[str | None]]:
    """``(count, device per worker)`` for a ``workers`` setting: ``"gpus"`` is one worker per visible GPU (1 on CPU).

    With N GPUs, worker i gets GPU ``i % N`` (more workers than GPUs share them round robin, each with memory
    growth); without a GPU every worker gets ``None`` (its environment is left alone).
    """
    gpus = visible_gpus() if gpus is None else gpus
    count = max(1, len(gpus)) if workers == "gpus" else int(workers)
    return count, [gpus[i % len(gpus)] if gpus else None for i in range(count)]


def assign_device(device: str | None) -> None:
    """In a fresh worker, before TensorFlow is imported: let it see only ``device`` (``None``: leave as is)."""
    if device is None:
        return
    os.environ["CUDA_VISIBLE_DEVICES"] = device
    os.environ[DEVICE_ENV] = device


def enable_memory_growth() -> list[str]:
    """Turn on memory growth for every GPU TensorFlow sees, before any tensor exists (it cannot change after).

    Returns the GPUs set. Called again in a process whose GPUs are already initialised (a reused Ray worker), the
    setting is already in place and TensorFlow's RuntimeError is ignored.
    """
    import tensorflow as tf

    done = []
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # already initialised in this process: growth was set by the first call
            pass
        done.append(gpu.name)
    return done


def place() -> dict:
    """Where this process runs: host, pid and device (for progress events and ``run.json``).

    The device is the ``CUDA_VISIBLE_DEVICES`` this process was given (``"GPU 1"``); once TensorFlow is running it
    is checked against what TensorFlow sees, so a device string on a machine without a GPU reads ``"CPU"``.
    """
    given = os.environ.get(DEVICE_ENV) or os.environ.get("CUDA_VISIBLE_DEVICES") or ""
    given = "" if given == "-1" else given
    device = f"GPU {given}" if given else "CPU"
    if "tensorflow" in sys.modules:
        gpus = sys.modules["tensorflow"].config.list_physical_devices("GPU")
        device = "CPU" if not gpus else f"GPU {given or ','.join(str(i) for i in range(len(gpus)))}"
    return {"node": socket.gethostname(), "pid": os.getpid(), "device": device}
