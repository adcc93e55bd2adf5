"""Cheap quality measures of a selection: no training needed.

:func:`summarize` gives the report's task mix, known-bad share and query similarity.
:func:`set_measures` adds to every stored selection's diagnostics two measures on the
sentence embeddings: FL coverage (the facility-location objective under the cosine kernel
clipped at 0, divided by the number of pool points: the mean best similarity of a pool point
to the selection, in [0, 1]) and NovelSum (:func:`.novelselect.novelsum`). Both are bounded
on large pools: coverage averages over at most ``COVERAGE_POINTS`` pool points (a seeded
sample beyond that: unbiased, standard error below 0.5 / sqrt(points)), O(points k d) time
in similarity blocks of at most ``BLOCK_BYTES``; NovelSum is that of at most
``NOVELSUM_POINTS`` selected points (a seeded subset beyond that, its density measured within
the subset), quadratic in that count only.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np

from ._facility import unit_rows
from .novelselect import novelsum

COVERAGE_POINTS = 10_000  # pool points FL coverage averages over
NOVELSUM_POINTS = 2_000  # selected points NovelSum is computed on
BLOCK_BYTES = 64 * 2**20  # float32 similarity block of FL coverage


def normalised_entropy(labels: list[str]) -> float:
    """Shannon entropy of the label mix divided by log(#labels present); 1 = perfectly even."""
    counts = Counter(labels)
    if len(counts) <= 1:
        return 0.0
    total = sum(counts.values())
    h = -sum(c / total * math.log(c / total) for c in counts.values())
    return h / math.log(len(counts))


def mean_query_similarity(selected: np.ndarray, queries: np.ndarray, block: int = 4096) -> float:
    """Mean cosine between selected rows and query rows (rows are unit-norm); blocked so the
    selected x query matrix is never held whole."""
    if len(selected) == 0 or len(queries) == 0:
        return float("nan")
    q = np.asarray(queries, dtype=np.float32)
    total = 0.0
    for start in range(0, len(selected), block):
        total += float((np.asarray(selected[start : start + block], dtype=np.float32) @ q.T).sum())
    return total / (len(selected) * len(q))


def summarize(
    tasks: list[str],
    noise: list[str | None] | None = None,
    selected_vectors: np.ndarray | None = None,
    query_vectors: np.ndarray | None = None,
) -> dict[str, float | int | dict]:
    """Size, per-task counts and their entropy, known-bad fraction, query similarity."""
    out: dict[str, float | int | dict] = {
        "size": len(tasks),
        "task_counts": dict(sorted(Counter(tasks).items())),
        "task_entropy": round(normalised_entropy(tasks), 4),
    }
    if noise is not None:
        out["noise_fraction"] = round(sum(n is not None for n in noise) / len(noise), 4) if noise else 0.0
    if selected_vectors is not None and query_vectors is not None:
        out["query_similarity"] = round(mean_query_similarity(selected_vectors, query_vectors), 4)
    return out


def fl_coverage(points: np.ndarray, selected: np.ndarray) -> float:
    """Mean over ``points`` of the best cosine (clipped at 0) to any ``selected`` row: the
    facility-location objective divided by the number of points, in blocks of rows."""
    if len(points) == 0 or len(selected) == 0:
        return 0.0
    s = unit_rows(selected)
    rows = max(1, BLOCK_BYTES // (4 * len(s)))
    total = 0.0
    for start in range(0, len(points), rows):
        best = (unit_rows(points[start : start + rows]) @ s.T).max(axis=1)
        total += float(np.maximum(best, 0.0).sum(dtype=np.float64))
    return total / len(points)


def _sample(n: int, m: int, rng: np.random.Generator) -> np.ndarray:
    """All of ``range(n)``, or ``m`` of them drawn without replacement (sorted)."""
    return np.arange(n) if n <= m else np.sort(rng.choice(n, m, replace=False))


def set_measures(
    pool_ids: Sequence[str], selected_ids: Sequence[str], embeddings: Callable[[], np.ndarray], seed: int = 0
) -> dict[str, float | int | str]:
    """FL coverage and NovelSum of a selection, with the number of points each was computed
    on; ``embeddings`` loads the pool's sentence embeddings (rows in ``pool_ids`` order). When
    they cannot be had the selection is still stored, with ``set_measures_unavailable`` saying why."""
    try:
        x = embeddings()
    except (RuntimeError, OSError) as error:
        return {"set_measures_unavailable": str(error)}
    if not np.isfinite(x).all():
        return {"set_measures_unavailable": "sentence embeddings: non-finite values"}
    row = {pid: i for i, pid in enumerate(pool_ids)}
    selected = x[[row[i] for i in selected_ids]]
    rng = np.random.default_rng(seed)
    points = _sample(len(x), COVERAGE_POINTS, rng)
    members = _sample(len(selected), NOVELSUM_POINTS, rng)
    return {
        "fl_coverage": fl_coverage(x[points], selected),
        "fl_coverage_points": len(points),
        "novelsum": novelsum(selected[members]),
        "novelsum_points": len(members),
    }
