"""k-means centroids: cluster into ``k`` groups and take the point nearest each centroid
(for-ai/iterative-data-selection, "kmeans-centroids")."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..clustering import kmeans, two_level_kmeans
from .base import Selection, check_inputs
from .registry import register


@dataclass(frozen=True)
class KMeansCentroidsConfig:
    seed: int = field(default=0, metadata={"help": "k-means seed"})
    iterations: int = field(default=20, metadata={"help": "Lloyd iterations"})
    flat_kmeans_rows: int = field(
        default=0,
        metadata={"help": "one k-means up to this many points, two-level beyond; 0 = while N k d <= 2e11"},
    )

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise ValueError(f"kmeans_centroids.iterations: must be >= 1, got {self.iterations}")
        if self.flat_kmeans_rows < 0:
            raise ValueError(
                f"kmeans_centroids.flat_kmeans_rows: must be >= 0 (0 = automatic), got {self.flat_kmeans_rows}"
            )


FLAT_KMEANS_WORK = 2e11  # N k d of the largest default one-level k-means (100k points, 5,000 centroids, d = 384)


def flat(n: int, k: int, dim: int, flat_rows: int) -> bool:
    """Whether ``n`` points get one k-means of ``k`` centroids: ``flat_rows`` when set (> 0),
    else while N k d <= ``FLAT_KMEANS_WORK``."""
    return n <= flat_rows if flat_rows > 0 else n * k * dim <= FLAT_KMEANS_WORK


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
    one_level = flat(len(ids), k, sentence_embeddings.shape[1], config.flat_kmeans_rows)
    clustering = kmeans if one_level else two_level_kmeans
    centroids, assignment = clustering(sentence_embeddings, k, config.seed, config.iterations)
    sizes = np.bincount(assignment, minlength=len(centroids))
    order = np.argsort(-sizes, kind="stable")
    rows, scanned = nearest_unused(np.asarray(sentence_embeddings, dtype=np.float32), centroids[order], k)
    return Selection(
        "kmeans_centroids",
        [str(ids[j]) for j in rows],
        [float(sizes[c]) for c in order[: len(rows)]],
        diagnostics={
            "eligible": len(ids),
            "kmeans": "one level" if one_level else "two levels",
            "clusters": len(centroids),
            "empty_clusters": int((sizes == 0).sum()),
            "full_scans": scanned,
        },
    )


def nearest_unused(x: np.ndarray, centroids: np.ndarray, k: int, candidates: int = 16) -> tuple[list[int], int]:
    """(rows, full scans): for each centroid in turn, the row of ``x`` nearest it (squared L2,
    ties to the lowest row) that no earlier centroid took, until ``k`` rows.

    One faiss search finds each centroid's ``candidates`` nearest rows; their distances are
    recomputed exactly, and the best unused one is the answer when it is nearer than the
    search's last candidate by more than the search's rounding. Otherwise (its candidates
    taken, or too close to call) that centroid scans every row, as the plain definition does."""
    import faiss

    m = min(candidates, len(x))
    bound, found = faiss.knn(centroids, x, m)  # squared L2 via norms: rounding ~ eps (|x|^2 + |c|^2)
    slack = 1e-4 * (float(np.einsum("ij,ij->i", x, x).max()) + np.einsum("ij,ij->i", centroids, centroids))
    taken = np.zeros(len(x), dtype=bool)
    rows: list[int] = []
    scans = 0
    for c, centroid in enumerate(centroids):
        near = np.sort(found[c][(found[c] >= 0) & ~taken[found[c]]])
        distances = ((x[near] - centroid) ** 2).sum(axis=1)
        best = int(np.argmin(distances)) if len(near) else -1  # argmin: first of equals = lowest row
        if best >= 0 and (m == len(x) or distances[best] < bound[c, -1] - slack[c]):
            pick = int(near[best])
        else:
            scans += 1
            everything = ((x - centroid) ** 2).sum(axis=1)
            everything[taken] = np.inf
            pick = int(np.argmin(everything))
        taken[pick] = True
        rows.append(pick)
        if len(rows) == k:
            break
    return rows, scans
