"""What the benchmarks on the shared pool share: its examples, the three query tasks with
unequal numbers of query rows, and MiniLM vectors kept between runs.

Imported by the scripts beside it (a script's own folder is first on Python's path)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
#: (task, eval file, query rows drawn): GSM8K 4, DialogSum 8, the Nuggets anchors as "general" 24.
QUERY_SETS = (
    ("gsm8k", "eval/gsm8k_test.jsonl", 4),
    ("dialogsum", "eval/dialogsum_test.json", 8),
    ("general", "eval/alpaca_gpt4_kmeans_100.json", 24),
)


def records(path: Path) -> list[list[dict]]:
    """The conversations of one file that validation accepts."""
    from dsel_assets.core.data.validate import validate_file

    return [r["messages"] for r in validate_file(path).accepted]


def pool_files() -> list[tuple[str, list[dict]]]:
    """(source file's stem, conversation) of every accepted example of the shared pool, in file order."""
    from dsel_assets.core.data.catalog import expand_paths

    return [(path.stem, m) for path in expand_paths([SHARED / "pool"]) for m in records(path)]


def pool_or_skip() -> list[list[dict]] | None:
    """Every accepted conversation of the shared pool, after printing the machine's load; None,
    said, when ../shared/data is absent (a benchmark then exits 0)."""
    if not SHARED.is_dir():
        print(f"skipped: {SHARED} is absent")
        return None
    print(f"load average at start: {os.getloadavg()}; cores: {os.cpu_count()}")
    return [m for _, m in pool_files()]


def seeded_sample(pool: list, size: int, seed: int) -> list:
    """``size`` items of ``pool`` drawn by a permutation seeded with ``seed``, in pool order."""
    return [pool[i] for i in sorted(np.random.default_rng(seed).permutation(len(pool))[:size])]


def query_sets(seed: int) -> tuple[list[list[dict]], list[str]]:
    """(query rows, task of each): each task's rows drawn by a permutation seeded with ``seed``."""
    queries, tasks = [], []
    for task, path, count in QUERY_SETS:
        rows = records(SHARED / path)
        chosen = np.random.default_rng(seed).permutation(len(rows))[:count]
        queries += [rows[i] for i in chosen]
        tasks += [task] * count
    return queries, tasks


def minilm(texts: list[str], cached: Path | None = None) -> tuple[np.ndarray, float]:
    """all-MiniLM-L6-v2 vectors of ``texts`` (read from the .npy file ``cached`` when it exists,
    written there otherwise), and the seconds spent encoding."""
    from dsel_assets.core.models.embeddings import encode, load_encoder

    if cached and cached.exists():
        return np.load(cached), 0.0
    started = time.perf_counter()
    x = encode(load_encoder(), texts, 128)
    if cached:
        cached.parent.mkdir(parents=True, exist_ok=True)
        np.save(cached, x)
    return x, time.perf_counter() - started
