"""ClusterUCB (ZigeW/ClusterUCB): LESS needs a gradient for every pool example; ClusterUCB
computes the expensive reward (an example's LESS score) for only a fraction of the pool.
Pool gradient features are clustered by cosine; each cluster is a bandit arm, and draws go
to the arm whose rewards so far have the highest mean + beta * std. The selection is the
top k by reward among the drawn examples.

``cluster_ucb`` selects once, before any fine-tune, on the warmup's rewards (cheap). The
reference reselects while it trains: ``cluster_ucb_epochs`` trains epoch by epoch and reruns
the bandit after each epoch but the last on the current model's rewards, with clusters of the
earliest warmup checkpoint's features; its selection is the last epoch's data."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from ..clustering import spherical_kmeans
from .base import Selection, check_inputs, target_field
from .iterative import EpochTrainer, RowScorer
from .knn_tsds import CheckpointFeatures
from .registry import register

#: ``(pool ids, task) -> LESS score of each id for that task`` (NaN: the example has no
#: gradient feature). Called only for the examples the bandit draws: that is the cost saved.
Scorer = Callable[[Sequence[str], str], np.ndarray]


@dataclass(frozen=True)
class ClusterUcbConfig:
    task: str = target_field("query", True, "target task of the LESS reward (a task of the query set; required)")
    budget_frac: float = field(
        default=0.2, metadata={"help": "draws after the cold start: int(N * (this - cold_start))"}
    )
    cold_start: float = field(default=0.05, metadata={"help": "each cluster first draws max(int(size * this), 1)"})
    beta: float = field(default=1.0, metadata={"help": "UCB = mean + beta * std (population std)"})
    n_clusters: int = field(default=100, metadata={"help": "k-means clusters (cosine, 20 iterations)"})
    draw_batch: int = field(
        default=1, metadata={"help": "examples per bandit draw (> 1 lets the scorer batch its gradients)"}
    )
    score_ahead: bool = field(
        default=True,
        metadata={
            "help": "score an arm's next members ahead, doubling per refill (1, 2, 4, ...): the same draws "
            "in fewer, larger scorer calls, for at most as many unused rewards as drawn ones"
        },
    )
    seed: int = field(default=0, metadata={"help": "k-means and draw seed"})

    def __post_init__(self) -> None:
        if not 0 < self.budget_frac <= 1 or not 0 <= self.cold_start <= self.budget_frac:
            raise ValueError(
                f"cluster_ucb: need 0 <= cold_start <= budget_frac <= 1, got {self.cold_start}, {self.budget_frac}"
            )
        if self.n_clusters < 1 or self.draw_batch < 1:
            raise ValueError(
                f"cluster_ucb: n_clusters and draw_batch must be >= 1, got {self.n_clusters}, {self.draw_batch}"
            )


@dataclass
class Draws:
    """What the bandit drew: reward per drawn row (NaN = no feature), and the arm of each pull."""

    rewards: dict[int, float]
    cold_start: int
    pulls: list[int]
    unused: int = 0  # rewards scored ahead but never drawn (the cost of ``score_ahead``)


def cluster_ucb_draws(
    assignment: np.ndarray, reward: Callable[[np.ndarray], np.ndarray], config: ClusterUcbConfig
) -> Draws:
    """Cold start (only when ``cold_start`` > 0): each cluster draws ``max(int(|c| *
    cold_start), 1)`` members (one reward call for all of them). Then ``int(N * (budget_frac -
    cold_start))`` more draws, each from the arm with the highest ``mean + beta * std`` of its
    rewards; an arm with no finite reward yet goes first, an exhausted arm gets -inf (the
    reference gave it 0, which could outrank arms whose UCB is negative). Draws stop early only
    when every arm is exhausted. The count follows the reference, so budget_frac = 1 draws the
    whole pool (= LESS top-k) when cold_start = 0; with a cold start, rounding down per cluster
    can leave a few undrawn. ``score_ahead`` changes the reward calls only: each arm's members
    are drawn in one seeded order, so the next ones are known before the bandit asks for them."""
    rng = np.random.default_rng(config.seed)
    arms = [rng.permutation(np.flatnonzero(assignment == c)) for c in range(int(assignment.max()) + 1)]
    arms = [a for a in arms if len(a)]
    drawn = [0] * len(arms)
    per_arm: list[list[float]] = [[] for _ in arms]
    rewards: dict[int, float] = {}
    ahead: dict[int, float] = {}  # rewards scored ahead (score_ahead), not drawn: the bandit never sees them
    scored = [0] * len(arms)  # each arm's members [0, scored) have a reward: drawn ones, then those ahead
    refill = [1] * len(arms)

    def draw(takes: list[tuple[int, int]], remaining: int) -> None:
        """Draw the next ``n`` members of each ``(arm, n)``; those not scored ahead are scored in
        one reward call, with ``score_ahead`` up to ``refill[arm]`` (doubled on each use, never
        past ``remaining`` draws) of the arm's next members."""
        batch = []
        for arm, n in takes:
            if scored[arm] < drawn[arm] + n:
                size = n
                if config.score_ahead:
                    size, refill[arm] = max(n, min(refill[arm], remaining)), refill[arm] * 2
                end = min(drawn[arm] + size, len(arms[arm]))
                batch += [int(row) for row in arms[arm][scored[arm] : end]]
                scored[arm] = end
        if batch:
            values = np.asarray(reward(np.array(batch, dtype=np.int64)), dtype=np.float64)
            if values.shape != (len(batch),):
                raise ValueError(f"cluster_ucb: the scorer returned {values.shape} rewards for {len(batch)} examples")
            ahead.update(zip(batch, values.tolist(), strict=True))
        for arm, n in takes:
            for row in arms[arm][drawn[arm] : drawn[arm] + n]:
                value = ahead.pop(int(row))
                rewards[int(row)] = value
                drawn[arm] += 1
                if np.isfinite(value):
                    per_arm[arm].append(value)

    if config.cold_start > 0:  # as the reference: no cold start at 0, the bandit draws every first member
        cold_takes = [
            (a, min(max(int(len(members) * config.cold_start), 1), len(members))) for a, members in enumerate(arms)
        ]
        draw(cold_takes, 0)
    cold = len(rewards)
    target = int(len(assignment) * (config.budget_frac - config.cold_start) + 1e-9)  # 100 * (0.03 - 0.01) = 1.999..
    pulls: list[int] = []
    while len(pulls) < target:
        ucb = np.array(
            [
                -np.inf
                if drawn[a] == len(arms[a])
                else np.inf
                if not per_arm[a]
                else np.mean(per_arm[a]) + config.beta * np.std(per_arm[a])
                for a in range(len(arms))
            ]
        )
        if np.all(ucb == -np.inf):
            break
        arm = int(np.argmax(ucb))  # ties: lowest arm
        take = min(config.draw_batch, target - len(pulls), len(arms[arm]) - drawn[arm])
        draw([(arm, take)], target - len(pulls))
        pulls += [arm] * take
    return Draws(rewards, cold, pulls, unused=len(ahead))


def featured_rows(x: np.ndarray) -> np.ndarray:
    """Rows with a usable gradient feature (finite, not all zero): only those can be clustered."""
    return np.flatnonzero(np.isfinite(x).all(axis=1) & (np.abs(x).sum(axis=1) > 0))


def best_drawn(draws: Draws, k: int, tie_key: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """(rows, rewards) of the k drawn rows with the highest reward, ties by ``tie_key`` of the
    row, and how many drawn rows have a finite reward (only those are eligible)."""
    scored = np.array(sorted(draws.rewards), dtype=np.int64)
    values = np.array([draws.rewards[int(i)] for i in scored], dtype=np.float64)
    finite = np.isfinite(values)
    scored, values = scored[finite], values[finite]
    order = np.lexsort((tie_key[scored], -values))[:k]
    return scored[order], values[order], len(scored)


@register(
    "cluster_ucb",
    family="targeted",
    config=ClusterUcbConfig,
    needs=("pool_gradients", "less_scorer"),
    description="Bandit over cosine clusters of gradient features: LESS scores for ~budget_frac of the pool, top-k.",
    reference="ClusterUCB, Wang et al. 2025 (ZigeW/ClusterUCB), arXiv 2506.10288",
)
def select(ids, k: int, config: ClusterUcbConfig, *, pool_gradients: np.ndarray, less_scorer: Scorer) -> Selection:
    """``less_scorer`` computes LESS scores on demand, for the drawn ids only. Rows without a
    gradient feature cannot be clustered and are never drawn; drawn examples whose score is
    undefined (NaN) are not eligible. Diagnostics report how much of the pool was scored."""
    ids = check_inputs(ids, pool_gradients=pool_gradients)
    x = np.asarray(pool_gradients, dtype=np.float32)
    valid = featured_rows(x)
    if len(valid) == 0 or k == 0:
        return Selection(
            "cluster_ucb", [], [], diagnostics={"eligible": 0, "rewards_computed": 0, "scored_fraction": 0.0}
        )
    _, assignment = spherical_kmeans(x[valid], config.n_clusters, config.seed, 20)

    def reward(rows: np.ndarray) -> np.ndarray:
        return less_scorer([str(i) for i in ids[valid[rows]]], config.task)

    draws = cluster_ucb_draws(assignment, reward, config)
    top, values, eligible = best_drawn(draws, k, ids[valid].astype(str))
    return Selection(
        "cluster_ucb",
        [str(i) for i in ids[valid[top]]],
        values.tolist(),
        diagnostics={
            "eligible": eligible,
            "rewards_computed": len(draws.rewards),
            "scored_fraction": len(draws.rewards) / len(ids),
            "cold_start_draws": draws.cold_start,
            "bandit_draws": len(draws.pulls),
            "scored_ahead_unused": draws.unused,
            "clusters": len(np.unique(assignment)),
            "no_feature": len(ids) - len(valid) + len(draws.rewards) - eligible,
            "task": config.task,
        },
    )


@dataclass(frozen=True)
class ClusterUcbEpochsConfig(ClusterUcbConfig):
    epochs: int = field(
        default=4, metadata={"help": "training epochs; the bandit reselects after each but the last (reference 4)"}
    )
    init: Literal["random", "kmeans++"] = field(
        default="random", metadata={"help": "k-means seeding: random (rows drawn uniformly, the reference) | kmeans++"}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.epochs < 2:
            raise ValueError(f"cluster_ucb_epochs.epochs: {self.epochs}; at least 2 (one reselection)")


@register(
    "cluster_ucb_epochs",
    family="iterative",
    config=ClusterUcbEpochsConfig,
    needs=("pool_checkpoint_gradients", "less_scores", "epoch_trainer"),
    description="ClusterUCB as its reference runs it: epoch 1 trains on the LESS top k, then after each epoch but "
    "the last the bandit reselects on the current model's LESS rewards; the last epoch's data.",
    reference="ClusterUCB, Wang et al. 2025 (ZigeW/ClusterUCB), arXiv 2506.10288",
)
def select_epochs(
    ids,
    k: int,
    config: ClusterUcbEpochsConfig,
    *,
    pool_checkpoint_gradients: CheckpointFeatures,
    less_scores: dict[str, np.ndarray],
    epoch_trainer: EpochTrainer,
) -> Selection:
    """Epoch 1 trains on the top k by the warmup's LESS score for ``task``; after each epoch
    but the last, the bandit (clusters of the earliest checkpoint's features, ``init``
    seeding) draws with the scorer of the model trained so far, and its top k by reward are the
    next epoch's data. Rows without a feature or a LESS score are never selected."""
    if config.task not in less_scores:
        raise ValueError(f"cluster_ucb_epochs.task: {config.task!r} is not one of {sorted(less_scores)}")
    ids = check_inputs(ids, pool_checkpoint_gradients=pool_checkpoint_gradients, less_scores=less_scores[config.task])
    early = np.asarray(pool_checkpoint_gradients.features[0], dtype=np.float32)
    first_scores = np.asarray(less_scores[config.task], dtype=np.float64)
    valid = np.intersect1d(featured_rows(early), np.flatnonzero(np.isfinite(first_scores)))
    empty = {"eligible": 0, "epochs": config.epochs, "rewards_computed": [], "task": config.task}
    if len(valid) == 0 or k == 0:
        return Selection("cluster_ucb_epochs", [], [], diagnostics=empty)
    k = min(k, len(valid))
    _, assignment = spherical_kmeans(early[valid], config.n_clusters, config.seed, 20, config.init)
    first = valid[np.lexsort((valid, -first_scores[valid]))[:k]]
    computed: list[int] = []
    unused: list[int] = []
    last: dict[str, np.ndarray] = {}

    def reselect(epoch: int, scorer: RowScorer) -> list[int]:
        draws = cluster_ucb_draws(assignment, lambda rows: scorer(valid[rows], config.task), config)
        top, values, eligible = best_drawn(draws, k, valid)
        computed.append(len(draws.rewards))
        unused.append(draws.unused)
        last.update(rows=valid[top], values=values, eligible=eligible)
        return [int(r) for r in last["rows"]]

    rows = epoch_trainer.train_epochs([int(r) for r in first], config.epochs, reselect)
    if [int(r) for r in last["rows"]] != list(rows):
        raise RuntimeError("cluster_ucb_epochs: the trainer's last epoch is not the bandit's last selection")
    return Selection(
        "cluster_ucb_epochs",
        [str(i) for i in ids[last["rows"]]],
        last["values"].tolist(),
        diagnostics={
            "eligible": last["eligible"],  # the last draw's rows with a reward: all a selection can hold
            "with_feature": len(valid),
            "epochs": config.epochs,
            "rewards_computed": computed,
            "scored_fraction": [c / len(ids) for c in computed],
            "scored_ahead_unused": unused,
            "clusters": len(np.unique(assignment)),
            "epoch_1_overlap": len(set(first.tolist()) & set(last["rows"].tolist())) / k,
            "task": config.task,
        },
    )
