"""Diversify & Conquer iterative refinement (for-ai/iterative-data-selection): k-means
clusters; round 0 takes an equal quota per cluster; after each round the model is trained
on the selection, clusters whose examples are still hard get more of the next round."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ._clustering import kmeans
from .base import Selection, check_inputs
from .iterative import RoundTrainer, round_sizes
from .registry import register


@dataclass(frozen=True)
class DiversifyConquerConfig:
    rounds: int = field(default=3, metadata={"help": "training rounds; each adds k / rounds examples"})
    n_clusters: int = field(default=100, metadata={"help": "k-means clusters (capped at the pool size)"})
    multiply_previous: bool = field(default=True, metadata={"help": "w_t = softmax(scores) * w_(t-1) (paper form)"})
    seed: int = field(default=0, metadata={"help": "k-means and sampling seed"})

    def __post_init__(self) -> None:
        if self.rounds < 1 or self.n_clusters < 1:
            raise ValueError(
                f"diversify_conquer: rounds and n_clusters must be >= 1, got {self.rounds}, {self.n_clusters}"
            )


def softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - np.max(x))
    return z / z.sum()


def allocate(weights: np.ndarray, capacity: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Sample per-cluster counts from ``weights`` (multinomial), never above a cluster's
    remaining members; what a full cluster cannot take is redrawn among the others."""
    counts = np.zeros(len(weights), dtype=int)
    while counts.sum() < min(n, capacity.sum()):
        open_ = capacity - counts > 0
        w = np.where(open_, weights, 0.0)
        w = w / w.sum() if w.sum() > 0 else open_ / open_.sum()
        draw = rng.multinomial(min(n, capacity.sum()) - counts.sum(), w)
        counts = np.minimum(counts + draw, capacity)
    return counts


@register(
    "diversify_conquer",
    family="iterative",
    config=DiversifyConquerConfig,
    needs=("sentence_embeddings", "trainer"),
    description="Rounds of cluster-quota selection; hard clusters (model still far from references) get more.",
    reference="Diversify and Conquer, Yu et al. 2024 (for-ai/iterative-data-selection), arXiv 2409.11378",
)
def select(
    ids, k: int, config: DiversifyConquerConfig, *, sentence_embeddings: np.ndarray, trainer: RoundTrainer
) -> Selection:
    """Each round adds k / rounds examples (the reference used its per-cluster count, its
    issue #8). Round scores: the trainer's distance to the reference for each selected example."""
    ids = check_inputs(ids, sentence_embeddings=sentence_embeddings)
    k = min(k, len(ids))
    _, assignment = kmeans(sentence_embeddings, config.n_clusters, config.seed, 20)
    n_clusters = int(assignment.max()) + 1
    rng = np.random.default_rng(config.seed)
    remaining = [list(rng.permutation(np.flatnonzero(assignment == c))) for c in range(n_clusters)]
    weights = np.full(n_clusters, 1.0 / n_clusters)
    order: list[int] = []
    history = []
    for round_index, size in enumerate(round_sizes(k, config.rounds)):
        capacity = np.array([len(r) for r in remaining])
        counts = allocate(weights, capacity, size, rng)
        for c, count in enumerate(counts):
            order += [int(i) for i in remaining[c][:count]]
            remaining[c] = remaining[c][count:]
        history.append(counts.tolist())
        if round_index == config.rounds - 1 or not order:
            continue
        scores = np.asarray(trainer.train_and_score(list(order), round_index), dtype=np.float64)
        cluster_of = assignment[order]
        means = np.array(
            [scores[cluster_of == c].mean() if (cluster_of == c).any() else -np.inf for c in range(n_clusters)]
        )
        fresh = softmax(np.where(np.isfinite(means), means, means[np.isfinite(means)].min()))
        weights = fresh * weights if config.multiply_previous else fresh
        weights = weights / weights.sum()
    return Selection(
        "diversify_conquer",
        [str(i) for i in ids[order]],
        diagnostics={"eligible": len(ids), "rounds": config.rounds, "per_round_cluster_counts": history},
    )
