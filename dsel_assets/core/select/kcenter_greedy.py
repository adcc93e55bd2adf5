"""k-center greedy (Sener & Savarese 2018): repeatedly add the point farthest from its
nearest selected point. A running min-distance vector (each row's gap) keeps it O(N d) per
pick; the N x N distance matrix never exists.

Picks are certified in batches so the pool is swept once per batch, as one matrix product,
instead of once per pick (a memory-bound matrix-vector product): the ``candidates`` rows
with the largest gaps are followed pick by pick, and a candidate whose updated gap still
exceeds every other row's gap is provably the next pick, because gaps only shrink. When no
candidate can be certified, one plain pick is made. The picks are those of the plain
definition; only the work is grouped."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ._neighbours import SEARCH_ROWS, blocks
from .base import Selection, check_inputs
from .registry import register

CANDIDATES = 512  # rows followed pick by pick between two sweeps of the pool
SWEEP_PICKS = 256  # picks compared with the pool in one matrix product


@dataclass(frozen=True)
class KCenterConfig:
    seed: int = field(default=0, metadata={"help": "seed of the first pick (when first < 0)"})
    first: int = field(default=-1, metadata={"help": "row index of the first pick; -1 = seeded random"})

    def uses_seed(self) -> bool:
        """A given first pick leaves nothing to chance."""
        return self.first < 0


def _sweep(x: np.ndarray, norms: np.ndarray, gap: np.ndarray, picks: list[int]) -> None:
    """Lower every row's gap to its squared distance from ``picks`` (clamped at 0: float
    cancellation); the picks themselves get -1 so they are never picked again."""
    for first in range(0, len(picks), SWEEP_PICKS):
        chosen = np.asarray(picks[first : first + SWEEP_PICKS])
        points, point_norms = x[chosen].T, norms[chosen]
        for lo in blocks(len(x)):
            hi = min(lo + SEARCH_ROWS, len(x))
            distance = norms[lo:hi, None] + point_norms - 2.0 * (x[lo:hi] @ points)
            np.minimum(gap[lo:hi], np.maximum(distance.min(axis=1), 0.0), out=gap[lo:hi])
    gap[picks] = -1.0


def _certified_picks(
    x: np.ndarray, norms: np.ndarray, gap: np.ndarray, candidates: int, limit: int
) -> list[tuple[int, float]]:
    """(row, gap) of the next picks (at most ``limit``) that the plain greedy would make,
    found among the ``candidates`` rows of largest gap: each is certified by an updated gap
    above the largest gap outside the candidates. At least one (the plain argmax when none
    certifies)."""
    n = len(x)
    if candidates >= n:
        top, outside = np.arange(n), -np.inf
    else:
        ranked = np.argpartition(gap, n - candidates - 1)
        top, outside = np.sort(ranked[n - candidates :]), gap[ranked[n - candidates - 1]]
    own, rows, row_norms = gap[top].copy(), x[top], norms[top]
    picks: list[tuple[int, float]] = []
    while len(picks) < limit:
        best = int(np.argmax(own))  # first of equals: lowest row, as ``top`` is sorted
        if not own[best] > outside:
            break
        picks.append((int(top[best]), float(own[best])))
        distance = row_norms + row_norms[best] - 2.0 * (rows @ rows[best])
        np.minimum(own, np.maximum(distance, 0.0), out=own)
        own[best] = -1.0
    if not picks:
        best = int(np.argmax(gap))
        picks.append((best, float(gap[best])))
    return picks


def kcenter_extend(
    x: np.ndarray, selected: list[int], extra: int, candidates: int = CANDIDATES
) -> tuple[list[int], list[float], int]:
    """``extra`` greedy picks after ``selected``: indices in pick order, each pick's squared
    distance to the set before it (ties: lowest index), and how many sweeps of the pool
    that took."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.einsum("ij,ij->i", x, x)
    gap = np.full(len(x), np.inf, dtype=np.float32)
    _sweep(x, norms, gap, list(selected))
    picks: list[int] = []
    gains: list[float] = []
    sweeps = 0
    wanted = min(extra, len(x) - len(set(selected)))
    while len(picks) < wanted:
        batch = _certified_picks(x, norms, gap, candidates, wanted - len(picks))
        picks += [row for row, _ in batch]
        gains += [gain for _, gain in batch]
        _sweep(x, norms, gap, [row for row, _ in batch])
        sweeps += 1
    return picks, gains, sweeps


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
    picks, gains, sweeps = kcenter_extend(sentence_embeddings, [first], k - 1)
    order = [first, *picks]
    return Selection(
        "kcenter_greedy",
        [str(i) for i in ids[order]],
        [float("inf"), *gains],
        diagnostics={"eligible": len(ids), "pool_sweeps": sweeps},
    )
