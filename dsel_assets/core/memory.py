"""Refusing, up front and with the figures, work whose arrays available memory cannot hold:
a clear error naming what it needs beats being killed by the kernel half-way through."""

from __future__ import annotations


def require_memory(need_bytes: int, what: str, advice: str) -> None:
    """Raise ``MemoryError`` when ``need_bytes`` exceed the memory available now: ``what`` need
    N GiB in memory, M GiB are available; ``advice``."""
    import psutil

    available = psutil.virtual_memory().available
    if need_bytes > available:
        raise MemoryError(
            f"{what} need {need_bytes / 2**30:.1f} GiB in memory, {available / 2**30:.1f} GiB are available; {advice}"
        )


def release_memory() -> None:
    """Return freed memory to the system after a step: collect reference cycles (a model with
    hooks is one), empty CUDA's cache, and trim glibc's heaps - training and scoring free
    hundreds of small-to-medium tensors that glibc otherwise keeps mapped, so an in-process run
    of many steps grows by each step's peak."""
    import contextlib
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    libc = ctypes.util.find_library("c")
    if libc:
        with contextlib.suppress(OSError, AttributeError):  # not glibc
            ctypes.CDLL(libc).malloc_trim(0)
