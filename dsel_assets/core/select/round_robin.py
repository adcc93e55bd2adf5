"""Round-robin over query rows (dcml-lab/targeted-instruction-selection): visit queries
0..M-1, 0.., each taking its most similar pool example not yet taken."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .base import Selection, check_inputs
from .registry import register
from .targeted import Influence, TargetedConfig, eligible_rows


@dataclass(frozen=True)
class RoundRobinConfig(TargetedConfig):
    task: str = field(default="", metadata={"help": "target task ('' = every query column)"})


@register(
    "round_robin",
    family="targeted",
    config=RoundRobinConfig,
    needs=("influence",),
    description="Cycle over query rows; each takes its best untaken pool example. M=1 equals top-k.",
    reference="Ivison et al. 2025 / dcml-lab targeted-instruction-selection, arXiv 2503.01807",
)
def select(ids, k: int, config: RoundRobinConfig, *, influence: Influence) -> Selection:
    """One ordering (budgets are prefixes). Each query keeps a pointer into its own ranking
    (descending, ties by lower row), so the loop is O(k + M N log N), not O(k N)."""
    ids = check_inputs(ids, influence=influence.scores)
    scores = influence.columns("round_robin", config.task)
    rows = eligible_rows(scores)
    k = min(k, len(rows))
    rankings = [rows[np.lexsort((rows, -scores[rows, q]))] for q in range(scores.shape[1])]
    pointers = [0] * len(rankings)
    taken = np.zeros(len(ids), dtype=bool)
    order, gains = [], []
    while len(order) < k:
        for q, ranking in enumerate(rankings):
            while pointers[q] < len(ranking) and taken[ranking[pointers[q]]]:
                pointers[q] += 1
            if pointers[q] == len(ranking):
                continue
            row = ranking[pointers[q]]
            taken[row] = True
            order.append(row)
            gains.append(float(scores[row, q]))
            if len(order) == k:
                break
    return Selection(
        "round_robin",
        [str(i) for i in ids[order]],
        gains,
        diagnostics={"eligible": len(rows), "queries": scores.shape[1]},
    )
