"""MIG (Chen et al. 2025, arXiv 2504.13835): maximise information gain over a label graph.

Label graph ``W`` = cosine similarity of label embeddings, entries below ``threshold`` set to
0, diagonal 1; ``P`` = column-normalised ``W``. Example vector ``v_i`` = its quality spread
over its labels (quality / label count); propagated ``u_i = v_i P``. Greedy on the concave
information function ``phi(x) = sum (x + a)^b``: gain_i = ``u_i . phi'(x)`` =
``v_i . (P phi'(x))``, so each step is one L-vector product and one sparse N x L product -
the dense N x L matrix never exists.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import sparse

from .base import Selection, check_inputs
from .registry import register


@dataclass(frozen=True)
class MigConfig:
    a: float = field(default=1e-6, metadata={"help": "phi'(x) = b (x + a)^(b - 1)"})
    b: float = field(default=0.8, metadata={"help": "concavity, in (0, 1)"})
    threshold: float = field(default=0.9, metadata={"help": "label similarities below this are dropped"})

    def __post_init__(self) -> None:
        if not 0 < self.b < 1:
            raise ValueError(f"mig.b: must be in (0, 1), got {self.b}")
        if self.a <= 0:
            raise ValueError(f"mig.a: must be > 0, got {self.a}")


@dataclass(frozen=True)
class Labels:
    """Per example label indices, and one embedding per label (rows of ``embeddings``)."""

    members: list[list[int]]
    embeddings: np.ndarray

    def __len__(self) -> int:
        return len(self.members)


def phi_prime(x: np.ndarray, a: float = 1e-6, b: float = 0.8) -> np.ndarray:
    return b * np.power(x + a, b - 1)


def label_transition(embeddings: np.ndarray, threshold: float) -> np.ndarray:
    """Column-normalised thresholded cosine graph of the labels (L x L; L is small)."""
    e = np.asarray(embeddings, dtype=np.float64)
    e = e / np.linalg.norm(e, axis=1, keepdims=True).clip(min=1e-12)
    w = e @ e.T
    w[w < threshold] = 0.0
    np.fill_diagonal(w, 1.0)
    return w / w.sum(axis=0, keepdims=True)


def sample_label_matrix(members: list[list[int]], quality: np.ndarray, n_labels: int) -> sparse.csr_matrix:
    """Sparse V [N, L]: quality / |labels| on each of an example's labels."""
    rows, cols, vals = [], [], []
    for i, labels in enumerate(members):
        unique = sorted(set(labels))
        for label in unique:
            rows.append(i)
            cols.append(label)
            vals.append(quality[i] / len(unique))
    return sparse.csr_matrix((vals, (rows, cols)), shape=(len(members), n_labels))


def mig_order(v: sparse.csr_matrix, p: np.ndarray, k: int, a: float, b: float) -> tuple[list[int], list[float]]:
    x = np.zeros(p.shape[0])
    available = np.ones(v.shape[0], dtype=bool)
    order, gains = [], []
    for _ in range(min(k, v.shape[0])):
        g = p @ phi_prime(x, a, b)
        scores = np.where(available, v @ g, -np.inf)
        pick = int(np.argmax(scores))  # ties: lowest id
        order.append(pick)
        gains.append(float(scores[pick]))
        available[pick] = False
        x += np.asarray(v[pick].toarray()).ravel() @ p
    return order, gains


@register(
    "mig",
    family="hybrid",
    config=MigConfig,
    needs=("labels", "quality"),
    description="Greedy information gain over a label graph (quality x diversity of labels).",
    reference="MIG, Chen et al. 2025, arXiv 2504.13835",
)
def select(ids, k: int, config: MigConfig, *, labels: Labels, quality: np.ndarray) -> Selection:
    ids = check_inputs(ids, labels=labels.members, quality=quality)
    quality = np.asarray(quality, dtype=np.float64)
    if not np.isfinite(quality).all() or (quality < 0).any():
        raise ValueError("quality: MIG needs finite, non-negative quality scores")
    p = label_transition(labels.embeddings, config.threshold)
    v = sample_label_matrix(labels.members, quality, p.shape[0])
    order, gains = mig_order(v, p, k, config.a, config.b)
    return Selection(
        "mig", [str(i) for i in ids[order]], gains, diagnostics={"eligible": len(ids), "labels": p.shape[0]}
    )
