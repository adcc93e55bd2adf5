"""ClusterUCB's reward calls with and without scoring ahead (``score_ahead``), on real features.

The bandit's cost is its reward calls: each call of the on-demand LESS scorer regenerates the
gradient projection once per checkpoint, whatever the number of rows, and then pays per row.
Scoring an arm's next members ahead (doubling per refill) leaves the draws unchanged and makes
fewer, larger calls. On a dsel home whose pool has LESS features (e.g. the home of
``model_bound_changes.py --home DIR --parts select``):

1. the draws of ``cluster_ucb`` at its defaults with ``draw_batch`` 1 and 8, with and without
   ``score_ahead``, replayed on the stored rewards: reward calls, rows scored, rows left unused,
   and whether the draws equal those of one call per draw;
2. what a call costs with the scorer computing (stored features ignored): seconds for 1 and for
   ``--rows`` fresh examples, hence the cost per call and per row, and each setting's cost;
3. with ``--real``, the draws of ``score_ahead`` at ``draw_batch`` 1 with the computing scorer,
   timed, against the estimate of 2.

Usage: python benchmarks/cluster_ucb_calls.py --home DIR [--task gsm8k] [--rows 16] [--real]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, required=True, help="a dsel home with pool LESS features")
    parser.add_argument("--task", default="gsm8k", help="the reward's query task")
    parser.add_argument("--rows", type=int, default=16, help="fresh examples of the larger timed call")
    parser.add_argument("--real", action="store_true", help="also time score_ahead's draws with the computing scorer")
    args = parser.parse_args()
    from dsel_assets.core.clustering import spherical_kmeans
    from dsel_assets.core.select.cluster_ucb import ClusterUcbConfig, cluster_ucb_draws, featured_rows
    from dsel_assets.pipeline.gradient_scorer import load_less_scorer
    from resources import DselHome, build_resources

    print(f"load average at start: {os.getloadavg()}; cores: {os.cpu_count()}", flush=True)
    resources = build_resources(DselHome(args.home))
    store, lance = resources["store"], resources["lance"]
    with store.session() as db:
        ids = db.split_rows("pool", ("pool_id",))["pool_id"].to_list()
    scorer, _ = load_less_scorer(lance, store, ids, resources["grad_settings"], resources["selection_model"])
    if scorer.stored is None:
        print(f"{args.home}: no stored pool LESS features; materialize pool_grad_features first")
        return 1
    last = scorer.checkpoints[-1][0]
    found, features = scorer.stored.read(ids, [last])
    if len(found) != len(ids):
        print(f"{args.home}: {len(ids) - len(found)} pool rows have no stored feature; this replay needs all")
        return 1
    ids = np.array(found, dtype=object)
    x = features[last].astype(np.float32)
    valid = featured_rows(x)
    rewards = scorer(list(ids[valid]), args.task)
    base = ClusterUcbConfig(task=args.task)
    _, assignment = spherical_kmeans(x[valid], base.n_clusters, base.seed, 20)
    print(f"{len(ids)} pool rows, {len(valid)} with a feature, {len(np.unique(assignment))} clusters; {base}")

    counts, reference = {}, {}
    for draw_batch in (1, 8):
        for ahead in (False, True):
            calls: list[int] = []

            def reward(rows, calls=calls):
                calls.append(len(rows))
                return rewards[rows]

            config = dataclasses.replace(base, draw_batch=draw_batch, score_ahead=ahead)
            draws = cluster_ucb_draws(assignment, reward, config)
            reference.setdefault(draw_batch, draws)
            same = (
                draws.pulls == reference[draw_batch].pulls
                and draws.rewards.keys() == reference[draw_batch].rewards.keys()
            )
            counts[(draw_batch, ahead)] = (len(calls), sum(calls))
            print(
                f"draw_batch {draw_batch}, score_ahead {ahead!s:5}: {len(calls):4d} calls, "
                f"{sum(calls):4d} rows scored, {draws.unused:3d} unused; draws equal to score_ahead False: {same}",
                flush=True,
            )

    scorer.stored, fresh = None, [str(i) for i in ids[valid][::-1]]  # rows the replay's cache holds: forget them
    scorer.cache.clear()
    started = time.perf_counter()
    scorer(fresh[:1], args.task)
    one = time.perf_counter() - started
    started = time.perf_counter()
    scorer(fresh[1 : 1 + args.rows], args.task)
    many = time.perf_counter() - started
    per_row = (many - one) / (args.rows - 1)
    per_call = one - per_row
    print(
        f"\ncomputing scorer: 1 row {one:.1f} s, {args.rows} rows {many:.1f} s -> "
        f"{per_call:.1f} s a call + {per_row:.2f} s a row"
    )
    estimate = {key: calls * per_call + rows * per_row for key, (calls, rows) in counts.items()}
    for (draw_batch, ahead), seconds in estimate.items():
        ratio = estimate[(draw_batch, False)] / seconds
        print(f"draw_batch {draw_batch}, score_ahead {ahead!s:5}: ~{seconds:6.0f} s a reselection ({ratio:.1f}x)")

    if args.real:
        scorer.cache.clear()
        started = time.perf_counter()
        draws = cluster_ucb_draws(assignment, lambda rows: scorer(list(ids[valid][rows]), args.task), base)
        seconds = time.perf_counter() - started
        print(
            f"\nreal, score_ahead at draw_batch 1: {seconds:.0f} s (estimate {estimate[(1, True)]:.0f} s); "
            f"draws equal to the replay's: {draws.pulls == reference[1].pulls}"
        )
    print(f"load average at end: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
