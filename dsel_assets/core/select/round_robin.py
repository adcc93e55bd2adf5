"""Round-robin (Ivison et al. 2025). ``aggregate="queries"``: the targeted-instruction-selection
study's rule (dcml-lab), query rows 0..M-1, 0.. take turns, each taking its most similar pool
example not yet taken. ``aggregate="tasks"``: RDS+'s own rule (hamishivi/automated-instruction-
selection), each task's score is the max over its query rows, tasks take turns popping their
next best, and a pop already taken spends that turn. ``auto``: ``tasks`` for RDS+ embeddings
(``representation=rds``), ``queries`` otherwise."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from .base import Selection, check_inputs, target_field
from .registry import register
from .targeted import Influence, TargetedConfig, eligible_rows

Aggregate = Literal["auto", "queries", "tasks"]


@dataclass(frozen=True)
class RoundRobinConfig(TargetedConfig):
    task: str = target_field("query", False, "target task ('' = every query column)")
    aggregate: Aggregate = field(
        default="auto",
        metadata={
            "help": "queries (each query row takes turns: the study) | tasks (max over a task's rows, "
            "tasks take turns: RDS+) | auto (tasks under rds, else queries)"
        },
    )


def _rankings(scores: np.ndarray, rows: np.ndarray) -> list[np.ndarray]:
    """Each column's eligible rows by descending score, ties by lower row."""
    return [rows[np.lexsort((rows, -scores[rows, c]))] for c in range(scores.shape[1])]


def _take_turns(
    rankings: list[np.ndarray], scores: np.ndarray, n: int, k: int, spend_taken: bool
) -> tuple[list[int], list[float]]:
    """Turns over the rankings until ``k`` rows are taken. At its turn a ranking takes its best
    row not yet taken, or (``spend_taken``, RDS+) pops its next row and loses the turn when that
    row was taken already."""
    pointers = [0] * len(rankings)
    taken = np.zeros(n, dtype=bool)
    order, gains = [], []
    while len(order) < k and any(p < len(r) for p, r in zip(pointers, rankings, strict=True)):
        for c, ranking in enumerate(rankings):
            if not spend_taken:
                while pointers[c] < len(ranking) and taken[ranking[pointers[c]]]:
                    pointers[c] += 1
            if pointers[c] == len(ranking):
                continue
            row = ranking[pointers[c]]
            pointers[c] += 1
            if taken[row]:
                continue
            taken[row] = True
            order.append(int(row))
            gains.append(float(scores[row, c]))
            if len(order) == k:
                break
    return order, gains


@register(
    "round_robin",
    family="targeted",
    config=RoundRobinConfig,
    needs=("influence",),
    description="Queries (or tasks, RDS+) take turns; each takes its best untaken pool example. One query = top-k.",
    reference="Ivison et al. 2025 / dcml-lab targeted-instruction-selection, arXiv 2503.01807",
)
def select(ids, k: int, config: RoundRobinConfig, *, influence: Influence) -> Selection:
    """One ordering (budgets are prefixes). Each turn-taker keeps a pointer into its own ranking
    (descending, ties by lower row), so the loop is O(k + M N log N), not O(k N)."""
    ids = check_inputs(ids, influence=influence.scores)
    scores = influence.columns("round_robin", config.task)
    rows = eligible_rows(scores)
    k = min(k, len(rows))
    aggregate = config.aggregate
    if aggregate == "auto":
        aggregate = "tasks" if config.representation == "rds" else "queries"
    if aggregate == "queries":
        order, gains = _take_turns(_rankings(scores, rows), scores, len(ids), k, spend_taken=False)
        turns = scores.shape[1]
    elif aggregate == "tasks":
        column_tasks = np.asarray(influence.tasks if not config.task else [config.task] * scores.shape[1])
        tasks = list(dict.fromkeys(column_tasks.tolist()))
        eligible = scores[rows]
        per_task = np.full((len(scores), len(tasks)), np.nan, dtype=np.float32)
        per_task[rows] = np.stack([eligible[:, column_tasks == t].max(axis=1) for t in tasks], axis=1)
        order, gains = _take_turns(_rankings(per_task, rows), per_task, len(ids), k, spend_taken=True)
        turns = len(tasks)
    else:
        raise ValueError(f"round_robin.aggregate: {config.aggregate!r} is not one of auto, queries, tasks")
    return Selection(
        "round_robin",
        [str(i) for i in ids[order]],
        gains,
        diagnostics={"eligible": len(rows), "queries": scores.shape[1], "aggregate": aggregate, "turn_takers": turns},
    )
