"""Seeded k-means (Euclidean and cosine) shared by the cluster-based selectors, the task labels
and the pre-experience sample.

scikit-learn's k-means++ initialisation rather than faiss: faiss seeds centroids uniformly
at random, which on skewed pools (one huge cluster, a few small ones) leaves small clusters
without a centroid - exactly the clusters these methods exist to keep. ``iterations`` caps
Lloyd steps so cost stays O(iterations * N * k * d), and past ``FIT_ROWS_PER_CLUSTER`` rows per
cluster the centroids are fitted on a seeded sample of that size (faiss's own default cap)
and every row is then assigned to its nearest centroid: at 1M rows and 1,000 clusters one
k-means over every row took over 10 minutes on 2 cores.
"""

from __future__ import annotations

import math

import numpy as np

FIT_ROWS_PER_CLUSTER = 256  # k-means centroids are fitted on at most this many rows per cluster
ASSIGN_ROWS = 65_536  # rows assigned to their nearest centroid at a time


def kmeans(
    vectors: np.ndarray, n_clusters: int, seed: int, iterations: int = 20, restarts: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """(centroids [C, d], assignment [N]) of float32 k-means with ``n_clusters`` <= N (the best
    of ``restarts`` k-means++ fits), fitted on every row up to ``FIT_ROWS_PER_CLUSTER`` per
    cluster, on a seeded sample of that size beyond (every row is still assigned to its nearest
    centroid)."""
    import faiss
    from sklearn.cluster import KMeans

    vectors = np.asarray(vectors)
    n = len(vectors)
    n_clusters = max(1, min(n_clusters, n))
    fit = KMeans(n_clusters, init="k-means++", n_init=restarts, max_iter=iterations, random_state=seed)
    if n <= FIT_ROWS_PER_CLUSTER * n_clusters:
        fit.fit(np.ascontiguousarray(vectors, dtype=np.float32))
        return fit.cluster_centers_.astype(np.float32), fit.labels_.astype(np.int64)
    sample = np.sort(np.random.default_rng(seed).choice(n, FIT_ROWS_PER_CLUSTER * n_clusters, replace=False))
    centroids = np.ascontiguousarray(
        fit.fit(np.ascontiguousarray(vectors[sample], dtype=np.float32)).cluster_centers_, dtype=np.float32
    )
    assignment = [
        faiss.knn(np.ascontiguousarray(vectors[lo : lo + ASSIGN_ROWS], dtype=np.float32), centroids, 1)[1][:, 0]
        for lo in range(0, n, ASSIGN_ROWS)
    ]
    return centroids, np.concatenate(assignment).astype(np.int64)


def two_level_kmeans(
    vectors: np.ndarray, n_clusters: int, seed: int, iterations: int = 20
) -> tuple[np.ndarray, np.ndarray]:
    """(centroids [C, d], assignment [N]) of k-means done in two levels, for more clusters
    than one k-means over the whole pool can afford: about sqrt(C) groups by ``kmeans``,
    then each group split by its own ``kmeans`` into its share of the C clusters: in
    proportion to its rows, but never more than its distinct rows (a block of duplicates is
    one point to k-means; ``capped_shares``). Each row belongs to a cluster of its own group, so a
    boundary row may sit in a cluster whose centroid is not its nearest. The cost is about
    2 sqrt(C) N d per Lloyd step instead of C N d."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    n_clusters = max(1, min(n_clusters, len(x)))
    _, group_of = kmeans(x, round(math.sqrt(n_clusters)), seed, iterations)
    members = np.split(np.argsort(group_of, kind="stable"), np.cumsum(np.bincount(group_of))[:-1])
    distinct = np.array([len(np.unique(x[rows], axis=0)) for rows in members])
    shares = capped_shares(np.array([len(m) for m in members]), distinct, n_clusters)
    centroids: list[np.ndarray] = []
    assignment = np.empty(len(x), dtype=np.int64)
    for rows, share in zip(members, shares, strict=True):
        if share == 0:
            continue
        group_centroids, group_assignment = kmeans(x[rows], int(share), seed, iterations)
        assignment[rows] = group_assignment + sum(len(c) for c in centroids)
        centroids.append(group_centroids)
    return np.concatenate(centroids), assignment


def spherical_kmeans(
    vectors: np.ndarray, n_clusters: int, seed: int, iterations: int = 20, init: str = "kmeans++"
) -> tuple[np.ndarray, np.ndarray]:
    """(unit centroids [C, d], assignment [N]) of k-means under cosine similarity.

    Rows are L2-normalised; each point joins the centroid of highest cosine (ties: lower
    index) and a centroid is the normalised sum of its members, so only directions matter.
    Euclidean k-means on unit rows is not the same: its centroids are shorter than 1 by
    different amounts, which shifts the boundaries. Seeding is k-means++ on the unit rows
    (squared Euclidean distance there is 2 - 2 cos), or with ``init="random"`` C distinct rows
    drawn uniformly (ClusterUCB's reference); a cluster left empty keeps its centroid. The
    returned assignment is always the argmax against the returned centroids."""
    from scipy.sparse import csr_matrix
    from sklearn.cluster import kmeans_plusplus

    x = np.asarray(vectors, dtype=np.float32)
    x = x / np.linalg.norm(x, axis=1, keepdims=True).clip(min=1e-12)
    n_clusters = max(1, min(n_clusters, len(x)))
    if init not in ("kmeans++", "random"):
        raise ValueError(f"init: {init!r} is not one of ['kmeans++', 'random']")
    if init == "random":
        centroids = x[np.random.default_rng(seed).choice(len(x), n_clusters, replace=False)]
    else:
        centroids, _ = kmeans_plusplus(x, n_clusters, random_state=seed)
    assignment = np.argmax(x @ centroids.T, axis=1)
    rows = np.arange(len(x))
    for _ in range(iterations):
        members = csr_matrix((np.ones(len(x), dtype=np.float32), (assignment, rows)), shape=(n_clusters, len(x)))
        sums = np.asarray(members @ x)
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        centroids = np.where(norms > 1e-12, sums / norms.clip(min=1e-12), centroids)
        updated = np.argmax(x @ centroids.T, axis=1)
        if np.array_equal(updated, assignment):
            break
        assignment = updated
    return centroids.astype(np.float32), assignment.astype(np.int64)


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


def capped_shares(weights: np.ndarray, caps: np.ndarray, k: int) -> np.ndarray:
    """Integer shares of ``k`` in proportion to ``weights``, none above its cap - what a capped
    entry cannot take goes to the others, again in proportion - summing to min(k, sum of
    caps); rounded by largest remainders."""
    weights, caps = np.asarray(weights, dtype=float), np.asarray(caps, dtype=int)
    k = min(k, int(caps.sum()))
    capped = np.zeros(len(weights), dtype=bool)
    while True:
        open_weight = weights[~capped].sum()
        left = k - caps[capped].sum()
        exact = np.where(capped, caps, left * weights / open_weight if open_weight > 0 else 0.0)
        over = ~capped & (exact > caps)
        if not over.any():
            break
        capped |= over
    shares = np.minimum(np.floor(exact).astype(int), caps)
    for entry in np.argsort(shares - exact, kind="stable"):  # largest remainder first
        if shares.sum() >= k:
            break
        if shares[entry] < caps[entry]:
            shares[entry] += 1
    return shares
