"""k-means per-cluster random: equal quota per cluster, unused quota of small clusters
redistributed, so exactly ``min(k, N)`` ids come back (for-ai/iterative-data-selection)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..clustering import kmeans, round_robin
from .base import Selection, check_inputs
from .registry import register


@dataclass(frozen=True)
class KMeansRandomConfig:
    n_clusters: int = field(default=100, metadata={"help": "clusters (capped at the pool size)"})
    seed: int = field(default=0, metadata={"help": "k-means and sampling seed"})
    iterations: int = field(default=20, metadata={"help": "Lloyd iterations"})

    def __post_init__(self) -> None:
        if self.n_clusters < 1:
            raise ValueError(f"n_clusters: must be >= 1, got {self.n_clusters}")
        if self.iterations < 1:
            raise ValueError(f"iterations: must be >= 1, got {self.iterations}")


@register(
    "kmeans_random",
    family="diversity",
    config=KMeansRandomConfig,
    needs=("sentence_embeddings",),
    description="k-means clusters, equal random quota per cluster with redistribution of unused quota.",
    reference="Diversify & Conquer (for-ai/iterative-data-selection), arXiv 2409.11378",
)
def select(ids, k: int, config: KMeansRandomConfig, *, sentence_embeddings: np.ndarray) -> Selection:
    """Round-robin over clusters (seeded order), each cluster a seeded random permutation;
    an exhausted cluster drops out. Any prefix therefore has equal per-cluster counts up to
    one, with the quota of small clusters going to the others - and budgets nest."""
    ids = check_inputs(ids, sentence_embeddings=sentence_embeddings)
    _, assignment = kmeans(sentence_embeddings, config.n_clusters, config.seed, config.iterations)
    rng = np.random.default_rng(config.seed)
    clusters = [rng.permutation(np.flatnonzero(assignment == c)) for c in rng.permutation(assignment.max() + 1)]
    clusters = [members for members in clusters if len(members)]
    order = round_robin(clusters, k)
    counts = np.bincount(assignment[order], minlength=assignment.max() + 1) if order else np.zeros(0)
    return Selection(
        "kmeans_random",
        [str(ids[i]) for i in order],
        diagnostics={
            "eligible": len(ids),
            "clusters": len(clusters),
            "max_per_cluster": int(counts.max()) if len(counts) else 0,
        },
    )
