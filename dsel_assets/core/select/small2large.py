"""Small2Large (Mekala et al. 2024): cluster the pool and fill each cluster's proportional
share of the budget hardest first: lowest learning percentage LP(1), the examples the small
model learned least in its first epoch. The ``small2large_random`` twin takes the same
per-cluster counts at random. See docs/methods/small2large.md."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..clustering import kmeans
from .base import Selection, check_inputs
from .registry import register


@dataclass(frozen=True)
class Small2LargeConfig:
    n_clusters: int = field(default=1000, metadata={"help": "k-means clusters (capped at N / 5)"})
    seed: int = field(default=0, metadata={"help": "k-means (and the random twin's) seed"})

    def __post_init__(self) -> None:
        if self.n_clusters < 1:
            raise ValueError(f"small2large.n_clusters: must be >= 1, got {self.n_clusters}")


def cluster_quotas(sizes: np.ndarray, k: int) -> np.ndarray:
    """Per-cluster counts: the share p = k / N of each cluster, at least one per non-empty
    cluster while k allows, largest remainders first, summing exactly to min(k, N)."""
    n = int(sizes.sum())
    k = min(k, n)
    exact = sizes * (k / n) if n else sizes.astype(float)
    quotas = np.floor(exact).astype(int)
    floor = (sizes > 0).astype(int) if k >= np.count_nonzero(sizes) else np.zeros_like(sizes)
    quotas = np.maximum(quotas, floor)
    while quotas.sum() > k:  # the minimum of one overshot: trim where it hurts proportion least
        over = np.where(quotas > floor, quotas - exact, -np.inf)
        quotas[np.argmax(over)] -= 1
    remainder = exact - quotas
    for c in np.argsort(-remainder, kind="stable"):
        if quotas.sum() == k:
            break
        if quotas[c] < sizes[c]:
            quotas[c] += 1
    return quotas


def _select(name: str, ids, k: int, config: Small2LargeConfig, lp: np.ndarray, x: np.ndarray, random: bool):
    ids = check_inputs(ids, learning_percentage=lp, sentence_embeddings=x)
    lp = np.asarray(lp, dtype=np.float64)
    valid = np.flatnonzero(np.isfinite(lp))
    if len(valid) == 0 or k == 0:
        return Selection(name, [], diagnostics={"eligible": len(valid)})
    n_clusters = max(1, min(config.n_clusters, len(valid) // 5))
    _, assignment = kmeans(np.asarray(x)[valid], n_clusters, config.seed, 20)
    sizes = np.bincount(assignment, minlength=assignment.max() + 1)
    quotas = cluster_quotas(sizes, k)
    rng = np.random.default_rng(config.seed)
    picked: list[int] = []
    for c, quota in enumerate(quotas):
        members = valid[assignment == c]
        ranked = rng.permutation(members) if random else members[np.lexsort((members, lp[members]))]
        picked += ranked[:quota].tolist()
    return Selection(
        name,
        [str(i) for i in ids[picked]],
        lp[picked].tolist(),
        diagnostics={"eligible": len(valid), "clusters": int(len(sizes))},
    )


@register(
    "small2large",
    family="quality",
    config=Small2LargeConfig,
    needs=("learning_percentage", "sentence_embeddings"),
    description="Per k-means cluster, the examples with the lowest learning percentage LP(1).",
    reference="Smaller language models are capable of selecting instruction-tuning data, Mekala et al. 2024",
)
def select(ids, k, config: Small2LargeConfig, *, learning_percentage, sentence_embeddings) -> Selection:
    return _select("small2large", ids, k, config, learning_percentage, sentence_embeddings, random=False)


@register(
    "small2large_random",
    family="diversity",
    config=Small2LargeConfig,
    needs=("learning_percentage", "sentence_embeddings"),
    description="Small2Large's cluster-random twin: the same per-cluster counts, drawn at random.",
    reference="Mekala et al. 2024 (baseline)",
)
def select_random(ids, k, config: Small2LargeConfig, *, learning_percentage, sentence_embeddings) -> Selection:
    return _select("small2large_random", ids, k, config, learning_percentage, sentence_embeddings, random=True)
