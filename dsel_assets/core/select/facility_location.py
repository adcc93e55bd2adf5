"""Facility location on embeddings (coverage of the pool by the selection)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from ._facility import FacilityLocation, build_kernel, greedy
from .base import Selection, check_inputs
from .registry import register


@dataclass(frozen=True)
class FacilityLocationConfig:
    kernel: Literal["cosine", "rbf", "dot", "knn"] = field(default="cosine", metadata={"help": "similarity"})
    optimizer: Literal["lazy", "naive", "stochastic"] = field(default="lazy", metadata={"help": "greedy variant"})
    gamma: float = field(default=1.0, metadata={"help": "RBF width: exp(-gamma |x-y|^2)"})
    n_neighbors: int = field(default=50, metadata={"help": "neighbours per point in the sparse kNN kernel"})
    memory_cap_mb: float = field(default=2048.0, metadata={"help": "largest dense N x N kernel allowed"})
    epsilon: float = field(default=0.1, metadata={"help": "stochastic greedy: sample (N/k) log(1/eps) per step"})
    seed: int = field(default=0, metadata={"help": "stochastic greedy seed"})

    def __post_init__(self) -> None:
        if self.n_neighbors < 1:
            raise ValueError(f"facility_location.n_neighbors: must be >= 1, got {self.n_neighbors}")
        if not 0 < self.epsilon < 1:
            raise ValueError(f"facility_location.epsilon: must be in (0, 1), got {self.epsilon}")


@register(
    "facility_location",
    family="diversity",
    config=FacilityLocationConfig,
    needs=("sentence_embeddings",),
    description="Greedy facility location (lazy / stochastic) on an embedding kernel; sparse kNN beyond a memory cap.",
    reference="Nemhauser et al. 1978; Bhatt et al. 2024 (experimental design); apricot-select",
)
def select(ids, k: int, config: FacilityLocationConfig, *, sentence_embeddings: np.ndarray) -> Selection:
    ids = check_inputs(ids, sentence_embeddings=sentence_embeddings)
    if k == 0:
        return Selection("facility_location", [], [], diagnostics={"eligible": len(ids)})
    covers, kind = build_kernel(
        sentence_embeddings, config.kernel, config.gamma, config.n_neighbors, config.memory_cap_mb
    )
    order, gains = greedy(FacilityLocation(covers), k, config.optimizer, epsilon=config.epsilon, seed=config.seed)
    return Selection(
        "facility_location", [str(i) for i in ids[order]], gains, diagnostics={"eligible": len(ids), "kernel": kind}
    )
