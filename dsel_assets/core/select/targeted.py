"""The influence matrix as targeted selectors see it: pool x query scores with the task of
each query column (METHODS.md R1.4, before task aggregation)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Influence:
    scores: np.ndarray  # [N, M] float32, rows aligned with the pool ids; NaN rows = no feature
    tasks: tuple[str, ...]  # task of each column
    subtasks: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.scores)

    def columns(self, method: str, task: str) -> np.ndarray:
        """Scores of one task's columns ('' = every column); errors name the field."""
        if self.scores.ndim != 2 or self.scores.shape[1] != len(self.tasks):
            raise ValueError(f"influence: {self.scores.shape} scores for {len(self.tasks)} column tasks")
        if not task:
            return self.scores
        mask = np.asarray(self.tasks) == task
        if not mask.any():
            raise ValueError(f"{method}.task: {task!r} is not one of {sorted(set(self.tasks))}")
        return self.scores[:, mask]


def eligible_rows(scores: np.ndarray) -> np.ndarray:
    """Rows with a finite score in every column (no gradient feature = not eligible)."""
    return np.flatnonzero(np.isfinite(scores).all(axis=1))
