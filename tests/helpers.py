"""Small helpers shared by tests."""

import json
import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def pool_ids(n: int) -> list[str]:
    """``p000``, ``p001``, ...: pool ids in sorted order."""
    return [f"p{i:03d}" for i in range(n)]


def qa_lines(start: int, stop: int) -> list[str]:
    """JSON lines of question / answer records ``start`` to ``stop - 1``, each one distinct."""
    return [json.dumps({"question": f"What is {i} plus {i}?", "answer": f"It is {2 * i}."}) for i in range(start, stop)]


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


def synthetic_pool_instance(home, resources, seed: int = 3, per_capability: int = 6):
    """A Dagster instance whose pool is the synthetic generator's pool split (task labels from
    its records), validated and materialized: what selection-asset tests start from."""
    import dagster as dg

    from dsel_assets.core.data.synthetic import generate
    from dsel_assets.pipeline.assets.ingest.pool import pool, pool_batch
    from dsel_assets.pipeline.names import pool_batches
    from resources.store import open_state

    paths = generate(seed=seed, per_capability=per_capability).write(home.root / "syn")
    with open_state(home.duckdb) as db:
        manifest, _ = db.register_batch(paths["pool"], home.raw, source="syn", task="auto", split="pool")
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(pool_batches.name, [manifest.batch])
    dg.materialize([pool_batch, pool], partition_key=manifest.batch, resources=resources, instance=instance)
    return instance


def strict_cpu_fp32(monkeypatch) -> None:
    """Keep this test's CPU work in strict fp32 (hand computations and references), even on a
    CPU that multiplies bf16 fast."""
    from dsel_assets.core.models import loading

    monkeypatch.setitem(loading._cpu_bf16, "allowed", False)
