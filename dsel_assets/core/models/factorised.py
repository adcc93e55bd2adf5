"""Factorised gradient projection in the LoGra style: per-example LoRA gradients projected inside
the hooks, so no per-example gradient [B, P] is ever formed (the exact path's cost at 7-8B).

For a LoRA matrix with output gradients ``g_t`` and inputs ``x_t``, the example's gradient is
``G = sum_t g_t x_t^T``; its projection by the Kronecker product of two small matrices is
``P_out^T G P_in = sum_t (P_out^T g_t)(P_in^T x_t)^T``: a ``k x k`` block computed from the
projected output gradients and inputs. Blocks of all matrices are concatenated and, when their
count times ``k^2`` is not ``dim``, count-sketched to ``dim`` (no matrix: each coordinate adds
with a hashed sign to a hashed coordinate). Every projection matrix is +-1 (scaled)
from a counter-based hash of (seed, stream, row, column) computed with integer tensor ops on the
device that uses it: the same matrix on every device, for any chunk of examples.

Adam (pool features): LESS's direction ``m'/sqrt(v' + eps)`` with ``m' = b1 m + (1 - b1) g`` and
``v' = b2 v + (1 - b2) g^2`` is elementwise in the full gradient and cannot be projected factor-wise
exactly. Approximation, stated on the LESS page with its measured agreement: the example's own
``g^2`` term in ``v'`` is dropped (``v' ~ b2 v``), and ``1/sqrt(b2 v + eps)`` is factorised per matrix
as ``r_i c_j`` (least squares in log space: exact when it is rank one). The ``m`` term is exact,
projected once per checkpoint.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from .gradients import PerExampleGradients
from .lora import lora_parameters

if TYPE_CHECKING:
    import torch

_MASK64 = (1 << 64) - 1
_GOLDEN, _MIX1, _MIX2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def _signed(value: int) -> int:
    """A uint64 constant as the int64 with the same bits (torch has no uint64 arithmetic)."""
    return value - (1 << 64) if value >= 1 << 63 else value


def _shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 bits (torch's ``>>`` is arithmetic)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def splitmix64(x: torch.Tensor) -> torch.Tensor:
    """SplitMix64's finaliser on int64 tensors (wrapping arithmetic, any device)."""
    x = (x ^ _shift_right(x, 30)) * _signed(_MIX1)
    x = (x ^ _shift_right(x, 27)) * _signed(_MIX2)
    return x ^ _shift_right(x, 31)


def stream_key(seed: int, stream: int) -> int:
    """The 64-bit key of one matrix: its seed and its stream (matrix index and side)."""
    return _signed(((seed & 0xFFFFFFFF) << 32 | (stream & 0xFFFFFFFF)) * _GOLDEN & _MASK64)


def hashed_signs(seed: int, stream: int, rows: range, cols: int, device=None) -> torch.Tensor:
    """Rows ``rows`` of the ``+-1`` matrix of (seed, stream) with ``cols`` columns, float32, on
    ``device``: entry (i, j) is the top bit of ``splitmix64(key + (i * cols + j) * golden)``."""
    import torch

    index = torch.arange(rows.start * cols, rows.stop * cols, device=device, dtype=torch.int64)
    bits = splitmix64(stream_key(seed, stream) + index * _signed(_GOLDEN))
    return (_shift_right(bits, 63).float() * 2 - 1).reshape(len(rows), cols)


def count_sketch(x: torch.Tensor, dim_out: int, seed: int, stream: int) -> torch.Tensor:
    """``x`` [n, dim_in] -> [n, dim_out]: column ``j`` is added with a hashed sign to a hashed
    column (CountSketch: inner products kept in expectation, no matrix formed, O(n dim_in) on any
    device). Buckets and signs come from the same counter hash as :func:`hashed_signs`."""
    import torch

    index = torch.arange(x.shape[1], device=x.device, dtype=torch.int64)
    bits = splitmix64(stream_key(seed, stream) + index * _signed(_GOLDEN))
    buckets = _shift_right(bits, 1) % dim_out
    signs = (bits & 1).float() * 2 - 1
    return torch.zeros((x.shape[0], dim_out), device=x.device).index_add_(1, buckets, x.float() * signs)


#: stream of the final count sketch (the matrices use 2 * index and 2 * index + 1)
REPROJECT_STREAM = 0xFFFFFFF


class FactorisedGradients(PerExampleGradients):
    """Hooks on every LoRA matrix of ``model``; :meth:`compute` returns per-example projected
    gradients [B, matrices * k^2] (or Adam directions, after :meth:`set_adam`) without forming
    any per-example gradient: the hooks keep the projected inputs and output gradients."""

    def __init__(self, model, k: int, seed: int):
        if k < 1:
            raise ValueError(f"factor_dim: must be >= 1, got {k}")
        super().__init__(model)
        self.k, self.seed = k, seed
        params = lora_parameters(model)
        self.shapes = [tuple(p.shape) for _, p in params]  # (out, in)
        device = params[0][1].device
        scale = 1 / math.sqrt(k)
        self.p_out = [hashed_signs(seed, 2 * i, range(o), k, device) * scale for i, (o, _) in enumerate(self.shapes)]
        self.p_in = [hashed_signs(seed, 2 * i + 1, range(n), k, device) * scale for i, (_, n) in enumerate(self.shapes)]
        self.adam: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None  # (r, c, projected m term)

    @property
    def dim(self) -> int:
        return len(self.modules) * self.k * self.k

    def set_adam(self, exp_avg: dict, exp_avg_sq: dict, beta1=0.9, beta2=0.999, eps=1e-8) -> None:
        """Use the approximate Adam direction of the module docstring from a checkpoint's state."""
        import torch

        self.adam = []
        for i, name in enumerate(self.names):
            device = self.p_in[i].device
            m, v = exp_avg[name].to(device).float(), exp_avg_sq[name].to(device).float()
            inverse_root = torch.rsqrt(beta2 * v + eps)
            logs = inverse_root.log()
            r = logs.mean(dim=1).exp()
            c = (logs.mean(dim=0) - logs.mean()).exp()
            m_term = beta1 * (self.p_out[i].T @ (m * inverse_root) @ self.p_in[i])
            self.adam.append(((1 - beta1) * r, c, m_term.reshape(-1)))

    def _kept_input(self, index: int, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if self.adam is not None:
            x = x * self.adam[index][1]
        return x @ self.p_in[index]  # [B, T, k]: the input is never kept whole

    def _kept_grad(self, index: int, grad: torch.Tensor) -> torch.Tensor:
        g = grad.float()
        if self.adam is not None:
            g = g * self.adam[index][0]
        return g @ self.p_out[index]

    def _example_rows(self, index: int) -> torch.Tensor:
        import torch

        grads = self._grads[index]
        block = torch.einsum("btk,btl->bkl", grads, self._inputs[index]).reshape(len(grads), -1)
        return block if self.adam is None else block + self.adam[index][2]
