"""k-center greedy (Sener & Savarese 2018): repeatedly add the point farthest from its
nearest selected point. A running min-distance vector keeps it O(N d) per pick; the
N x N distance matrix never exists."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .base import Selection, check_inputs
from .registry import register


@dataclass(frozen=True)
class KCenterConfig:
    seed: int = field(default=0, metadata={"help": "seed of the first pick (when first < 0)"})
    first: int = field(default=-1, metadata={"help": "row index of the first pick; -1 = seeded random"})


def kcenter_order(x: np.ndarray, k: int, first: int) -> tuple[list[int], list[float]]:
    """Indices in pick order and each pick's squared distance to the set before it."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.einsum("ij,ij->i", x, x)
    min_dist = np.full(len(x), np.inf, dtype=np.float32)
    order, gains = [], []
    pick, gain = first, float("inf")
    for _ in range(min(k, len(x))):
        order.append(pick)
        gains.append(gain)
        dist = np.maximum(norms + norms[pick] - 2.0 * (x @ x[pick]), 0.0)  # clamp rounding below 0
        np.minimum(min_dist, dist, out=min_dist)
        min_dist[order] = -1.0  # never re-picked
        pick = int(np.argmax(min_dist))  # ties: lowest index
        gain = float(min_dist[pick])
    return order, gains


@register(
    "kcenter_greedy",
    family="diversity",
    config=KCenterConfig,
    needs=("sentence_embeddings",),
    description="Greedy k-center on embeddings: each pick is the point farthest from the selection.",
    reference="Sener & Savarese 2018, arXiv 1708.00489; experimental design, Bhatt et al. 2024",
)
def select(ids, k: int, config: KCenterConfig, *, sentence_embeddings: np.ndarray) -> Selection:
    ids = check_inputs(ids, sentence_embeddings=sentence_embeddings)
    if len(ids) == 0 or k == 0:
        return Selection("kcenter_greedy", [], [], diagnostics={"eligible": len(ids)})
    if config.first >= len(ids):
        raise ValueError(f"kcenter_greedy.first: {config.first} is outside the pool of {len(ids)}")
    first = config.first if config.first >= 0 else int(np.random.default_rng(config.seed).integers(len(ids)))
    order, gains = kcenter_order(sentence_embeddings, k, first)
    return Selection("kcenter_greedy", [str(i) for i in ids[order]], gains, diagnostics={"eligible": len(ids)})
