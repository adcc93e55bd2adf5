"""Which device a model step runs on when a machine has several: each step process takes a free
slot and keeps it until it exits, so steps of different pool batches (shards) run side by side,
one per GPU, and none shares a device with another.

The slots are ``DSEL_DEVICES`` (comma-separated device names; a name may repeat, e.g.
``cpu,cpu`` to exercise two slots without a GPU), else every CUDA device when there are two or
more. A slot is held with an exclusive file lock under the state home, so a killed step frees its
slot with its process. The ``gpu`` concurrency pool's limit is sized to the slot count
(:func:`size_gpu_pool`): no more model steps start than there are devices.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import dagster as dg
from filelock import FileLock, Timeout

DEVICES_ENV = "DSEL_DEVICES"
#: The Dagster concurrency pool of every model-running step (see dsel_assets/pipeline/deployment.py).
GPU_POOL = "gpu"

#: This process's slot: (slot index, device, the lock that holds it).
_held: tuple[int, str, FileLock] | None = None


def device_slots() -> list[str]:
    """The devices model steps are spread over ([] with one device or none)."""
    listed = [d.strip() for d in os.environ.get(DEVICES_ENV, "").split(",") if d.strip()]
    if listed:
        return listed
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return [f"cuda:{i}" for i in range(count)] if count > 1 else []


def claim_device(folder: Path, log: Callable[[str], None] = print, poll: float = 0.5) -> str | None:
    """This process's device: a free slot's device, taken for the life of the process (None
    when there is a single device). Waits while every slot is held by another step."""
    global _held
    slots = device_slots()
    if not slots:
        return None
    if _held is not None:
        return _held[1]
    folder.mkdir(parents=True, exist_ok=True)
    waited = False
    while True:
        for index, device in enumerate(slots):
            lock = FileLock(str(folder / f"slot-{index}.lock"))
            try:
                lock.acquire(timeout=0)
            except Timeout:
                continue
            _held = (index, device, lock)
            log(f"device: slot {index + 1} of {len(slots)} ({device})")
            return device
        if not waited:
            log(f"device: all {len(slots)} slots busy; waiting for one")
            waited = True
        time.sleep(poll)


def size_gpu_pool(instance, slots: int) -> None:
    """Let as many model steps run at once as there are device slots (a limit already that large
    is kept)."""
    storage = instance.event_log_storage
    if slots <= 1 or not storage.supports_global_concurrency_limits:
        return
    if (storage.get_concurrency_info(GPU_POOL).slot_count or 0) < slots:
        storage.set_concurrency_slots(GPU_POOL, slots)


def concurrent_model_steps(instance: dg.DagsterInstance | None) -> int:
    """How many model steps may run at once on these cores: the ``gpu`` pool's limit (its
    ``default_limit`` until a limit is set), 1 without an instance or a limit."""
    if instance is None:
        return 1
    limit = None
    if instance.event_log_storage.supports_global_concurrency_limits:
        limit = instance.event_log_storage.get_concurrency_info(GPU_POOL).slot_count or None
    return max(1, limit or instance.global_op_concurrency_default_limit or 1)
