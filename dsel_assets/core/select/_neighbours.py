"""Nearest-neighbour search for the graph-based selectors: exact (faiss flat) up to
``exact_rows`` rows, approximate (faiss IVF) beyond.

Exact search of every row against every row costs N^2 d multiply-adds: 50 s at 100k x 384 on
2 cores, about 80 minutes at 1M. The IVF index clusters the rows into ``lists`` cells (k-means
on a seeded sample) and compares each query only with the rows of its ``probed`` nearest cells,
so a search costs about N^2 d probed / lists. Similarities it returns are exact for the
neighbours it finds; what it can lose is a true neighbour in a cell it did not probe
(recall measured in benchmarks/knn_recall.py and docs/SCALING.md).
"""

from __future__ import annotations

import math
from dataclasses import field

import numpy as np

EXACT_SEARCH_ROWS = 200_000  # default: exact search up to here (~4 minutes at 200k x 384)
TRAIN_ROWS_PER_LIST = 40  # k-means training sample per cell (faiss warns below 39)
PROBED_SHARE = 32  # one cell in PROBED_SHARE is probed per query


def ivf_shape(n: int) -> tuple[int, int]:
    """(cells, cells probed per query) for ``n`` rows: about 4 sqrt(n) cells, a power of two."""
    lists = 2 ** round(math.log2(4 * math.sqrt(n)))
    return lists, max(8, lists // PROBED_SHARE)


def exact_search_field():
    """The ``exact_search_rows`` option of the configs whose kernel can become a kNN graph."""
    help_text = "kNN kernel: exact neighbour search up to this many points, faiss IVF beyond"
    return field(default=EXACT_SEARCH_ROWS, metadata={"help": help_text})


def check_exact_search_rows(method: str, value: int) -> None:
    """The ``exact_search_rows`` option of ``method``'s config, checked."""
    if value < 1:
        raise ValueError(f"{method}.exact_search_rows: must be >= 1, got {value}")


def describe_search(n: int, exact_rows: int) -> str:
    """How ``search_index`` searches ``n`` rows, for a selection's diagnostics."""
    if n <= exact_rows:
        return "exact search"
    lists, probed = ivf_shape(n)
    return f"approximate search: IVF, {lists} cells, {probed} probed per row"


def search_index(x: np.ndarray, inner_product: bool, exact_rows: int = EXACT_SEARCH_ROWS, seed: int = 0):
    """A faiss index holding the rows of float32 ``x``: flat when ``len(x) <= exact_rows``,
    else IVF trained on a seeded sample. ``inner_product`` picks the metric (largest first),
    else squared L2 (smallest first)."""
    import faiss

    n, d = x.shape
    metric = faiss.METRIC_INNER_PRODUCT if inner_product else faiss.METRIC_L2
    if n <= exact_rows:
        index = faiss.IndexFlat(d, metric)
        index.add(x)
        return index
    lists, probed = ivf_shape(n)
    index = faiss.index_factory(d, f"IVF{lists},Flat", metric)
    sample = np.sort(np.random.default_rng(seed).choice(n, min(n, TRAIN_ROWS_PER_LIST * lists), replace=False))
    index.train(x[sample])
    index.add(x)
    index.nprobe = probed
    return index
