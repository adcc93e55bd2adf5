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


def kcenter_extend(x: np.ndarray, selected: list[int], extra: int) -> tuple[list[int], list[float]]:
    """``extra`` greedy picks after ``selected``: indices in pick order and each pick's
    squared distance to the set before it (ties: lowest index)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.einsum("ij,ij->i", x, x)
    min_dist = np.full(len(x), np.inf, dtype=np.float32)

    def cover(s: int) -> None:
        np.minimum(min_dist, np.maximum(norms + norms[s] - 2.0 * (x @ x[s]), 0.0), out=min_dist)  # clamp at 0
        min_dist[s] = -1.0  # never re-picked

    for s in selected:
        cover(s)
    picks, gains = [], []
    for _ in range(min(extra, len(x) - len(selected))):
        pick = int(np.argmax(min_dist))
        picks.append(pick)
        gains.append(float(min_dist[pick]))
        cover(pick)
    return picks, gains


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
    if k == 0:
        return Selection("kcenter_greedy", [], [], diagnostics={"eligible": len(ids)})
    if config.first >= len(ids):
        raise ValueError(f"kcenter_greedy.first: {config.first} is outside the pool of {len(ids)}")
    first = config.first if config.first >= 0 else int(np.random.default_rng(config.seed).integers(len(ids)))
    picks, gains = kcenter_extend(sentence_embeddings, [first], k - 1)
    order = [first, *picks]
    return Selection(
        "kcenter_greedy", [str(i) for i in ids[order]], [float("inf"), *gains], diagnostics={"eligible": len(ids)}
    )
