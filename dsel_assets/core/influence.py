"""The influence matrix S = sum_c w_c F_pool,c F_query,c^T (docs/methods/less.md) built by
streaming pool feature batches, and LESS task aggregation (R1.5)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np


def checkpoint_weights(mean_lrs: Mapping[int, float]) -> dict[int, float]:
    """Each checkpoint's mean learning rate, renormalised to sum to 1."""
    total = float(sum(mean_lrs.values()))
    if not mean_lrs or total <= 0 or not np.isfinite(total):
        raise ValueError(f"checkpoint weights: learning rates must be positive, got {dict(mean_lrs)}")
    return {c: float(lr) / total for c, lr in mean_lrs.items()}


def influence_matrix(
    pool_ids: Sequence[str],
    query_features: Mapping[int, np.ndarray],
    pool_batches: Iterable[tuple[int, Sequence[str], np.ndarray]],
    weights: Mapping[int, float],
) -> np.ndarray:
    """S [N, M] (float32) from ``(checkpoint, ids, features)`` pool batches; only one batch
    of pool features is in memory at a time. Every pool id must be seen once per checkpoint."""
    row_of = {pid: i for i, pid in enumerate(pool_ids)}
    n_queries = {q.shape[0] for q in query_features.values()}
    if len(n_queries) != 1:
        raise ValueError(f"query features: checkpoints disagree on the number of queries {n_queries}")
    scores = np.zeros((len(pool_ids), n_queries.pop()), dtype=np.float32)
    seen = {c: 0 for c in weights}
    for checkpoint, ids, features in pool_batches:
        if checkpoint not in weights:
            continue
        rows = np.fromiter((row_of[i] for i in ids), dtype=np.int64, count=len(ids))
        block = np.asarray(features, dtype=np.float32) @ np.asarray(query_features[checkpoint], dtype=np.float32).T
        scores[rows] += weights[checkpoint] * block
        seen[checkpoint] += len(ids)
    incomplete = {c: n for c, n in seen.items() if n != len(pool_ids)}
    if incomplete:
        raise ValueError(f"pool features: rows per checkpoint {incomplete}, expected {len(pool_ids)} each")
    return scores


def less_task_scores(scores: np.ndarray, subtasks: Sequence[str]) -> np.ndarray:
    """LESS aggregation for one task: mean over the query columns of each subtask, then the
    max over subtasks. ``subtasks`` labels the columns of ``scores`` (one label = plain mean)."""
    labels = np.asarray(subtasks)
    if len(labels) != scores.shape[1] or len(labels) == 0:
        raise ValueError(f"subtasks: {len(labels)} labels for {scores.shape[1]} query columns")
    means = [scores[:, labels == s].mean(axis=1) for s in dict.fromkeys(labels.tolist())]
    return np.max(np.stack(means, axis=1), axis=1)


def aggregate_less_scores(
    scores: np.ndarray, query_tasks: Sequence[str], query_subtasks: Sequence[str | None]
) -> dict[str, np.ndarray]:
    """LESS's task scores from pool x query similarities [n, q]: for each task (in first-seen
    order) :func:`less_task_scores` over its query columns; a query without a subtask counts
    as its task's own subtask."""
    tasks = np.asarray(query_tasks)
    if len(tasks) != scores.shape[1] or len(query_subtasks) != len(tasks):
        raise ValueError(f"queries: {len(tasks)} tasks, {len(query_subtasks)} subtasks for {scores.shape[1]} columns")
    labels = [subtask or task for task, subtask in zip(query_tasks, query_subtasks, strict=True)]
    by_task = {}
    for task in dict.fromkeys(query_tasks):
        columns = np.flatnonzero(tasks == task)
        by_task[task] = less_task_scores(scores[:, columns], [labels[c] for c in columns])
    return by_task


def less_score_table(
    scores: np.ndarray, query_tasks: Sequence[str], query_subtasks: Sequence[str | None], tasks: Sequence[str]
) -> np.ndarray:
    """[n, len(tasks)] float64: :func:`aggregate_less_scores` as one column per task, in ``tasks`` order."""
    by_task = aggregate_less_scores(scores, query_tasks, query_subtasks)
    return np.stack([np.asarray(by_task[task], dtype=np.float64) for task in tasks], axis=1)
