"""Facility location ``FL(S) = sum_v max_{s in S} sim(v, s)``: kernels and greedy optimisers
shared by facility location, QDIT, Superfiltering-D and experimental design.

The objective is apart from the optimiser (apricot's split): ``naive`` re-evaluates every
gain each step, ``lazy`` keeps stale gains in a heap (gains only shrink, so a re-evaluated
top that still beats the next stale bound is the true argmax - the same picks as naive),
``stochastic`` evaluates a seeded random subset per step (Mirzasoleiman et al. 2015).
Kernels are dense only under a memory cap; beyond it the cosine kernel becomes a sparse
k-nearest-neighbour graph (faiss), so no N x N matrix is ever allocated above the cap.
"""

from __future__ import annotations

import heapq
import math

import numpy as np
from scipy import sparse

KERNELS = ("cosine", "rbf", "dot", "knn")
OPTIMIZERS = ("lazy", "naive", "stochastic")


def knn_kernel(x: np.ndarray, n_neighbors: int) -> sparse.csr_matrix:
    """Sparse cosine kernel (clipped at 0): row v holds sim(v, c) for its nearest c (itself
    included). Returned transposed (row c = the points c covers) for fast gain updates."""
    import faiss

    x = np.ascontiguousarray(x, dtype=np.float32)
    x = x / np.linalg.norm(x, axis=1, keepdims=True).clip(min=1e-12)
    n = len(x)
    k = min(n_neighbors, n)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    sims, nbrs = index.search(x, k)
    rows = np.repeat(np.arange(n), k)
    kernel = sparse.csr_matrix((np.maximum(sims.ravel(), 0), (rows, nbrs.ravel())), shape=(n, n))
    kernel.setdiag(1.0)
    return kernel.T.tocsr()


def dense_kernel(x: np.ndarray, kind: str, gamma: float) -> np.ndarray:
    """[N, N] float32 similarity (symmetric, so row c = what c covers)."""
    x = np.asarray(x, dtype=np.float32)
    if kind == "cosine":
        x = x / np.linalg.norm(x, axis=1, keepdims=True).clip(min=1e-12)
        return np.maximum(x @ x.T, 0.0)
    if kind == "dot":
        return x @ x.T
    sq = np.einsum("ij,ij->i", x, x)
    return np.exp(-gamma * np.maximum(sq[:, None] + sq[None, :] - 2 * (x @ x.T), 0.0))


def build_kernel(x: np.ndarray, kind: str, gamma: float, n_neighbors: int, memory_cap_mb: float):
    """Dense when N^2 float32 fits the cap, else the sparse kNN graph (cosine only)."""
    if kind not in KERNELS:
        raise ValueError(f"kernel: {kind!r} is not one of {KERNELS}")
    n = len(x)
    if kind == "knn":
        return knn_kernel(x, n_neighbors), "knn"
    if n * n * 4 / 2**20 <= memory_cap_mb:
        return dense_kernel(x, kind, gamma), kind
    if kind == "cosine":
        return knn_kernel(x, n_neighbors), "knn (dense kernel over memory_cap_mb)"
    raise ValueError(
        f"memory_cap_mb: a dense {kind} kernel for {n} points needs {n * n * 4 / 2**20:.0f} MB; "
        f"raise memory_cap_mb or use kernel=cosine/knn"
    )


class FacilityLocation:
    """Gains of ``weight * dFL(c | S) + modular[c]`` with ``covers[c]`` = sim(., c)."""

    def __init__(self, covers, weight: float = 1.0, modular: np.ndarray | None = None):
        self.covers = covers
        self.n = covers.shape[0]
        self.current = np.zeros(covers.shape[1], dtype=np.float64)
        self.weight = weight
        self.modular = np.zeros(self.n) if modular is None else np.asarray(modular, dtype=np.float64)

    def gain(self, c: int) -> float:
        if sparse.issparse(self.covers):
            lo, hi = self.covers.indptr[c], self.covers.indptr[c + 1]
            cols, vals = self.covers.indices[lo:hi], self.covers.data[lo:hi]
            fl = float(np.maximum(vals - self.current[cols], 0).sum())
        else:
            fl = float(np.maximum(self.covers[c] - self.current, 0).sum())
        return self.weight * fl + self.modular[c]

    def gains(self, candidates: np.ndarray, block: int = 1024) -> np.ndarray:
        if sparse.issparse(self.covers):
            return np.array([self.gain(int(c)) for c in candidates])
        out = np.empty(len(candidates))
        for start in range(0, len(candidates), block):
            rows = self.covers[candidates[start : start + block]]
            out[start : start + block] = np.maximum(rows - self.current, 0).sum(axis=1)
        return self.weight * out + self.modular[candidates]

    def add(self, c: int) -> None:
        if sparse.issparse(self.covers):
            lo, hi = self.covers.indptr[c], self.covers.indptr[c + 1]
            cols = self.covers.indices[lo:hi]
            self.current[cols] = np.maximum(self.current[cols], self.covers.data[lo:hi])
        else:
            np.maximum(self.current, self.covers[c], out=self.current)


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
    order: list[int] = []
    gains: list[float] = []
    if optimizer == "lazy":
        heap = [(-g, int(c)) for g, c in zip(objective.gains(pool), pool, strict=True)]
        heapq.heapify(heap)
        while len(order) < k:
            _, c = heapq.heappop(heap)
            fresh = (-objective.gain(c), c)
            if not heap or fresh <= heap[0]:
                order.append(c)
                gains.append(-fresh[0])
                objective.add(c)
            else:
                heapq.heappush(heap, fresh)
        return order, gains
    remaining = np.ones(objective.n, dtype=bool)
    remaining[np.setdiff1d(np.arange(objective.n), pool)] = False
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
