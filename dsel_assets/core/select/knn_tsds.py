"""KNN-Uniform and KNN-KDE (TSDS, Liu et al. 2024, as used by dcml-lab): each query spreads
one unit of probability over its K most similar pool examples - uniformly, or inversely to
each example's kernel density among the pool (so near-duplicates share rather than stack
their mass); the pool is ranked by total probability, ties by lower id."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ._neighbours import check_exact_search_rows, exact_search_field
from .base import Selection, check_inputs
from .registry import register
from .targeted import Influence, TargetedConfig, cosine_neighbours, eligible_rows


@dataclass(frozen=True)
class KnnConfig(TargetedConfig):
    task: str = field(default="", metadata={"help": "target task ('' = every query column)"})
    neighbors: int = field(default=50, metadata={"help": "K pool examples per query"})

    def __post_init__(self) -> None:
        if self.neighbors < 1:
            raise ValueError(f"knn.neighbors: must be >= 1, got {self.neighbors}")


@dataclass(frozen=True)
class KnnKdeConfig(KnnConfig):
    bandwidth: float = field(default=0.1, metadata={"help": "kernel width h: exp(-(1 - cos) / h)"})
    density_neighbors: int = field(default=10, metadata={"help": "pool neighbours in the density estimate"})
    exact_search_rows: int = exact_search_field()

    def __post_init__(self) -> None:
        super().__post_init__()
        check_exact_search_rows("knn_kde", self.exact_search_rows)


def query_mass(scores: np.ndarray, neighbors: int, weights: np.ndarray | None = None) -> np.ndarray:
    """Total probability per pool row: each query column gives 1 to its top-K rows, split
    uniformly or proportionally to ``weights`` among them."""
    k = min(neighbors, len(scores))
    mass = np.zeros(len(scores))
    for q in range(scores.shape[1]):
        top = np.argsort(-scores[:, q], kind="stable")[:k]
        w = np.ones(k) if weights is None else weights[top]
        mass[top] += w / w.sum()
    return mass


def kde_density(x: np.ndarray, neighbors: int, bandwidth: float, exact_rows: int = 0) -> np.ndarray:
    """Gaussian-type kernel density of each row among its nearest other rows (cosine)."""
    _, sims, _ = cosine_neighbours(x, neighbors + 1, exact_rows)
    return np.exp(-(1.0 - sims) / bandwidth).sum(axis=1)  # includes itself: density >= 1


def _rank(name: str, ids: np.ndarray, rows: np.ndarray, mass: np.ndarray, k: int) -> Selection:
    order = np.lexsort((rows, -mass))[:k]
    return Selection(
        name, [str(i) for i in ids[rows[order]]], mass[order].tolist(), diagnostics={"eligible": len(rows)}
    )


@register(
    "knn_uniform",
    family="targeted",
    config=KnnConfig,
    needs=("influence",),
    description="Each query spreads probability uniformly over its K nearest pool examples; rank by mass.",
    reference="TSDS, Liu et al. 2024, arXiv 2410.11303; dcml-lab targeted-instruction-selection",
)
def knn_uniform(ids, k: int, config: KnnConfig, *, influence: Influence) -> Selection:
    ids = check_inputs(ids, influence=influence.scores)
    scores = influence.columns("knn_uniform", config.task)
    rows = eligible_rows(scores)
    return _rank("knn_uniform", ids, rows, query_mass(scores[rows], config.neighbors), k)


@register(
    "knn_kde",
    family="targeted",
    config=KnnKdeConfig,
    needs=("influence", "pool_gradients"),
    description="KNN-Uniform with each neighbour's share divided by its density among the pool.",
    reference="TSDS, Liu et al. 2024, arXiv 2410.11303; dcml-lab targeted-instruction-selection",
)
def knn_kde(ids, k: int, config: KnnKdeConfig, *, influence: Influence, pool_gradients: np.ndarray) -> Selection:
    """Density is measured among the pool vectors the scores come from (gradients under LESS,
    the embeddings under rds / embed)."""
    ids = check_inputs(ids, influence=influence.scores, pool_gradients=pool_gradients)
    scores = influence.columns("knn_kde", config.task)
    rows = eligible_rows(scores)
    pool = pool_gradients if len(rows) == len(pool_gradients) else np.asarray(pool_gradients)[rows]
    density = kde_density(pool, config.density_neighbors, config.bandwidth, config.exact_search_rows)
    return _rank("knn_kde", ids, rows, query_mass(scores[rows], config.neighbors, 1.0 / density), k)
