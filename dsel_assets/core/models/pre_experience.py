"""Cherry LLM's pre-experience sample (docs/methods/cherry_ifd_pre_experienced.md): a small, diverse,
middle-difficulty subset of the pool that the model is briefly fine-tuned on before IFD is
computed with it (Li et al. 2024, arXiv 2308.12032, section 2.2)."""

from __future__ import annotations

import numpy as np

from dsel_assets.core.clustering import kmeans


def pre_experience_sample(
    embeddings: np.ndarray,
    perplexity: np.ndarray,
    n_clusters: int = 100,
    per_cluster: int = 10,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """(row indices of the sample, cluster of each row or -1) for a pool.

    k-means with ``n_clusters`` (capped at the number of rows with a defined perplexity) on
    the model embeddings; in each cluster the members whose perplexity lies between the
    cluster's 25th and 75th percentiles (inclusive) are kept, ordered by perplexity, and up to
    ``per_cluster`` of them are taken evenly spaced over that order, so the sample spans the
    middle band rather than one point of it. (The paper says "evenly"; ordering by perplexity
    is our reading, stated here because the order decides which rows are taken.) A cluster of
    fewer than ``per_cluster`` members is taken whole, as the reference does; one whose band
    holds no member (two members, with ``per_cluster`` <= 2) gives its member nearest the
    median, so every cluster is represented. Rows with an undefined perplexity (NaN) take no
    part and get cluster -1.
    """
    if n_clusters < 1 or per_cluster < 1:
        raise ValueError(f"n_clusters and per_cluster: must be >= 1, got {n_clusters}, {per_cluster}")
    perplexity = np.asarray(perplexity, dtype=np.float64)
    if len(embeddings) != len(perplexity):
        raise ValueError(f"embeddings ({len(embeddings)}) and perplexity ({len(perplexity)}) differ in length")
    defined = np.flatnonzero(np.isfinite(perplexity))
    cluster = np.full(len(perplexity), -1, dtype=np.int64)
    if len(defined) == 0:
        return np.empty(0, dtype=np.int64), cluster
    _, assignment = kmeans(embeddings[defined], min(n_clusters, len(defined)), seed)
    cluster[defined] = assignment
    chosen: list[int] = []
    for c in np.unique(assignment):
        members = defined[assignment == c]
        if len(members) < per_cluster:
            chosen += members.tolist()
            continue
        values = perplexity[members]
        low, high = np.percentile(values, [25, 75])
        band = members[(values >= low) & (values <= high)]
        if len(band) == 0:  # e.g. two members: both lie outside the interpolated band
            band = members[[np.argmin(np.abs(values - np.median(values)))]]
        band = band[np.argsort(perplexity[band], kind="stable")]
        positions = np.unique(np.linspace(0, len(band) - 1, min(per_cluster, len(band))).round().astype(int))
        chosen += band[positions].tolist()
    return np.sort(np.asarray(chosen, dtype=np.int64)), cluster
