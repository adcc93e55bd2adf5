"""Cheap quality measures of a selection (METHODS.md section 3): no training needed."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np


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
