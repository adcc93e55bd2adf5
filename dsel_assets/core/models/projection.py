"""Seeded random projection that is never materialised whole (METHODS.md R1.3).

The matrix ``P`` [dim_in, dim_out] is defined unit by unit: rows ``[u*UNIT, (u+1)*UNIT)``
are drawn from a CPU generator seeded by (seed, u) alone. Any compute block size (a
multiple of ``UNIT``) and any device therefore see the identical matrix, so pool and
query features always go through the same projection. Entries are +-1 (Rademacher) or
N(0, 1), scaled by 1/sqrt(dim_out) so inner products are preserved in expectation.
"""

from __future__ import annotations

import hashlib
import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

UNIT = 1024
KINDS = ("rademacher", "gaussian")


def unit_seed(seed: int, unit: int) -> int:
    digest = hashlib.sha256(f"dsel-projection:{seed}:{unit}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class BlockProjector:
    """``x @ P / sqrt(dim_out)`` with ``P`` generated in blocks of ``block_units * UNIT`` rows."""

    def __init__(
        self,
        dim_in: int,
        dim_out: int,
        seed: int = 0,
        kind: str = "rademacher",
        block_units: int = 8,
        device: str = "cpu",
    ):
        if kind not in KINDS:
            raise ValueError(f"projection: {kind!r} is not one of {KINDS}")
        if dim_out < 1 or dim_in < 1 or block_units < 1:
            raise ValueError(f"projection: dims and block_units must be >= 1, got {dim_in}, {dim_out}, {block_units}")
        self.dim_in, self.dim_out, self.seed, self.kind = dim_in, dim_out, seed, kind
        self.block_units, self.device = block_units, device

    def unit(self, u: int) -> torch.Tensor:
        """Rows ``[u*UNIT, min((u+1)*UNIT, dim_in))`` of ``P`` (float32, CPU, unscaled)."""
        import torch

        rows = min(UNIT, self.dim_in - u * UNIT)
        generator = torch.Generator().manual_seed(unit_seed(self.seed, u))
        if self.kind == "gaussian":
            return torch.randn((rows, self.dim_out), generator=generator)
        bits = torch.randint(0, 2, (rows, self.dim_out), generator=generator, dtype=torch.int8)
        return bits.float().mul_(2).sub_(1)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """[n, dim_in] -> [n, dim_out] float32; only one block of ``P`` exists at a time."""
        import torch

        if x.shape[-1] != self.dim_in:
            raise ValueError(f"projection: input has {x.shape[-1]} columns, expected {self.dim_in}")
        x = x.to(self.device, torch.float32)
        out = torch.zeros((x.shape[0], self.dim_out), device=self.device)
        n_units = math.ceil(self.dim_in / UNIT)
        for first in range(0, n_units, self.block_units):
            units = range(first, min(first + self.block_units, n_units))
            block = torch.cat([self.unit(u) for u in units]).to(self.device)
            start = first * UNIT
            out.addmm_(x[:, start : start + block.shape[0]], block)
        return out / math.sqrt(self.dim_out)
