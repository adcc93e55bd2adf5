"""The two ways dsel's k-means gets cheaper on large pools, against the full computation,
in one run (dsel_assets/core/clustering.py).

1. Sampled fit (every k-means: kmeans_random, kmq, small2large, diversify_conquer, labels):
   past 256 rows per cluster the centroids are fitted on a seeded sample of that many rows per
   cluster, and every row is then assigned to its nearest centroid. Printed per pool: seconds
   of the full fit and of the sampled fit, and the k-means objective (inertia: the sum of
   squared distances of every row to its centroid) as full / sampled.
2. Two levels (kmeans_centroids, k = 5% of N centroids, past N k d = 2e11): about sqrt(k)
   groups, then each group's share of the k centroids. Printed per pool and seed: the seconds
   of each path and two costs of what kmeans_centroids selects (lower is better), with a
   random 5% as the floor - coverage: the sum over the pool of each point's squared distance
   to its nearest selected point (what one representative per cluster is for); inertia of the
   centroids found (random has none).

Ratios are the full (one-level) cost / this path's cost: 1.0 = as good, below 1 = worse. The
mean and a 95% t-interval over the seeds are printed where there is more than one seed.

Data: MiniLM embeddings of the ../shared/data pool records (cached by knn_recall.py's loader;
skipped without the shared data) and the clustered 384-d embeddings of benchmarks/scaling.py
(its Lance cache).

Usage: python benchmarks/kmeans_scale.py [--cache DIR] [--seeds 3] [--synthetic-seeds 1]
       [--synthetic-size 100000] [--sampled-sizes 100000 1000000]
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
BUDGET = 0.05


def coverage(x: np.ndarray, rows: list[int]) -> float:
    """Sum over ``x`` of the squared distance to the nearest of ``rows``."""
    import faiss

    distances, _ = faiss.knn(x, np.ascontiguousarray(x[rows]), 1)
    return float(distances.sum(dtype=np.float64))


def inertia(x: np.ndarray, centroids: np.ndarray, assignment: np.ndarray, block: int = 65_536) -> float:
    """Sum of squared distances of every point to its cluster's centroid (float64)."""
    total = 0.0
    for lo in range(0, len(x), block):
        total += float(((x[lo : lo + block] - centroids[assignment[lo : lo + block]]) ** 2).sum(dtype=np.float64))
    return total


def sampled_fit(name: str, x: np.ndarray, clusters: int, seed: int = 0) -> None:
    """Full fit (scikit-learn over every row) against dsel's sampled fit, by inertia."""
    from sklearn.cluster import KMeans

    from dsel_assets.core.clustering import FIT_ROWS_PER_CLUSTER, kmeans

    started = time.perf_counter()
    full = KMeans(clusters, init="k-means++", n_init=1, max_iter=20, random_state=seed).fit(x)
    full_seconds = time.perf_counter() - started
    started = time.perf_counter()
    centroids, assignment = kmeans(x, clusters, seed)
    sampled_seconds = time.perf_counter() - started
    ratio = inertia(x, full.cluster_centers_.astype(np.float32), full.labels_) / inertia(x, centroids, assignment)
    fitted = min(len(x), FIT_ROWS_PER_CLUSTER * clusters)
    print(
        f"| {name} | {len(x):,} | {clusters} | {fitted:,} | {full_seconds:.1f} | {sampled_seconds:.1f} | {ratio:.4f} |",
        flush=True,
    )


def one_seed(x: np.ndarray, seed: int) -> dict[str, dict[str, float]]:
    from dsel_assets.core.clustering import kmeans, two_level_kmeans
    from dsel_assets.core.select.kmeans_centroids import nearest_unused

    k = int(BUDGET * len(x))
    found = {}
    for name, clustering in (("one level", kmeans), ("two levels", two_level_kmeans)):
        started = time.perf_counter()
        centroids, assignment = clustering(x, k, seed)
        order = np.argsort(-np.bincount(assignment, minlength=len(centroids)), kind="stable")
        rows, _ = nearest_unused(x, centroids[order], k)
        seconds = time.perf_counter() - started
        found[name] = {"seconds": seconds, "coverage": coverage(x, rows), "inertia": inertia(x, centroids, assignment)}
        print(f"    seed {seed} {name}: {seconds:.1f} s", file=sys.stderr, flush=True)
    rows = np.random.default_rng(seed).choice(len(x), k, replace=False).tolist()
    found["random"] = {"seconds": 0.0, "coverage": coverage(x, rows), "inertia": float("nan")}
    return found


def interval(values: list[float]) -> str:
    from scipy import stats

    if len(values) < 2:
        return f"{values[0]:.4f} (one seed)"
    mean, half = float(np.mean(values)), float(stats.t.ppf(0.975, len(values) - 1) * stats.sem(values))
    return f"{mean:.4f} +- {half:.4f}"


def report(name: str, x: np.ndarray, seeds: int) -> None:
    print(f"\n{name}: {len(x):,} x {x.shape[1]}, k = {int(BUDGET * len(x)):,}", flush=True)
    runs = [one_seed(x, seed) for seed in range(seeds)]
    print("| path | seconds (mean) | coverage ratio | inertia ratio |")
    print("|---|---|---|---|")
    for path in ("one level", "two levels", "random"):
        seconds = np.mean([r[path]["seconds"] for r in runs])
        cover = interval([r["one level"]["coverage"] / r[path]["coverage"] for r in runs])
        inert = "-" if path == "random" else interval([r["one level"]["inertia"] / r[path]["inertia"] for r in runs])
        print(f"| {path} | {seconds:.1f} | {cover} | {inert} |", flush=True)


def main() -> None:
    from knn_recall import real_embeddings
    from scaling import CACHE, dataset, read_matrix

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=CACHE)
    parser.add_argument("--seeds", type=int, default=3, help="seeds on the real pool")
    parser.add_argument("--synthetic-seeds", type=int, default=1)
    parser.add_argument("--synthetic-size", type=int, default=100_000, help="two levels; 0 = skip the synthetic pool")
    parser.add_argument("--sampled-sizes", type=int, nargs="*", default=[100_000, 1_000_000])
    args = parser.parse_args()
    print(f"load average at the start: {os.getloadavg()[0]:.2f}; cores: {os.cpu_count()}", flush=True)
    real = real_embeddings(args.cache)
    real = None if real is None else real.astype(np.float32)

    def synthetic(n: int) -> np.ndarray:
        path = dataset(args.cache, f"embed_{n}")
        if not Path(path).exists():
            sys.exit(f"{path} is missing: run benchmarks/scaling.py --sizes {n} --cache {args.cache} first")
        return read_matrix(path)

    print("\n1. Sampled fit, seed 0: full / sampled inertia")
    print("| pool | rows | clusters | rows fitted | full s | sampled s | inertia ratio |")
    print("|---|---|---|---|---|---|---|")
    if real is not None:
        sampled_fit("real pool (MiniLM)", real, 30)
    for n in args.sampled_sizes:
        sampled_fit("clustered synthetic", synthetic(n), 100)
    print("\n2. Two levels (kmeans_centroids)")
    if real is None:
        print("real pool: skipped (no ../shared/data)")
    else:
        report("real pool (MiniLM)", real, args.seeds)
    if args.synthetic_size:
        report("clustered synthetic", synthetic(args.synthetic_size), args.synthetic_seeds)


if __name__ == "__main__":
    main()
