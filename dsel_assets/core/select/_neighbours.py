"""Every row's nearest rows, for the graph-based selectors: exact (faiss flat) while that is
affordable, approximate (clustered, as an IVF index is) beyond.

Exact search of every row against every row costs N^2 d multiply-adds: 50 s at 100k x 384 on
2 cores, about 80 minutes at 1M, and about 27 minutes at 100k x 8192 (pool gradients). By
default it stays exact while N^2 d <= ``EXACT_SEARCH_WORK`` (200k rows at d = 384, 43k at
d = 8192); a selector's ``exact_search_rows`` option sets the row limit instead.

Beyond it the rows are clustered into about 4 sqrt(N) cells (faiss k-means on a seeded
sample, each row in the cell of its nearest centre), and the rows of a cell are compared
with the rows of the ``PROBED_CELLS`` cells whose centres are nearest to their own centre -
one matrix product per cell, so the work runs at BLAS speed. (faiss's IVF search probes per
query: measured at 1M x 384 with 64 of 4,096 cells probed, its search alone projected to
736 s, against 232 s for this whole graph.) The similarities returned are exact for the
neighbours found; what is lost is a true neighbour in a cell that was not probed (recall and
objective: benchmarks/knn_recall.py, docs/SCALING.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import field

import numpy as np

EXACT_SEARCH_WORK = 200_000**2 * 384  # multiply-adds searched exactly by default (~4 minutes on 2 cores)
TRAIN_ROWS_PER_CELL = 40  # k-means training sample per cell (faiss warns below 39) ...
TRAIN_BYTES = 512 * 2**20  # ... unless that is over 512 MB of float32 rows (16 per cell at 1,024 x 8192)
PROBED_CELLS = 64  # cells whose rows each cell's rows are compared with
SEARCH_ROWS = 16384  # rows prepared or searched at a time

Rows = Callable[[np.ndarray], np.ndarray]
Neighbours = Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]


def exact_search_field():
    """The ``exact_search_rows`` option of the configs that build a kNN graph."""
    help_text = "kNN search: exact up to this many points, clustered (approximate) beyond; 0 = while N^2 d <= 1.5e13"
    return field(default=0, metadata={"help": help_text})


def check_exact_search_rows(method: str, value: int) -> None:
    """The ``exact_search_rows`` option of ``method``'s config, checked."""
    if value < 0:
        raise ValueError(f"{method}.exact_search_rows: must be >= 0 (0 = automatic), got {value}")


def searched_exactly(n: int, dim: int, exact_rows: int) -> bool:
    """Whether ``n`` rows of ``dim`` are searched exactly: ``exact_rows`` when set (> 0), else
    while the exact search costs at most ``EXACT_SEARCH_WORK`` multiply-adds."""
    return n <= exact_rows if exact_rows > 0 else n * n * dim <= EXACT_SEARCH_WORK


def cell_count(n: int) -> int:
    """About 4 sqrt(n) cells, a power of two (at most one per row: k-means needs that)."""
    return min(2 ** round(math.log2(4 * math.sqrt(n))), n)


def describe_search(n: int, dim: int, exact_rows: int) -> str:
    """How ``nearest`` searches ``n`` rows, for a selection's diagnostics."""
    if searched_exactly(n, dim, exact_rows):
        return "exact search"
    cells = cell_count(n)
    return f"approximate search: {cells} cells, each compared with its {min(cells, PROBED_CELLS)} nearest"


def blocks(n: int) -> range:
    """First rows of the ``SEARCH_ROWS`` blocks of ``n`` rows."""
    return range(0, n, SEARCH_ROWS)


def _float32(rows: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(rows, dtype=np.float32)


def nearest(x, k: int, inner_product: bool, exact_rows: int = 0, prepare: Rows = _float32, seed: int = 0) -> Neighbours:
    """(rows [b], scores [b, k], neighbours [b, k]) in blocks that cover every row once: the
    ``k`` rows of ``prepare(x)`` with the largest inner product (``inner_product``) or the
    smallest squared L2 distance, best first. ``prepare`` turns rows of ``x`` into float32 (it
    may normalise them); it is applied to the rows each step reads, so no prepared copy of all
    of ``x`` exists beside it, and ``x`` may be float16 or memory-mapped."""
    import faiss

    n, dim = x.shape
    metric = faiss.METRIC_INNER_PRODUCT if inner_product else faiss.METRIC_L2
    k = min(k, n)
    if searched_exactly(n, dim, exact_rows):
        index = faiss.IndexFlat(dim, metric)
        for lo in blocks(n):
            index.add(prepare(x[lo : lo + SEARCH_ROWS]))
        for lo in blocks(n):
            scores, found = index.search(prepare(x[lo : lo + SEARCH_ROWS]), k)
            yield np.arange(lo, lo + len(scores)), scores, found
        return
    cells = cell_count(n)
    train_rows = min(n, TRAIN_ROWS_PER_CELL * cells, max(cells, TRAIN_BYTES // (4 * dim)))
    sample = np.sort(np.random.default_rng(seed).choice(n, train_rows, replace=False))
    kmeans = faiss.Kmeans(dim, cells, niter=20, seed=seed, spherical=inner_product, min_points_per_centroid=1)
    kmeans.train(prepare(x[sample]))
    home = np.concatenate([kmeans.index.search(prepare(x[lo : lo + SEARCH_ROWS]), 1)[1][:, 0] for lo in blocks(n)])
    members = np.split(np.argsort(home, kind="stable"), np.cumsum(np.bincount(home, minlength=cells))[:-1])
    _, near_cells = faiss.knn(kmeans.centroids, kmeans.centroids, min(cells, 4 * PROBED_CELLS), metric=metric)
    for cell, own in enumerate(members):
        if len(own) == 0:
            continue
        candidates = _candidates(members, near_cells[cell], k)
        if len(candidates) < k:  # the nearest cells hold too few rows (tiny or empty cells): all of them
            candidates = np.arange(n)
        scores, found = faiss.knn(prepare(x[own]), prepare(x[candidates]), k, metric=metric)
        yield own, scores, candidates[found]


def _candidates(members: list[np.ndarray], near_cells: np.ndarray, k: int) -> np.ndarray:
    """Rows of the ``PROBED_CELLS`` nearest cells (more of ``near_cells`` while they hold fewer
    than ``k``)."""
    taken, count = [], 0
    for position, cell in enumerate(near_cells):
        if position >= PROBED_CELLS and count >= k:
            break
        taken.append(members[cell])
        count += len(members[cell])
    return np.concatenate(taken)
