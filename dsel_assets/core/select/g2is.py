"""G2IS (zy125413/G2IS): gradient-graph selection. Principal directions of the query
gradients share the budget; for each, an anchor and a walk on the pool's gradient kNN graph
add examples that agree with the set and keep it aligned with the direction."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ._neighbours import check_exact_search_rows, exact_search_field
from .base import Selection, check_inputs, target_field
from .registry import register
from .targeted import TargetedConfig, cosine_neighbours, eligible_rows


@dataclass(frozen=True)
class G2isConfig(TargetedConfig):
    task: str = target_field("query", False, "target task ('' = every query)")
    val_k: float = field(default=0.5, metadata={"help": "share of query-gradient variance the components cover"})
    delta: float = field(default=0.8, metadata={"help": "alignment may drop to delta x its current value"})
    n_neighbors: int = field(default=10, metadata={"help": "kNN graph degree"})
    exact_search_rows: int = exact_search_field()

    def __post_init__(self) -> None:
        if not 0 < self.val_k <= 1:
            raise ValueError(f"g2is.val_k: must be in (0, 1], got {self.val_k}")
        check_exact_search_rows("g2is", self.exact_search_rows)


def component_budgets(weights: np.ndarray, k: int) -> np.ndarray:
    """Split k across components proportionally, largest remainder: sums exactly to k."""
    exact = weights / weights.sum() * k
    counts = np.floor(exact).astype(int)
    for c in np.argsort(-(exact - counts), kind="stable")[: k - counts.sum()]:
        counts[c] += 1
    return counts


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))


def g2is_order(pool: np.ndarray, queries: np.ndarray, k: int, config: G2isConfig) -> tuple[list[int], dict]:
    q = queries - queries.mean(axis=0)
    _, sv, vt = np.linalg.svd(q, full_matrices=False)
    variance = sv**2 / max((sv**2).sum(), 1e-12)
    n_comp = int(np.searchsorted(np.cumsum(variance), config.val_k) + 1)
    directions = vt[:n_comp] * np.sign(vt[:n_comp] @ queries.mean(axis=0) + 1e-12)[:, None]
    budgets = component_budgets(variance[:n_comp], k)
    g = np.asarray(pool, dtype=np.float32)
    norms, _, neighbours = cosine_neighbours(g, config.n_neighbors + 1, config.exact_search_rows)
    taken = np.zeros(len(g), dtype=bool)
    order: list[int] = []
    filled = []
    for direction, budget in zip(directions, budgets, strict=True):
        by_similarity = np.argsort(-((g @ direction.astype(np.float32)) / norms.clip(min=1e-12)), kind="stable")
        members: list[int] = []
        total = np.zeros(g.shape[1])
        while len(members) < budget:

            def acceptable(c: int, members=members, total=total, direction=direction) -> bool:
                """(i) agrees (dot >= 0) with every member, (ii) keeps the set aligned."""
                if taken[c] or any(float(g[c] @ g[m]) < 0 for m in members):
                    return False
                return abs(_cos(total + g[c], direction)) >= config.delta * abs(_cos(total, direction))

            if not members:
                start = next((int(c) for c in by_similarity if not taken[c]), None)
                candidate = start
            else:
                candidate = next((int(c) for c in neighbours[members[-1]] if acceptable(int(c))), None)
                if candidate is None:  # fall back to a scan by similarity to the direction
                    candidate = next((int(c) for c in by_similarity if acceptable(int(c))), None)
            if candidate is None:
                break
            members.append(candidate)
            taken[candidate] = True
            total = total + g[candidate]
        order += members
        filled.append((int(budget), len(members)))
    return order, {"components": n_comp, "budgets_filled": filled}


@register(
    "g2is",
    family="targeted",
    config=G2isConfig,
    needs=("pool_gradients", "query_gradients"),
    description="PCA of query gradients splits the budget; kNN-graph walks add consistent, aligned examples.",
    reference="G2IS, Zhao et al. 2025 (zy125413/G2IS), arXiv 2502.11062",
)
def select(ids, k: int, config: G2isConfig, *, pool_gradients: np.ndarray, query_gradients) -> Selection:
    """``query_gradients`` = (matrix [M, d], task per row). Rows without a gradient feature
    (NaN) are not eligible and never enter the neighbour graph. May under-fill: reported."""
    ids = check_inputs(ids, pool_gradients=pool_gradients)
    eligible = eligible_rows(pool_gradients)
    matrix, tasks = query_gradients
    rows = np.asarray(tasks) == config.task if config.task else np.ones(len(tasks), dtype=bool)
    if not rows.any():
        raise ValueError(f"g2is.task: {config.task!r} is not one of {sorted(set(tasks))}")
    k = min(k, len(eligible))
    pool = pool_gradients if len(eligible) == len(ids) else pool_gradients[eligible]  # copy only with gaps
    order, diagnostics = g2is_order(np.asarray(pool), np.asarray(matrix)[rows], k, config)
    return Selection(
        "g2is",
        [str(i) for i in ids[eligible[order]]],
        diagnostics={"eligible": len(eligible), "under_fill": k - len(order), **diagnostics},
    )
