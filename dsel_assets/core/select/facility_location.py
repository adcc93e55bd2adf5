"""Facility location on embeddings or a given similarity (coverage of the pool by the
selection); see docs/methods/facility_location.md."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from ._facility import FacilityLocation, build_kernel, greedy
from ._neighbours import check_exact_search_rows, exact_search_field
from .base import Selection, check_inputs
from .registry import register


@dataclass(frozen=True)
class FacilityLocationConfig:
    kernel: Literal["cosine", "rbf", "dot", "precomputed", "knn"] = field(
        default="cosine",
        metadata={"help": "similarity: cosine (clipped at 0), rbf, dot, precomputed (similarity_path), knn (sparse)"},
    )
    similarity_path: str = field(
        default="",
        metadata={"help": "kernel=precomputed: .npy N x N matrix, [v, c] = sim(v, c), rows and columns in id order"},
    )
    optimizer: Literal["lazy", "naive", "stochastic"] = field(default="lazy", metadata={"help": "greedy variant"})
    gamma: float = field(default=1.0, metadata={"help": "RBF width: exp(-gamma |x-y|^2)"})
    n_neighbors: int = field(default=50, metadata={"help": "sparse kNN kernel: most similar points kept per point"})
    memory_cap_mb: float = field(
        default=2048.0, metadata={"help": "dense N x N kernel up to this, else the sparse kNN graph, else refused"}
    )
    exact_search_rows: int = exact_search_field()
    epsilon: float = field(default=0.1, metadata={"help": "stochastic greedy: sample (N/k) log(1/eps) per step"})
    seed: int = field(default=0, metadata={"help": "stochastic greedy seed"})

    def __post_init__(self) -> None:
        if self.n_neighbors < 1:
            raise ValueError(f"facility_location.n_neighbors: must be >= 1, got {self.n_neighbors}")
        check_exact_search_rows("facility_location", self.exact_search_rows)
        if not 0 < self.epsilon < 1:
            raise ValueError(f"facility_location.epsilon: must be in (0, 1), got {self.epsilon}")
        if (self.kernel == "precomputed") != bool(self.similarity_path):
            raise ValueError("facility_location.similarity_path: set it exactly when kernel=precomputed")

    def uses_seed(self) -> bool:
        """Only the stochastic greedy draws on ``seed``; lazy and naive greedy are deterministic."""
        return self.optimizer == "stochastic"


def load_similarity(path: str) -> np.ndarray:
    """The precomputed similarity, memory-mapped: only the blocks the kernel reads are loaded."""
    try:
        matrix = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as error:
        raise ValueError(f"facility_location.similarity_path: cannot read {path!r} as .npy: {error}") from None
    if matrix.ndim != 2:
        raise ValueError(f"facility_location.similarity_path: {path!r} holds shape {matrix.shape}, not N x N")
    return matrix


@register(
    "facility_location",
    family="diversity",
    config=FacilityLocationConfig,
    needs=("sentence_embeddings",),
    description="Greedy facility location (lazy / stochastic) on an embedding or precomputed kernel; "
    "sparse kNN beyond a memory cap.",
    reference="Nemhauser et al. 1978; Bhatt et al. 2024 (experimental design); apricot-select",
)
def select(ids, k: int, config: FacilityLocationConfig, *, sentence_embeddings: np.ndarray) -> Selection:
    """With kernel=precomputed the matrix at ``similarity_path`` replaces the embeddings."""
    ids = check_inputs(ids, sentence_embeddings=sentence_embeddings)
    if k == 0:
        return Selection("facility_location", [], [], diagnostics={"eligible": len(ids)})
    x = sentence_embeddings
    if config.kernel == "precomputed":
        x = load_similarity(config.similarity_path)
        check_inputs(ids, similarity=x)
    covers, kind = build_kernel(
        x, config.kernel, config.gamma, config.n_neighbors, config.memory_cap_mb, config.exact_search_rows
    )
    order, gains = greedy(FacilityLocation(covers), k, config.optimizer, epsilon=config.epsilon, seed=config.seed)
    return Selection(
        "facility_location", [str(i) for i in ids[order]], gains, diagnostics={"eligible": len(ids), "kernel": kind}
    )
