"""Experimental design, hybrid (Bhatt et al. 2024): greedy on ``dFL(x|S) / N + lambda u(x)``,
coverage of the pool plus the model's uncertainty on the example."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from ._facility import FacilityLocation, build_kernel, greedy
from ._neighbours import check_exact_search_rows, exact_search_field
from .base import Selection, check_inputs
from .registry import register


@dataclass(frozen=True)
class ExpDesignHybridConfig:
    weight: float = field(default=1.0, metadata={"help": "lambda: weight of the uncertainty term"})
    score: Literal["min_margin", "mean_margin", "mean_entropy", "least_confidence"] = field(
        default="min_margin", metadata={"help": "uncertainty score (scaled to [0, 1], 1 = most uncertain)"}
    )
    n_neighbors: int = field(default=50, metadata={"help": "sparse kNN kernel beyond the memory cap"})
    memory_cap_mb: float = field(default=2048.0, metadata={"help": "largest dense N x N kernel allowed"})
    exact_search_rows: int = exact_search_field()

    def __post_init__(self) -> None:
        if self.weight < 0:
            raise ValueError(f"expdesign_hybrid.weight: must be >= 0, got {self.weight}")
        check_exact_search_rows("expdesign_hybrid", self.exact_search_rows)


@register(
    "expdesign_hybrid",
    family="hybrid",
    config=ExpDesignHybridConfig,
    needs=("sentence_embeddings", "uncertainty"),
    description="Facility-location coverage / N plus lambda x uncertainty, greedy (lazy).",
    reference="Bhatt et al. 2024, experimental design for instruction tuning, arXiv 2401.06692",
)
def select(
    ids, k: int, config: ExpDesignHybridConfig, *, sentence_embeddings: np.ndarray, uncertainty: dict[str, np.ndarray]
) -> Selection:
    if config.score not in uncertainty:
        raise ValueError(f"expdesign_hybrid.score: {config.score!r} is not one of {sorted(uncertainty)}")
    values = np.asarray(uncertainty[config.score], dtype=np.float64)
    ids = check_inputs(ids, sentence_embeddings=sentence_embeddings, uncertainty=values)
    valid = np.flatnonzero(np.isfinite(values))
    if len(valid) == 0 or k == 0:
        return Selection("expdesign_hybrid", [], [], diagnostics={"eligible": len(valid)})
    u = np.zeros(len(values))
    span = values[valid].max() - values[valid].min()
    u[valid] = (values[valid] - values[valid].min()) / span if span > 0 else 1.0
    if config.score.endswith("margin"):  # small margin = uncertain
        u[valid] = 1.0 - u[valid]
    covers, kind = build_kernel(
        sentence_embeddings, "cosine", 1.0, config.n_neighbors, config.memory_cap_mb, config.exact_search_rows
    )
    objective = FacilityLocation(covers, weight=1.0 / len(ids), modular=config.weight * u)
    order, gains = greedy(objective, k, "lazy", candidates=valid)
    return Selection(
        "expdesign_hybrid", [str(i) for i in ids[order]], gains, diagnostics={"eligible": len(valid), "kernel": kind}
    )
