"""Random selection: a seeded shuffle (the baseline every method must beat)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .base import Selection, check_inputs
from .registry import register


@dataclass(frozen=True)
class RandomConfig:
    seed: int = field(default=0, metadata={"help": "shuffle seed"})


@register(
    "random",
    family="diversity",
    config=RandomConfig,
    description="Seeded uniform random sample; budgets are prefixes of one shuffle.",
    reference="baseline",
)
def select(ids, k: int, config: RandomConfig) -> Selection:
    ids = check_inputs(ids)
    order = np.random.default_rng(config.seed).permutation(len(ids))[:k]
    return Selection("random", [str(i) for i in ids[order]], diagnostics={"eligible": len(ids)})
