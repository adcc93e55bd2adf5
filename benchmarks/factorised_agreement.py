"""Factorised (LoGra-style) against exact LESS gradient features, on a state home's real pool.

Reads a dsel state home made by ``benchmarks/real_pool.py`` (its pool, query rows and latest LESS
warmup checkpoint, SmolLM2), takes ``--pool N`` pool rows (seeded sample) and every query row,
and computes LESS task scores (Adam pool features x plain query features, mean per subtask, max)
three ways: exact (d, projection seed 0), exact with projection seed 1 (the exact path's own
agreement with itself: the yardstick), and factorised (k per side, re-projected to d). Prints, per
target task, the Spearman correlation of the scores and the overlap of the top 5% with exact
seed 0, and each path's examples/s, in one table, with the machine's load.

Usage: python benchmarks/factorised_agreement.py --home /tmp/study-v2 [--pool 300] [--dim 8192] [--k 16]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from resources import store as state_db
from resources.object_store import object_store

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ranks = [np.argsort(np.argsort(x, kind="stable"), kind="stable") for x in (a, b)]
    return float(np.corrcoef(*ranks)[0, 1])


def top_overlap(a: np.ndarray, b: np.ndarray, fraction: float = 0.05) -> float:
    k = max(1, int(fraction * len(a)))
    return len(set(np.argsort(-a)[:k]) & set(np.argsort(-b)[:k])) / k


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", required=True, help="a state home with a LESS warmup (benchmarks/real_pool.py)")
    parser.add_argument("--pool", type=int, default=300, help="pool rows sampled (seed 0)")
    parser.add_argument("--dim", type=int, default=8192)
    parser.add_argument("--k", type=int, default=16, help="factorised: k per side")
    parser.add_argument("--max-length", type=int, default=256)
    args = parser.parse_args()

    import torch

    from dsel_assets.core.influence import aggregate_less_scores
    from dsel_assets.core.models.features import FeatureConfig, gradient_features
    from dsel_assets.core.models.loading import load_causal_lm, load_tokenizer, resolve
    from dsel_assets.core.models.warmup import load_checkpoint, read_manifest
    from resources.home import DselHome

    home = DselHome(Path(args.home))
    with state_db.open_state(home.duckdb, read_only=True) as db:
        pool = db.split_rows("pool")
        query = db.split_rows("query", ("pool_id", "messages", "task"))
        subtasks = db.query_subtasks()
        _, warmup = db.latest_warmup()
    order = np.random.default_rng(0).permutation(pool.height)[: args.pool]
    pool_items = [(pool["pool_id"][int(i)], pool["messages"][int(i)]) for i in sorted(order)]
    query_items = list(zip(query["pool_id"].to_list(), query["messages"].to_list(), strict=True))
    manifest = read_manifest(object_store().local_copy(warmup))
    checkpoint = Path(manifest["checkpoints"][-1]["path"])
    spec = resolve("smollm2")
    tokenizer = load_tokenizer(spec)
    model, state = load_checkpoint(load_causal_lm(spec, "cpu"), checkpoint)
    print(
        f"pool {len(pool_items)} of {pool.height} rows, {len(query_items)} query rows, warmup {Path(warmup).name} "
        f"checkpoint {checkpoint.name}, d={args.dim}, k={args.k}, max length {args.max_length}; "
        f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"
    )

    def scores(config: FeatureConfig) -> tuple[dict[str, np.ndarray], float]:
        started = time.perf_counter()
        pool_rows = {
            i: f
            for c in gradient_features(model, tokenizer, pool_items, config, state)
            for i, f in zip(c.ids, c.features, strict=True)
        }
        query_rows = {
            i: f
            for c in gradient_features(model, tokenizer, query_items, config)
            for i, f in zip(c.ids, c.features, strict=True)
        }
        rate = (len(pool_rows) + len(query_rows)) / (time.perf_counter() - started)
        kept = [i for i, _ in pool_items if i in pool_rows]
        columns = [i for i, _ in query_items if i in query_rows]
        similarity = (
            np.stack([pool_rows[i] for i in kept]).astype(np.float32)
            @ np.stack([query_rows[q] for q in columns]).astype(np.float32).T
        )
        tasks = dict(zip(query["pool_id"].to_list(), query["task"].to_list(), strict=True))
        per_task = aggregate_less_scores(similarity, [tasks[q] for q in columns], [subtasks.get(q) for q in columns])
        return per_task, rate

    torch.manual_seed(0)
    exact = FeatureConfig(dim=args.dim, max_length=args.max_length)
    runs = {
        "exact, projection seed 1": FeatureConfig(**{**exact.to_dict(), "projection_seed": 1}),
        f"factorised k={args.k}": FeatureConfig(
            **{**exact.to_dict(), "projection": "factorised", "factor_dim": args.k}
        ),
    }
    reference, reference_rate = scores(exact)
    print("\n| path | task | Spearman vs exact seed 0 | top-5% overlap | examples/s |")
    print("|---|---|---|---|---|")
    print(f"| exact, projection seed 0 | - | 1 | 1 | {reference_rate:.2f} |")
    for name, config in runs.items():
        got, rate = scores(config)
        for task, values in reference.items():
            agreement = f"{spearman(values, got[task]):.3f} | {top_overlap(values, got[task]):.2f}"
            print(f"| {name} | {task} | {agreement} | {rate:.2f} |")


if __name__ == "__main__":
    main()
