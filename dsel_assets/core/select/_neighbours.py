"""Nearest-neighbour search for the graph-based selectors: exact (faiss flat) while it is
affordable, approximate (faiss IVF) beyond.

Exact search of every row against every row costs N^2 d multiply-adds: 50 s at 100k x 384 on
2 cores, about 80 minutes at 1M, and about 27 minutes at 100k x 8192 (pool gradients). By
default it stays exact while N^2 d <= ``EXACT_SEARCH_WORK`` (200k rows at d = 384, 43k at
d = 8192); a selector's ``exact_search_rows`` option sets the row limit instead. The IVF
index clusters the rows into about 4 sqrt(N) cells (k-means on a seeded sample) and compares
each query only with the rows of its nearest 1/32 of the cells, about 1/32 of the exact cost.
Similarities it returns are exact for the neighbours it finds; what it can lose is a true
neighbour in a cell it did not probe (recall and objective measured by
benchmarks/knn_recall.py, in docs/SCALING.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import field

import numpy as np

EXACT_SEARCH_WORK = 200_000**2 * 384  # multiply-adds searched exactly by default (~4 minutes on 2 cores)
TRAIN_ROWS_PER_LIST = 40  # k-means training sample per cell (faiss warns below 39)
PROBED_SHARE = 32  # one cell in PROBED_SHARE is probed per query
ADD_ROWS = 16384  # rows prepared and added to the index at a time

Rows = Callable[[np.ndarray], np.ndarray]


def exact_search_field():
    """The ``exact_search_rows`` option of the configs that build a kNN graph."""
    help_text = "kNN search: exact up to this many points, faiss IVF beyond; 0 = while N^2 d <= 1.5e13"
    return field(default=0, metadata={"help": help_text})


def check_exact_search_rows(method: str, value: int) -> None:
    """The ``exact_search_rows`` option of ``method``'s config, checked."""
    if value < 0:
        raise ValueError(f"{method}.exact_search_rows: must be >= 0 (0 = automatic), got {value}")


def searched_exactly(n: int, dim: int, exact_rows: int) -> bool:
    """Whether ``n`` rows of ``dim`` are searched exactly: ``exact_rows`` when set (> 0), else
    while the exact search costs at most ``EXACT_SEARCH_WORK`` multiply-adds."""
    return n <= exact_rows if exact_rows > 0 else n * n * dim <= EXACT_SEARCH_WORK


def ivf_shape(n: int) -> tuple[int, int]:
    """(cells, cells probed per query) for ``n`` rows: about 4 sqrt(n) cells, a power of two."""
    lists = 2 ** round(math.log2(4 * math.sqrt(n)))
    return lists, max(8, lists // PROBED_SHARE)


def describe_search(n: int, dim: int, exact_rows: int) -> str:
    """How ``search_index`` searches ``n`` rows, for a selection's diagnostics."""
    if searched_exactly(n, dim, exact_rows):
        return "exact search"
    lists, probed = ivf_shape(n)
    return f"approximate search: IVF, {lists} cells, {probed} probed per row"


def _float32(rows: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(rows, dtype=np.float32)


def search_index(x, inner_product: bool, exact_rows: int = 0, prepare: Rows = _float32, seed: int = 0):
    """A faiss index holding ``prepare(x[rows])`` for every row of ``x``, added ``ADD_ROWS`` at a
    time (so ``x`` may be float16 or memory-mapped and no prepared copy of all of it exists
    beside the index): flat when searched exactly (``searched_exactly``), else IVF trained on a
    seeded sample. ``inner_product`` picks the metric (largest first), else squared L2."""
    import faiss

    n, dim = x.shape
    metric = faiss.METRIC_INNER_PRODUCT if inner_product else faiss.METRIC_L2
    if searched_exactly(n, dim, exact_rows):
        index = faiss.IndexFlat(dim, metric)
    else:
        lists, probed = ivf_shape(n)
        index = faiss.index_factory(dim, f"IVF{lists},Flat", metric)
        sample = np.sort(np.random.default_rng(seed).choice(n, min(n, TRAIN_ROWS_PER_LIST * lists), replace=False))
        index.train(prepare(x[sample]))
        index.nprobe = probed
    for lo in range(0, n, ADD_ROWS):
        index.add(prepare(x[lo : lo + ADD_ROWS]))
    return index
