"""Seeded k-means shared by the k-means family.

scikit-learn's k-means++ initialisation rather than faiss: faiss seeds centroids uniformly
at random, which on skewed pools (one huge cluster, a few small ones) leaves small clusters
without a centroid - exactly the clusters these methods exist to keep. ``iterations`` caps
Lloyd steps so cost stays O(iterations * N * k * d).
"""

from __future__ import annotations

import numpy as np


def kmeans(vectors: np.ndarray, n_clusters: int, seed: int, iterations: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """(centroids [C, d], assignment [N]) of float32 k-means with ``n_clusters`` <= N."""
    from sklearn.cluster import KMeans

    x = np.ascontiguousarray(vectors, dtype=np.float32)
    n_clusters = max(1, min(n_clusters, len(x)))
    km = KMeans(n_clusters, init="k-means++", n_init=1, max_iter=iterations, random_state=seed).fit(x)
    return km.cluster_centers_.astype(np.float32), km.labels_.astype(np.int64)


def round_robin(groups: list[np.ndarray], k: int) -> list[int]:
    """Take one from each group in turn (groups in the given order, each in its own order)
    until ``k``: any prefix has per-group counts within one of each other, exhausted groups
    drop out - equal quotas with the unused quota of small groups redistributed."""
    order: list[int] = []
    depth = 0
    while len(order) < k:
        row = [int(g[depth]) for g in groups if depth < len(g)]
        if not row:
            break
        order += row
        depth += 1
    return order[:k]
