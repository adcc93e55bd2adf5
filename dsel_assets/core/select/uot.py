"""Unbalanced optimal transport selection (dcml-lab "distance minimisation"): transport the
query distribution onto the pool with cost (1 - S) / 2, a hard query marginal and a nearly
free pool marginal; a pool example's score is the mass it receives.

The Sinkhorn iterations are POT's ``sinkhorn_knopp_unbalanced`` (KL penalties, reference
measure a b^T, uniform marginals, its stopping rule), run on a kernel held once as float32
[pool, queries]: POT holds three dense float64 [queries, pool] matrices (11.2 GiB at 500 x 1M),
this one matrix (1.9 GiB). Each query's kernel row is scaled so its largest entry is 1 - the
scale, which can be as small as exp(-100) at the default ``reg``, stays in a float64 vector -
so float32 loses nothing to underflow that float64 would have kept above rounding."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..memory import require_memory
from .base import Selection, check_inputs, target_field
from .registry import register
from .targeted import Influence, TargetedConfig, eligible_rows

BLOCK = 16_384  # pool rows converted to kernel entries at a time
STOP = 1e-6  # POT's default stopping threshold on the relative change of the scalings


@dataclass(frozen=True)
class UotConfig(TargetedConfig):
    task: str = target_field("query", False, "target task ('' = every query column)")
    reg: float = field(default=0.01, metadata={"help": "entropic regularisation"})
    reg_source: float = field(default=float("inf"), metadata={"help": "KL penalty on the query marginal (inf = hard)"})
    reg_target: float = field(default=1e-4, metadata={"help": "KL penalty on the pool marginal (small = free)"})
    max_iter: int = field(default=1000, metadata={"help": "Sinkhorn iterations"})

    def __post_init__(self) -> None:
        if self.reg <= 0 or self.reg_target <= 0:
            raise ValueError(f"uot: reg and reg_target must be > 0, got {self.reg}, {self.reg_target}")


def check_memory(queries: int, pool: int) -> None:
    """Refuse, with what it would take, a problem memory cannot hold: the float32 kernel
    [pool, queries] plus room for two float32 temporaries of a block of rows."""
    require_memory(
        4 * queries * pool + 8 * queries * min(pool, BLOCK),
        f"uot: {queries} query columns x {pool:,} pool rows",
        "the Sinkhorn kernel is one float32 matrix of that size; set uot.task to one target task's columns, "
        "or use bids / round_robin / less (they stream the matrix)",
    )


def _exponent(penalty: float, reg: float) -> float:
    """POT's damping of a marginal's scaling update: 1 for a hard marginal (infinite penalty)."""
    return 1.0 if penalty == float("inf") else penalty / (penalty + reg)


def transported_mass(similarity: np.ndarray, rows: np.ndarray, config: UotConfig) -> tuple[np.ndarray, int]:
    """(mass each of ``rows`` receives, iterations run): entropic unbalanced OT from the
    query columns of ``similarity`` [pool, queries] onto those pool rows."""
    n, m = len(rows), similarity.shape[1]

    def clipped(lo: int) -> np.ndarray:
        return np.clip(similarity[rows[lo : lo + BLOCK]], -1.0, 1.0)

    top = np.full(m, -1.0, dtype=np.float32)  # each query's largest clipped similarity
    for lo in range(0, n, BLOCK):
        top = np.maximum(top, clipped(lo).max(axis=0))
    kernel = np.empty((n, m), dtype=np.float32)  # exp(-(C - min C) / reg), query by query
    for lo in range(0, n, BLOCK):
        kernel[lo : lo + BLOCK] = np.exp((clipped(lo) - top) / (2 * config.reg))
    a, b = 1.0 / m, 1.0 / n
    scale = a * np.exp((top.astype(np.float64) - 1.0) / (2 * config.reg))  # POT's K = scale_i K'_ji b
    source, target = _exponent(config.reg_source, config.reg), _exponent(config.reg_target, config.reg)
    u, v = np.ones(m), np.ones(n)
    iterations = 0
    while iterations < config.max_iter:
        iterations += 1
        new_u = (a / (scale * (kernel.T @ (b * v).astype(np.float32)))) ** source
        kernel_u = b * (kernel @ (scale * new_u).astype(np.float32))
        new_v = (b / kernel_u) ** target
        if (kernel_u == 0).any() or not (np.isfinite(new_u).all() and np.isfinite(new_v).all()):
            break  # machine precision reached: keep the previous scalings, as POT does
        change = _change(new_u, u) + _change(new_v, v)
        u, v = new_u, new_v
        if 0.5 * change < STOP:
            break
    return v * b * (kernel @ (scale * u).astype(np.float32)), iterations


def _change(new: np.ndarray, old: np.ndarray) -> float:
    return float(np.abs(new - old).max() / max(np.abs(new).max(), np.abs(old).max(), 1.0))


@register(
    "uot",
    family="targeted",
    config=UotConfig,
    needs=("influence",),
    description="Entropic unbalanced OT from queries to pool (POT's Sinkhorn updates); rank by transported mass.",
    reference="dcml-lab targeted-instruction-selection, arXiv 2503.01807; POT sinkhorn_unbalanced",
)
def select(ids, k: int, config: UotConfig, *, influence: Influence) -> Selection:
    ids = check_inputs(ids, influence=influence.scores)
    scores = influence.columns("uot", config.task)
    rows = eligible_rows(scores)
    if len(rows) == 0 or k == 0:
        return Selection("uot", [], [], diagnostics={"eligible": len(rows)})
    check_memory(scores.shape[1], len(rows))
    mass, iterations = transported_mass(scores, rows, config)
    if not np.isfinite(mass).all():
        raise ValueError("uot: Sinkhorn diverged (NaN mass); raise uot.reg")
    order = np.lexsort((rows, -mass))[:k]
    return Selection(
        "uot",
        [str(i) for i in ids[rows[order]]],
        mass[order].tolist(),
        diagnostics={"eligible": len(rows), "queries": scores.shape[1], "iterations": iterations},
    )
