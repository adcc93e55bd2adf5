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
