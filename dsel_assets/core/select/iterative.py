"""What iterative selectors need between rounds: train on the current selection, then score
or re-embed. The asset layer implements it with the LoRA trainer (each round its own
recorded step); tests use a deterministic stand-in."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np

#: ``(pool rows, task) -> LESS score of each row for the task`` under the model as trained so far
#: (NaN: the row has no gradient feature).
RowScorer = Callable[[np.ndarray, str], np.ndarray]


class RoundTrainer(Protocol):
    def train_and_score(self, selected: list[int], round_index: int) -> np.ndarray:
        """Fine-tune on ``selected`` (pool row indices); return, per selected example, how far
        the trained model is from its reference answer (higher = still harder)."""

    def train_and_embed(self, selected: list[int], round_index: int) -> np.ndarray:
        """Fine-tune on ``selected``; return embeddings [N, d] of the whole pool by that model."""


class EpochTrainer(Protocol):
    def train_epochs(self, first: list[int], epochs: int, reselect: Callable[[int, RowScorer], list[int]]) -> list[int]:
        """LoRA-train ``epochs`` epochs in one run, the first on pool rows ``first``; after each
        epoch but the last, ``reselect(epoch, scorer)`` picks the rows of the next from the
        LESS scores of the model trained so far. Returns the rows of the last epoch."""


def round_sizes(k: int, rounds: int) -> list[int]:
    """k split into ``rounds`` near-equal parts (earlier rounds take the remainder)."""
    base, extra = divmod(k, rounds)
    return [base + (1 if r < extra else 0) for r in range(rounds)]
