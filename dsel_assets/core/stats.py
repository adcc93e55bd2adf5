"""Statistics for comparing selection methods: per (method, budget, task, measure) a mean with its
confidence interval, the difference to the random baseline with its interval, p-value and verdict,
and Holm's adjustment over every verdict of a report. docs/STATISTICS.md explains the scheme with
a worked example; benchmarks/calibration.py measures how often it is wrong.

How the numbers were made decides how they vary. A method's models come from selection
replicates (one selection per seed of the method's randomness), training seeds within each
selection, and every model is evaluated on the same eval rows, which come in groups (rows of one
source item, e.g. the three reference summaries of one dialogue). Hence:

- a mean's CI is a hierarchical percentile bootstrap: each replicate draws selection replicates
  with replacement, then training seeds within each drawn selection, then eval groups;
- a difference to the baseline is Welch's t on the arms' top-level replicate means (selection
  replicates; training seeds when an arm has one selection): with the 2-5 replicates a comparison
  affords, a bootstrap of them is anti-conservative (measured). The eval rows are shared and fixed,
  so the test is about these eval items. A method whose one selection stands for randomness that
  was not sampled (e.g. its warmup) borrows the baseline's replicate spread for it;
- a verdict needs ``MIN_REPLICATES`` replicates on each side (the baseline's must be selection
  replicates) and ``MIN_GROUPS`` eval groups, and comes from the Holm-adjusted p-value.

Pure: numpy, scipy and polars only, no dagster, duckdb, mlflow or lance."""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl
from scipy import stats as scipy_stats

#: upper bound on the floats held at once per chunk of bootstrap replicates
_MAX_FLOATS = 20_000_000
#: the task label of the balance-across-tasks rows
ALL_TASKS = "(all tasks)"
BALANCE_STATISTICS = ("mean", "worst", "spread")
#: a method's selection randomness whose replicates are selection seeds
SAMPLED = "seed"
#: no selection randomness: one selection, its replicates are training seeds
DETERMINISTIC = "none"
MIN_REPLICATES = 2
MIN_GROUPS = 20
ALPHA = 0.05
TOO_FEW_REPLICATES = "too few replicates for a verdict"
TOO_FEW_GROUPS = "too few eval groups for a verdict"
REQUIRED_COLUMNS = (
    *("method", "budget", "train_size", "selection_seed", "seed"),
    *("task", "pool_id", "loss", "score", "metric"),
)
TABLE_SCHEMA = {
    "method": pl.Utf8,
    "budget": pl.Utf8,
    "train_size": pl.Int64,
    "task": pl.Utf8,
    "measure": pl.Utf8,
    "baseline": pl.Utf8,
    "lower_is_better": pl.Boolean,
    "models": pl.Int64,
    "selections": pl.Int64,
    "selection_variance": pl.Utf8,
    "examples": pl.Int64,
    "eval_groups": pl.Int64,
    "mean": pl.Float64,
    "ci_low": pl.Float64,
    "ci_high": pl.Float64,
    "delta": pl.Float64,
    "delta_low": pl.Float64,
    "delta_high": pl.Float64,
    "p_value": pl.Float64,
    "p_holm": pl.Float64,
    "verdict": pl.Utf8,
}


@dataclass(frozen=True)
class Estimate:
    """A mean with its (percentile bootstrap) confidence interval."""

    mean: float
    low: float
    high: float


@dataclass(frozen=True)
class Difference:
    """Method minus baseline with its t interval and two-sided p-value (NaN where a side has too
    few replicates to estimate its spread)."""

    delta: float
    low: float
    high: float
    p_value: float


@dataclass(frozen=True)
class Replicates:
    """An arm's top-level replicate means: one per selection replicate when it has several, else
    one per training seed of its one selection; ``sampled`` says whether their spread holds all
    of the arm's selection randomness; ``selections``: how many selection replicates there are."""

    means: np.ndarray
    sampled: bool
    selections: int = 1

    @property
    def count(self) -> int:
        return len(self.means)


# --------------------------------------------------------------------------------------------
# replicates and the t-based difference


def _check_values(values: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0:
        raise ValueError(f"{name}: need at least one value")
    if not np.isfinite(array).all():
        raise ValueError(f"{name}: contains non-finite values")
    return array


def replicates(unit_values: np.ndarray, selections: Sequence, randomness: str) -> Replicates:
    """Top-level replicates of one arm from one value per model (unit) and the selection replicate
    each model was trained on. Several selections: their means over their models (each selection
    weighs the same); they hold all of the selection randomness when it is all seeds
    (``SAMPLED``), part of it for e.g. "seed+warmup". One selection: its models' values, which
    hold the selection randomness only when the method has none (``DETERMINISTIC``)."""
    values = _check_values(unit_values, "unit_values")
    labels = np.asarray(selections)
    if labels.shape != values.shape:
        raise ValueError(f"selections: one per unit value, got {labels.shape} for {values.shape}")
    distinct = np.unique(labels)
    if len(distinct) >= 2:
        means = np.array([values[labels == label].mean() for label in distinct])
        return Replicates(means, sampled=randomness == SAMPLED, selections=len(distinct))
    return Replicates(values.copy(), sampled=randomness == DETERMINISTIC)


def difference(ours: Replicates, theirs: Replicates, confidence: float = 0.95) -> Difference:
    """Mean of ``ours`` minus mean of ``theirs`` with Welch's t interval and two-sided p-value.

    Each side's variance is its replicate variance over its count. When ``ours`` does not hold all
    of its selection randomness (one selection of a method whose randomness was not sampled, or
    selections that sample only part of it), the variance of one of its selections is the larger
    of the baseline's replicate variance and its own (its selections', or its one selection's
    training spread over its models); when the baseline's is taken, both terms come from one
    estimate and the degrees of freedom are the baseline's, otherwise Welch-Satterthwaite's."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence: must be in (0, 1), got {confidence}")
    delta = float(ours.means.mean() - theirs.means.mean())
    if theirs.count < 2:
        return Difference(delta, math.nan, math.nan, math.nan)
    spread = float(theirs.means.var(ddof=1))
    b, df_b = spread / theirs.count, theirs.count - 1
    if ours.sampled and ours.count < 2:
        return Difference(delta, math.nan, math.nan, math.nan)
    own = float(ours.means.var(ddof=1)) if ours.count >= 2 else math.nan
    if ours.sampled:
        a, df_a = own / ours.count, ours.count - 1
    else:
        per_selection = own if ours.selections >= 2 else own / ours.count  # NaN with one model: not known
        if per_selection > spread:
            a, df_a = per_selection / ours.selections, ours.count - 1
        else:  # one estimate behind both terms: its degrees of freedom, not Welch's
            a, df_a = spread / ours.selections, None
    variance = a + b
    if variance == 0.0:  # every replicate identical on both sides
        return Difference(delta, delta, delta, 1.0 if delta == 0.0 else 0.0)
    df = df_b if df_a is None else variance**2 / (a**2 / df_a + b**2 / df_b)
    se = math.sqrt(variance)
    half = float(scipy_stats.t.ppf(0.5 + confidence / 2.0, df)) * se
    p_value = float(2.0 * scipy_stats.t.sf(abs(delta) / se, df))
    return Difference(delta, delta - half, delta + half, min(1.0, p_value))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order: sorted ascending, the i-th (from 0)
    of m is multiplied by m - i, made non-decreasing, capped at 1."""
    p = np.asarray(p_values, dtype=np.float64)
    if np.isnan(p).any():
        raise ValueError("holm: p-values must not be NaN")
    order = np.argsort(p, kind="stable")
    m = len(p)
    adjusted = np.minimum(1.0, np.maximum.accumulate(p[order] * (m - np.arange(m))))
    out = np.empty(m)
    out[order] = adjusted
    return out.tolist()


def verdict(delta: float, p_adjusted: float, lower_is_better: bool, alpha: float = ALPHA) -> str:
    """Say "better" / "worse" when the adjusted p-value is below ``alpha`` (the side from the sign of
    ``delta`` and the measure's direction), else "no detectable difference"."""
    if not p_adjusted < alpha:
        return "no detectable difference"
    return "better" if (delta < 0.0) == lower_is_better else "worse"


def gate(ours: Replicates, theirs: Replicates, eval_groups: int) -> str | None:
    """Why a difference gets no verdict, or None: each side needs ``MIN_REPLICATES`` replicates,
    the baseline's spanning its selection randomness, and the rows ``MIN_GROUPS`` eval groups."""
    if ours.count < MIN_REPLICATES or theirs.count < MIN_REPLICATES or not theirs.sampled:
        return TOO_FEW_REPLICATES
    if eval_groups < MIN_GROUPS:
        return TOO_FEW_GROUPS
    return None


# --------------------------------------------------------------------------------------------
# the hierarchical bootstrap of a mean


def _check_options(n_boot: int, confidence: float) -> None:
    if n_boot < 1:
        raise ValueError(f"n_boot: must be >= 1, got {n_boot}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence: must be in (0, 1), got {confidence}")


def unit_weights(rng: np.random.Generator, selections: Sequence, n_boot: int) -> np.ndarray:
    """[n_boot, units] weights of a two-stage resample: draw the selection replicates with
    replacement, then within each drawn selection its models (training seeds) with replacement.
    Each drawn selection weighs 1/S, split over its drawn models; a row sums to 1."""
    labels = np.unique(np.asarray(selections), return_inverse=True)[1]
    members = [np.flatnonzero(labels == j) for j in range(labels.max() + 1)]
    sizes = np.array([len(m) for m in members])
    table = np.zeros((len(members), sizes.max()), dtype=np.int64)
    for j, m in enumerate(members):
        table[j, : len(m)] = m
    picked = rng.integers(0, len(members), (n_boot, len(members)))
    weights = np.zeros((n_boot, len(labels)))
    rows = np.repeat(np.arange(n_boot)[:, None], sizes.max(), axis=1)
    for slot in range(len(members)):
        chosen = picked[:, slot]
        size = sizes[chosen][:, None]
        within = np.minimum((rng.random((n_boot, sizes.max())) * size).astype(np.int64), size - 1)
        valid = np.arange(sizes.max())[None, :] < size
        share = np.broadcast_to(1.0 / (len(members) * size), valid.shape)
        np.add.at(weights, (rows[valid], table[chosen[:, None], within][valid]), share[valid])
    return weights


def row_weights(rng: np.random.Generator, groups: Sequence, n_boot: int) -> np.ndarray:
    """[n_boot, rows] weights of a cluster resample of eval rows: draw the groups with replacement;
    a row's weight is how often its group was drawn."""
    inverse = np.unique(np.asarray(groups), return_inverse=True)[1]
    n_groups = inverse.max() + 1
    draws = rng.integers(0, n_groups, (n_boot, n_groups))
    flat = (draws + np.arange(n_boot)[:, None] * n_groups).ravel()
    counts = np.bincount(flat, minlength=n_boot * n_groups).reshape(n_boot, n_groups)
    return counts[:, inverse].astype(np.float64)


def _statistic(task_means: np.ndarray, statistic: str, lower_is_better: bool) -> np.ndarray:
    """Balance statistic over the last axis (tasks): "mean", "worst" (max when lower is better,
    else min) or "spread" (max - min)."""
    if statistic == "mean":
        return task_means.mean(axis=-1)
    if statistic == "worst":
        return task_means.max(axis=-1) if lower_is_better else task_means.min(axis=-1)
    if statistic == "spread":
        return task_means.max(axis=-1) - task_means.min(axis=-1)
    raise ValueError(f"statistic: one of {BALANCE_STATISTICS}, got {statistic!r}")


def _interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    """Percentile interval (numpy's default linear interpolation)."""
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(values, [alpha, 1.0 - alpha])
    return float(low), float(high)


def _task_matrices(tasks: Sequence[np.ndarray], groups: Sequence[Sequence]) -> list[np.ndarray]:
    if not tasks:
        raise ValueError("tasks: need at least one task")
    matrices = [np.asarray(matrix, dtype=np.float64) for matrix in tasks]
    for matrix, task_groups in zip(matrices, groups, strict=True):
        if matrix.ndim != 2 or matrix.size == 0:
            raise ValueError(f"tasks: need non-empty [units, rows] matrices, got shape {matrix.shape}")
        if not np.isfinite(matrix).all():
            raise ValueError("tasks: contain non-finite values")
        if len(task_groups) != matrix.shape[1]:
            raise ValueError(f"groups: one per eval row, got {len(task_groups)} for {matrix.shape[1]} rows")
    if len({matrix.shape[0] for matrix in matrices}) != 1:
        raise ValueError("tasks: every task needs the same units (rows)")
    return matrices


def unit_statistic(tasks: Sequence[np.ndarray], statistic: str = "mean", lower_is_better: bool = True) -> np.ndarray:
    """One value per unit: ``statistic`` over the unit's per-task means (one task: its mean)."""
    task_means = np.stack([np.asarray(m, dtype=np.float64).mean(axis=1) for m in tasks], axis=-1)
    return _statistic(task_means, statistic, lower_is_better)


def hierarchical_mean(
    tasks: Sequence[np.ndarray],
    groups: Sequence[Sequence],
    selections: Sequence,
    statistic: str = "mean",
    lower_is_better: bool = True,
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> Estimate:
    """A mean with its hierarchical percentile bootstrap CI.

    ``tasks``: one [units, rows] matrix per task (one task for a task's own measure); ``groups``:
    per task, the eval group of each row; ``selections``: the selection replicate of each unit.
    The estimate is the mean over selection replicates of their models' mean ``statistic`` over
    per-task means. A bootstrap replicate draws selections, then models within each
    (``unit_weights``), then per task eval groups (``row_weights``, tasks in the given order), all
    from one ``np.random.default_rng(seed)``, and recomputes the same quantity."""
    matrices = _task_matrices(tasks, groups)
    _check_options(n_boot, confidence)
    units = matrices[0].shape[0]
    selections = np.asarray(selections)
    if len(selections) != units:
        raise ValueError(f"selections: one per unit, got {len(selections)} for {units} units")
    rows = sum(m.shape[1] for m in matrices)
    rng = np.random.default_rng(seed)
    chunk = max(1, _MAX_FLOATS // (2 * rows + 4 * units * len(matrices)))
    values = []
    for start in range(0, n_boot, chunk):
        count = min(chunk, n_boot - start)
        weights = unit_weights(rng, selections, count)
        task_means = np.stack(
            [
                (w := row_weights(rng, task_groups, count)) @ matrix.T / w.sum(axis=1, keepdims=True)
                for matrix, task_groups in zip(matrices, groups, strict=True)
            ],
            axis=-1,
        )  # [replicates, units, tasks]
        values.append((weights * _statistic(task_means, statistic, lower_is_better)).sum(axis=1))
    point = replicates(unit_statistic(matrices, statistic, lower_is_better), selections, SAMPLED).means.mean()
    return Estimate(float(point), *_interval(np.concatenate(values), confidence))


# --------------------------------------------------------------------------------------------
# the comparison table


@dataclass(frozen=True)
class _Panel:
    """One (method, budget, task, measure): all units of the (method, budget) by the task's eval
    rows (sorted pool_ids), NaN where a unit has no finite value, with each row's eval group."""

    pool_ids: tuple[str, ...]
    groups: dict[str, str]
    values: np.ndarray

    def complete(self) -> set[str]:
        """Eval rows every unit has a finite value for."""
        finite = np.isfinite(self.values).all(axis=0)
        return {pool_id for pool_id, ok in zip(self.pool_ids, finite, strict=True) if ok}

    def take(self, pool_ids: Sequence[str]) -> np.ndarray:
        index = {pool_id: j for j, pool_id in enumerate(self.pool_ids)}
        return self.values[:, [index[pool_id] for pool_id in pool_ids]]


@dataclass(frozen=True)
class _Arm:
    """One (method, budget) of the table: its units' selection replicates and its panels."""

    selections: np.ndarray
    randomness: str
    train_size: int | None
    panels: dict[tuple[str, str], _Panel]

    def replicates(self, values: np.ndarray) -> Replicates:
        return replicates(values, self.selections, self.randomness)

    @property
    def selection_variance(self) -> str:
        """How the report names the arm's selection randomness."""
        if self.randomness == DETERMINISTIC:
            return "none (deterministic)"
        if len(np.unique(self.selections)) < 2:
            return f"not sampled ({self.randomness})"
        return "sampled" if self.randomness == SAMPLED else f"partly sampled ({self.randomness})"


def group_seed(seed: int, method: str, budget: str, task: str, measure: str) -> int:
    """The RNG seed of one table cell: `seed` plus the CRC-32 of "method|budget|task|measure",
    so each cell has its own stream and the table does not depend on row order."""
    return seed + zlib.crc32(f"{method}|{budget}|{task}|{measure}".encode())


def _panel(rows: pl.DataFrame, units: list[tuple], value: str) -> _Panel:
    """Pivot one group's rows (selection_seed, seed, pool_id, group, `value`) into a _Panel."""
    pool_ids = tuple(sorted(set(rows["pool_id"].to_list())))
    column = {pool_id: j for j, pool_id in enumerate(pool_ids)}
    row = {unit: i for i, unit in enumerate(units)}
    values = np.full((len(units), len(pool_ids)), np.nan)
    for selection_seed, seed, pool_id, x in rows.select("selection_seed", "seed", "pool_id", value).iter_rows():
        if x is not None:
            values[row[(selection_seed, seed)], column[pool_id]] = x
    groups = dict(rows.select("pool_id", "group").unique("pool_id").iter_rows())
    return _Panel(pool_ids=pool_ids, groups=groups, values=values)


def _task_measures(frame: pl.DataFrame) -> dict[str, dict[str, pl.Expr]]:
    """task -> measure -> the filter selecting its rows (value column: loss or score). "loss" for
    every task with losses (an lm-eval task has none); "score:<metric>" per metric with a score
    above 0 ("score" when the metric is null): a metric every model scores 0 on (exact match of an
    untrained small model) says nothing."""
    measures: dict[str, dict[str, pl.Expr]] = {}
    for task in sorted(frame["task"].unique().to_list()):
        has_loss = frame.filter((pl.col("task") == task) & pl.col("loss").is_not_null()).height > 0
        measures[task] = {"loss": pl.lit(True)} if has_loss else {}
        scored = frame.filter((pl.col("task") == task) & (pl.col("score") > 0))
        for metric in sorted(scored["metric"].unique().to_list(), key=lambda m: (m is None, m or "")):
            if metric is None:
                measures[task]["score"] = pl.col("metric").is_null()
            else:
                measures[task][f"score:{metric}"] = pl.col("metric") == metric
    return measures


def _balance_measures(measures: dict[str, dict[str, pl.Expr]]) -> dict[str, dict[str, str]]:
    """kind ("loss", "score") -> task -> the measure it is balanced over, for kinds that at least
    two tasks have (over one task a balance row would repeat the task's row): loss on every task with losses,
    score on each task's first score measure."""
    kinds = {}
    with_loss = {task: "loss" for task, names in measures.items() if "loss" in names}
    if len(with_loss) >= 2:
        kinds["loss"] = with_loss
    scored = {task: next(m for m in names if m != "loss") for task, names in measures.items() if set(names) - {"loss"}}
    if len(scored) >= 2:
        kinds["score"] = scored
    return kinds


@dataclass
class _Cell:
    """One row's numbers before Holm: examples, groups, estimate, difference, and the verdict when
    it is not a test (baseline, no data, too few ...); None when it joins the family."""

    examples: int = 0
    eval_groups: int = 0
    estimate: Estimate | None = None
    diff: Difference | None = None
    fixed_verdict: str | None = None


def _joint_ids(panels: dict[str, _Panel], base_panels: dict[str, _Panel] | None) -> dict[str, list[str]] | None:
    """Per task, the eval rows every unit of the method and of the baseline has a value for; None
    when there is no baseline or some task has none in common."""
    if base_panels is None:
        return None
    joint = {task: sorted(panel.complete() & base_panels[task].complete()) for task, panel in panels.items()}
    return joint if all(joint.values()) else None


def _measure_cell(
    arm: _Arm,
    base: _Arm | None,
    panels: dict[str, _Panel],
    base_panels: dict[str, _Panel] | None,
    statistic: str,
    lower_is_better: bool,
    is_baseline: bool,
    n_boot: int,
    seed: int,
) -> _Cell:
    """The cell of one measure over ``panels`` (one task, or every task of a balance row): on the
    rows shared with the baseline when there are any, else on the method's own complete rows."""
    joint = _joint_ids(panels, base_panels)
    ids = joint if joint is not None else {task: sorted(panel.complete()) for task, panel in panels.items()}
    if not all(ids.values()):
        return _Cell(fixed_verdict="no data")
    tasks = sorted(ids)
    ours = [panels[task].take(ids[task]) for task in tasks]
    groups = [[panels[task].groups[pool_id] for pool_id in ids[task]] for task in tasks]
    eval_groups = min(len(set(task_groups)) for task_groups in groups)
    cell = _Cell(
        examples=sum(len(ids[task]) for task in tasks),
        eval_groups=eval_groups,
        estimate=hierarchical_mean(ours, groups, arm.selections, statistic, lower_is_better, n_boot, seed),
    )
    if joint is None or base is None:
        cell.fixed_verdict = "baseline" if is_baseline else "no baseline"
        return cell
    theirs = [base_panels[task].take(ids[task]) for task in tasks]
    own_replicates = arm.replicates(unit_statistic(ours, statistic, lower_is_better))
    base_replicates = base.replicates(unit_statistic(theirs, statistic, lower_is_better))
    cell.diff = difference(own_replicates, base_replicates)
    cell.fixed_verdict = gate(own_replicates, base_replicates, eval_groups)
    if statistic == "worst" and cell.fixed_verdict is None:
        worst = _same_worst_task(ours, theirs, lower_is_better)
        if worst is not None:
            cell.fixed_verdict = f"as {tasks[worst]}"
    return cell


def _same_worst_task(ours: list[np.ndarray], theirs: list[np.ndarray], lower_is_better: bool) -> int | None:
    """The task that is every model's worst on both sides, if one is: the "worst" row then repeats
    that task's row and is no separate test."""
    worst = set()
    for matrices in (ours, theirs):
        task_means = np.stack([m.mean(axis=1) for m in matrices], axis=-1)
        picks = task_means.argmax(axis=-1) if lower_is_better else task_means.argmin(axis=-1)
        worst |= set(picks.tolist())
    return worst.pop() if len(worst) == 1 else None


def _row(method: str, budget: str, arm: _Arm, task: str, measure: str, lower: bool, cell: _Cell, baseline: str) -> dict:
    """One output row of comparison_table (p_holm and the test verdicts are filled in afterwards);
    ``baseline`` is named where the row has a difference to it."""
    estimate, diff = cell.estimate, cell.diff
    return {
        "method": method,
        "budget": budget,
        "train_size": arm.train_size,
        "task": task,
        "measure": measure,
        "baseline": None if diff is None else baseline,
        "lower_is_better": lower,
        "models": len(arm.selections),
        "selections": len(np.unique(arm.selections)),
        "selection_variance": arm.selection_variance,
        "examples": cell.examples,
        "eval_groups": cell.eval_groups,
        "mean": None if estimate is None else estimate.mean,
        "ci_low": None if estimate is None else estimate.low,
        "ci_high": None if estimate is None else estimate.high,
        "delta": None if diff is None else diff.delta,
        "delta_low": None if diff is None or math.isnan(diff.low) else diff.low,
        "delta_high": None if diff is None or math.isnan(diff.high) else diff.high,
        "p_value": None if diff is None or math.isnan(diff.p_value) else diff.p_value,
        "p_holm": None,
        "verdict": cell.fixed_verdict,
    }


def _prepare(rows: pl.DataFrame) -> pl.DataFrame:
    missing = [column for column in REQUIRED_COLUMNS if column not in rows.columns]
    if missing:
        raise ValueError(f"comparison_table: missing columns {missing}")
    columns = [*REQUIRED_COLUMNS, "group"] if "group" in rows.columns else list(REQUIRED_COLUMNS)
    frame = rows.select(columns).with_columns(
        pl.col("loss").cast(pl.Float64), pl.col("score").cast(pl.Float64), pl.col("budget").cast(pl.Utf8)
    )
    if "group" not in frame.columns:
        frame = frame.with_columns(pl.col("pool_id").alias("group"))
    frame = frame.with_columns(pl.col("group").cast(pl.Utf8).fill_null(pl.col("pool_id")))
    key = ["method", "budget", "selection_seed", "seed", "task", "pool_id"]
    if frame.select(key).is_duplicated().any():
        raise ValueError("comparison_table: more than one row per (method, budget, unit, task, pool_id)")
    if frame.select("task", "pool_id", "group").unique().select("task", "pool_id").is_duplicated().any():
        raise ValueError("comparison_table: an eval row (task, pool_id) has more than one group")
    return frame


def comparison_table(
    rows: pl.DataFrame,
    baseline: str = "random",
    n_boot: int = 2000,
    seed: int = 0,
    randomness: Mapping[str, str] | None = None,
    also_against: Mapping[str, Sequence[str]] | None = None,
) -> pl.DataFrame:
    """Per (method, budget, task, measure): the mean with its hierarchical bootstrap CI, the
    difference to ``baseline`` at the same budget with its t interval, raw and Holm-adjusted
    p-values and the verdict; balance-across-tasks rows ("(all tasks)", "loss:mean|worst|spread")
    when there are at least two tasks.

    ``rows``: one row per (model, eval row) with ``REQUIRED_COLUMNS`` and optionally ``group`` (the
    eval row's source item; default its pool_id). A model (unit) is a (selection_seed, seed) of a
    (method, budget). ``randomness``: method -> where its selection randomness comes from
    (``SAMPLED``, ``DETERMINISTIC`` or a name of randomness that is not sampled, e.g. "warmup");
    a method missing from it counts as "unknown" (not sampled); the baseline is ``SAMPLED``.
    ``also_against``: a second baseline -> the methods also compared with it, per task (rows with
    that name in ``baseline``; e.g. targeted methods against ``random_in_task``); they join the
    Holm family.
    Each cell uses the eval rows that every model of the method and of the baseline has a finite
    value for. Holm's family: every row whose difference gets a verdict (not the baseline's, not
    "no data", "no baseline", "too few ...", nor a "worst" row that repeats a task's row, verdict
    "as <task>"). Sorted by train_size, method, budget, task ("(all tasks)" last), measure."""
    frame = _prepare(rows)
    measures = _task_measures(frame)
    kinds = dict(randomness or {}) | {baseline: SAMPLED}
    arms: dict[tuple[str, str], _Arm] = {}
    for (method, budget), group in sorted(frame.partition_by(["method", "budget"], as_dict=True).items()):
        units = group.select("selection_seed", "seed").unique().sort("selection_seed", "seed").rows()
        panels = {}
        for task, task_measures in measures.items():
            task_rows = group.filter(pl.col("task") == task)
            for measure, selector in task_measures.items():
                panels[(task, measure)] = _panel(
                    task_rows.filter(selector), units, "loss" if measure == "loss" else "score"
                )
        per_unit_size = group.group_by("selection_seed", "seed").agg(pl.col("train_size").first())["train_size"]
        size = per_unit_size.mean()
        arms[(method, budget)] = _Arm(
            selections=np.array([selection_seed for selection_seed, _ in units]),
            randomness=kinds.get(method, "unknown"),
            train_size=None if size is None else int(round(float(size))),
            panels=panels,
        )

    out = []
    for (method, budget), arm in arms.items():
        is_baseline = method == baseline
        base = None if is_baseline else arms.get((baseline, budget))
        for task, task_measures in measures.items():
            for measure in task_measures:
                lower = measure == "loss"
                base_panels = None if base is None else {task: base.panels[(task, measure)]}
                cell = _measure_cell(
                    arm,
                    base,
                    {task: arm.panels[(task, measure)]},
                    base_panels,
                    "mean",
                    lower,
                    is_baseline,
                    n_boot,
                    group_seed(seed, method, budget, task, measure),
                )
                out.append(_row(method, budget, arm, task, measure, lower, cell, baseline))
        for kind, task_measure in _balance_measures(measures).items():
            ours = {task: arm.panels[(task, name)] for task, name in task_measure.items()}
            theirs = None if base is None else {task: base.panels[(task, name)] for task, name in task_measure.items()}
            for statistic in BALANCE_STATISTICS:
                measure_lower = kind == "loss"
                lower = measure_lower or statistic == "spread"
                cell = _measure_cell(
                    arm,
                    base,
                    ours,
                    theirs,
                    statistic,
                    measure_lower,
                    is_baseline,
                    n_boot,
                    group_seed(seed, method, budget, ALL_TASKS, f"{kind}:{statistic}"),
                )
                out.append(_row(method, budget, arm, ALL_TASKS, f"{kind}:{statistic}", lower, cell, baseline))
    for other, compared in (also_against or {}).items():
        out += _rows_against(arms, other, set(compared) - {other, baseline}, measures, n_boot, seed)

    family = [i for i, row in enumerate(out) if row["verdict"] is None]
    for i, adjusted in zip(family, holm([out[i]["p_value"] for i in family]), strict=True):
        row = out[i]
        row["p_holm"] = adjusted
        row["verdict"] = verdict(row["delta"], adjusted, row["lower_is_better"])
    table = pl.DataFrame(out, schema=TABLE_SCHEMA)
    return (
        table.with_columns((pl.col("task") == ALL_TASKS).alias("_all"))
        .sort("train_size", "method", "budget", "_all", "task", "measure", "baseline", nulls_last=True)
        .drop("_all")
    )


def _rows_against(
    arms: dict[tuple[str, str], _Arm],
    other: str,
    compared: set[str],
    measures: dict[str, dict[str, pl.Expr]],
    n_boot: int,
    seed: int,
) -> list[dict]:
    """Per-task rows of the ``compared`` methods against a second baseline ``other`` at the same
    budget (e.g. targeted methods against ``random_in_task``), where the two share eval rows."""
    out = []
    for (method, budget), arm in arms.items():
        base = arms.get((other, budget))
        if method not in compared or base is None:
            continue
        for task, task_measures in measures.items():
            for measure in task_measures:
                cell = _measure_cell(
                    arm,
                    base,
                    {task: arm.panels[(task, measure)]},
                    {task: base.panels[(task, measure)]},
                    "mean",
                    measure == "loss",
                    False,
                    n_boot,
                    group_seed(seed, method, budget, task, measure),
                )
                if cell.diff is not None:
                    out.append(_row(method, budget, arm, task, measure, measure == "loss", cell, other))
    return out


def format_verdict_cell(row: dict) -> str:
    """Display text for a table row's comparison, e.g. "-0.034 [-0.051, -0.017] p=0.001 (Holm 0.004)
    better" (4 significant digits); the estimate alone when it has no interval; just the verdict
    when there is no difference to show."""
    if row.get("delta") is None:
        return str(row["verdict"])
    if row.get("delta_low") is None:
        return f"{row['delta']:.4g} {row['verdict']}"
    text = f"{row['delta']:.4g} [{row['delta_low']:.4g}, {row['delta_high']:.4g}] p={row['p_value']:.4g}"
    if row.get("p_holm") is not None:
        text += f" (Holm {row['p_holm']:.4g})"
    return f"{text} {row['verdict']}"
