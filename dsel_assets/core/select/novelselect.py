"""NovelSelect and the NovelSum diversity metric (UmeanNever/NovelSum, arXiv 2502.17184).

Density ``sigma(x) = 1 / (mean squared L2 distance to its K nearest other points)^beta``.
A candidate's novelty w.r.t. a set: distances ``d_j = (1 - cos(x, s_j)) (sigma(x) + sigma(s_j))``
sorted ascending, weighted by ``1 / rank^alpha``, averaged. NovelSelect greedily adds the
most novel candidate; NovelSum of a set averages each member's novelty w.r.t. the others.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..memory import require_memory
from .base import Selection, check_inputs
from .registry import register


@dataclass(frozen=True)
class NovelSelectConfig:
    neighbors: int = field(default=10, metadata={"help": "K nearest neighbours for the density"})
    beta: float = field(default=0.5, metadata={"help": "density exponent"})
    alpha: float = field(default=1.0, metadata={"help": "rank weight exponent: 1 / rank^alpha"})
    seed: int = field(default=0, metadata={"help": "seed of the first (random) pick"})

    def __post_init__(self) -> None:
        if self.neighbors < 1:
            raise ValueError(f"novelselect.neighbors: must be >= 1, got {self.neighbors}")


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True).clip(min=1e-12)


def density(x: np.ndarray, neighbors: int, beta: float) -> np.ndarray:
    """sigma per point: 1 / (mean squared L2 distance to its ``neighbors`` nearest distinct
    vectors) ** beta. As the reference, the index holds each distinct vector once and a point's
    own vector is left out, so exact copies are never each other's neighbours (counted, K copies
    would put a point at distance 0 and give it the largest density of the pool by far)."""
    import faiss

    x = np.ascontiguousarray(x, dtype=np.float32)
    distinct, which = np.unique(x, axis=0, return_inverse=True)
    which = which.reshape(-1)
    k = min(neighbors, len(distinct) - 1)
    if k < 1:
        return np.ones(len(x))
    index = faiss.IndexFlatL2(x.shape[1])
    index.add(distinct)
    dist, nbrs = index.search(distinct, k + 1)
    mean = np.empty(len(distinct))
    for i in range(len(distinct)):
        mean[i] = np.maximum(dist[i][nbrs[i] != i][:k], 0).mean()
    return (1.0 / np.power(np.maximum(mean, 1e-12), beta))[which]


def rank_weights(m: int, alpha: float) -> np.ndarray:
    return 1.0 / np.power(np.arange(1, m + 1), alpha)


def novelselect_order(x: np.ndarray, k: int, first: int, config: NovelSelectConfig) -> tuple[list[int], list[float]]:
    u = _unit(x)
    sigma = density(x, config.neighbors, config.beta)
    n = len(u)
    distances = np.empty((n, 0))  # each row: sorted weighted distances to the selection so far
    available = np.ones(n, dtype=bool)
    order, gains = [first], [float("inf")]
    available[first] = False
    for _ in range(min(k, n) - 1):
        s = order[-1]
        d = (1.0 - u @ u[s]) * (sigma + sigma[s])
        distances = np.sort(np.concatenate([distances, d[:, None]], axis=1), axis=1)
        novelty = (distances * rank_weights(distances.shape[1], config.alpha)).mean(axis=1)
        novelty[~available] = -np.inf
        pick = int(np.argmax(novelty))
        order.append(pick)
        gains.append(float(novelty[pick]))
        available[pick] = False
    return order[: min(k, n)], gains[: min(k, n)]


def novelsum(x: np.ndarray, config: NovelSelectConfig = NovelSelectConfig(), block: int = 256) -> float:
    """NovelSum of a set: mean over members of their rank-weighted distance to the others,
    ``block`` members at a time (a block x n table, never n x n)."""
    u = _unit(x)
    n = len(u)
    if n < 2:
        return 0.0
    sigma = density(x, config.neighbors, config.beta)
    weights = rank_weights(n - 1, config.alpha)
    total = 0.0
    for lo in range(0, n, block):
        rows = np.arange(lo, min(lo + block, n))
        d = (1.0 - u[rows] @ u.T) * (sigma[rows, None] + sigma[None, :])
        d[np.arange(len(rows)), rows] = np.inf  # itself: sorted last, then dropped
        total += float((np.sort(d, axis=1)[:, :-1] * weights).mean(axis=1).sum())
    return total / n


def check_memory(n: int, k: int) -> None:
    """Refuse, with what it would take, a budget whose distance table memory cannot hold: by the
    last step the N x (k - 1) float64 table exists three times (it, its extension, its sort)."""
    require_memory(
        3 * 8 * n * (k - 1),
        f"novelselect: {n:,} pool rows x a budget of {k:,}",
        "its greedy keeps every row's sorted distances to the whole selection; use a smaller budget "
        "or pool, or kcenter_greedy / facility_location for diversity at this size",
    )


@register(
    "novelselect",
    family="diversity",
    config=NovelSelectConfig,
    needs=("sentence_embeddings",),
    description="Greedy novelty: density-weighted, rank-weighted distance to the selected set.",
    reference="NovelSum / NovelSelect, Yang et al. 2025, arXiv 2502.17184",
)
def select(ids, k: int, config: NovelSelectConfig, *, sentence_embeddings: np.ndarray) -> Selection:
    """O(N k^2 log k) time (every step re-sorts the N x t distance table) and O(N k) memory:
    for budgets of a few thousand at most. See docs/methods/novelselect.md."""
    ids = check_inputs(ids, sentence_embeddings=sentence_embeddings)
    if k == 0:
        return Selection("novelselect", [], [], diagnostics={"eligible": len(ids)})
    check_memory(len(ids), min(k, len(ids)))
    first = int(np.random.default_rng(config.seed).integers(len(ids)))
    order, gains = novelselect_order(sentence_embeddings, k, first, config)
    return Selection("novelselect", [str(i) for i in ids[order]], gains, diagnostics={"eligible": len(ids)})
