"""Nuggets golden score: KV-cache reuse + batched anchors vs the naive text-concatenation loop.

One run, SmolLM2-135M-Instruct, candidates and anchors from ../shared/data (the Nuggets
anchor file and alpaca_gpt4 pool; synthetic when absent). Checks that every one-shot
log-prob agrees to 1e-4 and the golden scores are identical, then prints a markdown table.
Usage: python benchmarks/nuggets.py [--candidates 12] [--anchors 24] [--batch 12]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data"


def load(n_candidates: int, n_anchors: int):
    from dsel_assets.core.data.synthetic import generate
    from dsel_assets.core.data.validate import validate_file

    if (SHARED / "eval" / "alpaca_gpt4_kmeans_100.json").exists():
        anchors = [r["messages"] for r in validate_file(SHARED / "eval" / "alpaca_gpt4_kmeans_100.json").accepted]
        pool = [r["messages"] for r in validate_file(SHARED / "pool" / "alpaca_gpt4_9k.json").accepted]
        short = [m for m in pool if sum(len(t["content"]) for t in m) < 600]
        return short[:n_candidates], anchors[:n_anchors], "shared/data (alpaca_gpt4 pool, Nuggets anchors)"
    data = generate(seed=0, per_capability=20)
    return (
        [r["messages"] for r in data.pool[:n_candidates]],
        [r["messages"] for r in data.evals[:n_anchors]],
        "synthetic (shared data absent)",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidates", type=int, default=12)
    parser.add_argument("--anchors", type=int, default=24)
    parser.add_argument("--batch", type=int, default=12)
    args = parser.parse_args()
    from dsel_assets.core.models.loading import load_causal_lm, load_tokenizer, resolve
    from dsel_assets.core.models.nuggets import (
        golden_scores,
        one_shot_cached,
        one_shot_naive,
        prepare_anchors,
        zero_shot,
    )

    candidates, anchor_msgs, source = load(args.candidates, args.anchors)
    spec = resolve("smollm2")
    model, tokenizer = load_causal_lm(spec), load_tokenizer(spec)
    anchors = prepare_anchors(tokenizer, anchor_msgs, 2048)
    lp0 = zero_shot(model, anchors)
    started = time.perf_counter()
    naive = one_shot_naive(model, tokenizer, candidates, anchors)
    t_naive = time.perf_counter() - started
    started = time.perf_counter()
    cached, _ = one_shot_cached(model, tokenizer, candidates, anchors, batch_size=args.batch)
    t_cached = time.perf_counter() - started
    diff = float(np.nanmax(np.abs(cached - naive)))
    same = bool(np.array_equal(golden_scores(cached, lp0), golden_scores(naive, lp0)))
    pairs = len(candidates) * len(anchors)
    device = str(next(model.parameters()).device)
    print(
        f"\nNuggets one-shot scoring: {len(candidates)} candidates x {len(anchors)} anchors from {source}, "
        f"SmolLM2-135M, device {device}\n"
    )
    print("| implementation | seconds | pairs/s | speed-up | max abs diff of lp1 | same golden scores |")
    print("|---|---|---|---|---|---|")
    print(f"| naive concatenation loop | {t_naive:.1f} | {pairs / t_naive:.2f} | 1.00x | - | - |")
    print(
        f"| KV cache + batch {args.batch} | {t_cached:.1f} | {pairs / t_cached:.2f} | {t_naive / t_cached:.2f}x | "
        f"{diff:.2e} | {same} |"
    )


if __name__ == "__main__":
    main()
