"""Seeded k-means shared by the k-means family (faiss: fast at pool scale, deterministic
for a fixed seed on CPU)."""

from __future__ import annotations

import numpy as np


def kmeans(vectors: np.ndarray, n_clusters: int, seed: int, iterations: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """(centroids [C, d], assignment [N]) of float32 k-means with ``n_clusters`` <= N."""
    import faiss

    x = np.ascontiguousarray(vectors, dtype=np.float32)
    n_clusters = max(1, min(n_clusters, len(x)))
    km = faiss.Kmeans(x.shape[1], n_clusters, niter=iterations, seed=seed, verbose=False)
    km.cp.min_points_per_centroid = 1
    km.cp.max_points_per_centroid = max(256, len(x))  # no subsampling: all points count
    km.train(x)
    _, assignment = km.index.search(x, 1)
    return km.centroids, assignment[:, 0]
