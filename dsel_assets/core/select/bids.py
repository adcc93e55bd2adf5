"""BIDS (arXiv 2501.12147): z-score every query column of the influence matrix over the pool,
then grow the selection greedily, each step adding the example with the largest lead of one of
its scores over that column's mean across the examples selected so far (the paper's Algorithm 1),
so the columns the selection serves least gain first. ``rule=tasks`` keeps dsel's earlier
task-level reading: always serve the task whose selected examples score lowest on average."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from .base import Selection, check_inputs
from .registry import register
from .targeted import Influence, TargetedConfig, eligible_rows


@dataclass(frozen=True)
class BidsConfig(TargetedConfig):
    rule: Literal["columns", "tasks"] = field(
        default="columns",
        metadata={
            "help": "columns: each step adds the example whose z-score most exceeds its column's mean over the "
            "selection (the paper's Algorithm 1) | tasks: serve the task with the lowest mean task score"
        },
    )
    aggregate: Literal["max", "mean"] = field(
        default="max", metadata={"help": "rule=tasks: a task's score from its columns"}
    )


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


def top_positions(values: np.ndarray, depth: int) -> np.ndarray:
    """Positions of the ``depth`` largest values, largest first, ties by lower position (a
    partition, then a sort of those alone)."""
    if depth >= len(values):
        return np.lexsort((np.arange(len(values)), -values))
    kth = np.partition(values, len(values) - depth)[len(values) - depth]  # the depth-th largest
    above = np.flatnonzero(values > kth)
    chosen = np.concatenate([above, np.flatnonzero(values == kth)[: depth - len(above)]])
    return chosen[np.lexsort((chosen, -values[chosen]))]


def bids_column_order(
    scores: np.ndarray, rows: np.ndarray, k: int, block: int = BLOCK_ROWS
) -> tuple[list[int], list[float], list[int]]:
    """Algorithm 1 over the z-scored columns of ``scores[rows]``: (positions in ``rows`` in pick
    order, each pick's lead, the column that gave it). Each step adds the untaken row maximising
    ``max_j (z_ij - mean of column j over the selection)`` (the mean is 0 before the first pick;
    ties go to the lower position). At most k rows are ever taken, so the best untaken row of a
    column is among its top k + 1: one pointer per column into those makes a step O(columns)."""
    mean, std = column_moments(scores, rows, block)
    scale = np.where(std > 0, std, np.inf)  # a constant column z-scores to 0
    n, m = len(rows), scores.shape[1]
    depth = min(k + 1, n)
    tops = np.empty((m, depth), dtype=np.int64)
    top_z = np.empty((m, depth))
    for j in range(m):
        column = scores[rows, j].astype(np.float64)
        tops[j] = top_positions(column, depth)
        top_z[j] = (column[tops[j]] - mean[j]) / scale[j]
    columns = np.arange(m)
    pointers = np.zeros(m, dtype=np.int64)
    taken = np.zeros(n, dtype=bool)
    sums = np.zeros(m)
    order: list[int] = []
    leads: list[float] = []
    winners: list[int] = []
    while len(order) < min(k, n):
        while taken[heads := tops[columns, pointers]].any():
            pointers += taken[heads]
        gaps = top_z[columns, pointers] - (sums / len(order) if order else 0.0)
        best = gaps.max()
        column = int(np.flatnonzero(gaps == best)[np.argmin(heads[gaps == best])])  # ties: lower row
        row = int(heads[column])
        taken[row] = True
        order.append(row)
        leads.append(float(best))
        winners.append(column)
        sums += (scores[rows[row]].astype(np.float64) - mean) / scale
    return order, leads, winners


def bids_order(task_scores: np.ndarray, k: int) -> tuple[list[int], list[int]]:
    """rule=tasks: (rows in pick order, the task each served) of the greedy balance loop over
    task scores [N, T]; a pointer per task makes it O(k T)."""
    n, t = task_scores.shape
    rankings = [np.lexsort((np.arange(n), -task_scores[:, j])) for j in range(t)]
    pointers = [0] * t
    sums = np.zeros(t)
    taken = np.zeros(n, dtype=bool)
    order: list[int] = []
    served: list[int] = []
    while len(order) < min(k, n):
        means = sums / len(order) if order else np.zeros(t)
        task = int(np.argmin(means))  # ties: lowest task
        while taken[rankings[task][pointers[task]]]:
            pointers[task] += 1
        row = int(rankings[task][pointers[task]])
        taken[row] = True
        order.append(row)
        served.append(task)
        sums += task_scores[row]
    return order, served


@register(
    "bids",
    family="targeted",
    config=BidsConfig,
    needs=("influence",),
    description="Column-normalised influence; each step adds the example that most lifts the column the "
    "selection serves least (Algorithm 1).",
    reference="BIDS, Dai et al. 2025, arXiv 2501.12147",
)
def select(ids, k: int, config: BidsConfig, *, influence: Influence) -> Selection:
    """The score stored with a pick: its lead (rule=columns) or its highest task score (tasks)."""
    ids = check_inputs(ids, influence=influence.scores)
    rows = eligible_rows(influence.scores)
    tasks = list(dict.fromkeys(influence.tasks))
    labels = np.asarray(influence.tasks)
    if config.rule == "columns":
        order, values, winners = bids_column_order(influence.scores, rows, k)
        served = labels[winners].tolist()
    else:
        reduce = np.max if config.aggregate == "max" else np.mean
        per_task = task_scores(influence.scores, rows, labels, tasks, reduce)
        order, turns = bids_order(per_task, k)
        values = per_task[order].max(axis=1).tolist()
        served = [tasks[t] for t in turns]
    return Selection(
        "bids",
        [str(i) for i in ids[rows[order]]],
        values,
        diagnostics={
            "eligible": len(rows),
            "tasks": tasks,
            "rule": config.rule,
            "picks_by_task": {t: served.count(t) for t in tasks},
        },
    )
