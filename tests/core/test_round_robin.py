"""Round-robin's two rules: the study's turns over query rows, and RDS+'s turns over tasks
(max over a task's query rows; a pop already taken spends the turn), the latter checked against
a transcription of the reference's arithmetic (hamishivi/automated-instruction-selection
@df71a04, minimal_multitask/get_top_aggregated_influences.py, ``--selection_method max
--aggregation_method round_robin``)."""

import math

import numpy as np
import pytest

from dsel_assets.core.select import build_config, get
from dsel_assets.core.select.targeted import Influence

from ..helpers import pool_ids


def reference_rds_round_robin(scores: np.ndarray, tasks: tuple[str, ...], k: int) -> list[int]:
    """The reference script's steps on plain Python values: per task (one input file each), the
    max over its test points for every train index; each task's (index, score) list sorted by
    score, descending (a stable sort: ties keep index order); then tasks in turn pop their first
    entry into a dict until it holds ``k`` indices (a pop already in the dict adds nothing)."""
    per_task = {}
    for task in dict.fromkeys(tasks):
        columns = [c for c, t in enumerate(tasks) if t == task]
        influences = {train: max(float(scores[train, c]) for c in columns) for train in range(len(scores))}
        per_task[task] = sorted(influences.items(), key=lambda x: x[1], reverse=True)
    chosen: dict[int, float] = {}
    while len(chosen) < k:
        for task in per_task:
            if len(chosen) >= k:
                break
            idx, score = per_task[task].pop(0)
            chosen[idx] = min(score, chosen.get(idx, math.inf))
    return list(chosen)


def select(scores, tasks, k, **params):
    config = build_config("round_robin", params)
    return get("round_robin").select(pool_ids(len(scores)), k, config, influence=Influence(scores, tasks))


@pytest.mark.parametrize("seed", range(60))
def test_tasks_rule_matches_the_reference_transcription(seed):
    rng = np.random.default_rng(seed)
    n, n_tasks = int(rng.integers(5, 40)), int(rng.integers(1, 4))
    tasks = tuple(sorted(f"t{int(t)}" for t in rng.integers(0, n_tasks, int(rng.integers(1, 7)))))
    # coarse scores: ties within a ranking and the same row on top of several tasks are common
    scores = np.round(rng.uniform(-1, 1, (n, len(tasks))), 1).astype(np.float32)
    k = int(rng.integers(1, n + 1))
    got = select(scores, tasks, k, aggregate="tasks")
    assert got.ids == [f"p{i:03d}" for i in reference_rds_round_robin(scores, tasks, k)]


def test_a_taken_pop_spends_the_turn_where_the_study_rule_takes_the_next():
    # both tasks rank row 0 first; task b's second choice is row 2, task a's is row 1
    scores = np.array([[0.9, 0.9], [0.8, 0.1], [0.1, 0.7], [0.0, 0.6]], dtype=np.float32)
    tasks = ("a", "b")
    # tasks: a pops 0, b pops 0 (taken: turn spent), a pops 1, b pops 2
    assert select(scores, tasks, 3, aggregate="tasks").ids == ["p000", "p001", "p002"]
    # queries: q0 takes 0, q1 skips 0 and takes 2, q0 takes 1
    assert select(scores, tasks, 3, aggregate="queries").ids == ["p000", "p002", "p001"]


def test_under_tasks_a_task_share_does_not_grow_with_its_query_rows():
    n = 40
    scores = np.zeros((n, 5), dtype=np.float32)
    scores[:20, 0] = np.linspace(1.0, 0.5, 20)  # task a (one query row) likes rows 0-19
    scores[20:, 1:] = np.linspace(1.0, 0.5, 20)[:, None] + np.arange(4) * 1e-3  # task b: four rows, rows 20-39
    tasks = ("a", "b", "b", "b", "b")
    by_task = select(scores, tasks, 10, aggregate="tasks")
    by_query = select(scores, tasks, 10, aggregate="queries")
    assert sum(int(i[1:]) < 20 for i in by_task.ids) == 5  # half each
    assert sum(int(i[1:]) < 20 for i in by_query.ids) == 2  # one turn in five


def test_auto_is_the_tasks_rule_for_rds_embeddings_only():
    scores = np.random.default_rng(3).uniform(size=(12, 3)).astype(np.float32)
    tasks = ("a", "b", "b")
    for representation, rule in (("rds", "tasks"), ("less", "queries"), ("embed", "queries")):
        auto = select(scores, tasks, 6, representation=representation)
        assert auto.diagnostics["aggregate"] == rule
        assert auto.ids == select(scores, tasks, 6, representation=representation, aggregate=rule).ids
