"""Task-matched random selection: a seeded shuffle of the pool rows labelled with the target
task (the baseline a targeted method must beat to be worth more than its task label)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .base import Selection, check_inputs, target_field
from .registry import register


@dataclass(frozen=True)
class RandomInTaskConfig:
    task: str = target_field("pool", True, "target task: a task label of the pool (required)")
    seed: int = field(default=0, metadata={"help": "shuffle seed"})


@register(
    "random_in_task",
    family="targeted",
    config=RandomInTaskConfig,
    needs=("pool_tasks",),
    description="Seeded uniform random sample of the target task's pool rows; budgets are prefixes of one shuffle.",
    reference="baseline (task-matched random)",
)
def select(ids, k: int, config: RandomInTaskConfig, *, pool_tasks: np.ndarray) -> Selection:
    """``pool_tasks``: the task label of each pool id. Only rows labelled ``config.task`` are
    eligible; they are shuffled by ``config.seed`` in pool order, so a budget is a prefix of
    the one shuffle and a task with fewer rows than ``k`` gives all of them."""
    ids = check_inputs(ids, pool_tasks=pool_tasks)
    tasks = np.asarray([str(t) for t in pool_tasks], dtype=object)
    if config.task not in set(tasks.tolist()):
        raise ValueError(
            f"random_in_task.task: {config.task!r} is not a task of the pool; one of {sorted(set(tasks.tolist()))}"
        )
    rows = np.flatnonzero(tasks == config.task)
    order = rows[np.random.default_rng(config.seed).permutation(len(rows))[:k]]
    return Selection(
        "random_in_task",
        [str(i) for i in ids[order]],
        diagnostics={"eligible": len(rows), "task": config.task},
    )
