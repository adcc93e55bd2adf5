"""Long Is More (Zhao et al. 2024): the examples with the longest responses, longest first."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .base import Selection, check_inputs, rank_by_score
from .registry import register


@dataclass(frozen=True)
class LongestConfig:
    """No parameters: the budget is the only choice the paper makes (1,000 examples)."""


@register(
    "longest",
    family="quality",
    config=LongestConfig,
    needs=("response_length",),
    description="Rank by response length in tokens, longest first (ties by lower id).",
    reference="Long Is More for Alignment, Zhao et al. 2024 (tml-epfl/long-is-more-for-alignment), arXiv 2402.04833",
)
def select(ids, k: int, config: LongestConfig, *, response_length: np.ndarray) -> Selection:
    """A response length that could not be read (NaN) makes its example ineligible."""
    return rank_by_score("longest", check_inputs(ids, response_length=response_length), response_length, k)
