"""Unbalanced optimal transport selection (dcml-lab "distance minimisation"): transport the
query distribution onto the pool with cost (1 - S) / 2, a hard query marginal and a nearly
free pool marginal; a pool example's score is the mass it receives."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..memory import require_memory
from .base import Selection, check_inputs
from .registry import register
from .targeted import Influence, TargetedConfig, eligible_rows


@dataclass(frozen=True)
class UotConfig(TargetedConfig):
    task: str = field(default="", metadata={"help": "target task ('' = every query column)"})
    reg: float = field(default=0.01, metadata={"help": "entropic regularisation"})
    reg_source: float = field(default=float("inf"), metadata={"help": "KL penalty on the query marginal (inf = hard)"})
    reg_target: float = field(default=1e-4, metadata={"help": "KL penalty on the pool marginal (small = free)"})
    max_iter: int = field(default=1000, metadata={"help": "Sinkhorn iterations"})

    def __post_init__(self) -> None:
        if self.reg <= 0 or self.reg_target <= 0:
            raise ValueError(f"uot: reg and reg_target must be > 0, got {self.reg}, {self.reg_target}")


def check_memory(queries: int, pool: int) -> None:
    """Refuse, with what it would take, a problem memory cannot hold: POT's Sinkhorn keeps
    three float64 [queries, pool] matrices (cost, kernel, plan) - 11 GiB at 500 x 1M."""
    require_memory(
        3 * 8 * queries * pool,
        f"uot: {queries} query columns x {pool:,} pool rows",
        "Sinkhorn holds three float64 matrices of that size; set uot.task to one target task's columns, "
        "or use bids / round_robin / less (they stream the matrix)",
    )


@register(
    "uot",
    family="targeted",
    config=UotConfig,
    needs=("influence",),
    description="Entropic unbalanced OT from queries to pool (POT); rank by transported mass.",
    reference="dcml-lab targeted-instruction-selection, arXiv 2503.01807; POT sinkhorn_unbalanced",
)
def select(ids, k: int, config: UotConfig, *, influence: Influence) -> Selection:
    from ot.unbalanced import sinkhorn_unbalanced

    ids = check_inputs(ids, influence=influence.scores)
    scores = influence.columns("uot", config.task)
    rows = eligible_rows(scores)
    if len(rows) == 0 or k == 0:
        return Selection("uot", [], [], diagnostics={"eligible": len(rows)})
    check_memory(scores.shape[1], len(rows))
    cost = (1.0 - np.clip(scores[rows].T.astype(np.float64), -1.0, 1.0)) / 2.0  # [M, N]
    a = np.full(cost.shape[0], 1.0 / cost.shape[0])
    b = np.full(cost.shape[1], 1.0 / cost.shape[1])
    plan = sinkhorn_unbalanced(
        a,
        b,
        cost,
        reg=config.reg,
        reg_m=(config.reg_source, config.reg_target),
        reg_type="kl",
        numItermax=config.max_iter,
    )
    mass = np.asarray(plan).sum(axis=0)
    if not np.isfinite(mass).all():
        raise ValueError("uot: Sinkhorn diverged (NaN mass); raise uot.reg")
    order = np.lexsort((rows, -mass))[:k]
    return Selection(
        "uot",
        [str(i) for i in ids[rows[order]]],
        mass[order].tolist(),
        diagnostics={"eligible": len(rows), "queries": cost.shape[0]},
    )
