"""Facility location past the dense memory cap: how much objective the sparse kNN path gives up
against exact greedy on the dense cosine kernel, one run.

Past ``memory_cap_mb`` (N^2 float32; 37 GiB at N = 100k) ``facility_location`` greedily
maximises FL on a sparse graph that keeps each point's ``n_neighbors`` most similar points
(faiss, exact search). This script runs, on the same clustered 384-d embeddings as
benchmarks/scaling.py (its Lance cache):

- ``knn``: the registered selector with its defaults (the sparse path at this N);
- ``exact``: lazy greedy on the dense clipped-cosine kernel - the same optimiser dsel uses on
  dense kernels (``_facility``), with each kernel row computed from the embeddings when the
  optimiser reads it, so no N x N array exists (slow: every gain re-evaluation is a product
  with all N points);
- ``random``: a seeded random subset of the same size, as a floor.

and scores every selection by the dense objective FL(S) = sum_v max(0, max_{s in S} cos(v, s)),
computed in row blocks. Printed: seconds, FL, FL / FL(exact), and the overlap of the picks.
With ``--check`` (N <= 20k) the streamed exact greedy is first compared with the selector's
own dense path (``memory_cap_mb`` raised): they must pick the same points.

Usage: python benchmarks/facility_knn_ratio.py [--n 100000] [--budget 0.05] [--cache DIR] [--check]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


class StreamedCosine:
    """Rows of the clipped cosine kernel of unit rows ``x``, computed when read: what
    ``FacilityLocation`` reads from a dense kernel (row c = sim(., c); symmetric)."""

    def __init__(self, x: np.ndarray):
        self.x = x
        self.shape = (len(x), len(x))
        self.dtype = np.dtype(np.float32)

    def __getitem__(self, rows):
        return np.maximum(self.x[rows] @ self.x.T, 0.0)


def dense_objective(x: np.ndarray, picks: list[int], block: int = 8192) -> float:
    """FL(S) on the dense clipped-cosine kernel, in row blocks."""
    chosen = x[np.asarray(picks)].T
    total = 0.0
    for lo in range(0, len(x), block):
        total += np.maximum((x[lo : lo + block] @ chosen).max(axis=1), 0.0).sum(dtype=np.float64)
    return total


def exact_greedy(x: np.ndarray, k: int) -> list[int]:
    from dsel_assets.core.select._facility import FacilityLocation, greedy

    order, _ = greedy(FacilityLocation(StreamedCosine(x)), k, "lazy")
    return order


def main() -> None:
    from scaling import CACHE, EMBED_DIM, dataset, ensure_vectors, read_matrix

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--budget", type=float, default=0.05)
    parser.add_argument("--cache", type=Path, default=CACHE)
    parser.add_argument("--check", action="store_true", help="first compare streamed exact with the dense path")
    args = parser.parse_args()

    from dsel_assets.core.select import build_config, get
    from dsel_assets.core.select._facility import unit_rows
    from dsel_assets.core.threads import size_threads

    print(size_threads(1), file=sys.stderr)
    load = " / ".join(f"{v:.2f}" for v in os.getloadavg())
    args.cache.mkdir(parents=True, exist_ok=True)
    ensure_vectors(args.cache, f"embed_{args.n}", args.n, EMBED_DIM, seed=1)
    x = unit_rows(read_matrix(dataset(args.cache, f"embed_{args.n}")))
    ids = [str(i) for i in range(args.n)]
    k = round(args.budget * args.n)
    selector = get("facility_location")

    if args.check:
        if args.n > 20_000:
            raise SystemExit("--check builds the dense kernel: use --n <= 20000")
        dense_config = build_config("facility_location", {"memory_cap_mb": "1e9"})
        dense = selector.select(ids, k, dense_config, sentence_embeddings=x)
        streamed = exact_greedy(x, k)
        same = [int(i) for i in dense.ids] == streamed
        print(f"check at N={args.n}: streamed exact greedy picks the dense path's {k} points in order: {same}")
        if not same:
            raise SystemExit(1)

    rows = []
    started = time.perf_counter()
    knn = selector.select(ids, k, build_config("facility_location"), sentence_embeddings=x)
    rows.append(("knn (default)", time.perf_counter() - started, [int(i) for i in knn.ids], knn.diagnostics["kernel"]))
    started = time.perf_counter()
    exact = exact_greedy(x, k)
    rows.append(("exact (streamed dense)", time.perf_counter() - started, exact, "cosine, rows on demand"))
    rng = np.random.default_rng(0)
    rows.append(("random", 0.0, rng.choice(args.n, k, replace=False).tolist(), "seed 0"))

    best = dense_objective(x, exact)
    print(
        f"\nfacility location, N={args.n:,} clustered 384-d embeddings (benchmarks/scaling.py data), k={k:,}, "
        f"{os.cpu_count()} cores, load average before the run {load}\n"
    )
    print("| selection | kernel | seconds | FL (dense) | FL / FL(exact) | picks shared with exact |")
    print("|---|---|---|---|---|---|")
    exact_set = set(exact)
    for name, seconds, picks, kernel in rows:
        value = dense_objective(x, picks)
        shared = len(exact_set.intersection(picks)) / k
        print(f"| {name} | {kernel} | {seconds:.1f} | {value:,.1f} | {value / best:.4f} | {shared:.1%} |")


if __name__ == "__main__":
    main()
