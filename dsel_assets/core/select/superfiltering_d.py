"""Superfiltering-D: the top ``m`` by proxy-model IFD, then facility location on sentence
embeddings down to ``k`` (diversity among the hard examples)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..models.scoring import Template
from ._facility import FacilityLocation, build_kernel, greedy
from .base import Selection, check_inputs
from .registry import register
from .score_rankers import TEMPLATE_HELP


@dataclass(frozen=True)
class SuperfilteringDConfig:
    top_m: int = field(default=0, metadata={"help": "IFD shortlist size; 0 = min(10,000, 20% of the pool)"})
    memory_cap_mb: float = field(default=2048.0, metadata={"help": "largest dense kernel before sparse kNN"})
    n_neighbors: int = field(default=50, metadata={"help": "sparse kNN kernel size"})
    template: Template = field(default="chat", metadata={"help": TEMPLATE_HELP})

    def __post_init__(self) -> None:
        if self.top_m < 0:
            raise ValueError(f"superfiltering_d.top_m: must be >= 0, got {self.top_m}")


@register(
    "superfiltering_d",
    family="hybrid",
    config=SuperfilteringDConfig,
    needs=("superfiltering_ifd", "sentence_embeddings"),
    description="Shortlist by proxy IFD (< 1), then facility location on embeddings to the budget.",
    reference="Superfiltering, Li et al. 2024, arXiv 2402.00530",
)
def select(
    ids, k: int, config: SuperfilteringDConfig, *, superfiltering_ifd: np.ndarray, sentence_embeddings: np.ndarray
) -> Selection:
    """Shortlist = top_m (default min(10k, 20% of the pool)), never below k (else FL could not fill k)."""
    ids = check_inputs(ids, superfiltering_ifd=superfiltering_ifd, sentence_embeddings=sentence_embeddings)
    values = np.asarray(superfiltering_ifd, dtype=np.float64)
    valid = np.flatnonzero(np.isfinite(values) & (values < 1.0))
    m = max(config.top_m or min(10_000, int(0.2 * len(ids))), k)
    shortlist = valid[np.lexsort((valid, -values[valid]))][:m]
    if len(shortlist) == 0 or k == 0:
        return Selection("superfiltering_d", [], [], diagnostics={"eligible": len(valid), "shortlist": 0})
    covers, kind = build_kernel(
        np.asarray(sentence_embeddings)[shortlist], "cosine", 1.0, config.n_neighbors, config.memory_cap_mb
    )
    order, gains = greedy(FacilityLocation(covers), k, "lazy")
    picked = shortlist[order]
    return Selection(
        "superfiltering_d",
        [str(i) for i in ids[picked]],
        gains,
        diagnostics={"eligible": len(valid), "shortlist": len(shortlist), "kernel": kind},
    )
