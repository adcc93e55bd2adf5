"""Facility location ``FL(S) = sum_v max_{s in S} sim(v, s)``: kernels and greedy optimisers
shared by facility location, QDIT, Superfiltering-D and experimental design.

The objective is apart from the optimiser (apricot's split): ``naive`` re-evaluates every
gain each step, ``lazy`` keeps stale gains in a heap (gains only shrink, so a re-evaluated
top that still beats the next stale bound is the true argmax - the same picks as naive) and
re-evaluates stale tops in growing batches, ``stochastic`` evaluates a seeded random subset
per step (Mirzasoleiman et al. 2015).

Kernels (cosine clipped at 0, RBF, dot, or a precomputed N x N similarity) are dense only
while N^2 float32 fits ``memory_cap_mb``. Beyond it every kernel becomes a sparse
nearest-neighbour graph (each point keeps its most similar points and itself; the rest
count as 0), built in row blocks so no N x N array ever exists; when even that graph is
over the cap, the kernel is refused with the memory both forms would need.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterator

import numpy as np
from scipy import sparse

from ._neighbours import describe_search, nearest

KERNELS = ("cosine", "rbf", "dot", "precomputed", "knn")
OPTIMIZERS = ("lazy", "naive", "stochastic")
TILE_ROWS = 2048  # dense kernel rows per matrix product (a 2048 x N float32 tile beside the kernel)
LAZY_BATCH_MAX = 64  # most stale bounds re-evaluated in one vectorised call
BLOCK_BYTES = 64 * 2**20  # rows of a precomputed matrix read at once (float32)
SPARSE_ENTRY_BYTES = 16  # float32 value + int32 index, held twice while the graph is transposed


def unit_rows(x: np.ndarray) -> np.ndarray:
    """float32 rows scaled to unit L2 norm (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True).clip(min=1e-12)


def dense_bytes(n: int) -> int:
    """Memory of a dense N x N float32 kernel."""
    return 4 * n * n


def sparse_bytes(n: int, n_neighbors: int) -> int:
    """Peak memory of the sparse kernel: ``n_neighbors + 1`` entries per point."""
    return n * min(n_neighbors + 1, n) * SPARSE_ENTRY_BYTES


def _row_blocks(n: int, row_bytes: int) -> Iterator[tuple[int, int]]:
    rows = max(1, BLOCK_BYTES // max(row_bytes, 1))
    for lo in range(0, n, rows):
        yield lo, min(lo + rows, n)


def _similarity_rows(s, lo: int, hi: int) -> np.ndarray:
    """Rows ``lo:hi`` of a precomputed similarity (array or memory map) as float32, checked."""
    block = np.asarray(s[lo:hi], dtype=np.float32)
    if not np.isfinite(block).all():
        raise ValueError(f"similarity: non-finite entries in rows {lo}..{hi - 1}")
    return block


def dense_kernel(x: np.ndarray, kind: str, gamma: float) -> np.ndarray:
    """[N, N] float32 similarity, row c = what c covers (``sim(., c)``).

    Embedding kernels are built tile by tile over the upper triangle and mirrored: half the
    multiply-adds of ``x @ x.T``, exactly symmetric, and no N x N temporary beside the result.
    A precomputed ``x[v, c] = sim(v, c)`` is read in row blocks, transposed, clipped at 0."""
    n = len(x)
    out = np.empty((n, n), dtype=np.float32)
    if kind == "precomputed":
        for lo, hi in _row_blocks(n, 4 * n):
            out[:, lo:hi] = _similarity_rows(x, lo, hi).T
        return np.maximum(out, 0.0, out=out)
    x = unit_rows(x) if kind == "cosine" else np.asarray(x, dtype=np.float32)
    sq = np.einsum("ij,ij->i", x, x) if kind == "rbf" else None
    for lo in range(0, n, TILE_ROWS):
        hi = min(lo + TILE_ROWS, n)
        tile = x[lo:hi] @ x[lo:].T
        if kind == "cosine":
            np.maximum(tile, 0.0, out=tile)
        elif kind == "rbf":
            tile *= -2.0
            tile += sq[lo:hi, None]
            tile += sq[None, lo:]
            np.maximum(tile, 0.0, out=tile)
            tile *= -gamma
            np.exp(tile, out=tile)
        out[lo:hi, lo:] = tile
        out[hi:, lo:hi] = tile[:, hi - lo :].T
        diagonal = out[lo:hi, lo:hi]  # its own gemm block need not be symmetric to the last bit
        diagonal[:] = np.triu(diagonal) + np.triu(diagonal, 1).T
    return out


def _neighbour_blocks(
    x, kind: str, gamma: float, k: int, exact_rows: int
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """(rows [b], sims [b, k], neighbours [b, k], self-similarity [b]) per block of rows: the
    ``k`` most similar points of each row, by faiss (exact or clustered, see ``_neighbours``)
    or partition of the rows."""
    n = len(x)
    if kind == "precomputed":
        for lo, hi in _row_blocks(n, 12 * n):  # the float32 rows and their int64 partition
            rows = _similarity_rows(x, lo, hi)
            nbrs = np.argpartition(-rows, k - 1, axis=1)[:, :k]
            sims = np.take_along_axis(rows, nbrs, axis=1)
            yield np.arange(lo, hi), sims, nbrs, rows[np.arange(hi - lo), np.arange(lo, hi)]
        return
    x = unit_rows(x) if kind == "cosine" else np.ascontiguousarray(x, dtype=np.float32)
    for rows, scores, nbrs in nearest(x, k, inner_product=kind != "rbf", exact_rows=exact_rows):
        if kind == "rbf":  # squared L2 distances -> exp(-gamma d^2); nearest first either way
            yield rows, np.exp(-gamma * np.maximum(scores, 0.0)), nbrs, np.ones(len(rows), dtype=np.float32)
        else:
            yield rows, scores, nbrs, np.einsum("ij,ij->i", x[rows], x[rows])


def knn_kernel(x, n_neighbors: int, kind: str = "cosine", gamma: float = 1.0, exact_rows: int = 0) -> sparse.csr_matrix:
    """Sparse kernel (clipped at 0): point v keeps sim(v, c) for its ``n_neighbors`` most
    similar c (searched exactly or approximately: ``exact_rows``, see ``_neighbours``) and for
    itself; other entries count as 0, so FL under it never exceeds the dense FL. Returned
    transposed (row c = the points c covers) for fast gain updates."""
    n = len(x)
    k = min(n_neighbors + 1, n)
    data = np.empty((n, k), dtype=np.float32)
    indices = np.empty((n, k), dtype=np.int32)
    for rows, sims, nbrs, self_sim in _neighbour_blocks(x, kind, gamma, k, exact_rows):
        missing = ~(nbrs == rows[:, None]).any(axis=1)  # itself outranked (duplicates): replaces the last
        nbrs[missing, -1] = rows[missing]
        sims[missing, -1] = self_sim[missing]
        data[rows] = np.maximum(sims, 0.0)
        indices[rows] = nbrs
    # column v of this CSC matrix holds v's neighbours c with sim(v, c): row c = what c covers
    graph = sparse.csc_matrix((data.ravel(), indices.ravel(), np.arange(0, n * k + 1, k)), shape=(n, n))
    return graph.tocsr()


def _mb(size: int) -> str:
    return f"{size / 2**20:,.2f} MB"


def build_kernel(x, kind: str, gamma: float, n_neighbors: int, memory_cap_mb: float, exact_search_rows: int = 0):
    """(covers, description): dense when N^2 float32 fits the cap, else the sparse kNN graph
    of the same kernel when that fits (its neighbours searched exactly or by clustered cells, see
    ``_neighbours``), else a ``ValueError`` naming both
    memories. ``knn`` is the sparse cosine kernel at any size; ``precomputed`` takes x = S [N, N]."""
    if kind not in KERNELS:
        raise ValueError(f"kernel: {kind!r} is not one of {KERNELS}")
    n = len(x)
    if kind == "precomputed" and tuple(x.shape) != (n, n):
        raise ValueError(f"similarity: expected an N x N matrix for N = {n}, got shape {tuple(x.shape)}")
    cap = memory_cap_mb * 2**20
    if kind != "knn" and dense_bytes(n) <= cap:
        return dense_kernel(x, kind, gamma), kind
    if sparse_bytes(n, n_neighbors) <= cap:
        covers = knn_kernel(x, n_neighbors, "cosine" if kind == "knn" else kind, gamma, exact_search_rows)
        if kind == "knn":
            return covers, f"knn ({describe_search(n, x.shape[1], exact_search_rows)})"
        search = "" if kind == "precomputed" else f", {describe_search(n, x.shape[1], exact_search_rows)}"
        return covers, f"knn {kind} (dense {_mb(dense_bytes(n))} over memory_cap_mb{search})"
    raise ValueError(
        f"memory_cap_mb: a {kind} kernel for {n} points needs {_mb(dense_bytes(n))} dense or "
        f"{_mb(sparse_bytes(n, n_neighbors))} as a {n_neighbors}-neighbour graph, over the cap of "
        f"{memory_cap_mb:g} MB; raise memory_cap_mb or lower n_neighbors"
    )


class FacilityLocation:
    """Gains of ``weight * dFL(c | S) + modular[c]`` with ``covers[c]`` = sim(., c).

    Dense gains use apricot's form ``sum(max(covers[c], current)) - sum(current)`` summed in
    float64: ``current`` only ever holds kernel entries, so it keeps the kernel's dtype and
    nothing is rounded before the sums."""

    def __init__(self, covers, weight: float = 1.0, modular: np.ndarray | None = None):
        self.covers = covers
        self.n = covers.shape[0]
        self.current = np.zeros(covers.shape[1], dtype=np.result_type(covers.dtype, np.float32))
        self.current_sum = 0.0
        self.weight = weight
        self.modular = np.zeros(self.n) if modular is None else np.asarray(modular, dtype=np.float64)

    def gains(self, candidates: np.ndarray, block: int = 256) -> np.ndarray:
        """Current gains of ``candidates``, dense rows gathered ``block`` at a time."""
        candidates = np.asarray(candidates)
        out = np.empty(len(candidates))
        if sparse.issparse(self.covers):
            for i, c in enumerate(candidates):
                lo, hi = self.covers.indptr[c], self.covers.indptr[c + 1]
                cols, vals = self.covers.indices[lo:hi], self.covers.data[lo:hi]
                out[i] = np.maximum(vals - self.current[cols], 0).sum(dtype=np.float64)
        else:
            for start in range(0, len(candidates), block):
                rows = self.covers[candidates[start : start + block]]
                np.maximum(rows, self.current, out=rows)
                out[start : start + block] = rows.sum(axis=1, dtype=np.float64) - self.current_sum
        return self.weight * out + self.modular[candidates]

    def add(self, c: int) -> None:
        if sparse.issparse(self.covers):
            lo, hi = self.covers.indptr[c], self.covers.indptr[c + 1]
            cols = self.covers.indices[lo:hi]
            self.current[cols] = np.maximum(self.current[cols], self.covers.data[lo:hi])
        else:
            np.maximum(self.current, self.covers[c], out=self.current)
            self.current_sum = float(self.current.sum(dtype=np.float64))


def _lazy_greedy(objective: FacilityLocation, k: int, pool: np.ndarray) -> tuple[list[int], list[float]]:
    """Lazy greedy with batched re-evaluation: within a step the 1, 2, 4, ... highest stale
    bounds are re-evaluated in one vectorised call each until a fresh gain tops the heap, so
    there are at most twice the one-by-one evaluations but far fewer Python round trips.
    A fresh top beats every other bound, ties going to the lower index: naive's picks."""
    heap = list(zip((-objective.gains(pool)).tolist(), pool.tolist(), strict=True))
    heapq.heapify(heap)
    fresh_at = np.full(objective.n, -1)
    order: list[int] = []
    gains: list[float] = []
    while len(order) < k:
        step, batch = len(order), 1
        while fresh_at[heap[0][1]] != step:
            stale = []
            while heap and len(stale) < batch and fresh_at[heap[0][1]] != step:
                stale.append(heapq.heappop(heap)[1])
            for g, c in zip(objective.gains(np.array(stale)).tolist(), stale, strict=True):
                heapq.heappush(heap, (-g, c))
            fresh_at[stale] = step
            batch = min(2 * batch, LAZY_BATCH_MAX)
        neg_gain, c = heapq.heappop(heap)
        order.append(c)
        gains.append(-neg_gain)
        objective.add(c)
    return order, gains


def greedy(
    objective: FacilityLocation,
    k: int,
    optimizer: str = "lazy",
    candidates: np.ndarray | None = None,
    epsilon: float = 0.1,
    seed: int = 0,
) -> tuple[list[int], list[float]]:
    """Pick order and marginal gains; ties go to the lowest index in naive and lazy alike."""
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer: {optimizer!r} is not one of {OPTIMIZERS}")
    pool = np.arange(objective.n) if candidates is None else np.asarray(candidates)
    k = min(k, len(pool))
    if optimizer == "lazy":
        return _lazy_greedy(objective, k, pool)
    order: list[int] = []
    gains: list[float] = []
    remaining = np.zeros(objective.n, dtype=bool)
    remaining[pool] = True
    rng = np.random.default_rng(seed)
    sample_size = max(1, math.ceil(len(pool) / max(k, 1) * math.log(1 / epsilon)))
    while len(order) < k:
        left = np.flatnonzero(remaining)
        if optimizer == "stochastic" and sample_size < len(left):
            left = np.sort(rng.choice(left, sample_size, replace=False))
        values = objective.gains(left)
        best = int(np.argmax(values))
        c = int(left[best])
        order.append(c)
        gains.append(float(values[best]))
        objective.add(c)
        remaining[c] = False
    return order, gains
