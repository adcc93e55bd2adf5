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


#: rows per block when scoring tasks: bounds the float64 temporaries (1M x 500 would need 4 GB)
BLOCK_ROWS = 16_384


def normalise_columns(scores: np.ndarray) -> np.ndarray:
    """``(A_ij - mean_j) / std_j`` per query column (population std; a constant column -> 0)."""
    mean = scores.mean(axis=0, keepdims=True)
    std = scores.std(axis=0, keepdims=True)
    return np.where(std > 0, (scores - mean) / np.where(std > 0, std, 1.0), 0.0)


def column_moments(scores: np.ndarray, rows: np.ndarray, block: int = BLOCK_ROWS) -> tuple[np.ndarray, np.ndarray]:
    """Mean and population std of each column over ``rows`` in float64, two passes over row
    blocks: never a float64 copy of the whole matrix."""
    mean = np.zeros(scores.shape[1])
    for start in range(0, len(rows), block):
        mean += scores[rows[start : start + block]].sum(axis=0, dtype=np.float64)
    mean /= max(len(rows), 1)
    squares = np.zeros_like(mean)
    for start in range(0, len(rows), block):
        squares += np.square(scores[rows[start : start + block]] - mean).sum(axis=0)
    return mean, np.sqrt(squares / max(len(rows), 1))


def task_scores(
    scores: np.ndarray, rows: np.ndarray, labels: np.ndarray, tasks: list[str], reduce, block: int = BLOCK_ROWS
) -> np.ndarray:
    """[len(rows), T]: each task's ``reduce`` (max / mean) over its z-scored columns
    (:func:`normalise_columns` over ``rows``), computed block by block."""
    mean, std = column_moments(scores, rows, block)
    constant = std == 0
    scale = np.where(constant, 1.0, std)
    out = np.empty((len(rows), len(tasks)))
    for start in range(0, len(rows), block):
        z = (scores[rows[start : start + block]] - mean) / scale
        z[:, constant] = 0.0
        for j, task in enumerate(tasks):
            out[start : start + block, j] = reduce(z[:, labels == task], axis=1)
    return out


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
    tasks = list(dict.fromkeys(influence.tasks))
    reduce = np.max if config.aggregate == "max" else np.mean
    per_task = task_scores(influence.scores, rows, np.asarray(influence.tasks), tasks, reduce)
    order = bids_order(per_task, k)
    picked = rows[order]
    return Selection(
        "bids",
        [str(i) for i in ids[picked]],
        per_task[order].max(axis=1).tolist(),
        diagnostics={"eligible": len(rows), "tasks": tasks},
    )
