"""Settings shared by pool and query gradient features: they must project identically."""

from __future__ import annotations

from typing import ClassVar

import dagster as dg
from pydantic import Field

from dsel_assets.core.models.features import FeatureConfig
from dsel_assets.core.models.projection import FACTORISED


class GradientSettings(dg.ConfigurableResource):
    """One resource for both feature assets, so pool and queries share d, seed and kind."""

    #: what defines the features (not how fast they are computed); see SelectionModel
    VERSION_FIELDS: ClassVar[tuple[str, ...]] = (
        "dim",
        "projection",
        "projection_seed",
        "factor_dim",
        "max_length",
        "textbook_adam",
        "compute_dtype",
    )

    dim: int = Field(default=8192, description="Projected dimension d")
    projection: str = Field(
        default="rademacher",
        description="rademacher | gaussian (exact per-example gradients) | factorised (LoGra style, big models)",
    )
    factor_dim: int = Field(default=16, description="factorised: k per side of each LoRA matrix's k x k block")
    projection_seed: int = Field(default=0, description="Seed of the projection matrix")
    max_length: int = Field(default=512, description="Tokens per example (right-truncated)")
    batch_size: int = Field(default=8, description="Examples per backward pass")
    max_batch_tokens: int = Field(
        default=512, description="Padded tokens per backward pass (1,024: 0.5 GB more memory, ~15% faster on CPU)"
    )
    chunk: int = Field(default=128, description="Examples per projection call and per Lance write")
    textbook_adam: bool = Field(default=False, description="sqrt(v)+eps instead of LESS's sqrt(v+eps)")
    compute_dtype: str = Field(
        default="auto", description="auto | model (strict fp32) | bf16_matmul | bfloat16 (autocast forward/backward)"
    )

    def feature_config(self) -> FeatureConfig:
        return FeatureConfig(
            dim=self.dim,
            projection=self.projection,
            projection_seed=self.projection_seed,
            factor_dim=self.factor_dim,
            max_length=self.max_length,
            batch_size=self.batch_size,
            max_batch_tokens=self.max_batch_tokens,
            chunk=self.chunk,
            textbook_adam=self.textbook_adam,
            compute_dtype=self.compute_dtype,
        )

    def suffix(self) -> str:
        """Part of the Lance dataset names: features of different shapes never mix."""
        factor = f"_k{self.factor_dim}" if self.projection == FACTORISED else ""
        return f"d{self.dim}_{self.projection}{self.projection_seed}{factor}"
