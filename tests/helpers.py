"""Small helpers shared by tests."""

import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def write_jsonl(path: Path, lines: list[str | bytes]) -> Path:
    """Write raw lines (str or bytes) as a JSON-lines file."""
    data = b"".join((line if isinstance(line, bytes) else line.encode("utf-8")) + b"\n" for line in lines)
    path.write_bytes(data)
    return path


@contextmanager
def small_tmpfs(path: Path, kib: int = 64) -> Iterator[Callable[[int], object]]:
    """``path`` on its own tmpfs of ``kib`` KiB: a really full disk (ENOSPC from the kernel).
    Yields ``resize(kib)``, which remounts it. Skips the test where mounting is not permitted."""
    path.mkdir(parents=True, exist_ok=True)
    mount = ["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(path)]
    if not shutil.which("mount") or subprocess.run(mount, capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs is not permitted here")
    try:
        yield lambda size: subprocess.run(["mount", "-o", f"remount,size={size}k", str(path)], check=True)
    finally:
        subprocess.run(["umount", str(path)], check=True)
