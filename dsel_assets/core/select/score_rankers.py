"""Methods that rank the pool by one precomputed per-example score (docs/methods/<name>.md):
Cherry IFD, Superfiltering, Small2Large's LP is clustered (own module), Nuggets, Data
Whisperer, experimental-design uncertainty. Each is a thin registration over
:func:`rank_by_score`; the scores (and their undefined cases, NaN here) come from the
representation assets."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from ..models.scoring import Template
from .base import Selection, check_inputs, rank_by_score
from .registry import register

#: Help of the ``template`` parameter of the IFD methods: which loss-score rows they read.
TEMPLATE_HELP = (
    "scoring template of the IFD read: chat (the model's chat template) | alpaca (Cherry_LLM's reference "
    "scoring; materialize the scores with template=alpaca first)"
)


@dataclass(frozen=True)
class IfdConfig:
    max_ifd: float = field(default=1.0, metadata={"help": "examples with IFD above this are excluded"})


@dataclass(frozen=True)
class CherryConfig(IfdConfig):
    template: Template = field(default="chat", metadata={"help": TEMPLATE_HELP})


@register(
    "cherry_ifd",
    family="quality",
    config=CherryConfig,
    needs=("ifd",),
    description="Rank by IFD = L(A|Q) / L(A) (loss ratio), highest first, among IFD <= 1.",
    reference="Cherry LLM, Li et al. 2024 (tianyi-lab/Cherry_LLM), arXiv 2308.12032",
)
def cherry_ifd(ids, k: int, config: CherryConfig, *, ifd: np.ndarray) -> Selection:
    """IFD > 1 means the instruction does not help: excluded; IFD = 1 is kept. ``ifd`` is
    the loss ratio under ``config.template`` (the asset layer reads that template's rows)."""
    return _rank_ifd("cherry_ifd", check_inputs(ids, ifd=ifd), ifd, k, config)


def _rank_ifd(method: str, ids, ifd: np.ndarray, k: int, config: IfdConfig) -> Selection:
    values = np.asarray(ifd, dtype=np.float64)
    return rank_by_score(method, ids, np.where(values <= config.max_ifd, values, np.nan), k)


@register(
    "cherry_ifd_pre_experienced",
    family="quality",
    config=IfdConfig,
    needs=("pre_experienced_ifd",),
    description="Cherry with its pre-experience step: rank by IFD (loss ratio) under the model briefly fine-tuned "
    "on a k-means / perplexity-band sample of the pool, highest first, among IFD <= 1.",
    reference="Cherry LLM, Li et al. 2024 (tianyi-lab/Cherry_LLM), arXiv 2308.12032, section 2.2",
)
def cherry_ifd_pre_experienced(ids, k: int, config: IfdConfig, *, pre_experienced_ifd: np.ndarray) -> Selection:
    ids = check_inputs(ids, pre_experienced_ifd=pre_experienced_ifd)
    return _rank_ifd("cherry_ifd_pre_experienced", ids, pre_experienced_ifd, k, config)


@dataclass(frozen=True)
class SuperfilteringConfig:
    template: Template = field(default="chat", metadata={"help": TEMPLATE_HELP})


@register(
    "superfiltering",
    family="quality",
    config=SuperfilteringConfig,
    needs=("superfiltering_ifd",),
    description="Rank by proxy-model IFD = ppl(A|Q) / ppl(A), highest first, among IFD < 1.",
    reference="Superfiltering, Li et al. 2024 (tianyi-lab/Superfiltering), arXiv 2402.00530",
)
def superfiltering(ids, k: int, config: SuperfilteringConfig, *, superfiltering_ifd: np.ndarray) -> Selection:
    ids = check_inputs(ids, superfiltering_ifd=superfiltering_ifd)
    values = np.asarray(superfiltering_ifd, dtype=np.float64)
    return rank_by_score("superfiltering", ids, np.where(values < 1.0, values, np.nan), k)


@dataclass(frozen=True)
class GoldenScoreConfig:
    threshold: float = field(default=-1.0, metadata={"help": "keep only GS > threshold (-1 = rank all)"})


@register(
    "nuggets",
    family="quality",
    config=GoldenScoreConfig,
    needs=("golden_score",),
    description="Rank by Nuggets golden score (share of anchors a one-shot demo improves).",
    reference="Nuggets, Li et al. 2024 (pldlgb/nuggets), arXiv 2312.10302",
)
def nuggets(ids, k: int, config: GoldenScoreConfig, *, golden_score: np.ndarray) -> Selection:
    ids = check_inputs(ids, golden_score=golden_score)
    values = np.asarray(golden_score, dtype=np.float64)
    return rank_by_score("nuggets", ids, np.where(values > config.threshold, values, np.nan), k)


@dataclass(frozen=True)
class WhispererConfig:
    pass


@register(
    "data_whisperer",
    family="quality",
    config=WhispererConfig,
    needs=("whisperer_score",),
    description="Rank by Data Whisperer's attention-weighted few-shot score.",
    reference="Data Whisperer, Wang et al. 2025 (gszfwsb/Data-Whisperer), arXiv 2505.12212",
)
def data_whisperer(ids, k: int, config: WhispererConfig, *, whisperer_score: np.ndarray) -> Selection:
    ids = check_inputs(ids, whisperer_score=whisperer_score)
    return rank_by_score("data_whisperer", ids, whisperer_score, k)


UNCERTAINTY = ("min_margin", "mean_margin", "mean_entropy", "least_confidence")


@dataclass(frozen=True)
class UncertaintyConfig:
    score: Literal["min_margin", "mean_margin", "mean_entropy", "least_confidence"] = field(
        default="min_margin", metadata={"help": "which uncertainty score ranks the pool"}
    )


@register(
    "uncertainty",
    family="quality",
    config=UncertaintyConfig,
    needs=("uncertainty",),
    description="Experimental design: most uncertain first (low margin / high entropy / low confidence).",
    reference="Bhatt et al. 2024, experimental design for instruction tuning, arXiv 2401.06692",
)
def uncertainty(ids, k: int, config: UncertaintyConfig, *, uncertainty: dict[str, np.ndarray]) -> Selection:
    """Margins: smaller = more uncertain (ascending); entropy and least confidence
    (``-sum log p(top1)``, monotone in ``-prod p(top1)``): larger = more uncertain (descending)."""
    if config.score not in uncertainty:
        raise ValueError(f"uncertainty.score: {config.score!r} is not one of {sorted(uncertainty)}")
    values = np.asarray(uncertainty[config.score], dtype=np.float64)
    ids = check_inputs(ids, uncertainty=values)
    return rank_by_score(
        "uncertainty", ids, values, k, descending=not config.score.endswith("margin"), score=config.score
    )
