"""Diversify & Conquer iterative refinement (for-ai/iterative-data-selection): k-means
clusters; round 0 takes an equal quota per cluster; after each round the model is trained
on the selection, clusters whose examples are still hard get more of the next round."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from ..clustering import kmeans
from .base import Selection, check_inputs
from .iterative import RoundTrainer, round_sizes
from .registry import register


@dataclass(frozen=True)
class DiversifyConquerConfig:
    rounds: int = field(default=3, metadata={"help": "training rounds; each adds k / rounds examples"})
    n_clusters: int = field(default=100, metadata={"help": "k-means clusters (capped at the pool size); reference 512"})
    multiply_previous: bool = field(default=True, metadata={"help": "w_t = softmax(scores) * w_(t-1) (paper form)"})
    round0: Literal["equal", "floor"] = field(
        default="equal",
        metadata={
            "help": "equal: k / rounds split evenly, a small cluster's share to the others | floor: "
            "int(k / rounds / K) per cluster and no more (the reference), the shortfall to later rounds"
        },
    )
    kmeans_iterations: int = field(default=20, metadata={"help": "k-means iterations; reference 300"})
    kmeans_restarts: int = field(default=1, metadata={"help": "k-means fits, the best kept; reference 5"})
    seed: int = field(default=0, metadata={"help": "k-means and sampling seed"})

    def __post_init__(self) -> None:
        for name in ("rounds", "n_clusters", "kmeans_iterations", "kmeans_restarts"):
            if getattr(self, name) < 1:
                raise ValueError(f"diversify_conquer.{name}: must be >= 1, got {getattr(self, name)}")
        if self.round0 not in ("equal", "floor"):
            raise ValueError(f"diversify_conquer.round0: {self.round0!r} is not one of ['equal', 'floor']")


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


def equal_quotas(capacity: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Round 0: ``n`` split evenly over the clusters. Every cluster gets the same count, a
    cluster too small for it gives the rest to the others, and the remainder goes one each to
    seeded-random clusters: counts differ by at most one among clusters not exhausted."""
    counts = np.zeros(len(capacity), dtype=int)
    n = min(n, int(capacity.sum()))
    tie_order = rng.permutation(len(capacity))
    while n > 0:
        open_ = np.flatnonzero(counts < capacity)
        share, extra = divmod(n, len(open_))
        if share == 0:
            counts[[c for c in tie_order if counts[c] < capacity[c]][:extra]] += 1
            break
        add = np.minimum(share, capacity[open_] - counts[open_])
        counts[open_] += add
        n -= int(add.sum())
    return counts


def floor_quotas(capacity: np.ndarray, n: int) -> np.ndarray:
    """Round 0 as the reference takes it: ``int(n / K)`` from every one of the K clusters, fewer
    only from a cluster that has fewer, nothing redistributed."""
    return np.minimum(n // len(capacity), capacity)


def round_weights(
    scores: np.ndarray, cluster_of: np.ndarray, previous: np.ndarray, multiply_previous: bool
) -> np.ndarray:
    """Next round's cluster weights: softmax of each cluster's mean score, optionally times the
    previous weights. A cluster with no selected example has no evidence either way, so it is
    scored with the mean over every selected example (the best guess for an unseen cluster)
    rather than the minimum: the minimum would read "no data" as "easiest", and with the
    product form such a cluster would stay starved in every later round."""
    sums = np.bincount(cluster_of, weights=scores, minlength=len(previous))
    counts = np.bincount(cluster_of, minlength=len(previous))
    means = np.where(counts > 0, sums / np.maximum(counts, 1), scores.mean())
    weights = softmax(means) * previous if multiply_previous else softmax(means)
    return weights / weights.sum()


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
    issue #8), and what an earlier round left (``round0="floor"``). Round scores: the trainer's
    distance to the reference for each selected example."""
    ids = check_inputs(ids, sentence_embeddings=sentence_embeddings)
    k = min(k, len(ids))
    _, assignment = kmeans(
        sentence_embeddings, config.n_clusters, config.seed, config.kmeans_iterations, config.kmeans_restarts
    )
    n_clusters = int(assignment.max()) + 1
    rng = np.random.default_rng(config.seed)
    remaining = [list(rng.permutation(np.flatnonzero(assignment == c))) for c in range(n_clusters)]
    weights = np.full(n_clusters, 1.0 / n_clusters)
    order: list[int] = []
    history = []
    planned = round_sizes(k, config.rounds)
    for round_index in range(config.rounds):
        capacity = np.array([len(r) for r in remaining])
        size = sum(planned[: round_index + 1]) - len(order)  # its share and what earlier rounds left
        if round_index > 0:
            counts = allocate(weights, capacity, size, rng)
        elif config.round0 == "floor":
            counts = floor_quotas(capacity, size)
            if config.rounds == 1:  # no later round to take the shortfall: the rest by equal quotas
                counts += equal_quotas(capacity - counts, size - int(counts.sum()), rng)
        else:
            counts = equal_quotas(capacity, size, rng)
        for c, count in enumerate(counts):
            order += [int(i) for i in remaining[c][:count]]
            remaining[c] = remaining[c][count:]
        history.append(counts.tolist())
        if round_index == config.rounds - 1 or not order:
            continue
        scores = np.asarray(trainer.train_and_score(list(order), round_index), dtype=np.float64)
        weights = round_weights(scores, assignment[order], weights, config.multiply_previous)
    return Selection(
        "diversify_conquer",
        [str(i) for i in ids[order]],
        diagnostics={"eligible": len(ids), "rounds": config.rounds, "per_round_cluster_counts": history},
    )
