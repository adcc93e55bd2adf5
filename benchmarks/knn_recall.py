"""The approximate kNN graph (clustered cells, used past the exact search) against exact
search: recall, time, and the facility-location objective it keeps, one run.

Graph-based selectors (facility_location, qdit, expdesign_hybrid past their dense memory cap;
g2is and knn_kde always) build a graph holding each point's nearest points. Exact search
costs N^2 d: 50 s at 100k x 384 on 2 cores, ~80 minutes at 1M. Beyond 1.5e13 multiply-adds
(or ``exact_search_rows``) dsel compares each cell of points only with its nearest cells
(dsel_assets/core/select/_neighbours.py). For each data set this script prints:

- seconds to build the 50-neighbour graph, exact and approximate (exact is skipped above
  ``--exact-max`` rows);
- recall@51: the share of each row's true 51 nearest (cosine, itself included) that the
  approximate graph holds, over ``--queries`` sampled rows whose true neighbours come from
  exact search;
- facility location at budget 5% greedily maximised on each graph and scored by the dense
  objective FL(S) = sum_v max(0, max_s cos(v, s)) (row blocks): approximate / exact (where
  exact ran), and a random 5% against exact as the floor.

Data: the clustered 384-d embeddings of benchmarks/scaling.py (its Lance cache) at 100k and 1M,
and MiniLM embeddings of every ../shared/data pool record (its string fields joined; ~30k rows,
cached in the cache folder), searched approximately by force (``exact_search_rows`` = 1).

Usage: python benchmarks/knn_recall.py [--cache DIR] [--sizes 100000 1000000] [--exact-max 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
SHARED = ROOT.parent / "shared" / "data"
NEIGHBOURS = 50


def real_embeddings(cache: Path) -> np.ndarray | None:
    """MiniLM embeddings of the shared pool records (cached), or None without the shared data."""
    path = cache / "real_pool_minilm.npy"
    if path.exists():
        return np.load(path, allow_pickle=False)
    if not (SHARED / "pool").is_dir():
        return None
    from dsel_assets.core.models.embeddings import encode, load_encoder

    texts = []
    for file in sorted((SHARED / "pool").iterdir()):
        with file.open(encoding="utf-8") as handle:
            records = [json.loads(line) for line in handle] if file.suffix == ".jsonl" else json.load(handle)
        texts += ["\n".join(v for v in r.values() if isinstance(v, str)) for r in records if isinstance(r, dict)]
    x = encode(load_encoder(), texts).astype(np.float32)
    np.save(path, x, allow_pickle=False)
    return x


def recall(x: np.ndarray, graph, queries: np.ndarray) -> float:
    """Mean share of each query row's true ``NEIGHBOURS + 1`` nearest that ``graph`` holds."""
    import faiss

    _, truth = faiss.knn(x[queries], x, NEIGHBOURS + 1, metric=faiss.METRIC_INNER_PRODUCT)
    columns = graph.tocsc()  # column v: v's neighbours
    shares = [
        len(set(columns.indices[columns.indptr[v] : columns.indptr[v + 1]]) & set(row)) / len(row)
        for v, row in zip(queries, truth, strict=True)
    ]
    return float(np.mean(shares))


def study(name: str, x: np.ndarray, exact_rows: int, run_exact: bool, n_queries: int) -> dict:
    from facility_knn_ratio import dense_objective

    from dsel_assets.core.select._facility import FacilityLocation, greedy, knn_kernel, unit_rows

    x = unit_rows(x)
    k = int(0.05 * len(x))
    out: dict = {"data": name, "n": len(x)}
    start = time.perf_counter()
    approximate = knn_kernel(x, NEIGHBOURS, exact_rows=exact_rows)
    out["approximate_s"] = time.perf_counter() - start
    queries = np.sort(np.random.default_rng(0).choice(len(x), min(n_queries, len(x)), replace=False))
    out["recall"] = recall(x, approximate, queries)
    start = time.perf_counter()
    picks = greedy(FacilityLocation(approximate), k)[0]
    out["greedy_s"] = time.perf_counter() - start
    if run_exact:
        start = time.perf_counter()
        exact = knn_kernel(x, NEIGHBOURS, exact_rows=len(x))
        out["exact_s"] = time.perf_counter() - start
        exact_picks = greedy(FacilityLocation(exact), k)[0]
        out["fl_ratio"] = dense_objective(x, picks) / dense_objective(x, exact_picks)
        out["shared_picks"] = len(set(picks) & set(exact_picks)) / k
        floor = np.random.default_rng(0).choice(len(x), k, replace=False).tolist()
        out["random_ratio"] = dense_objective(x, floor) / dense_objective(x, exact_picks)
    print(json.dumps(out), flush=True)
    return out


def main() -> None:
    import scaling

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", default=str(scaling.CACHE))
    parser.add_argument("--sizes", type=int, nargs="*", default=[100_000, 1_000_000])
    parser.add_argument("--exact-max", type=int, default=100_000, help="largest N where exact search also runs")
    parser.add_argument("--queries", type=int, default=2000, help="rows whose recall is measured")
    args = parser.parse_args()
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    print(f"load average at the start: {os.getloadavg()[0]:.2f}; cores: {os.cpu_count()}", flush=True)
    rows = []
    real = real_embeddings(cache)
    if real is None:
        print("no ../shared/data: the real-data row is skipped", flush=True)
    else:
        rows.append(study("real pool (MiniLM)", real, exact_rows=1, run_exact=True, n_queries=args.queries))
    scaling.prepare(cache, args.sizes)
    for n in args.sizes:
        x = scaling.read_matrix(scaling.dataset(cache, f"embed_{n}"))
        rows.append(study("clustered synthetic", x, 1, n <= args.exact_max, args.queries))  # 1: approximate
    columns = ["data", "N", "exact graph s", "approximate graph s", "recall@51", "greedy s"]
    columns += ["FL approximate / exact", "shared picks", "FL random / exact"]
    print("\n| " + " | ".join(columns) + " |\n" + "|---" * len(columns) + "|")
    for r in rows:
        exact = f"{r['exact_s']:.1f}" if "exact_s" in r else "-"
        ratio = f"{r['fl_ratio']:.4f}" if "fl_ratio" in r else "-"
        shared = f"{r['shared_picks']:.1%}" if "shared_picks" in r else "-"
        floor = f"{r['random_ratio']:.4f}" if "random_ratio" in r else "-"
        print(
            f"| {r['data']} | {r['n']:,} | {exact} | {r['approximate_s']:.1f} | {r['recall']:.4f} | "
            f"{r['greedy_s']:.1f} | {ratio} | {shared} | {floor} |"
        )


if __name__ == "__main__":
    main()
