"""What targeted selectors read: a pool x query similarity matrix with the task of each query
column (before task aggregation; docs/methods/less.md), from one of the representations the
targeted-instruction-selection study compares (LESS gradients, RDS+ model embeddings, sentence
embeddings), and the streamed cosine that builds it from embeddings."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args

import numpy as np

from ..influence import less_task_scores
from ._facility import unit_rows
from ._neighbours import SEARCH_ROWS, blocks, nearest

Representation = Literal["less", "rds", "embed"]
LESS = "less"
#: What stands in for each gradient input of a selector under a representation other than LESS:
#: its similarity matrix, LESS-style per-task scores of that matrix, and the pool / query vectors.
_STAND_INS = {
    "rds": {
        "influence": "rds_similarity",
        "less_scores": "rds_task_scores",
        "pool_gradients": "model_embeddings",
        "pool_checkpoint_gradients": "model_embeddings",
        "query_gradients": "rds_queries",
    },
    "embed": {
        "influence": "embed_similarity",
        "less_scores": "embed_task_scores",
        "pool_gradients": "sentence_embeddings",
        "pool_checkpoint_gradients": "sentence_embeddings",
        "query_gradients": "embed_queries",
    },
}


@dataclass(frozen=True)
class TargetedConfig:
    """The choice every representation-agnostic targeted selector shares; the selector itself
    only sees the matrix (or vectors) that representation yields."""

    representation: Representation = field(
        default=LESS,
        metadata={"help": "less (LoRA gradients) | rds (RDS+ position-weighted model embeddings) | embed (MiniLM)"},
    )


def representations(config_cls: type) -> tuple[str, ...]:
    """The representations a method's config lets it run on (LESS's own inputs only, unless
    it is a :class:`TargetedConfig`)."""
    return get_args(Representation) if issubclass(config_cls, TargetedConfig) else (LESS,)


def representation_needs(needs: Sequence[str], representation: str) -> dict[str, str]:
    """Selector argument -> the representation to load for it (identity under LESS)."""
    if representation != LESS and representation not in _STAND_INS:
        raise ValueError(f"representation: {representation!r} is not one of {list(get_args(Representation))}")
    stand_ins = _STAND_INS.get(representation, {})
    return {need: stand_ins.get(need, need) for need in needs}


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

    def task_scores(self) -> dict[str, np.ndarray]:
        """task -> LESS aggregation of its columns (R1.5: mean within each subtask, max over
        subtasks; a column without a subtask is its task's), NaN rows staying NaN."""
        tasks = np.asarray(self.tasks)
        subtasks = np.asarray(self.subtasks or ("",) * len(tasks))
        return {
            task: less_task_scores(self.scores[:, tasks == task], [s or task for s in subtasks[tasks == task]])
            for task in dict.fromkeys(self.tasks)
        }


def eligible_rows(scores: np.ndarray, block: int = 65_536) -> np.ndarray:
    """Rows with a finite score in every column (no gradient feature = not eligible), checked
    block by block (a whole-matrix mask of 1M x 500 would be another 500 MB)."""
    found = [np.flatnonzero(np.isfinite(scores[s : s + block]).all(axis=1)) + s for s in range(0, len(scores), block)]
    return np.concatenate(found) if found else np.zeros(0, dtype=np.int64)


def cosine_neighbours(x: np.ndarray, k: int, exact_rows: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(L2 norms [N], cosine similarities [N, k], neighbours [N, k]): each row's ``k`` most
    cosine-similar rows, itself among them, by faiss (exact while affordable, clustered beyond:
    ``exact_rows``, see ``_neighbours``). Rows are normalised as they are read: the exact index
    holds one normalised float32 copy, the clustered search none (8192-d pool gradients: 3.3 GB
    per copy at 100k rows)."""
    norms = np.concatenate(
        [np.linalg.norm(np.asarray(x[lo : lo + SEARCH_ROWS], np.float32), axis=1) for lo in blocks(len(x))]
    )
    k = min(k, len(x))
    sims = np.empty((len(x), k), dtype=np.float32)
    neighbours = np.empty((len(x), k), dtype=np.int64)
    for rows, found_sims, found in nearest(x, k, inner_product=True, exact_rows=exact_rows, prepare=unit_rows):
        sims[rows], neighbours[rows] = found_sims, found
    return norms, sims, neighbours


def _unit(vectors: np.ndarray) -> np.ndarray:
    x = np.asarray(vectors, dtype=np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True).clip(min=1e-12)


def cosine_scores(
    pool_ids: Sequence[str], queries: np.ndarray, chunks: Iterable[tuple[Sequence[str], np.ndarray]]
) -> tuple[list[str], np.ndarray]:
    """Cosine of each streamed pool vector with each query vector: (the ids of ``pool_ids``
    that had a vector, in that order; [n, Q] float32). Only one chunk of pool vectors is in
    memory at a time; rows of ids outside ``pool_ids`` are skipped, a repeated id is an error.
    Row by row in float64, so the result does not depend on how the pool was chunked."""
    row_of = {pid: i for i, pid in enumerate(pool_ids)}
    unit_queries = _unit(queries)
    scores = np.full((len(pool_ids), len(unit_queries)), np.nan, dtype=np.float32)
    seen = np.zeros(len(pool_ids), dtype=bool)
    for ids, vectors in chunks:
        keep = [i for i, pid in enumerate(ids) if pid in row_of]
        rows = np.fromiter((row_of[ids[i]] for i in keep), dtype=np.int64, count=len(keep))
        repeated = seen[rows] | (np.bincount(rows, minlength=len(seen))[rows] > 1)
        if repeated.any():
            raise ValueError(f"pool vectors: {pool_ids[rows[repeated][0]]} has more than one row")
        seen[rows] = True
        unit = _unit(np.asarray(vectors)[keep])
        scores[rows] = np.einsum("nd,qd->nq", unit, unit_queries)
    kept = np.flatnonzero(seen)
    return [pool_ids[i] for i in kept], scores[kept]
