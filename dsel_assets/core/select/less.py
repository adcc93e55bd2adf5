"""LESS top-k (princeton-nlp/LESS): rank the pool by the task's aggregated gradient score
(checkpoint-weighted cosine, mean within subtask, max over subtasks; docs/methods/less.md)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .base import Selection, check_inputs, rank_by_score, target_field
from .registry import register
from .targeted import TargetedConfig


@dataclass(frozen=True)
class LessConfig(TargetedConfig):
    task: str = target_field("query", True, "target task (a task label of the query set; required)")


@register(
    "less",
    family="targeted",
    config=LessConfig,
    needs=("less_scores",),
    description="Top-k pool examples by LESS influence score for one target task.",
    reference="LESS, Xia et al. 2024 (princeton-nlp/LESS), arXiv 2402.04333",
)
def select(ids, k: int, config: LessConfig, *, less_scores: dict[str, np.ndarray]) -> Selection:
    """``less_scores`` maps task -> score per id (NaN where an example has no feature, e.g.
    truncated away: not eligible). Ties break by lower id, so the ordering is total."""
    if config.task not in less_scores:
        raise ValueError(f"less.task: {config.task!r} is not one of {sorted(less_scores)}")
    scores = np.asarray(less_scores[config.task], dtype=np.float64)
    ids = check_inputs(ids, less_scores=scores)
    return rank_by_score("less", ids, scores, k, task=config.task)
