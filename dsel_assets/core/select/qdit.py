"""QDIT (Bukharin et al. 2024): greedy on ``(1 - alpha) dFL(x|S) / N + alpha q(x)``."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ._facility import FacilityLocation, build_kernel, greedy
from ._neighbours import check_exact_search_rows, exact_search_field
from .base import Selection, check_inputs
from .registry import register


@dataclass(frozen=True)
class QditConfig:
    alpha: float = field(default=0.5, metadata={"help": "weight of quality vs diversity, in [0, 1]"})
    n_neighbors: int = field(default=50, metadata={"help": "sparse kNN kernel beyond the memory cap"})
    memory_cap_mb: float = field(default=2048.0, metadata={"help": "largest dense N x N kernel allowed"})
    exact_search_rows: int = exact_search_field()

    def __post_init__(self) -> None:
        if not 0 <= self.alpha <= 1:
            raise ValueError(f"qdit.alpha: must be in [0, 1], got {self.alpha}")
        check_exact_search_rows("qdit", self.exact_search_rows)


@register(
    "qdit",
    family="hybrid",
    config=QditConfig,
    needs=("sentence_embeddings", "quality"),
    description="Quality-diversity greedy: facility-location gain / N blended with quality in [0, 1].",
    reference="QDIT, Bukharin et al. 2024, arXiv 2311.14736",
)
def select(ids, k: int, config: QditConfig, *, sentence_embeddings: np.ndarray, quality: np.ndarray) -> Selection:
    """Both terms live in [0, 1]: the cosine kernel is clipped to [0, 1] so dFL / N <= 1, and
    quality is min-max scaled. Lazy greedy stays exact (a modular term keeps submodularity)."""
    ids = check_inputs(ids, sentence_embeddings=sentence_embeddings, quality=quality)
    quality = np.asarray(quality, dtype=np.float64)
    valid = np.flatnonzero(np.isfinite(quality))
    if len(valid) == 0 or k == 0:
        return Selection("qdit", [], [], diagnostics={"eligible": len(valid)})
    q = quality.copy()
    span = q[valid].max() - q[valid].min()
    q[valid] = (q[valid] - q[valid].min()) / span if span > 0 else 1.0
    covers, kind = build_kernel(
        sentence_embeddings, "cosine", 1.0, config.n_neighbors, config.memory_cap_mb, config.exact_search_rows
    )
    objective = FacilityLocation(covers, weight=(1 - config.alpha) / len(ids), modular=config.alpha * np.nan_to_num(q))
    order, gains = greedy(objective, k, "lazy", candidates=valid)
    return Selection("qdit", [str(i) for i in ids[order]], gains, diagnostics={"eligible": len(valid), "kernel": kind})
