"""RDS+ on the real pool: what the reference's settings change in the selected set.

On a seeded sample of the shared pool (../shared/data/pool, SmolLM2-135M, position-weighted
last-layer embeddings) and three query tasks with unequal numbers of query rows (GSM8K 4,
DialogSum 8, the Nuggets anchors as "general" 24; from ../shared/data/eval), at a 5% budget:

1. aggregation: round-robin over query rows (the study's rule) against max within each task
   then round-robin over tasks (RDS+'s reference), both on 2,048-token embeddings;
2. length: 512 against 2,048 tokens per example (RDS+'s rule, tasks); only examples longer
   than 512 tokens embed differently, so the 512-token embeddings are computed for those only;
3. BOS: SmolLM2's chat template already starts with its BOS token, so the token ids with and
   without ``bos`` are compared (identical ids give identical embeddings).

Printed: the machine's load, the share of the whole pool longer than 512 and 2,048 tokens, the
selected-set overlap |A & B| / k of each pair, each task's share of the selection, and the time
spent embedding.

Usage: python benchmarks/rds_settings.py [--sample 6000] [--budget 0.05] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from shared_pool import QUERY_SETS, pool_or_skip, query_sets

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def overlap(a: list[str], b: list[str]) -> float:
    return len(set(a) & set(b)) / max(len(a), 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", type=int, default=6000, help="pool examples embedded (seeded sample)")
    parser.add_argument("--budget", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    pool = pool_or_skip()
    if pool is None:
        return 0
    from dsel_assets.core.models.loading import load_causal_lm, load_tokenizer, resolve
    from dsel_assets.core.models.model_embeddings import embedding_ids, model_embeddings
    from dsel_assets.core.select import build_config, get
    from dsel_assets.core.select.targeted import Influence

    spec = resolve("smollm2")
    tokenizer = load_tokenizer(spec)
    lengths = np.array([len(embedding_ids(tokenizer, m, 10**9, bos=False)) for m in pool])
    print(
        f"whole pool: {len(pool)} examples; longer than 512 tokens: {np.mean(lengths > 512):.1%}, "
        f"than 2,048: {np.mean(lengths > 2048):.2%}"
    )
    rng = np.random.default_rng(args.seed)
    pick = np.sort(rng.permutation(len(pool))[: args.sample])
    sample = [pool[i] for i in pick]
    same_ids = sum(embedding_ids(tokenizer, m, 2048, True) == embedding_ids(tokenizer, m, 2048, False) for m in sample)
    print(f"BOS: token ids identical with and without it for {same_ids} of {len(sample)} sampled examples")

    queries, tasks = query_sets(args.seed + 1)
    model = load_causal_lm(spec, device="cpu")
    started = time.perf_counter()
    full = model_embeddings(model, tokenizer, sample, "position_weighted", 2048, batch_size=8, bos=True)
    query_full = model_embeddings(model, tokenizer, queries, "position_weighted", 2048, batch_size=8, bos=True)
    long_rows = np.flatnonzero(lengths[pick] > 512)
    short = full.copy()
    if len(long_rows):
        cut = [sample[i] for i in long_rows]
        short[long_rows] = model_embeddings(model, tokenizer, cut, "position_weighted", 512, batch_size=8, bos=True)
    query_short = model_embeddings(model, tokenizer, queries, "position_weighted", 512, batch_size=8, bos=True)
    print(
        f"embedded {len(sample)} + {len(queries)} examples (and {len(long_rows)} long ones again at 512) "
        f"in {time.perf_counter() - started:.0f} s"
    )

    ids = np.array([f"s{i:05d}" for i in range(len(sample))])
    k = int(round(args.budget * len(sample)))

    def pick_ids(pool_vectors, query_vectors, aggregate):
        influence = Influence((pool_vectors @ query_vectors.T).astype(np.float32), tuple(tasks))
        config = build_config("round_robin", {"representation": "rds", "aggregate": aggregate})
        return get("round_robin").select(ids, k, config, influence=influence).ids

    by_task = pick_ids(full, query_full, "tasks")
    by_query = pick_ids(full, query_full, "queries")
    short_by_task = pick_ids(short, query_short, "tasks")
    nearest = {}
    for name, chosen, p_vectors, q_vectors in (
        ("tasks, 2048", by_task, full, query_full),
        ("queries, 2048", by_query, full, query_full),
        ("tasks, 512", short_by_task, short, query_short),
    ):
        rows = np.array([int(i[1:]) for i in chosen])
        sims = p_vectors[rows] @ q_vectors.T
        best_task = np.array(tasks)[[int(np.argmax(s)) for s in sims]]
        nearest[name] = {t: float(np.mean(best_task == t)) for t, _, _ in QUERY_SETS}
    print(f"\nbudget {args.budget:.0%} of {len(sample)} = {k} examples")
    print("| pair | overlap |\n|---|---|")
    print(f"| query-row turns vs task turns (2,048 tokens) | {overlap(by_query, by_task):.3f} |")
    print(f"| 512 vs 2,048 tokens (task turns) | {overlap(short_by_task, by_task):.3f} |")
    print(f"| with vs without BOS (SmolLM2) | token ids identical for {same_ids} of {len(sample)} examples |")
    print("\nshare of the selection nearest each task's queries (4 / 8 / 24 query rows):")
    for name, shares in nearest.items():
        print(f"  {name}: " + ", ".join(f"{t} {s:.2f}" for t, s in shares.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
