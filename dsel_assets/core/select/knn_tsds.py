"""KNN-Uniform and KNN-KDE as TSDS defines them (Liu et al. 2024) and the targeted-instruction-
selection study runs them (dcml-lab, ``selection/tsds_subset.py``): every query's probability
mass goes to its nearest pool examples by cosine distance, the pool is ranked by total mass
(ties by lower row). How far a query's mass reaches is not fixed: one K shared by all queries
(Uniform), or a shared level reached query by query with a heap (KDE), grows until the
transport cost it saves is no longer worth it (TSDS's ``alpha`` and ``C``). KNN-KDE divides each
neighbour's share by its kernel density among the candidates, measured on the learning-rate-
weighted cosine over every warmup checkpoint, so near-duplicates share their mass."""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from ._neighbours import check_exact_search_rows, exact_search_field
from .base import Selection, check_inputs, target_field
from .registry import register
from .targeted import Influence, TargetedConfig, cosine_neighbours, eligible_rows


@dataclass(frozen=True)
class CheckpointFeatures:
    """Pool features at several checkpoints, each checkpoint's rows aligned, with the weight of
    each checkpoint (its mean learning rate, normalised to sum to 1)."""

    features: tuple[np.ndarray, ...]
    weights: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.features or len(self.features) != len(self.weights):
            raise ValueError(f"checkpoint features: {len(self.features)} checkpoints, {len(self.weights)} weights")

    def __len__(self) -> int:
        return len(self.features[0])

    @classmethod
    def of(cls, x: CheckpointFeatures | np.ndarray) -> CheckpointFeatures:
        """One matrix is one checkpoint of weight 1 (embeddings under ``rds`` / ``embed``)."""
        return x if isinstance(x, CheckpointFeatures) else cls((np.asarray(x),), (1.0,))

    def rows(self, rows: np.ndarray) -> CheckpointFeatures:
        return CheckpointFeatures(tuple(np.asarray(f)[rows] for f in self.features), self.weights)

    def weighted(self) -> np.ndarray:
        """[N, T d]: each checkpoint's unit rows times sqrt(its weight), side by side, so that
        an inner product is the weighted sum of the per-checkpoint cosines."""
        parts = []
        for f, w in zip(self.features, self.weights, strict=True):
            x = np.asarray(f, dtype=np.float32)
            parts.append(x * (np.sqrt(w) / np.linalg.norm(x, axis=1, keepdims=True).clip(min=1e-12)))
        return np.concatenate(parts, axis=1)


@dataclass(frozen=True)
class KnnConfig(TargetedConfig):
    METHOD: ClassVar[str] = "knn_uniform"

    task: str = target_field("query", False, "target task ('' = every query column)")
    alpha: float = field(default=0.01, metadata={"help": "TSDS alpha: weight of the diversity term"})
    c: float = field(default=5.0, metadata={"help": "TSDS C: the cost scale alpha is taken against"})
    max_neighbors: int = field(default=5000, metadata={"help": "nearest pool examples fetched per query"})

    def __post_init__(self) -> None:
        name = self.METHOD
        if not 0 < self.alpha < 1:
            raise ValueError(f"{name}.alpha: must be in (0, 1), got {self.alpha}")
        if self.c <= 0:
            raise ValueError(f"{name}.c: must be > 0, got {self.c}")
        if self.max_neighbors < 1:
            raise ValueError(f"{name}.max_neighbors: must be >= 1, got {self.max_neighbors}")


@dataclass(frozen=True)
class KnnKdeConfig(KnnConfig):
    METHOD: ClassVar[str] = "knn_kde"

    sigma: float = field(default=0.75, metadata={"help": "kernel width: max(0, 1 - 2 d / sigma^2), d = 1 - cos"})
    density_neighbors: int = field(default=1000, metadata={"help": "candidates in each density estimate"})
    exact_search_rows: int = exact_search_field()

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.sigma <= 0:
            raise ValueError(f"knn_kde.sigma: must be > 0, got {self.sigma}")
        if self.density_neighbors < 1:
            raise ValueError(f"knn_kde.density_neighbors: must be >= 1, got {self.density_neighbors}")
        check_exact_search_rows("knn_kde", self.exact_search_rows)


def nearest_per_query(scores: np.ndarray, count: int, clip: bool) -> tuple[np.ndarray, np.ndarray]:
    """(rows [M, count], distances [M, count]): each query column's ``count`` pool rows of
    smallest cosine distance 1 - s (clipped at 0 with ``clip``), nearest first, ties by lower row."""
    count = min(count, len(scores))
    rows = np.empty((scores.shape[1], count), dtype=np.int64)
    dists = np.empty((scores.shape[1], count), dtype=np.float64)
    for q in range(scores.shape[1]):
        d = 1.0 - scores[:, q].astype(np.float64)
        d = np.maximum(d, 0.0) if clip else d
        order = np.argsort(d, kind="stable")[:count]
        rows[q], dists[q] = order, d[order]
    return rows, dists


def shared_k(dists: np.ndarray, alpha: float, c: float) -> int:
    """TSDS's K: the first K >= 1 at which (alpha / C) * sum over queries and k <= K of
    (d_{K+1} - d_k) reaches (1 - alpha) M, else every fetched neighbour."""
    m, fetched = dists.shape
    if fetched < 2:
        return fetched
    before = np.cumsum(dists, axis=1)  # before[:, K - 1] = sum of the first K distances
    ks = np.arange(1, fetched)
    gaps = (ks * dists[:, 1:] - before[:, :-1]).sum(axis=0)  # gaps[K - 1] for K = 1 .. fetched - 1
    reached = np.flatnonzero((alpha / c) * gaps >= (1 - alpha) * m)
    return int(ks[reached[0]]) if len(reached) else fetched


def uniform_mass(scores: np.ndarray, config: KnnConfig) -> tuple[np.ndarray, dict]:
    """Each query gives 1 / (K M) to each of its K nearest rows, K shared (:func:`shared_k`)."""
    n, m = scores.shape
    rows, dists = nearest_per_query(scores, config.max_neighbors, clip=False)
    k = shared_k(dists, config.alpha, config.c)
    mass = np.zeros(n)
    np.add.at(mass, rows[:, :k].ravel(), 1.0 / (k * m))
    return mass, {"neighbors": k}


def candidate_density(features: CheckpointFeatures, neighbors: int, sigma: float, exact_rows: int) -> np.ndarray:
    """Each candidate's kernel density among the candidates: the sum over its ``neighbors``
    nearest (itself included) of max(0, 1 - 2 d / sigma^2), d = 1 - the weighted cosine."""
    _, sims, _ = cosine_neighbours(features.weighted(), neighbors, exact_rows)
    kernel = 1.0 - 2.0 * np.maximum(1.0 - sims.astype(np.float64), 0.0) / sigma**2
    return np.maximum(kernel, 0.0).sum(axis=1)


def spread_mass(dists: np.ndarray, densities: np.ndarray, alpha: float, c: float, reach: int) -> tuple[list, float]:
    """TSDS-KDE's assignment: every query's next neighbour joins, cheapest cumulative inverse
    density first (a heap), until (alpha / C) times the transport cost reaches (1 - alpha) M;
    a query goes at most ``reach`` - 1 neighbours deep. Returns each query's last neighbour
    index and the shared level s."""
    m = len(dists)
    last = [0] * m
    heap = [(1.0 / densities[q][0], 0, q) for q in range(m)]
    heapq.heapify(heap)
    weighted = [dists[q][0] / densities[q][0] for q in range(m)]
    cost = np.zeros(m)
    total, level = 0.0, 0.0
    while heap:
        count, k, q = heapq.heappop(heap)
        level = count
        total -= cost[q]
        cost[q] = dists[q][k + 1] * count - weighted[q]
        total += cost[q]
        if (alpha / c) * total >= (1 - alpha) * m:
            break
        last[q] = k
        if k < reach - 2:
            heapq.heappush(heap, (count + 1.0 / densities[q][k + 1], k + 1, q))
            weighted[q] += dists[q][k + 1] / densities[q][k + 1]
    return last, level


def kde_mass(scores: np.ndarray, features: CheckpointFeatures, config: KnnKdeConfig) -> tuple[np.ndarray, dict]:
    """Mass 1 / (M s density) to each neighbour a query reached, and what is left of its 1 / M
    to the next one (TSDS-KDE); fetch and density sizes capped at a tenth of the pool."""
    n, m = scores.shape
    if n < 2:  # nothing to spread over
        return np.ones(n), {"mean_neighbors": float(n), "candidates": n, "level": 0.0}
    reach = min(config.max_neighbors, max(1, n // 10))
    rows, dists = nearest_per_query(scores, min(max(reach, 2), n), clip=True)
    candidates = np.unique(rows)
    density = np.zeros(n)
    density[candidates] = candidate_density(
        features.rows(candidates),
        min(config.density_neighbors, max(1, n // 10)),
        config.sigma,
        config.exact_search_rows,
    )
    densities = density[rows]
    last, level = spread_mass(dists, densities, config.alpha, config.c, reach)
    mass = np.zeros(n)
    for q in range(m):
        shares = 1.0 / m / level / densities[q][: last[q] + 1]
        np.add.at(mass, rows[q][: last[q] + 1], shares)
        mass[rows[q][last[q] + 1]] += max(1.0 / m - shares.sum(), 0.0)
    return mass, {"mean_neighbors": float(np.mean(last) + 1), "candidates": len(candidates), "level": level}


def _rank(name: str, ids: np.ndarray, rows: np.ndarray, mass: np.ndarray, k: int, found: dict) -> Selection:
    order = np.lexsort((np.arange(len(rows)), -mass))[:k]
    diagnostics = {"eligible": len(rows), "reached": int(np.count_nonzero(mass)), **found}
    return Selection(name, [str(i) for i in ids[rows[order]]], mass[order].tolist(), diagnostics=diagnostics)


@register(
    "knn_uniform",
    family="targeted",
    config=KnnConfig,
    needs=("influence",),
    description="Each query spreads its mass uniformly over its K nearest pool examples, K shared and "
    "chosen by TSDS's cost rule; rank by mass.",
    reference="TSDS, Liu et al. 2024, arXiv 2410.11303; dcml-lab targeted-instruction-selection",
)
def knn_uniform(ids, k: int, config: KnnConfig, *, influence: Influence) -> Selection:
    ids = check_inputs(ids, influence=influence.scores)
    scores = influence.columns("knn_uniform", config.task)
    rows = eligible_rows(scores)
    mass, found = uniform_mass(scores[rows], config)
    return _rank("knn_uniform", ids, rows, mass, k, found)


@register(
    "knn_kde",
    family="targeted",
    config=KnnKdeConfig,
    needs=("influence", "pool_checkpoint_gradients"),
    description="TSDS-KDE: queries spread mass to their nearest pool examples down to a shared level, each "
    "share divided by the example's density among the candidates; rank by mass.",
    reference="TSDS, Liu et al. 2024, arXiv 2410.11303; dcml-lab targeted-instruction-selection",
)
def knn_kde(
    ids,
    k: int,
    config: KnnKdeConfig,
    *,
    influence: Influence,
    pool_checkpoint_gradients: CheckpointFeatures | np.ndarray,
) -> Selection:
    """Density is measured on the vectors the scores come from: every warmup checkpoint's
    gradients, learning-rate weighted, under LESS; the embeddings under rds / embed."""
    features = CheckpointFeatures.of(pool_checkpoint_gradients)
    ids = check_inputs(ids, influence=influence.scores, pool_checkpoint_gradients=features.features[0])
    scores = influence.columns("knn_kde", config.task)
    rows = eligible_rows(scores)
    features = features if len(rows) == len(features) else features.rows(rows)
    mass, found = kde_mass(scores[rows], features, config)
    return _rank("knn_kde", ids, rows, mass, k, found)
