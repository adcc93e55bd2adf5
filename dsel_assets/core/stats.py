"""Statistics for comparing selection methods: seed-averaged means, paired differences against
a baseline method, and their bootstrap confidence intervals.

Each (method, budget) has several fine-tuned models ("units": one per (selection_seed, train
seed) pair), and every model is evaluated on the same eval examples. Two sources of noise are
therefore in every number: which models (seeds) we happened to train, and which eval examples
we happened to draw. The bootstrap here is two-level for that reason: a replicate resamples
units (rows) with replacement *and* examples (columns) with replacement. Differences against the
baseline are paired: method and baseline share the same column draw, so per-example difficulty
cancels, while their units are drawn separately (they are different models).

Resampling draw order (part of the contract; tests re-derive results with a plain loop):
every replicate makes its draws one after the other from one ``np.random.default_rng(seed)``,
each draw ``rng.integers(0, size, size)``; see each function for which sizes, in which order.
The draws are made one replicate at a time, so results equal that per-replicate loop; the
arithmetic on them is vectorised over replicates (as resample counts times the data), so they
agree with the loop up to floating-point rounding.

Pure: numpy and polars only, no dagster, duckdb, mlflow or lance."""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

#: upper bound on the floats held at once per chunk of bootstrap replicates
_MAX_FLOATS = 50_000_000
#: the task label of the balance-across-tasks rows
ALL_TASKS = "(all tasks)"
BALANCE_STATISTICS = ("mean", "worst", "spread")
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
    "lower_is_better": pl.Boolean,
    "models": pl.Int64,
    "examples": pl.Int64,
    "mean": pl.Float64,
    "ci_low": pl.Float64,
    "ci_high": pl.Float64,
    "delta": pl.Float64,
    "delta_low": pl.Float64,
    "delta_high": pl.Float64,
    "p_value": pl.Float64,
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
    """Method minus baseline, paired on the same eval examples, with its confidence interval and
    two-sided bootstrap p-value (for "is the difference zero")."""

    delta: float
    low: float
    high: float
    p_value: float


# --------------------------------------------------------------------------------------------
# resampling machinery


def _matrix(values: np.ndarray, name: str) -> np.ndarray:
    """`values` as a float [units, examples] matrix; rejects empty or non-finite input, which
    would otherwise turn into silent NaN intervals."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] < 1 or array.shape[1] < 1:
        raise ValueError(f"{name}: need a non-empty [units, examples] matrix, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name}: contains non-finite values")
    return array


def _check_options(n_boot: int, confidence: float) -> None:
    if n_boot < 1:
        raise ValueError(f"n_boot: must be >= 1, got {n_boot}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence: must be in (0, 1), got {confidence}")


def _resample_counts(rng: np.random.Generator, sizes: Sequence[int], n_boot: int, extra: int = 0) -> Iterator[list]:
    """Yield, one chunk of replicates at a time, a count matrix [chunk, size] per entry of `sizes`:
    how often each row / column was drawn. Per replicate the draws are made in the order of
    `sizes`, each ``rng.integers(0, size, size)``, replicate after replicate, so the random
    stream is exactly that of the plain per-replicate loop. `extra` is the further floats per
    replicate the caller holds, so that a chunk stays under ``_MAX_FLOATS``."""
    per_replicate = 2 * sum(sizes) + extra
    chunk = max(1, _MAX_FLOATS // max(1, per_replicate))
    done = 0
    while done < n_boot:
        count = min(chunk, n_boot - done)
        draws = [np.empty((count, size), dtype=np.int64) for size in sizes]
        for r in range(count):
            for k, size in enumerate(sizes):
                draws[k][r] = rng.integers(0, size, size)
        yield [_counts(draw, size) for draw, size in zip(draws, sizes, strict=True)]
        done += count


def _counts(draw: np.ndarray, size: int) -> np.ndarray:
    """Per replicate (row of `draw`), how often each index 0..size-1 was drawn, as floats."""
    replicates = draw.shape[0]
    flat = (draw + np.arange(replicates)[:, None] * size).ravel()
    return np.bincount(flat, minlength=replicates * size).reshape(replicates, size).astype(np.float64)


def _resampled_means(values: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Mean of ``values[row_draw][:, col_draw]`` per replicate, from the draw counts."""
    units, examples = values.shape
    return ((rows @ values) * cols).sum(axis=1) / (units * examples)


def _interval(replicates: np.ndarray, confidence: float) -> tuple[float, float]:
    """Percentile interval (numpy's default linear interpolation)."""
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(replicates, [alpha, 1.0 - alpha])
    return float(low), float(high)


def _difference(delta: float, replicates: np.ndarray, confidence: float) -> Difference:
    """A Difference from its point estimate and bootstrap replicates. The p-value is the
    two-sided bootstrap one, ``2 * min(share <= 0, share >= 0)`` with the +1 correction that
    keeps it away from an impossible 0; all-zero replicates (identical inputs) give 1."""
    low, high = _interval(replicates, confidence)
    n_boot = len(replicates)
    if np.all(replicates == 0.0):
        p_value = 1.0
    else:
        below = (1 + int(np.sum(replicates <= 0.0))) / (n_boot + 1)
        above = (1 + int(np.sum(replicates >= 0.0))) / (n_boot + 1)
        p_value = min(1.0, 2.0 * min(below, above))
    return Difference(delta=float(delta), low=low, high=high, p_value=float(p_value))


# --------------------------------------------------------------------------------------------
# one measure on one task


def bootstrap_mean(values: np.ndarray, n_boot: int = 2000, seed: int = 0, confidence: float = 0.95) -> Estimate:
    """Seed-averaged mean of `values` [units, examples] with a two-level percentile bootstrap CI.

    The point estimate is the mean over units of each unit's mean over examples (``values.mean()``).
    Draw order per replicate, from ``np.random.default_rng(seed)``: rows
    ``rng.integers(0, units, units)``, then columns ``rng.integers(0, examples, examples)`` (the
    same columns for every row); the replicate is the mean of ``values[rows][:, cols]``. The CI is
    the (1 - confidence) / 2 and 1 - (1 - confidence) / 2 quantiles of the replicates."""
    values = _matrix(values, "values")
    _check_options(n_boot, confidence)
    units, examples = values.shape
    rng = np.random.default_rng(seed)
    replicates = np.concatenate(
        [
            _resampled_means(values, rows, cols)
            for rows, cols in _resample_counts(rng, [units, examples], n_boot, extra=examples)
        ]
    )
    low, high = _interval(replicates, confidence)
    return Estimate(mean=float(values.mean()), low=low, high=high)


def paired_difference(
    method: np.ndarray, baseline: np.ndarray, n_boot: int = 2000, seed: int = 0, confidence: float = 0.95
) -> Difference:
    """Method minus baseline on the same eval examples (columns), with a paired two-level
    bootstrap CI and two-sided p-value.

    ``delta = method.mean() - baseline.mean()``. Draw order per replicate, from
    ``np.random.default_rng(seed)``: method rows ``rng.integers(0, m, m)``, baseline rows
    ``rng.integers(0, b, b)``, then one column draw ``rng.integers(0, n, n)`` shared by both
    (that sharing is the pairing); the replicate is ``method[rows_m][:, cols].mean() -
    baseline[rows_b][:, cols].mean()``."""
    method = _matrix(method, "method")
    baseline = _matrix(baseline, "baseline")
    if method.shape[1] != baseline.shape[1]:
        raise ValueError(f"method and baseline must share their examples: {method.shape[1]} != {baseline.shape[1]}")
    _check_options(n_boot, confidence)
    m, n = method.shape
    b = baseline.shape[0]
    rng = np.random.default_rng(seed)
    replicates = np.concatenate(
        [
            _resampled_means(method, rows_m, cols) - _resampled_means(baseline, rows_b, cols)
            for rows_m, rows_b, cols in _resample_counts(rng, [m, b, n], n_boot, extra=2 * n)
        ]
    )
    return _difference(method.mean() - baseline.mean(), replicates, confidence)


def verdict(diff: Difference | None, lower_is_better: bool) -> str:
    """Read a Difference: "better" / "worse" when its CI excludes 0 on the good / bad side,
    "no detectable difference" when the CI contains 0, "no baseline" without a Difference."""
    if diff is None:
        return "no baseline"
    if diff.low > 0.0:
        return "worse" if lower_is_better else "better"
    if diff.high < 0.0:
        return "better" if lower_is_better else "worse"
    return "no detectable difference"


# --------------------------------------------------------------------------------------------
# balance across tasks


def _balance_statistic(task_means: np.ndarray, statistic: str, lower_is_better: bool) -> np.ndarray:
    """Balance statistic over the last axis (tasks): "mean", "worst" (max when lower is better,
    else min) or "spread" (max - min)."""
    if statistic == "mean":
        return task_means.mean(axis=-1)
    if statistic == "worst":
        return task_means.max(axis=-1) if lower_is_better else task_means.min(axis=-1)
    if statistic == "spread":
        return task_means.max(axis=-1) - task_means.min(axis=-1)
    raise ValueError(f"statistic: one of {BALANCE_STATISTICS}, got {statistic!r}")


def _task_matrices(tasks: Mapping[str, np.ndarray], name: str) -> list[np.ndarray]:
    """The per-task matrices in sorted task order, checked to share their units (rows)."""
    if not tasks:
        raise ValueError(f"{name}: need at least one task")
    matrices = [_matrix(tasks[task], f"{name}[{task!r}]") for task in sorted(tasks)]
    if len({matrix.shape[0] for matrix in matrices}) != 1:
        raise ValueError(f"{name}: every task needs the same units (rows)")
    return matrices


def _balance_point(matrices: list[np.ndarray], statistic: str, lower_is_better: bool) -> float:
    """The statistic on each unit's per-task means, averaged over units."""
    task_means = np.stack([matrix.mean(axis=1) for matrix in matrices], axis=-1)  # [units, tasks]
    return float(_balance_statistic(task_means, statistic, lower_is_better).mean())


def _balance_replicates(
    matrices: list[np.ndarray],
    rows: np.ndarray,
    cols: list[np.ndarray],
    statistics: Sequence[str],
    lower_is_better: bool,
) -> dict[str, np.ndarray]:
    """Per statistic, per replicate: each original unit's per-task mean over that task's resampled
    examples, the statistic per unit, then averaged over the resampled units (by draw counts)."""
    task_means = np.stack(
        [col @ matrix.T / matrix.shape[1] for matrix, col in zip(matrices, cols, strict=True)], axis=-1
    )  # [replicates, units, tasks]
    return {
        statistic: (rows * _balance_statistic(task_means, statistic, lower_is_better)).sum(axis=1) / rows.shape[1]
        for statistic in statistics
    }


def bootstrap_balance(
    tasks: Mapping[str, np.ndarray],
    statistic: str,
    lower_is_better: bool,
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> Estimate:
    """A balance-across-tasks statistic with a two-level bootstrap CI.

    `tasks` maps task -> [units, examples of that task]; the rows are the same units in every
    task. Per unit, each task's mean over its examples; the statistic ("mean", "worst" or
    "spread", see ``_balance_statistic``; `lower_is_better` is the direction of the underlying
    measure and picks the worst task) over those task means; averaged over units. Draw order per
    replicate, from ``np.random.default_rng(seed)``: rows ``rng.integers(0, units, units)``, then
    for each task in sorted order its columns ``rng.integers(0, n_task, n_task)``."""
    return _bootstrap_balances(tasks, (statistic,), lower_is_better, n_boot, seed, confidence)[statistic]


def _bootstrap_balances(
    tasks: Mapping[str, np.ndarray],
    statistics: Sequence[str],
    lower_is_better: bool,
    n_boot: int,
    seed: int,
    confidence: float,
) -> dict[str, Estimate]:
    """``bootstrap_balance`` for several statistics on the same draws (one pass of the RNG)."""
    matrices = _task_matrices(tasks, "tasks")
    _check_options(n_boot, confidence)
    units = matrices[0].shape[0]
    sizes = [units] + [matrix.shape[1] for matrix in matrices]
    rng = np.random.default_rng(seed)
    chunks = [
        _balance_replicates(matrices, rows, cols, statistics, lower_is_better)
        for rows, *cols in _resample_counts(rng, sizes, n_boot, extra=(2 + len(statistics)) * units * len(matrices))
    ]
    estimates = {}
    for statistic in statistics:
        low, high = _interval(np.concatenate([chunk[statistic] for chunk in chunks]), confidence)
        estimates[statistic] = Estimate(_balance_point(matrices, statistic, lower_is_better), low, high)
    return estimates


def balance_difference(
    method: Mapping[str, np.ndarray],
    baseline: Mapping[str, np.ndarray],
    statistic: str,
    lower_is_better: bool,
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> Difference:
    """Method minus baseline of a balance statistic (see ``bootstrap_balance``), paired per task
    on the same examples. Draw order per replicate, from ``np.random.default_rng(seed)``: method
    rows ``rng.integers(0, m, m)``, baseline rows ``rng.integers(0, b, b)``, then for each task in
    sorted order one column draw ``rng.integers(0, n_task, n_task)`` shared by method and baseline."""
    return _balance_differences(method, baseline, (statistic,), lower_is_better, n_boot, seed, confidence)[statistic]


def _balance_differences(
    method: Mapping[str, np.ndarray],
    baseline: Mapping[str, np.ndarray],
    statistics: Sequence[str],
    lower_is_better: bool,
    n_boot: int,
    seed: int,
    confidence: float,
) -> dict[str, Difference]:
    """``balance_difference`` for several statistics on the same draws (one pass of the RNG)."""
    if sorted(method) != sorted(baseline):
        raise ValueError(f"method and baseline need the same tasks: {sorted(method)} != {sorted(baseline)}")
    method_matrices = _task_matrices(method, "method")
    baseline_matrices = _task_matrices(baseline, "baseline")
    for task, ours, theirs in zip(sorted(method), method_matrices, baseline_matrices, strict=True):
        if ours.shape[1] != theirs.shape[1]:
            raise ValueError(f"task {task!r}: method and baseline must share their examples")
    _check_options(n_boot, confidence)
    m, b = method_matrices[0].shape[0], baseline_matrices[0].shape[0]
    sizes = [m, b] + [matrix.shape[1] for matrix in method_matrices]
    extra = (2 + len(statistics)) * (m + b) * len(method_matrices)
    rng = np.random.default_rng(seed)
    chunks = []
    for rows_m, rows_b, *cols in _resample_counts(rng, sizes, n_boot, extra=extra):
        ours = _balance_replicates(method_matrices, rows_m, cols, statistics, lower_is_better)
        theirs = _balance_replicates(baseline_matrices, rows_b, cols, statistics, lower_is_better)
        chunks.append({statistic: ours[statistic] - theirs[statistic] for statistic in statistics})
    differences = {}
    for statistic in statistics:
        delta = _balance_point(method_matrices, statistic, lower_is_better) - _balance_point(
            baseline_matrices, statistic, lower_is_better
        )
        differences[statistic] = _difference(delta, np.concatenate([c[statistic] for c in chunks]), confidence)
    return differences


# --------------------------------------------------------------------------------------------
# the comparison table


@dataclass(frozen=True)
class _Panel:
    """One (method, budget, task, measure): all units of the (method, budget) by the task's
    examples (sorted pool_ids), NaN where a unit has no finite value."""

    pool_ids: tuple[str, ...]
    values: np.ndarray

    def complete(self) -> set[str]:
        """Examples every unit has a finite value for."""
        finite = np.isfinite(self.values).all(axis=0)
        return {pool_id for pool_id, ok in zip(self.pool_ids, finite, strict=True) if ok}

    def take(self, pool_ids: Sequence[str]) -> np.ndarray:
        index = {pool_id: j for j, pool_id in enumerate(self.pool_ids)}
        return self.values[:, [index[pool_id] for pool_id in pool_ids]]


def group_seed(seed: int, method: str, budget: str, task: str, measure: str) -> int:
    """The RNG seed of one table cell: `seed` plus the CRC-32 of "method|budget|task|measure",
    so each cell has its own stream and the table does not depend on row order."""
    return seed + zlib.crc32(f"{method}|{budget}|{task}|{measure}".encode())


def _panel(rows: pl.DataFrame, units: list[tuple], value: str) -> _Panel:
    """Pivot one group's rows (selection_seed, seed, pool_id, `value`) into a _Panel over `units`."""
    pool_ids = tuple(sorted(set(rows["pool_id"].to_list())))
    column = {pool_id: j for j, pool_id in enumerate(pool_ids)}
    row = {unit: i for i, unit in enumerate(units)}
    values = np.full((len(units), len(pool_ids)), np.nan)
    for selection_seed, seed, pool_id, x in rows.select("selection_seed", "seed", "pool_id", value).iter_rows():
        if x is not None:
            values[row[(selection_seed, seed)], column[pool_id]] = x
    return _Panel(pool_ids=pool_ids, values=values)


def _task_measures(frame: pl.DataFrame) -> dict[str, dict[str, pl.Expr]]:
    """task -> measure -> the filter selecting its rows (value column: loss or score). Every task
    has "loss"; "score:<metric>" per metric with at least one non-null score ("score" when the
    metric is null)."""
    measures: dict[str, dict[str, pl.Expr]] = {}
    for task in sorted(frame["task"].unique().to_list()):
        measures[task] = {"loss": pl.lit(True)}
        scored = frame.filter((pl.col("task") == task) & pl.col("score").is_not_null())
        metrics = scored["metric"].unique().to_list()
        for metric in sorted(metrics, key=lambda m: (m is None, m or "")):
            if metric is None:
                measures[task]["score"] = pl.col("metric").is_null()
            else:
                measures[task][f"score:{metric}"] = pl.col("metric") == metric
    return measures


def _row(
    method: str,
    budget: str,
    train_size: int,
    task: str,
    measure: str,
    lower_is_better: bool,
    models: int,
    examples: int,
    estimate: Estimate | None,
    diff: Difference | None,
    verdict_: str,
) -> dict:
    """One output row of comparison_table."""
    return {
        "method": method,
        "budget": budget,
        "train_size": train_size,
        "task": task,
        "measure": measure,
        "lower_is_better": lower_is_better,
        "models": models,
        "examples": examples,
        "mean": None if estimate is None else estimate.mean,
        "ci_low": None if estimate is None else estimate.low,
        "ci_high": None if estimate is None else estimate.high,
        "delta": None if diff is None else diff.delta,
        "delta_low": None if diff is None else diff.low,
        "delta_high": None if diff is None else diff.high,
        "p_value": None if diff is None else diff.p_value,
        "verdict": verdict_,
    }


def comparison_table(rows: pl.DataFrame, baseline: str = "random", n_boot: int = 2000, seed: int = 0) -> pl.DataFrame:
    """Per (method, budget, task, measure): the seed-averaged mean with its CI and the paired
    difference against `baseline` at the same budget, plus balance-across-tasks rows.

    `rows` has one row per (model unit, eval example) with columns ``REQUIRED_COLUMNS``; a unit is
    a (selection_seed, seed) pair of a (method, budget). Measures: "loss" (lower is better) and
    "score:<metric>" (higher is better) where a task has scores. Each cell uses the examples that
    every unit of the method and every unit of the baseline have a finite value for (so a unit
    missing a whole task or measure leaves the cell without data: verdict "no data"); without a
    baseline (or none in common) the method's own complete examples, verdict "no baseline"; the
    baseline's own rows say "baseline". Task "(all tasks)" rows give "loss:mean", "loss:worst" and
    "loss:spread" over every task (and "score:..." over the scored tasks when there are at least
    two), each unit's per-task means summarised per unit, bootstrapped as in ``bootstrap_balance``
    (the three statistics of one kind on the same draws).
    `train_size` is the mean over a (method, budget)'s units, rounded, should they differ. Each
    cell's RNG seed is ``group_seed(seed, method, budget, task, measure)``, the balance rows'
    ``group_seed(seed, method, budget, "(all tasks)", kind)`` (kind "loss" or "score"). Sorted by train_size,
    method, budget, task ("(all tasks)" last), measure."""
    missing = [column for column in REQUIRED_COLUMNS if column not in rows.columns]
    if missing:
        raise ValueError(f"comparison_table: missing columns {missing}")
    frame = rows.select(REQUIRED_COLUMNS).with_columns(
        pl.col("loss").cast(pl.Float64), pl.col("score").cast(pl.Float64), pl.col("budget").cast(pl.Utf8)
    )
    key = ["method", "budget", "selection_seed", "seed", "task", "pool_id"]
    if frame.select(key).is_duplicated().any():
        raise ValueError("comparison_table: more than one row per (method, budget, unit, task, pool_id)")
    measures = _task_measures(frame)
    tasks = list(measures)

    groups: dict[tuple[str, str], dict] = {}
    for (method, budget), group in sorted(frame.partition_by(["method", "budget"], as_dict=True).items()):
        units = group.select("selection_seed", "seed").unique().sort("selection_seed", "seed").rows()
        panels: dict[tuple[str, str], _Panel] = {}
        for task in tasks:
            task_rows = group.filter(pl.col("task") == task)
            for measure, selector in measures[task].items():
                value = "loss" if measure == "loss" else "score"
                panels[(task, measure)] = _panel(task_rows.filter(selector), units, value)
        per_unit_size = group.group_by("selection_seed", "seed").agg(pl.col("train_size").first())["train_size"]
        groups[(method, budget)] = {
            "models": len(units),
            "train_size": None if per_unit_size.mean() is None else int(round(float(per_unit_size.mean()))),
            "panels": panels,
        }

    out = []
    for (method, budget), info in groups.items():
        is_baseline = method == baseline
        base = None if is_baseline else groups.get((baseline, budget))
        common = (method, budget, info["train_size"])
        for task in tasks:
            for measure in measures[task]:
                lower = measure == "loss"
                base_panel = None if base is None else base["panels"][(task, measure)]
                cell = _cell(
                    info["panels"][(task, measure)],
                    base_panel,
                    is_baseline,
                    lower,
                    n_boot,
                    group_seed(seed, method, budget, task, measure),
                )
                out.append(_row(*common, task, measure, lower, info["models"], *cell))
        for kind, task_measure in _balance_measures(measures).items():
            ours = {task: info["panels"][(task, name)] for task, name in task_measure.items()}
            theirs = (
                None if base is None else {task: base["panels"][(task, name)] for task, name in task_measure.items()}
            )
            cells = _balance_cells(
                ours, theirs, is_baseline, kind == "loss", n_boot, group_seed(seed, method, budget, ALL_TASKS, kind)
            )
            for statistic, cell in cells.items():
                lower = kind == "loss" or statistic == "spread"
                out.append(_row(*common, ALL_TASKS, f"{kind}:{statistic}", lower, info["models"], *cell))

    table = pl.DataFrame(out, schema=TABLE_SCHEMA)
    return (
        table.with_columns((pl.col("task") == ALL_TASKS).alias("_all"))
        .sort("train_size", "method", "budget", "_all", "task", "measure")
        .drop("_all")
    )


def _balance_measures(measures: dict[str, dict[str, pl.Expr]]) -> dict[str, dict[str, str]]:
    """kind ("loss", "score") -> task -> the measure it is balanced over: loss on every task;
    score (each task's first score measure) only when at least two tasks have one."""
    kinds = {"loss": {task: "loss" for task in measures}}
    scored = {task: next(m for m in names if m != "loss") for task, names in measures.items() if len(names) > 1}
    if len(scored) >= 2:
        kinds["score"] = scored
    return kinds


_Cell = tuple[int, Estimate | None, Difference | None, str]


def _cell(
    panel: _Panel, base_panel: _Panel | None, is_baseline: bool, lower_is_better: bool, n_boot: int, seed: int
) -> _Cell:
    """(examples, estimate, difference, verdict) of one task's measure; see comparison_table."""
    own = panel.complete()
    joint = sorted(own & base_panel.complete()) if base_panel is not None else []
    if joint:
        ours = panel.take(joint)
        diff = paired_difference(ours, base_panel.take(joint), n_boot=n_boot, seed=seed)
        return len(joint), bootstrap_mean(ours, n_boot=n_boot, seed=seed), diff, verdict(diff, lower_is_better)
    if not own:
        return 0, None, None, "no data"
    estimate = bootstrap_mean(panel.take(sorted(own)), n_boot=n_boot, seed=seed)
    return len(own), estimate, None, "baseline" if is_baseline else "no baseline"


def _balance_cells(
    panels: dict[str, _Panel],
    base_panels: dict[str, _Panel] | None,
    is_baseline: bool,
    measure_lower_is_better: bool,
    n_boot: int,
    seed: int,
) -> dict[str, _Cell]:
    """statistic -> (examples, estimate, difference, verdict) of the balance rows of one kind,
    all statistics on the same draws, with the per-task intersection rule of ``_cell``: the joint
    examples when every task has some, else each task's own."""
    own = {task: sorted(panel.complete()) for task, panel in panels.items()}
    joint = None
    if base_panels is not None:
        joint = {task: sorted(set(own[task]) & base_panels[task].complete()) for task in panels}
        if not all(joint.values()):
            joint = None
    options = {"lower_is_better": measure_lower_is_better, "n_boot": n_boot, "seed": seed, "confidence": 0.95}
    if joint is not None:
        ours = {task: panels[task].take(ids) for task, ids in joint.items()}
        theirs = {task: base_panels[task].take(ids) for task, ids in joint.items()}
        estimates = _bootstrap_balances(ours, BALANCE_STATISTICS, **options)
        diffs = _balance_differences(ours, theirs, BALANCE_STATISTICS, **options)
        examples = sum(len(ids) for ids in joint.values())
        return {
            statistic: (
                examples,
                estimates[statistic],
                diffs[statistic],
                verdict(diffs[statistic], lower_is_better=measure_lower_is_better or statistic == "spread"),
            )
            for statistic in BALANCE_STATISTICS
        }
    if not all(own.values()):
        return {statistic: (0, None, None, "no data") for statistic in BALANCE_STATISTICS}
    ours = {task: panels[task].take(ids) for task, ids in own.items()}
    estimates = _bootstrap_balances(ours, BALANCE_STATISTICS, **options)
    examples = sum(len(ids) for ids in own.values())
    label = "baseline" if is_baseline else "no baseline"
    return {statistic: (examples, estimates[statistic], None, label) for statistic in BALANCE_STATISTICS}


def format_verdict_cell(row: dict) -> str:
    """Display text for a table row's comparison, e.g. "-0.034 [-0.051, -0.017] p=0.001 better"
    (4 significant digits); just the verdict when there is no difference to show."""
    if row.get("delta") is None:
        return str(row["verdict"])
    return (
        f"{row['delta']:.4g} [{row['delta_low']:.4g}, {row['delta_high']:.4g}] p={row['p_value']:.4g} {row['verdict']}"
    )
