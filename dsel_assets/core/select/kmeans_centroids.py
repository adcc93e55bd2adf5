"""k-means centroids: cluster into ``k`` groups and take the point nearest each centroid
(for-ai/iterative-data-selection, "kmeans-centroids")."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ._clustering import kmeans
from .base import Selection, check_inputs
from .registry import register


@dataclass(frozen=True)
class KMeansCentroidsConfig:
    seed: int = field(default=0, metadata={"help": "k-means seed"})
    iterations: int = field(default=20, metadata={"help": "Lloyd iterations"})

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise ValueError(f"iterations: must be >= 1, got {self.iterations}")


@register(
    "kmeans_centroids",
    family="diversity",
    config=KMeansCentroidsConfig,
    needs=("sentence_embeddings",),
    description="k-means with k = budget; the nearest unused point to each centroid, big clusters first.",
    reference="Diversify & Conquer (for-ai/iterative-data-selection), arXiv 2409.11378",
)
def select(ids, k: int, config: KMeansCentroidsConfig, *, sentence_embeddings: np.ndarray) -> Selection:
    """Deduplicated: a point nearest two centroids is taken once and the second centroid
    takes its next-nearest unused point, so exactly ``min(k, N)`` ids come back."""
    ids = check_inputs(ids, sentence_embeddings=sentence_embeddings)
    if k == 0:
        return Selection("kmeans_centroids", [], [], diagnostics={"eligible": len(ids)})
    centroids, assignment = kmeans(sentence_embeddings, k, config.seed, config.iterations)
    sizes = np.bincount(assignment, minlength=len(centroids))
    x = np.asarray(sentence_embeddings, dtype=np.float32)
    taken = np.zeros(len(ids), dtype=bool)
    picks, scores = [], []
    for c in np.argsort(-sizes, kind="stable"):
        distances = ((x - centroids[c]) ** 2).sum(axis=1)
        for j in np.argsort(distances, kind="stable"):
            if not taken[j]:
                taken[j] = True
                picks.append(str(ids[j]))
                scores.append(float(sizes[c]))
                break
        if len(picks) == k:
            break
    return Selection(
        "kmeans_centroids",
        picks,
        scores,
        diagnostics={"eligible": len(ids), "clusters": len(centroids), "empty_clusters": int((sizes == 0).sum())},
    )
