"""Label sets for MIG (docs/methods/mig.md): the tags a dataset provides, or k-means clusters of the
sentence embeddings when it provides none. Pure: the ``labels`` asset reads and writes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .clustering import kmeans


@dataclass(frozen=True)
class LabelSets:
    names: list[str]  # label i's name
    members: list[list[int]]  # per example, the indices of its labels
    how: str


def provided_labels(tag_lists: Sequence[object]) -> LabelSets | None:
    """The provided tags as label sets, when every example has a non-empty list of string
    tags; None otherwise (a partly tagged pool is labelled by clusters, so that no example is
    left without a label)."""
    if not all(isinstance(tags, list) and tags and all(isinstance(t, str) for t in tags) for tags in tag_lists):
        return None
    names = sorted({tag for tags in tag_lists for tag in tags})
    index = {name: i for i, name in enumerate(names)}
    members = [[index[tag] for tag in tags] for tags in tag_lists]
    return LabelSets(names, members, "provided tags (MiniLM embeddings of the tag text)")


def cluster_labels(vectors: np.ndarray, n_clusters: int, seed: int) -> tuple[LabelSets, np.ndarray]:
    """One label per example: its k-means cluster (at most one cluster per 5 examples, at least
    one); returns the label sets and the centroids, which serve as the label embeddings."""
    k = max(1, min(n_clusters, len(vectors) // 5))
    centroids, assignment = kmeans(vectors, k, seed)
    names = [f"cluster-{c}" for c in range(len(centroids))]
    how = f"derived: k-means ({len(centroids)} clusters) of sentence embeddings"
    return LabelSets(names, [[int(a)] for a in assignment], how), centroids
