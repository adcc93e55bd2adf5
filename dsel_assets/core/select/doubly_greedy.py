"""Doubly greedy (dcml-lab): score each pool example by its best similarity to any query."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .base import Selection, check_inputs, target_field
from .registry import register
from .targeted import Influence, TargetedConfig, eligible_rows


@dataclass(frozen=True)
class DoublyGreedyConfig(TargetedConfig):
    task: str = target_field("query", False, "target task ('' = every query column)")


@register(
    "doubly_greedy",
    family="targeted",
    config=DoublyGreedyConfig,
    needs=("influence",),
    description="Rank pool examples by max over queries of the similarity (influence) score.",
    reference="dcml-lab targeted-instruction-selection, arXiv 2503.01807",
)
def select(ids, k: int, config: DoublyGreedyConfig, *, influence: Influence) -> Selection:
    ids = check_inputs(ids, influence=influence.scores)
    scores = influence.columns("doubly_greedy", config.task)
    rows = eligible_rows(scores)
    best = scores[rows].max(axis=1)
    order = rows[np.lexsort((rows, -best))][:k]
    return Selection(
        "doubly_greedy",
        [str(i) for i in ids[order]],
        scores[order].max(axis=1).tolist(),
        diagnostics={"eligible": len(rows)},
    )
