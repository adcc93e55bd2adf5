"""The method-comparison statistics: exact known shifts, hand-computed point estimates, the
bootstrap against a plain per-replicate loop with the documented draw order, the no-difference
and clear-difference cases over many seeds, and the comparison table on a synthetic frame."""

import zlib

import numpy as np
import polars as pl
import pytest

from dsel_assets.core import stats
from dsel_assets.core.stats import (
    Difference,
    balance_difference,
    bootstrap_balance,
    bootstrap_mean,
    comparison_table,
    format_verdict_cell,
    paired_difference,
    verdict,
)

# --------------------------------------------------------------------------------------------
# brute-force references: one replicate at a time, straight from the documented draw order


def quantiles(replicates, confidence=0.95):
    alpha = (1 - confidence) / 2
    return np.quantile(np.array(replicates), [alpha, 1 - alpha])


def p_value(replicates):
    replicates = np.array(replicates)
    if np.all(replicates == 0):
        return 1.0
    below = (1 + np.sum(replicates <= 0)) / (len(replicates) + 1)
    above = (1 + np.sum(replicates >= 0)) / (len(replicates) + 1)
    return min(1.0, 2 * min(below, above))


def brute_mean(values, n_boot, seed):
    rng = np.random.default_rng(seed)
    m, n = values.shape
    replicates = []
    for _ in range(n_boot):
        rows = rng.integers(0, m, m)
        cols = rng.integers(0, n, n)
        replicates.append(values[rows][:, cols].mean())
    return (values.mean(), *quantiles(replicates))


def brute_difference(method, baseline, n_boot, seed):
    rng = np.random.default_rng(seed)
    (m, n), b = method.shape, baseline.shape[0]
    replicates = []
    for _ in range(n_boot):
        rows_m = rng.integers(0, m, m)
        rows_b = rng.integers(0, b, b)
        cols = rng.integers(0, n, n)
        replicates.append(method[rows_m][:, cols].mean() - baseline[rows_b][:, cols].mean())
    return (method.mean() - baseline.mean(), *quantiles(replicates), p_value(replicates))


def balance_by_definition(tasks, statistic, lower_is_better):
    """Per unit: its mean on each task, the statistic over tasks; then the mean over units."""
    names = sorted(tasks)
    per_unit = []
    for unit in range(tasks[names[0]].shape[0]):
        task_means = [float(np.mean(tasks[name][unit])) for name in names]
        if statistic == "mean":
            per_unit.append(np.mean(task_means))
        elif statistic == "worst":
            per_unit.append(max(task_means) if lower_is_better else min(task_means))
        else:
            per_unit.append(max(task_means) - min(task_means))
    return float(np.mean(per_unit))


def brute_balance_difference(method, baseline, statistic, lower_is_better, n_boot, seed):
    rng = np.random.default_rng(seed)
    names = sorted(method)
    m, b = method[names[0]].shape[0], baseline[names[0]].shape[0]
    replicates = []
    for _ in range(n_boot):
        rows_m = rng.integers(0, m, m)
        rows_b = rng.integers(0, b, b)
        cols = {name: rng.integers(0, method[name].shape[1], method[name].shape[1]) for name in names}
        ours = {name: method[name][rows_m][:, cols[name]] for name in names}
        theirs = {name: baseline[name][rows_b][:, cols[name]] for name in names}
        replicates.append(
            balance_by_definition(ours, statistic, lower_is_better)
            - balance_by_definition(theirs, statistic, lower_is_better)
        )
    delta = balance_by_definition(method, statistic, lower_is_better) - balance_by_definition(
        baseline, statistic, lower_is_better
    )
    return (delta, *quantiles(replicates), p_value(replicates))


def brute_balance(tasks, statistic, lower_is_better, n_boot, seed):
    rng = np.random.default_rng(seed)
    names = sorted(tasks)
    m = tasks[names[0]].shape[0]
    replicates = []
    for _ in range(n_boot):
        rows = rng.integers(0, m, m)
        resampled = {}
        for name in names:
            n = tasks[name].shape[1]
            resampled[name] = tasks[name][rows][:, rng.integers(0, n, n)]
        replicates.append(balance_by_definition(resampled, statistic, lower_is_better))
    return (balance_by_definition(tasks, statistic, lower_is_better), *quantiles(replicates))


def as_tuple(result):
    if isinstance(result, Difference):
        return (result.delta, result.low, result.high, result.p_value)
    return (result.mean, result.low, result.high)


# --------------------------------------------------------------------------------------------
# 1. an exactly known shift


@pytest.mark.parametrize("units", [(1, 1), (3, 2)])
def test_known_shift_is_exact(units):
    """method = baseline + 0.25 on every example and unit (dyadic values, 8 examples: all exact)."""
    row = np.array([0.5, 1.0, 1.5, 2.0, 3.0, 4.5, 6.0, 8.0])
    method = np.tile(row + 0.25, (units[0], 1))
    baseline = np.tile(row, (units[1], 1))
    diff = paired_difference(method, baseline, n_boot=500, seed=1)
    assert diff.delta == 0.25
    assert (diff.low, diff.high) == (0.25, 0.25)
    assert diff.p_value < 0.01
    assert verdict(diff, lower_is_better=True) == "worse"  # a loss went up
    assert verdict(diff, lower_is_better=False) == "better"  # a score went up
    assert verdict(paired_difference(baseline, method, n_boot=500, seed=1), lower_is_better=True) == "better"
    assert verdict(None, lower_is_better=True) == "no baseline"


# --------------------------------------------------------------------------------------------
# 2. the bootstrap equals the plain per-replicate loop


def test_bootstrap_mean_matches_brute_force_loop():
    values = np.array([[1, 2, 3, 4, 5], [2, 2, 2, 2, 9]], dtype=float)
    got = as_tuple(bootstrap_mean(values, n_boot=500, seed=7))
    assert got == pytest.approx(brute_mean(values, n_boot=500, seed=7), abs=1e-12)
    assert got[0] == pytest.approx(3.2, abs=1e-15)


def test_paired_difference_matches_brute_force_loop():
    rng = np.random.default_rng(11)
    method = rng.normal(1.0, 1.0, (3, 7))
    baseline = rng.normal(0.8, 1.0, (2, 7))
    got = as_tuple(paired_difference(method, baseline, n_boot=500, seed=3))
    assert got == pytest.approx(brute_difference(method, baseline, n_boot=500, seed=3), abs=1e-12)


@pytest.mark.parametrize(("statistic", "lower_is_better"), [("worst", True), ("spread", False), ("mean", True)])
def test_balance_matches_brute_force_loop(statistic, lower_is_better):
    rng = np.random.default_rng(5)
    method = {"b": rng.normal(1, 1, (3, 4)), "a": rng.normal(2, 1, (3, 6))}  # keys out of order on purpose
    baseline = {"b": rng.normal(1, 1, (2, 4)), "a": rng.normal(2, 1, (2, 6))}
    got = as_tuple(bootstrap_balance(method, statistic, lower_is_better, n_boot=300, seed=9))
    assert got == pytest.approx(brute_balance(method, statistic, lower_is_better, n_boot=300, seed=9), abs=1e-12)
    got = as_tuple(balance_difference(method, baseline, statistic, lower_is_better, n_boot=300, seed=4))
    expected = brute_balance_difference(method, baseline, statistic, lower_is_better, n_boot=300, seed=4)
    assert got == pytest.approx(expected, abs=1e-12)


def test_chunked_replicates_equal_the_loop(monkeypatch):
    """Tiny chunks (a few replicates each) still give the loop's result."""
    monkeypatch.setattr(stats, "_MAX_FLOATS", 60)
    rng = np.random.default_rng(2)
    method, baseline = rng.normal(size=(2, 9)), rng.normal(size=(3, 9))
    assert as_tuple(bootstrap_mean(method, n_boot=101, seed=0)) == pytest.approx(
        brute_mean(method, n_boot=101, seed=0), abs=1e-12
    )
    assert as_tuple(paired_difference(method, baseline, n_boot=101, seed=0)) == pytest.approx(
        brute_difference(method, baseline, n_boot=101, seed=0), abs=1e-12
    )


# --------------------------------------------------------------------------------------------
# 3. point estimates by hand


def test_point_estimates_by_hand():
    """method unit means 2 and 4 -> 3; baseline unit means 1, 2, 1 -> 4/3; delta 5/3."""
    method = np.array([[1, 2, 3], [3, 4, 5]], dtype=float)
    baseline = np.array([[1, 1, 1], [2, 2, 2], [0, 3, 0]], dtype=float)
    assert bootstrap_mean(method, n_boot=50).mean == pytest.approx(3.0)
    assert paired_difference(method, baseline, n_boot=50).delta == pytest.approx(5 / 3)


def test_balance_point_estimates_by_hand():
    """Task a unit means (2, 2), task b (5, 1): per unit mean of tasks 3.5, 1.5 -> 2.5 (not the
    pooled 7/3); worst loss (max) 5, 2 -> 3.5; worst score (min) 2, 1 -> 1.5; spread 3, 1 -> 2."""
    tasks = {"a": np.array([[1.0, 3.0], [2.0, 2.0]]), "b": np.array([[5.0], [1.0]])}
    assert bootstrap_balance(tasks, "mean", True, n_boot=50).mean == pytest.approx(2.5)
    assert bootstrap_balance(tasks, "worst", True, n_boot=50).mean == pytest.approx(3.5)
    assert bootstrap_balance(tasks, "worst", False, n_boot=50).mean == pytest.approx(1.5)
    assert bootstrap_balance(tasks, "spread", True, n_boot=50).mean == pytest.approx(2.0)
    flat = {"a": np.array([[2.0, 2.0], [2.0, 2.0]]), "b": np.array([[2.0], [2.0]])}
    diff = balance_difference(tasks, flat, "spread", True, n_boot=50)
    assert diff.delta == pytest.approx(2.0)


# --------------------------------------------------------------------------------------------
# 4. no difference; 5. a clear difference


def shared_difficulty(seed, shift, n=60, units=(2, 3), noise=0.1):
    """Method and baseline on the same examples (shared difficulty), independent small noise."""
    rng = np.random.default_rng(seed)
    difficulty = rng.normal(2.0, 1.0, n)
    method = difficulty + shift + rng.normal(0.0, noise, (units[0], n))
    baseline = difficulty + rng.normal(0.0, noise, (units[1], n))
    return method, baseline


def test_no_difference_is_mostly_undetected():
    verdicts = [
        verdict(paired_difference(*shared_difficulty(100 + s, 0.0), n_boot=400, seed=s), lower_is_better=True)
        for s in range(20)
    ]
    assert verdicts.count("no detectable difference") >= 17


@pytest.mark.parametrize("units", [1, 3])
def test_identical_inputs(units):
    values = np.tile(np.random.default_rng(0).normal(size=30), (units, 1))
    diff = paired_difference(values, values.copy(), n_boot=300)
    assert diff.delta == 0.0
    assert (diff.low, diff.high, diff.p_value) == (0.0, 0.0, 1.0)
    assert verdict(diff, lower_is_better=True) == "no detectable difference"


def test_identical_multi_unit_inputs_show_no_difference():
    values = np.random.default_rng(1).normal(size=(3, 30))
    diff = paired_difference(values, values.copy(), n_boot=300)
    assert diff.delta == 0.0
    assert diff.low <= 0.0 <= diff.high
    assert diff.p_value > 0.5
    assert verdict(diff, lower_is_better=False) == "no detectable difference"


def test_clear_difference_is_always_detected():
    for s in range(20):
        diff = paired_difference(*shared_difficulty(200 + s, 0.3, n=100), n_boot=200, seed=s)
        assert verdict(diff, lower_is_better=True) == "worse", (s, diff)


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="non-finite"):
        bootstrap_mean(np.array([[1.0, np.nan]]))
    with pytest.raises(ValueError, match="share their examples"):
        paired_difference(np.ones((2, 3)), np.ones((2, 4)))
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_mean(np.ones((1, 2)), n_boot=0)
    with pytest.raises(ValueError, match="statistic"):
        bootstrap_balance({"a": np.ones((1, 2))}, "median", True, n_boot=5)


def test_format_verdict_cell():
    row = {"delta": -0.0341234, "delta_low": -0.051234, "delta_high": -0.016981, "p_value": 0.001, "verdict": "better"}
    assert format_verdict_cell(row) == "-0.03412 [-0.05123, -0.01698] p=0.001 better"
    assert format_verdict_cell({"delta": None, "verdict": "baseline"}) == "baseline"


# --------------------------------------------------------------------------------------------
# 6. the comparison table

N_BOOT = 200
TASKS = {"gsm": 6, "summ": 5}
UNITS = {
    ("random", "5%", 100): [(0, 0), (0, 1), (1, 0), (1, 1)],
    ("less", "5%", 100): [(0, 0), (0, 1)],
    ("base", "0", 0): [(0, 0)],
}
SHIFT = {"random": 0.0, "less": 0.5, "base": 1.0}
DROPPED = ("random", (1, 0), "gsm-03")  # one unit lacks this example entirely
NULL_SCORE = ("less", (0, 1), "summ-02")  # one unit has no score for this example
METRICS = {"summ": "rouge_l", "gsm": "gsm8k_exact_match"}


def make_rows(scored=("summ",)):
    rng = np.random.default_rng(0)
    difficulty = {f"{task}-{j:02d}": rng.normal(2.0, 0.5) for task, n in TASKS.items() for j in range(n)}
    rows = []
    for (method, budget, size), units in UNITS.items():
        for selection_seed, seed in units:
            for task, n in TASKS.items():
                for j in range(n):
                    pool_id = f"{task}-{j:02d}"
                    if (method, (selection_seed, seed), pool_id) == DROPPED:
                        continue
                    loss = difficulty[pool_id] + SHIFT[method] + rng.normal(0.0, 0.05)
                    score = metric = None
                    if task in scored:
                        metric = METRICS[task]
                        score = float(np.clip(0.9 - 0.2 * SHIFT[method] + rng.normal(0.0, 0.05), 0.0, 1.0))
                        if (method, (selection_seed, seed), pool_id) == NULL_SCORE:
                            score = None
                    rows.append(
                        {
                            "method": method,
                            "budget": budget,
                            "train_size": size,
                            "selection_seed": selection_seed,
                            "seed": seed,
                            "task": task,
                            "pool_id": pool_id,
                            "loss": loss,
                            "score": score,
                            "metric": metric,
                        }
                    )
    return rows


def matrix(rows, method, task, value, pool_ids):
    """[units sorted by (selection_seed, seed), pool_ids] straight from the row dicts."""
    cells = {
        ((r["selection_seed"], r["seed"]), r["pool_id"]): r[value]
        for r in rows
        if r["method"] == method and r["task"] == task
    }
    units = sorted({unit for unit, _ in cells})
    return np.array([[cells[(unit, pool_id)] for pool_id in pool_ids] for unit in units])


def complete_ids(rows, methods, task, value):
    """Examples of `task` that every unit of every method in `methods` has a value for."""
    have = {}
    for r in rows:
        if r["method"] in methods and r["task"] == task and r[value] is not None:
            have.setdefault(r["pool_id"], set()).add((r["method"], r["selection_seed"], r["seed"]))
    needed = {(method, *unit) for (method, _, _), units in UNITS.items() if method in methods for unit in units}
    return sorted(pool_id for pool_id, units in have.items() if units == needed)


@pytest.fixture(scope="module")
def table_rows():
    return make_rows()


@pytest.fixture(scope="module")
def table(table_rows):
    return comparison_table(pl.DataFrame(table_rows), n_boot=N_BOOT, seed=0)


def cell(table, method, task, measure):
    found = table.filter((pl.col("method") == method) & (pl.col("task") == task) & (pl.col("measure") == measure))
    assert len(found) == 1
    return found.row(0, named=True)


def test_table_columns_and_rows(table):
    assert table.columns == [
        *("method", "budget", "train_size", "task", "measure", "lower_is_better", "models", "examples"),
        *("mean", "ci_low", "ci_high", "delta", "delta_low", "delta_high", "p_value", "verdict"),
    ]
    per_group = [
        ("gsm", "loss"),
        ("summ", "loss"),
        ("summ", "score:rouge_l"),
        ("(all tasks)", "loss:mean"),
        ("(all tasks)", "loss:spread"),
        ("(all tasks)", "loss:worst"),
    ]
    expected = [(m, b, *tm) for m, b in [("base", "0"), ("less", "5%"), ("random", "5%")] for tm in per_group]
    assert table.select("method", "budget", "task", "measure").rows() == expected  # also the sort order
    assert table["train_size"].to_list() == [0] * 6 + [100] * 12
    assert table["models"].to_list() == [1] * 6 + [2] * 6 + [4] * 6
    lower = dict(zip(table["measure"], table["lower_is_better"], strict=True))
    assert lower == {
        "loss": True,
        "score:rouge_l": False,
        "loss:mean": True,
        "loss:spread": True,
        "loss:worst": True,
    }


def test_table_verdicts(table):
    assert set(table.filter(pl.col("method") == "random")["verdict"]) == {"baseline"}
    base = table.filter(pl.col("method") == "base")
    assert set(base["verdict"]) == {"no baseline"}
    assert base["delta"].null_count() == len(base) and base["p_value"].null_count() == len(base)
    assert base["mean"].null_count() == 0
    assert cell(table, "less", "gsm", "loss")["verdict"] == "worse"  # loss + 0.5
    assert cell(table, "less", "summ", "score:rouge_l")["verdict"] == "worse"  # score - 0.1
    assert cell(table, "less", "(all tasks)", "loss:mean")["verdict"] == "worse"


def test_table_intersection_drops_incomplete_examples(table):
    """gsm-03 is missing for one random unit: gone for random, and for less (paired with random),
    kept for base (no baseline). The null score drops summ-02 from less's score only."""
    examples = {(r["method"], r["task"], r["measure"]): r["examples"] for r in table.iter_rows(named=True)}
    assert examples[("random", "gsm", "loss")] == 5
    assert examples[("less", "gsm", "loss")] == 5
    assert examples[("base", "gsm", "loss")] == 6
    assert examples[("less", "summ", "score:rouge_l")] == 4
    assert examples[("random", "summ", "score:rouge_l")] == 5
    assert examples[("less", "summ", "loss")] == 5
    assert examples[("less", "(all tasks)", "loss:mean")] == 10
    assert examples[("base", "(all tasks)", "loss:mean")] == 11


def test_table_cell_by_hand(table, table_rows):
    ids = complete_ids(table_rows, {"less", "random"}, "gsm", "loss")
    assert ids == ["gsm-00", "gsm-01", "gsm-02", "gsm-04", "gsm-05"]
    less = matrix(table_rows, "less", "gsm", "loss", ids)
    random = matrix(table_rows, "random", "gsm", "loss", ids)
    seed = zlib.crc32(b"less|5%|gsm|loss")
    row = cell(table, "less", "gsm", "loss")
    by_hand_mean = np.mean([np.mean(unit) for unit in less])
    by_hand_delta = by_hand_mean - np.mean([np.mean(unit) for unit in random])
    assert row["mean"] == pytest.approx(by_hand_mean, abs=1e-12)
    assert row["delta"] == pytest.approx(by_hand_delta, abs=1e-12)
    assert (row["mean"], row["ci_low"], row["ci_high"]) == pytest.approx(brute_mean(less, N_BOOT, seed), abs=1e-12)
    assert (row["delta"], row["delta_low"], row["delta_high"], row["p_value"]) == pytest.approx(
        brute_difference(less, random, N_BOOT, seed), abs=1e-12
    )


def test_table_balance_cell_by_hand(table, table_rows):
    ours, theirs = {}, {}
    for task in TASKS:
        ids = complete_ids(table_rows, {"less", "random"}, task, "loss")
        ours[task] = matrix(table_rows, "less", task, "loss", ids)
        theirs[task] = matrix(table_rows, "random", task, "loss", ids)
    seed = zlib.crc32(b"less|5%|(all tasks)|loss")  # one draw for loss:mean/worst/spread
    for statistic in ("mean", "worst", "spread"):
        row = cell(table, "less", "(all tasks)", f"loss:{statistic}")
        expected = brute_balance_difference(ours, theirs, statistic, True, N_BOOT, seed)
        assert (row["delta"], row["delta_low"], row["delta_high"], row["p_value"]) == pytest.approx(expected, abs=1e-12)
        assert (row["mean"], row["ci_low"], row["ci_high"]) == pytest.approx(
            brute_balance(ours, statistic, True, N_BOOT, seed), abs=1e-12
        )


def test_table_ignores_row_order(table, table_rows):
    shuffled = pl.DataFrame(table_rows).sample(fraction=1.0, shuffle=True, seed=3)
    assert comparison_table(shuffled, n_boot=N_BOOT, seed=0).equals(table)


def test_table_score_balance_needs_two_scored_tasks(table):
    assert not table.filter(pl.col("measure").str.starts_with("score:") & (pl.col("task") == "(all tasks)")).height
    both = comparison_table(pl.DataFrame(make_rows(scored=("gsm", "summ"))), n_boot=50)
    balance = both.filter((pl.col("method") == "less") & (pl.col("task") == "(all tasks)"))
    lower = dict(zip(balance["measure"], balance["lower_is_better"], strict=True))
    assert lower == {
        "loss:mean": True,
        "loss:spread": True,
        "loss:worst": True,
        "score:mean": False,
        "score:spread": True,
        "score:worst": False,
    }
    assert cell(both, "less", "gsm", "score:gsm8k_exact_match")["examples"] == 5


def test_table_rejects_bad_frames(table_rows):
    with pytest.raises(ValueError, match="missing columns"):
        comparison_table(pl.DataFrame(table_rows).drop("pool_id"))
    with pytest.raises(ValueError, match="more than one row"):
        comparison_table(pl.DataFrame(table_rows + table_rows[:1]))
