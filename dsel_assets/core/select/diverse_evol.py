"""DiverseEvol (OFA-Sys/DiverseEvol): start from a random set; each round train on it,
embed the pool with the trained model, and add k-center picks in that new space."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .base import Selection, check_inputs
from .iterative import RoundTrainer, round_sizes
from .kcenter_greedy import kcenter_extend
from .registry import register


@dataclass(frozen=True)
class DiverseEvolConfig:
    rounds: int = field(default=3, metadata={"help": "rounds; the first is random, each adds k / rounds"})
    seed: int = field(default=0, metadata={"help": "seed of the initial random set"})

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise ValueError(f"diverse_evol.rounds: must be >= 1, got {self.rounds}")


@register(
    "diverse_evol",
    family="iterative",
    config=DiverseEvolConfig,
    needs=("sentence_embeddings", "trainer"),
    description="Random start, then rounds of train -> re-embed the pool -> k-center additions.",
    reference="DiverseEvol, Wu et al. 2023 (OFA-Sys/DiverseEvol), arXiv 2311.08182",
)
def select(
    ids, k: int, config: DiverseEvolConfig, *, sentence_embeddings: np.ndarray, trainer: RoundTrainer
) -> Selection:
    ids = check_inputs(ids, sentence_embeddings=sentence_embeddings)
    k = min(k, len(ids))
    sizes = round_sizes(k, config.rounds)
    order = np.random.default_rng(config.seed).permutation(len(ids))[: sizes[0]].tolist()
    for round_index, size in enumerate(sizes[1:]):
        space = trainer.train_and_embed(list(order), round_index)
        if len(space) != len(ids):
            raise ValueError(f"diverse_evol: trainer returned {len(space)} embeddings for {len(ids)} examples")
        order += kcenter_extend(space, order, size)[0]
    return Selection(
        "diverse_evol", [str(i) for i in ids[order]], diagnostics={"eligible": len(ids), "rounds": config.rounds}
    )
