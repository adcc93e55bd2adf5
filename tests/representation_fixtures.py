"""Synthetic representations for selector tests, made from the registry: each need of a method
is synthesized by the maker of its declared ``Value`` kind, so a new representation of a known
kind needs no test code, and a new kind fails ``test_every_value_kind_has_a_maker`` until it
has a maker here."""

import zlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from dsel_assets.core.select.knn_tsds import CheckpointFeatures
from dsel_assets.core.select.mig import Labels
from dsel_assets.core.select.targeted import Influence
from dsel_assets.pipeline.registry import UNCERTAINTY_COLUMNS, Value, representation

TASKS = ("t0", "t1", "t2")
#: representations synthesized without undefined rows: MIG refuses a quality it cannot weigh
COMPLETE = frozenset({"quality"})
QUERIES_PER_TASK = 3


class SyntheticTrainer:
    """A deterministic stand-in for LoRA training between rounds (what iterative selectors
    call): difficulty = distance from a fixed direction; re-embedding = a fixed rotation."""

    def __init__(self, x):
        self.x = x
        self.calls = []

    def train_and_score(self, selected, round_index):
        self.calls.append(("score", round_index, len(selected)))
        return 1.0 - self.x[selected] @ np.eye(self.x.shape[1])[0]

    def train_and_embed(self, selected, round_index):
        self.calls.append(("embed", round_index, len(selected)))
        return self.x[:, ::-1] * (1 + round_index)


class SyntheticEpochTrainer:
    """A stand-in for one training run whose data changes between epochs: after epoch e the
    LESS score of a row for a task is its base score plus e times a fixed per-row drift, so each
    reselection sees other rewards; ``epochs_data`` records the rows every epoch trained on."""

    def __init__(self, task_scores: dict[str, np.ndarray], seed: int = 0):
        self.task_scores = task_scores
        self.drift = np.random.default_rng(seed).normal(size=len(next(iter(task_scores.values()))))
        self.epochs_data: list[list[int]] = []

    def scores(self, epoch: int, rows, task: str) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        return self.task_scores[task][rows] + epoch * self.drift[rows]

    def train_epochs(self, first, epochs, reselect):
        self.epochs_data = [list(first)]
        for epoch in range(1, epochs):
            self.epochs_data.append(list(reselect(epoch, lambda rows, task, e=epoch: self.scores(e, rows, task))))
        return self.epochs_data[-1]


@dataclass
class SyntheticPool:
    """What the makers share: ``n`` examples in six clusters of unit vectors in ``d`` dimensions,
    and one LESS-like score per example and task (the on-demand scorer draws from it)."""

    n: int = 240
    d: int = 8
    seed: int = 0
    gaps: float = 0.05
    x: np.ndarray = field(init=False)
    task_scores: dict[str, np.ndarray] = field(init=False)

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        centers = rng.normal(size=(6, self.d)) * 4
        x = (centers[rng.integers(0, 6, self.n)] + rng.normal(size=(self.n, self.d))).astype(np.float32)
        self.x = x / np.linalg.norm(x, axis=1, keepdims=True)
        self.task_scores = {t: self.scalars(rng, low=-1) for t in TASKS}

    def rng(self, need: str) -> np.random.Generator:
        """A generator of its own per need, so one need's values do not depend on the others'."""
        return np.random.default_rng([self.seed, zlib.crc32(need.encode())])

    def scalars(self, rng: np.random.Generator, low: float = 0.0) -> np.ndarray:
        """One uniform value per example, a share ``gaps`` undefined (NaN) as assets write failed rows."""
        return np.where(rng.random(self.n) < self.gaps, np.nan, rng.uniform(low, 1, self.n))


def vectors(pool: SyntheticPool, rng: np.random.Generator, rows: int | None = None) -> np.ndarray:
    """Gaussian float32 rows (the pool's by default) in the pool's dimension, as queries need."""
    return rng.normal(size=(pool.n if rows is None else rows, pool.d)).astype(np.float32)


def similarity(pool: SyntheticPool, rng: np.random.Generator) -> Influence:
    scores = rng.uniform(-1, 1, (pool.n, len(TASKS) * QUERIES_PER_TASK)).astype(np.float32)
    scores[rng.random(pool.n) < 0.05] = np.nan  # examples without a feature
    return Influence(scores, tuple(t for t in TASKS for _ in range(QUERIES_PER_TASK)))


def labels(pool: SyntheticPool, rng: np.random.Generator) -> Labels:
    members = [sorted(set(rng.integers(0, 12, rng.integers(1, 4)).tolist())) for _ in range(pool.n)]
    return Labels(members, rng.normal(size=(12, 16)))


MAKERS: dict[Value, Callable[[SyntheticPool, np.random.Generator], Any]] = {
    Value.SCALAR: lambda pool, rng: pool.scalars(rng),
    Value.VECTORS: lambda pool, rng: pool.x,
    Value.CHECKPOINT_VECTORS: lambda pool, rng: CheckpointFeatures(
        (vectors(pool, rng), vectors(pool, rng)), (0.4, 0.6)
    ),
    Value.SIMILARITY: similarity,
    Value.TASK_SCORES: lambda pool, rng: pool.task_scores,
    Value.NAMED_SCORES: lambda pool, rng: {column: pool.scalars(rng) for column in UNCERTAINTY_COLUMNS},
    Value.QUERY_VECTORS: lambda pool, rng: (
        vectors(pool, rng, rows=len(TASKS) * QUERIES_PER_TASK),
        [t for t in TASKS for _ in range(QUERIES_PER_TASK)],
    ),
    Value.LABELS: labels,
    Value.TASK_OF_EXAMPLE: lambda pool, rng: np.array([TASKS[i % len(TASKS)] for i in range(pool.n)], dtype=object),
    Value.SCORER: lambda pool, rng: lambda chosen, task: pool.task_scores[task][[int(i[2:]) for i in chosen]],
    Value.TRAINER: lambda pool, rng: SyntheticTrainer(pool.x),
    Value.EPOCH_TRAINER: lambda pool, rng: SyntheticEpochTrainer(pool.task_scores),
}


def synthetic_inputs(needs, n: int = 240, d: int = 8, seed: int = 0) -> tuple[list[str], dict[str, Any]]:
    """Pool ids ``id0000``... and a synthetic value of every representation in ``needs``."""
    pool = SyntheticPool(n, d, seed)
    complete = replace(pool, gaps=0.0)
    values = {
        need: MAKERS[representation(need).value](complete if need in COMPLETE else pool, pool.rng(need))
        for need in needs
    }
    return [f"id{i:04d}" for i in range(n)], values
