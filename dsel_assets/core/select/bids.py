"""BIDS (arXiv 2501.12147): balance the selection across target tasks by always serving
the task whose selected examples score lowest on average."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from .base import Selection, check_inputs
from .registry import register
from .targeted import Influence, TargetedConfig, eligible_rows


@dataclass(frozen=True)
class BidsConfig(TargetedConfig):
    aggregate: Literal["max", "mean"] = field(default="max", metadata={"help": "task score from its columns"})


def normalise_columns(scores: np.ndarray) -> np.ndarray:
    """``(A_ij - mean_j) / std_j`` per query column (population std; a constant column -> 0)."""
    mean = scores.mean(axis=0, keepdims=True)
    std = scores.std(axis=0, keepdims=True)
    return np.where(std > 0, (scores - mean) / np.where(std > 0, std, 1.0), 0.0)


def bids_order(task_scores: np.ndarray, k: int) -> list[int]:
    """Greedy balance loop over task scores [N, T]; a pointer per task makes it O(k T)."""
    n, t = task_scores.shape
    rankings = [np.lexsort((np.arange(n), -task_scores[:, j])) for j in range(t)]
    pointers = [0] * t
    sums = np.zeros(t)
    taken = np.zeros(n, dtype=bool)
    order: list[int] = []
    while len(order) < min(k, n):
        means = sums / len(order) if order else np.zeros(t)
        task = int(np.argmin(means))  # ties: lowest task
        while taken[rankings[task][pointers[task]]]:
            pointers[task] += 1
        row = int(rankings[task][pointers[task]])
        taken[row] = True
        order.append(row)
        sums += task_scores[row]
    return order


@register(
    "bids",
    family="targeted",
    config=BidsConfig,
    needs=("influence",),
    description="Column-normalised influence, per-task scores, iteratively serve the worst-off task.",
    reference="BIDS, Dai et al. 2025, arXiv 2501.12147",
)
def select(ids, k: int, config: BidsConfig, *, influence: Influence) -> Selection:
    ids = check_inputs(ids, influence=influence.scores)
    rows = eligible_rows(influence.scores)
    normalised = normalise_columns(influence.scores[rows].astype(np.float64))
    tasks = list(dict.fromkeys(influence.tasks))
    labels = np.asarray(influence.tasks)
    reduce = np.max if config.aggregate == "max" else np.mean
    task_scores = np.stack([reduce(normalised[:, labels == t], axis=1) for t in tasks], axis=1)
    order = bids_order(task_scores, k)
    picked = rows[order]
    return Selection(
        "bids",
        [str(i) for i in ids[picked]],
        task_scores[order].max(axis=1).tolist(),
        diagnostics={"eligible": len(rows), "tasks": tasks},
    )
