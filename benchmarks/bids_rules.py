"""BIDS on the real pool: the paper's Algorithm 1 (``rule=columns``, the default) against dsel's
earlier task-level loop (``rule=tasks``, max and mean).

The whole shared pool (../shared/data/pool) and three query tasks with unequal numbers of query
rows (GSM8K 4, DialogSum 8, the Nuggets anchors as "general" 24; ../shared/data/eval) are
embedded with all-MiniLM-L6-v2 (conversation text cut at 2,000 characters, as
``benchmarks/sentence_text.py`` does; ``--cache`` keeps the pool's vectors between runs), and
BIDS selects on their cosine (``bids@embed``) at the budget. Printed: the machine's load, the
overlap |A & B| / k of each rule's selection with Algorithm 1's, each rule's picks per task
(the task whose query column won the pick), and the seconds each selection took.

Usage: python benchmarks/bids_rules.py [--budget 0.05] [--cache DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
from shared_pool import minilm, pool_or_skip, query_sets

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=0.05)
    parser.add_argument("--cache", type=Path, default=None, help="folder with the pool's vectors (conversation.npy)")
    args = parser.parse_args()
    pool = pool_or_skip()
    if pool is None:
        return 0
    from dsel_assets.core.data.schema import example_text
    from dsel_assets.core.select import build_config, get
    from dsel_assets.core.select.targeted import Influence

    queries, tasks = query_sets(1)
    x, _ = minilm([example_text(m)[:2000] for m in pool], args.cache / "conversation.npy" if args.cache else None)
    q, _ = minilm([example_text(m)[:2000] for m in queries])
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    influence = Influence((x @ q.T).astype(np.float32), tuple(tasks))
    ids = np.array([f"p{i:05d}" for i in range(len(pool))])
    k = round(args.budget * len(pool))
    rules = {
        "columns (Algorithm 1)": {"rule": "columns"},
        "tasks, max": {"rule": "tasks", "aggregate": "max"},
        "tasks, mean": {"rule": "tasks", "aggregate": "mean"},
    }
    picked = {}
    for label, params in rules.items():
        started = time.perf_counter()
        config = build_config("bids", {"representation": "embed", **params})
        sel = get("bids").select(ids, k, config, influence=influence)
        picked[label] = sel.ids
        print(f"{label}: {time.perf_counter() - started:.1f} s, picks per task {sel.diagnostics['picks_by_task']}")
    base = picked["columns (Algorithm 1)"]
    print(f"\nbudget {args.budget:.0%} = {k:,} of {len(pool):,}; overlap with Algorithm 1's selection:")
    for label, chosen in picked.items():
        print(f"  {label:24s} {len(set(base) & set(chosen)) / k:.3f}")
    print(f"load average at end: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
