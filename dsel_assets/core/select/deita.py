"""DEITA representation filter (Liu et al. 2024), as a baseline: walk the pool by quality,
keep an example only if it is not too similar to anything kept."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .base import Selection, check_inputs
from .registry import register


@dataclass(frozen=True)
class DeitaConfig:
    threshold: float = field(default=0.9, metadata={"help": "max cosine similarity to a kept example"})


@register(
    "deita_filter",
    family="quality",
    config=DeitaConfig,
    needs=("sentence_embeddings", "quality"),
    description="Quality-descending walk keeping examples with cosine <= threshold to all kept.",
    reference="DEITA, Liu et al. 2024, arXiv 2312.15685",
)
def select(ids, k: int, config: DeitaConfig, *, sentence_embeddings: np.ndarray, quality: np.ndarray) -> Selection:
    """Stops at ``k`` or when the pool runs out (may under-fill: reported)."""
    ids = check_inputs(ids, sentence_embeddings=sentence_embeddings, quality=quality)
    x = np.asarray(sentence_embeddings, dtype=np.float32)
    x = x / np.linalg.norm(x, axis=1, keepdims=True).clip(min=1e-12)
    quality = np.asarray(quality, dtype=np.float64)
    valid = np.flatnonzero(np.isfinite(quality))
    walk = valid[np.lexsort((valid, -quality[valid]))]
    kept: list[int] = []
    bank = np.empty((min(k, len(ids)), x.shape[1]), dtype=np.float32)
    for i in walk:
        if len(kept) == k:
            break
        if kept and float((bank[: len(kept)] @ x[i]).max()) > config.threshold:
            continue
        bank[len(kept)] = x[i]
        kept.append(int(i))
    return Selection(
        "deita_filter",
        [str(i) for i in ids[kept]],
        quality[kept].tolist(),
        diagnostics={"eligible": len(valid), "under_fill": max(0, min(k, len(valid)) - len(kept))},
    )
