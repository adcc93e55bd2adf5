"""kMQ (for-ai/iterative-data-selection): k-means clusters, an equal quota per cluster,
members drawn without replacement with probability proportional to exp(quality). Unlike the
reference, which takes int(budget / K) per cluster and leaves the rest, the quota a small
cluster cannot fill goes to the others, so the budget is met."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..clustering import kmeans, round_robin
from .base import Selection, check_inputs
from .registry import register


@dataclass(frozen=True)
class KmqConfig:
    n_clusters: int = field(default=100, metadata={"help": "clusters (capped at the pool size)"})
    seed: int = field(default=0, metadata={"help": "k-means and sampling seed"})
    iterations: int = field(default=20, metadata={"help": "Lloyd iterations"})

    def __post_init__(self) -> None:
        if self.n_clusters < 1:
            raise ValueError(f"kmq.n_clusters: must be >= 1, got {self.n_clusters}")


@register(
    "kmq",
    family="hybrid",
    config=KmqConfig,
    needs=("sentence_embeddings", "quality"),
    description="k-means quota sampling weighted by exp(quality), quota of small clusters redistributed.",
    reference="Diversify & Conquer, Yu et al. 2024 (for-ai/iterative-data-selection), arXiv 2409.11378",
)
def select(ids, k: int, config: KmqConfig, *, sentence_embeddings: np.ndarray, quality: np.ndarray) -> Selection:
    """Sampling without replacement proportional to exp(q) = sorting q + Gumbel noise (the
    Gumbel-top-k identity). Clusters are then visited round-robin, so every prefix keeps
    per-cluster counts within one of each other up to exhaustion."""
    ids = check_inputs(ids, sentence_embeddings=sentence_embeddings, quality=quality)
    quality = np.asarray(quality, dtype=np.float64)
    valid = np.flatnonzero(np.isfinite(quality))
    if len(valid) == 0 or k == 0:
        return Selection("kmq", [], diagnostics={"eligible": len(valid)})
    _, assignment = kmeans(np.asarray(sentence_embeddings)[valid], config.n_clusters, config.seed, config.iterations)
    rng = np.random.default_rng(config.seed)
    keys = quality[valid] + rng.gumbel(size=len(valid))
    clusters = [
        valid[members[np.argsort(-keys[members], kind="stable")]]
        for c in rng.permutation(assignment.max() + 1)
        if len(members := np.flatnonzero(assignment == c))
    ]
    order = round_robin(clusters, k)
    return Selection(
        "kmq",
        [str(i) for i in ids[order]],
        quality[order].tolist(),
        diagnostics={"eligible": len(valid), "clusters": len(clusters)},
    )
