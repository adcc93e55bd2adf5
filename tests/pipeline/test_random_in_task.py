"""``random_in_task``: the task-matched random baseline. Expected values come from the task
labels written into each test (which rows are the task's), from binomial bounds, and from the
``random`` baseline on a pool of that one task - never from the selector itself."""

import dataclasses
import math

import dagster as dg
import numpy as np
import pytest

from dsel_assets.app.compare import ComparePlan
from dsel_assets.core.select import build_config, get
from dsel_assets.pipeline.assets.selection.selections import seed_replicates, selection_assets
from dsel_assets.pipeline.checks import selection_problems
from dsel_assets.pipeline.registry import representation
from resources.store import open_state

from ..helpers import synthetic_pool_instance

# 25 pool rows of tasks a, b and c; the ids of the rows of a and of c, listed by hand below.
TASKS = ["a", "b", "c", "a", "b", "a", "a", "c", "b", "a", "b", "b", "a", "c", "a", "b", "a", "b", "c", "a", "b"]
TASKS += ["b", "a", "c", "b"]
IDS = [f"p{i:02d}" for i in range(len(TASKS))]
OF_A = ["p00", "p03", "p05", "p06", "p09", "p12", "p14", "p16", "p19", "p22"]
OF_C = ["p02", "p07", "p13", "p18", "p23"]


def select(k, task="a", seed=0, ids=IDS, tasks=TASKS):
    config = build_config("random_in_task", {"task": task, "seed": seed})
    return get("random_in_task").select(ids, k, config, pool_tasks=np.array(tasks, dtype=object))


def test_the_hand_written_labels_are_what_the_tests_assume():
    assert [i for i, t in zip(IDS, TASKS, strict=True) if t == "a"] == OF_A
    assert [i for i, t in zip(IDS, TASKS, strict=True) if t == "c"] == OF_C


@pytest.mark.parametrize("seed", range(20))
def test_only_rows_of_the_task_and_budgets_are_prefixes(seed):
    whole = select(10, seed=seed)
    assert sorted(whole.ids) == OF_A  # k = the task's size: a permutation of exactly its rows
    assert whole.diagnostics["eligible"] == 10 and whole.diagnostics["task"] == "a"
    for k in (0, 1, 3, 7):
        part = select(k, seed=seed)
        assert part.ids == whole.ids[:k] and set(part.ids) <= set(OF_A)
        assert part.diagnostics["eligible"] == 10
    assert set(select(4, task="c", seed=seed).ids) <= set(OF_C)


def test_fewer_task_rows_than_k_gives_all_of_them():
    for k in (5, 6, 12, 25, 1000):
        sel = select(k, task="c", seed=3)
        assert sorted(sel.ids) == OF_C and sel.diagnostics["eligible"] == 5  # min(k, eligible) = 5
    only = select(3, task="solo", ids=["x", "y", "z"], tasks=["other", "solo", "other"])
    assert only.ids == ["y"] and only.diagnostics["eligible"] == 1


def test_same_seed_same_selection_different_seeds_different_selections():
    assert select(5, seed=11).ids == select(5, seed=11).ids
    # 200 seeds drawing 5 of 10 in order (30,240 orders): all identical would be a broken seed;
    # a birthday bound allows some repeats (expected 200^2 / (2 x 30,240) = 0.66), never many
    draws = [tuple(select(5, seed=s).ids) for s in range(200)]
    assert len(set(draws)) >= 195
    assert select(10, seed=0).ids != select(10, seed=1).ids


def test_each_row_of_the_task_is_drawn_at_rate_k_over_n_task():
    seeds, k, n_task = 3000, 3, len(OF_A)
    picked = {i: 0 for i in OF_A}
    first = {i: 0 for i in OF_A}
    for seed in range(seeds):
        ids = select(k, seed=seed).ids
        first[ids[0]] += 1
        for i in ids:
            picked[i] += 1
    for counts, p in ((picked, k / n_task), (first, 1 / n_task)):
        bound = 5 * math.sqrt(seeds * p * (1 - p))  # 5 binomial standard deviations
        assert all(abs(c - seeds * p) <= bound for c in counts.values()), (counts, seeds * p, bound)


def test_on_a_pool_of_one_task_it_is_the_random_baseline_seed_for_seed():
    tasks = ["only"] * len(IDS)
    for seed in range(10):
        baseline = get("random").select(IDS, 7, build_config("random", {"seed": seed}))
        assert select(7, task="only", seed=seed, tasks=tasks).ids == baseline.ids


def test_selection_seed_replicates_keep_the_task():
    config = build_config("random_in_task", {"task": "a", "seed": 4})
    replicates = seed_replicates(config, [0, 1, 2])
    assert [(s, c.seed, c.task) for s, c in replicates] == [(0, 0, "a"), (1, 1, "a"), (2, 2, "a")]
    assert seed_replicates(config, []) == [(4, config)]
    for seed, replicate in replicates:
        got = get("random_in_task").select(IDS, 4, replicate, pool_tasks=np.array(TASKS, dtype=object))
        assert got.ids == select(4, seed=seed).ids


def test_an_empty_or_unknown_task_is_refused_naming_the_key_value_and_choices():
    with pytest.raises(
        ValueError, match=r"random_in_task\.task: 'nope' is not a task of the pool; one of \['a', 'b', 'c'\]"
    ):
        select(3, task="nope")
    with pytest.raises(ValueError, match=r"random_in_task\.task: required \(a task label of the pool\)"):
        select(3, task="")
    assert build_config("random_in_task").task == ""  # the default: compare / --target fill it


def test_compare_and_select_fill_the_task_from_the_target():
    plan = ComparePlan(methods=["random", "random_in_task"], budgets=["5%"], targets=["math"])
    assert plan.method_params("random_in_task") == {"task": "math"}
    assert plan.method_params("random") == {}
    two = ComparePlan(methods=["random", "random_in_task"], budgets=["5%"], targets=["math", "code"])
    assert two.method_params("random_in_task") == {"task": "math"}  # one task: the first target
    ops = plan.run_config()["ops"]
    assert ops["selection_random_in_task"]["config"]["params"] == {"task": "math"}
    custom = ComparePlan(["random", "random_in_task"], ["5%"], ["math"], params={"random_in_task": {"task": "code"}})
    assert custom.method_params("random_in_task") == {"task": "code"}


def test_registration_and_asset():
    spec = get("random_in_task")
    assert spec.family == "targeted" and spec.needs == ("pool_tasks",)
    assert {f.name for f in dataclasses.fields(spec.config_cls)} == {"task", "seed"}
    assert representation("pool_tasks").asset == "pool" and not representation("pool_tasks").per_batch
    asset = next(a for a in selection_assets if a.key.path[-1] == "selection_random_in_task")
    assert dg.AssetKey("pool") in asset.dependency_keys
    assert asset.metadata_by_key[asset.key]["needs"] == "pool_tasks"


def test_the_asset_selects_the_target_tasks_pool_rows_with_checked_replicates(home, local_resources):
    instance = synthetic_pool_instance(home, local_resources)
    asset = next(a for a in selection_assets if a.key.path[-1] == "selection_random_in_task")
    params = {"task": "arithmetic"}
    config = {
        "ops": {"selection_random_in_task": {"config": {"budgets": ["2", "500"], "seeds": [0, 1], "params": params}}}
    }
    assert dg.materialize([asset], resources=local_resources, instance=instance, run_config=config).success
    with open_state(home.duckdb, read_only=True) as db:
        every_column = db.columns("selections")
        rows = db.rows_matching("selections", every_column, {"method": "random_in_task"})
        examples = db.split_rows("pool", ["pool_id", "task"])
    arithmetic = set(examples.filter(examples["task"] == "arithmetic")["pool_id"])
    assert 0 < len(arithmetic) < examples.height
    assert set(rows["pool_id"]) <= arithmetic
    for seed in (0, 1):
        mine = rows.filter(rows["selection_seed"] == seed).sort("rank")
        small, whole = mine.filter(mine["budget"] == "2"), mine.filter(mine["budget"] == "500")
        assert set(whole["pool_id"]) == arithmetic and set(whole["eligible"]) == {len(arithmetic)}  # all, k > n
        assert small["pool_id"].to_list() == whole["pool_id"].to_list()[:2]  # budgets are prefixes
    assert selection_problems(rows, {v: set(examples["pool_id"]) for v in rows["pool_version"].unique()}) == []
    tasks = ", ".join(sorted(set(examples["task"])))
    for task, problem in (("poetry", "'poetry' is not a task of the pool"), ("", "a target task is required")):
        bad = {"ops": {"selection_random_in_task": {"config": {"budgets": ["2"], "params": {"task": task}}}}}
        with pytest.raises(ValueError, match=rf"random_in_task\.task: {problem}; tasks of the pool: {tasks}$"):
            dg.materialize([asset], resources=local_resources, instance=instance, run_config=bad)
