"""The worked numbers of each method's paper and the properties each selector promises."""

import numpy as np
import pytest

from dsel_assets.core.select import _facility, build_config, get
from dsel_assets.core.select._facility import FacilityLocation, dense_kernel, greedy, knn_kernel
from dsel_assets.core.select.bids import normalise_columns, task_scores
from dsel_assets.core.select.kcenter_greedy import kcenter_extend
from dsel_assets.core.select.mig import Labels, phi_prime
from dsel_assets.core.select.novelselect import NovelSelectConfig, novelsum
from dsel_assets.core.select.targeted import Influence, eligible_rows

from ..helpers import pool_ids
from ..representation_fixtures import SyntheticTrainer


def test_kcenter_greedy_order_from_index_zero():
    x = np.array([[0, 0], [1, 0], [0, 1], [5, 5], [5, 6], [10, 0]], dtype=np.float32)
    sel = get("kcenter_greedy").select(
        pool_ids(6), 4, build_config("kcenter_greedy", {"first": 0}), sentence_embeddings=x
    )
    assert sel.ids == ["p000", "p005", "p004", "p001"]


def test_mig_phi_prime_and_toy_graph():
    assert phi_prime(np.array([0.0]))[0] == pytest.approx(12.679, abs=1e-3)
    assert phi_prime(np.array([1.0]))[0] == pytest.approx(0.800, abs=1e-3)
    # labels 0 and 1 with similarity 0.95, label 2 isolated
    angle = np.arccos(0.95)
    emb = np.array([[1, 0, 0], [np.cos(angle), np.sin(angle), 0], [0, 0, 1]])
    labels = Labels([[0], [1], [2], [0, 2]], emb)
    sel = get("mig").select(pool_ids(4), 3, build_config("mig"), labels=labels, quality=np.array([4.0, 4, 3, 4]))
    assert sel.ids == ["p000", "p002", "p001"]
    assert sel.scores[0] == pytest.approx(50.72, abs=0.01)
    assert sel.scores[1] == pytest.approx(38.04, abs=0.01)
    assert sel.scores[2] == pytest.approx(2.786, abs=0.002)


TASK_RULE = build_config("bids", {"rule": "tasks"})


def test_bids_task_rule_normalisation_top_k_and_affine_invariance():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 6))
    z = normalise_columns(a)
    np.testing.assert_allclose(z.mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(z.std(axis=0), 1, atol=1e-12)
    one_task = Influence(a.astype(np.float32), ("t",) * 6)
    sel = get("bids").select(pool_ids(200), 20, TASK_RULE, influence=one_task)
    top = np.argsort(-normalise_columns(a.astype(np.float32).astype(np.float64)).max(axis=1), kind="stable")[:20]
    assert sel.ids == [f"p{i:03d}" for i in top]  # T = 1: top-k
    tasks = ("a", "a", "b", "b", "c", "c")
    base = get("bids").select(pool_ids(200), 30, TASK_RULE, influence=Influence(a, tasks))
    shifted = a * np.array([3.0, 0.5, 1, 10, 2, 1]) + np.array([5.0, -2, 0, 1, 7, -3])
    assert get("bids").select(pool_ids(200), 30, TASK_RULE, influence=Influence(shifted, tasks)).ids == base.ids
    assert base.ids == [f"p{i:03d}" for i in naive_bids(a, tasks, 30)]


def algorithm_1(a, k):
    """The paper's Algorithm 1, transcribed, O(k N M): z-score each column (population std, a
    constant column -> 0), then repeatedly add the untaken row maximising max_j (z_ij - the mean
    of column j over the rows taken so far; 0 before the first), ties to the lower row."""
    std = a.std(axis=0)
    z = np.where(std > 0, (a - a.mean(axis=0)) / np.where(std > 0, std, 1), 0.0)
    taken: list[int] = []
    while len(taken) < min(k, len(a)):
        mean = z[taken].mean(axis=0) if taken else np.zeros(a.shape[1])
        lead = (z - mean).max(axis=1)
        lead[taken] = -np.inf
        taken.append(int(np.argmax(lead)))
    return taken


@pytest.mark.parametrize("seed", range(30))
def test_bids_follows_algorithm_1_of_the_paper(seed):
    rng = np.random.default_rng(seed)
    n, m = int(rng.integers(5, 160)), int(rng.integers(1, 9))
    a = rng.normal(size=(n, m)) * rng.uniform(0.1, 10, m) + rng.normal(size=m)
    if m > 2:
        a[:, 1] = 0.5  # a constant column
    gaps = rng.random(n) < 0.1
    a[gaps, 0] = np.nan  # rows without features are not eligible
    tasks = tuple(f"t{j % 3}" for j in range(m))
    for k in (1, 7, n // 2, n):
        sel = get("bids").select(pool_ids(n), k, build_config("bids"), influence=Influence(a, tasks))
        kept = np.flatnonzero(~gaps)
        assert sel.ids == [f"p{kept[i]:03d}" for i in algorithm_1(a[kept], k)]
        assert sum(sel.diagnostics["picks_by_task"].values()) == len(sel.ids)


def test_bids_algorithm_1_by_hand():
    # both columns hold {3, 2, 1, 0, -1, -5} (mean 0, std sqrt(40/6)), so the leads can be worked
    # on the raw values and divided by the std. Means start at (0, 0): rows 0 and 5 lead by 3,
    # the lower row wins; means (3, -5): row 5 leads by 3 + 5 = 8; means (2, -1): row 4 by 2 + 1 = 3;
    # means (4/3, 0): row 2 by 1 - 0 = 1 (row 1 only by 2 - 4/3); means (-1/4, 1/4): row 1 by 9/4.
    a = np.array([[3, -5], [2, -1], [-5, 1], [-1, 0], [0, 2], [1, 3]], dtype=np.float64)
    sel = get("bids").select(pool_ids(6), 5, build_config("bids"), influence=Influence(a, ("a", "b")))
    assert sel.ids == ["p000", "p005", "p004", "p002", "p001"]
    np.testing.assert_allclose(sel.scores, np.array([3, 8, 3, 1, 9 / 4]) / np.sqrt(40 / 6), rtol=1e-12)
    assert sel.diagnostics["picks_by_task"] == {"a": 2, "b": 3}
    # one column: each step takes the best untaken row (top-k), and any positive affine change of a
    # column leaves the picks alone
    one = get("bids").select(pool_ids(6), 4, build_config("bids"), influence=Influence(a[:, :1], ("a",)))
    assert one.ids == ["p000", "p001", "p005", "p004"]
    scaled = Influence(a * np.array([4.0, 0.5]) + np.array([-3.0, 9]), ("a", "b"))
    assert get("bids").select(pool_ids(6), 5, build_config("bids"), influence=scaled).ids == sel.ids


@pytest.mark.parametrize("seed", range(5))
def test_bids_task_scores_in_blocks_equal_the_whole_matrix_definition(seed):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(203, 7)).astype(np.float32)
    a[:, 3] = 0.25  # a constant column z-scores to 0
    a[rng.choice(203, 9, replace=False), rng.integers(0, 7)] = np.nan  # rows without features
    rows = eligible_rows(a, block=10)
    assert rows.tolist() == np.flatnonzero(np.isfinite(a).all(axis=1)).tolist()
    labels = np.array(["x", "y", "x", "z", "y", "z", "z"])
    z = normalise_columns(a[rows].astype(np.float64))
    for reduce in (np.max, np.mean):
        expected = np.stack([reduce(z[:, labels == t], axis=1) for t in ("x", "y", "z")], axis=1)
        got = task_scores(a, rows, labels, ["x", "y", "z"], reduce, block=16)
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def naive_bids(a, tasks, k):
    """BIDS straight from the spec, O(k N T): z-score each column, task score = max of its
    columns, then repeatedly serve the task whose selected rows score lowest on average."""
    z = (a - a.mean(axis=0)) / a.std(axis=0)
    names = list(dict.fromkeys(tasks))
    s = np.stack([z[:, [j for j, t in enumerate(tasks) if t == name]].max(axis=1) for name in names], axis=1)
    order = []
    while len(order) < k:
        u = [np.mean([s[i, t] for i in order]) if order else 0.0 for t in range(len(names))]
        t = int(np.argmin(u))
        best = max((i for i in range(len(a)) if i not in order), key=lambda i: (s[i, t], -i))
        order.append(best)
    return order


def test_bids_task_rule_serves_the_worst_off_task_by_hand():
    # both columns hold the same values {3, 2, 1, 0, -1, -5} (mean 0), so z-scoring scales them
    # alike and the walk can be done on the raw values. Task a = column 0, task b = column 1.
    a = np.array([[3, -5], [2, -1], [-5, 1], [-1, 0], [0, 2], [1, 3]], dtype=np.float64)
    # u = (0, 0) tie -> a takes row 0 (3); u = (3, -5) -> b takes row 5 (3); u = (2, -1) -> b
    # takes row 4 (2); u = (4/3, 0) -> b takes row 2 (1); u = (-1/4, 1/4) -> a takes row 1 (2).
    # Top-k by the best task score would take row 1 third: [0, 5, 1, 4, 2].
    sel = get("bids").select(pool_ids(6), 5, TASK_RULE, influence=Influence(a, ("a", "b")))
    assert sel.ids == ["p000", "p005", "p004", "p002", "p001"]
    assert naive_bids(a, ("a", "b"), 5) == [0, 5, 4, 2, 1]


def test_round_robin_with_one_query_is_top_k_and_cycles_queries():
    rng = np.random.default_rng(1)
    s = rng.uniform(-1, 1, (50, 1)).astype(np.float32)
    sel = get("round_robin").select(pool_ids(50), 10, build_config("round_robin"), influence=Influence(s, ("t",)))
    assert sel.ids == [f"p{i:03d}" for i in np.argsort(-s[:, 0], kind="stable")[:10]]
    twice = np.concatenate([s, s], axis=1)  # identical rows = top-k too
    assert (
        get("round_robin")
        .select(pool_ids(50), 10, build_config("round_robin"), influence=Influence(twice, ("t", "t")))
        .ids
        == sel.ids
    )
    s2 = np.zeros((4, 2), dtype=np.float32)
    s2[:, 0] = [0.9, 0.8, 0.1, 0.0]
    s2[:, 1] = [0.95, 0.1, 0.2, 0.7]
    order = get("round_robin").select(pool_ids(4), 4, build_config("round_robin"), influence=Influence(s2, ("t", "t")))
    assert order.ids == ["p000", "p003", "p001", "p002"]  # q0 takes 0, q1 (0 taken) takes 3, q0 takes 1, ...


def test_doubly_greedy_uses_the_best_query():
    s = np.array([[0.1, 0.9], [0.5, 0.5], [0.8, 0.0]], dtype=np.float32)
    sel = get("doubly_greedy").select(pool_ids(3), 3, build_config("doubly_greedy"), influence=Influence(s, ("t", "t")))
    assert sel.ids == ["p000", "p002", "p001"]


def test_uot_mass_is_the_closed_form_of_a_free_pool_marginal():
    """With a hard query marginal and a free pool marginal, the entropic problem decouples per
    query: query i sends its mass a_i to pool j in proportion to b_j exp(-C_ij / reg). So the
    mass of pool j is sum_i a_i softmax_j(-C_ij / reg) - a closed form, no Sinkhorn needed."""
    s = np.array([[0.9, 0.1], [0.5, 0.8], [0.1, 0.6], [-0.4, 0.2]], dtype=np.float32)  # 4 pool x 2 queries
    config = build_config("uot", {"reg": "0.1", "reg_target": "1e-5"})
    sel = get("uot").select(pool_ids(4), 4, config, influence=Influence(s, ("t", "t")))
    logits = -(1 - s.T.astype(np.float64)) / 2 / 0.1  # [queries, pool]
    expected = (0.5 * np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)).sum(axis=0)
    # by hand: query 0 has C / reg = [0.5, 2.5, 4.5, 7.0] -> softmax [0.866, 0.117, 0.016, 0.001];
    # query 1 has [4.5, 1.0, 2.0, 4.0] -> [0.021, 0.691, 0.254, 0.034]; each carries mass 1/2
    np.testing.assert_allclose(expected, [0.4433, 0.4039, 0.1350, 0.0178], atol=1e-4)
    assert sel.ids == ["p000", "p001", "p002", "p003"]
    np.testing.assert_allclose(sel.scores, expected, rtol=1e-3)
    with pytest.raises(ValueError, match=r"uot.task: 'x' is not one of \['t'\]"):
        get("uot").select(pool_ids(4), 4, build_config("uot", {"task": "x"}), influence=Influence(s, ("t", "t")))


def nearest_of(cos):
    return np.argsort(-cos, axis=1, kind="stable").tolist()


@pytest.mark.parametrize("seed", range(5))
def test_cosine_neighbours_match_brute_force(seed):
    from dsel_assets.core.select.targeted import cosine_neighbours

    x = np.random.default_rng(seed).normal(size=(300, 24)).astype(np.float16)  # as read from Lance
    unit = x.astype(np.float64) / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    cos = unit @ unit.T
    nearest = np.argsort(-cos, axis=1, kind="stable")[:, :6]
    norms, sims, neighbours = cosine_neighbours(x, 6)
    np.testing.assert_allclose(norms, np.linalg.norm(x.astype(np.float64), axis=1), rtol=1e-6)
    assert (neighbours[:, 0] == np.arange(300)).all()  # itself first
    assert [set(r) for r in neighbours.tolist()] == [set(r) for r in nearest.tolist()]
    np.testing.assert_allclose(sims, np.take_along_axis(cos, nearest, axis=1), atol=1e-5)
    _, sims, neighbours = cosine_neighbours(x, 6, exact_rows=1)  # IVF: what it finds, it measures exactly
    np.testing.assert_allclose(sims, np.take_along_axis(cos, neighbours, axis=1), atol=1e-5)
    assert (np.diff(sims, axis=1) <= 1e-6).all() and (neighbours[:, 0] == np.arange(300)).all()
    for n in (1, 2, 5, 9):  # fewer rows than 4 sqrt(n) cells: every cell compared, so exact
        _, sims, neighbours = cosine_neighbours(x[:n], 3, exact_rows=1)
        assert [set(r) for r in neighbours.tolist()] == [set(r[: min(3, n)]) for r in nearest_of(cos[:n, :n])]


def test_uot_refuses_a_problem_memory_cannot_hold_with_what_it_needs(monkeypatch):
    import psutil

    from dsel_assets.core.select.uot import check_memory

    class Memory:
        available = 1 * 2**30

    monkeypatch.setattr(psutil, "virtual_memory", lambda: Memory())
    check_memory(500, 500_000)  # float32 kernel 4 B x 2.5e8 = 0.93 GiB, + one 16,384-row float64 block: fits
    with pytest.raises(MemoryError, match=r"500 query columns x 1,000,000 pool rows need 1.9 GiB .* 1.0 GiB"):
        check_memory(500, 1_000_000)  # 4 B x 5e8 + 8 B x 500 x 16,384 = 1.92 GiB


@pytest.mark.parametrize(
    ("reg", "reg_source", "reg_target"), [(0.01, "inf", 1e-4), (0.05, "inf", 1e-3), (0.02, 0.5, 1e-4), (0.1, 1.0, 0.1)]
)
def test_uot_mass_matches_pots_dense_sinkhorn(reg, reg_source, reg_target):
    """The one-float32-kernel Sinkhorn against POT's sinkhorn_unbalanced on the dense float64
    cost, over 3 seeds and pools with ineligible (NaN) rows: same masses to 1e-5, same ranking."""
    from ot.unbalanced import sinkhorn_unbalanced

    for seed in range(3):
        rng = np.random.default_rng(seed)
        s = np.tanh(rng.normal(scale=0.5, size=(900, 12))).astype(np.float32)
        s[rng.integers(900, size=30), rng.integers(12, size=30)] = np.nan
        rows = eligible_rows(s)
        config = build_config("uot", {"reg": reg, "reg_source": reg_source, "reg_target": reg_target})
        sel = get("uot").select(pool_ids(900), 900, config, influence=Influence(s, ("t",) * 12))
        cost = (1.0 - s[rows].T.astype(np.float64)) / 2.0
        a, b = np.full(12, 1 / 12), np.full(len(rows), 1 / len(rows))
        plan = sinkhorn_unbalanced(a, b, cost, reg=reg, reg_m=(float(reg_source), reg_target), reg_type="kl")
        mass = plan.sum(axis=0)
        order = np.lexsort((rows, -mass))
        assert sel.ids == [f"p{r:03d}" for r in rows[order]]
        np.testing.assert_allclose(sel.scores, mass[order], rtol=1e-5)


def test_novelselect_refuses_a_budget_memory_cannot_hold_before_any_work(monkeypatch):
    import psutil

    from dsel_assets.core.select import build_config, get

    class Memory:
        available = 8 * 2**30

    monkeypatch.setattr(psutil, "virtual_memory", lambda: Memory())
    ids = [f"p{i}" for i in range(100_000)]
    x = np.zeros((100_000, 2), dtype=np.float32)  # never read: the refusal comes first
    with pytest.raises(MemoryError, match=r"100,000 pool rows x a budget of 5,000 need 11.2 GiB in memory, 8.0 GiB"):
        get("novelselect").select(ids, 5_000, build_config("novelselect"), sentence_embeddings=x)  # 3 x 8 x 1e5 x 4999


@pytest.mark.parametrize("kernel", ["cosine", "rbf", "dot"])
def test_facility_location_lazy_equals_naive(kernel):
    x = np.random.default_rng(3).normal(size=(120, 8)).astype(np.float32)
    lazy = greedy(FacilityLocation(dense_kernel(x, kernel, 0.2) + (10 if kernel == "dot" else 0)), 25, "lazy")
    naive = greedy(FacilityLocation(dense_kernel(x, kernel, 0.2) + (10 if kernel == "dot" else 0)), 25, "naive")
    assert lazy[0] == naive[0]
    np.testing.assert_allclose(lazy[1], naive[1], rtol=1e-6)
    assert all(a >= b - 1e-9 for a, b in zip(lazy[1], lazy[1][1:], strict=False))  # gains only shrink


@pytest.mark.parametrize("kernel", ["cosine", "rbf", "dot"])
def test_dense_kernel_tiles_equal_the_plain_formula_and_are_symmetric(kernel, monkeypatch):
    monkeypatch.setattr(_facility, "TILE_ROWS", 16)  # 50 points: 4 tile rows, the last one short
    x = np.random.default_rng(8).normal(size=(50, 8)).astype(np.float32)
    tiled = dense_kernel(x, kernel, 0.2)
    if kernel == "cosine":
        xn = x / np.linalg.norm(x, axis=1, keepdims=True)
        plain = np.maximum(xn @ xn.T, 0)
    elif kernel == "dot":
        plain = x @ x.T
    else:
        plain = np.exp(-0.2 * ((x[:, None] - x[None]) ** 2).sum(-1))
    assert tiled.dtype == np.float32 and np.array_equal(tiled, tiled.T)
    np.testing.assert_allclose(tiled, plain, rtol=1e-5, atol=1e-5)


def test_lazy_batches_keep_naive_ties_and_candidate_subsets():
    x = np.random.default_rng(9).normal(size=(200, 6)).astype(np.float32)
    covers = dense_kernel(x, "cosine", 1.0)
    covers[150:] = covers[:50]  # exact twins (bitwise): tied gains, the lower index must win
    covers[:, 150:] = covers[:, :50]
    bonus = np.random.default_rng(10).uniform(0, 1, 200)
    pool = np.arange(1, 200, 2)
    for candidates, modular in [(None, None), (pool, bonus)]:
        lazy, naive = (
            greedy(FacilityLocation(covers, weight=0.5, modular=modular), 60, opt, candidates=candidates)
            for opt in ("lazy", "naive")
        )
        assert lazy[0] == naive[0] and len(set(lazy[0])) == 60
        np.testing.assert_allclose(lazy[1], naive[1], rtol=1e-9)
    picks = greedy(FacilityLocation(covers), 60)[0]
    assert any(i < 50 for i in picks)
    assert all(i - 150 in picks[: picks.index(i)] for i in picks if i >= 150)  # a twin never beats its original


def test_facility_location_matches_apricot_on_small_data():
    apricot = pytest.importorskip("apricot")
    x = np.random.default_rng(4).normal(size=(300, 16)).astype(np.float32)
    kernel = dense_kernel(x, "cosine", 1.0)
    ours = get("facility_location").select(pool_ids(300), 30, build_config("facility_location"), sentence_embeddings=x)
    ref = apricot.FacilityLocationSelection(30, metric="precomputed", optimizer="lazy", verbose=False).fit(kernel)
    assert [int(i[1:]) for i in ours.ids] == [int(i) for i in ref.ranking]
    np.testing.assert_allclose(ours.scores, ref.gains, rtol=1e-4)


def test_facility_location_falls_back_to_sparse_knn_beyond_the_memory_cap():
    x = np.random.default_rng(5).normal(size=(400, 8)).astype(np.float32)
    config = build_config("facility_location", {"memory_cap_mb": "0.5", "n_neighbors": "20"})
    sel = get("facility_location").select(pool_ids(400), 20, config, sentence_embeddings=x)
    assert sel.diagnostics["kernel"].startswith("knn") and len(set(sel.ids)) == 20
    covers = knn_kernel(x, 20)
    assert covers.nnz <= 400 * 21
    assert greedy(FacilityLocation(covers), 20, "lazy") == greedy(FacilityLocation(covers), 20, "naive")
    with pytest.raises(ValueError, match="memory_cap_mb"):
        get("facility_location").select(
            pool_ids(400),
            5,
            build_config("facility_location", {"kernel": "rbf", "memory_cap_mb": "0.1"}),
            sentence_embeddings=x,
        )


def test_stochastic_greedy_is_seeded_and_close_to_lazy():
    x = np.random.default_rng(6).normal(size=(500, 8)).astype(np.float32)
    cfg = build_config("facility_location", {"optimizer": "stochastic", "seed": "1"})
    a = get("facility_location").select(pool_ids(500), 20, cfg, sentence_embeddings=x)
    assert a.ids == get("facility_location").select(pool_ids(500), 20, cfg, sentence_embeddings=x).ids
    lazy = get("facility_location").select(pool_ids(500), 20, build_config("facility_location"), sentence_embeddings=x)
    assert sum(a.scores) >= 0.9 * sum(lazy.scores)


def test_qdit_interpolates_between_quality_and_diversity():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(100, 8)).astype(np.float32)
    q = rng.uniform(0, 1, 100)
    top_quality = get("qdit").select(
        pool_ids(100), 10, build_config("qdit", {"alpha": "1"}), sentence_embeddings=x, quality=q
    )
    assert top_quality.ids == [f"p{i:03d}" for i in np.argsort(-q, kind="stable")[:10]]
    pure_fl = get("qdit").select(
        pool_ids(100), 10, build_config("qdit", {"alpha": "0"}), sentence_embeddings=x, quality=q
    )
    fl = get("facility_location").select(pool_ids(100), 10, build_config("facility_location"), sentence_embeddings=x)
    assert pure_fl.ids == fl.ids


def test_deita_keeps_only_dissimilar_high_quality_examples():
    x = np.array([[1, 0], [0.99, 0.14], [0, 1], [0.7, 0.7]], dtype=np.float32)
    q = np.array([0.9, 0.95, 0.5, 0.1])
    sel = get("deita_filter").select(pool_ids(4), 4, build_config("deita_filter"), sentence_embeddings=x, quality=q)
    assert sel.ids == ["p001", "p002", "p003"]  # p000 is a near-duplicate of the better p001
    assert sel.diagnostics["under_fill"] == 1


def test_kmq_prefers_high_quality_within_clusters():
    rng = np.random.default_rng(8)
    x = np.concatenate([rng.normal(c, 0.05, size=(50, 2)) for c in (0, 5)]).astype(np.float32)
    q = np.concatenate([np.linspace(0, 20, 50), np.linspace(0, 20, 50)])
    sel = get("kmq").select(
        pool_ids(100), 10, build_config("kmq", {"n_clusters": "2"}), sentence_embeddings=x, quality=q
    )
    rows = [int(i[1:]) for i in sel.ids]
    assert sum(r < 50 for r in rows) == 5  # equal quota
    assert np.mean(q[rows]) > 15  # exp(quality) weighting picks the best


def test_novelselect_and_novelsum_by_hand():
    from dsel_assets.core.select.novelselect import novelselect_order

    # A=(1,0) B=(0,1) C=(-1,0) D=(0,-1) E=(2,0). K=1, beta=0.5: sigma = 1 / (nearest distance):
    # A and E are 1 apart -> sigma 1; B, C, D are sqrt(2) from their nearest -> 1/sqrt(2) = 0.7071.
    x = np.array([[1, 0], [0, 1], [-1, 0], [0, -1], [2, 0]], dtype=np.float32)
    order, gains = novelselect_order(x, 5, 0, NovelSelectConfig(neighbors=1))
    # from A: d = (1 - cos)(sigma_x + sigma_A): B 1.7071, C 2 x 1.7071 = 3.4142, D 1.7071, E 0 -> C.
    # {A, C}: B sorted [1.4142, 1.7071] weighted 1, 1/2, averaged -> 1.1339 (D ties, B is lower);
    # E [0, 3.4142] -> 0.8536. {A, C, B}: D [1.4142, 1.7071, 2.8284] -> 1.0702; E -> 0.6639.
    # Last E: [0, 1.7071, 1.7071, 3.4142] with weights 1, 1/2, 1/3, 1/4 -> 0.5690.
    assert order == [0, 2, 1, 3, 4]
    np.testing.assert_allclose(gains[1:], [3.41421, 1.13388, 1.07019, 0.56904], atol=1e-4)
    # NovelSum of the square A..D (densities within the set: all 1/sqrt(2)): each point has two
    # neighbours at (1 - 0)(sqrt 2) and one opposite at 2 sqrt 2 -> (1.4142 + 0.7071 + 0.9428) / 3
    assert novelsum(x[:4], NovelSelectConfig(neighbors=1)) == pytest.approx(1.02138, abs=1e-4)


def test_novelselect_density_ignores_exact_copies_as_the_reference_index_does():
    from dsel_assets.core.select.novelselect import density

    rng = np.random.default_rng(2)
    x = rng.normal(size=(200, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x = np.concatenate([x, np.repeat(x[:1], 11, axis=0)])  # 11 copies of row 0
    # brute force over the distinct vectors: mean squared distance to the 10 nearest others
    distinct = np.unique(x, axis=0)
    squared = ((distinct[:, None, :] - distinct[None, :, :]) ** 2).sum(axis=2)
    np.fill_diagonal(squared, np.inf)
    by_vector = {v.tobytes(): 1 / np.sort(d)[:10].mean() for v, d in zip(distinct, squared, strict=True)}
    expected = np.array([by_vector[v.tobytes()] for v in x])
    np.testing.assert_allclose(density(x, 10, 1.0), expected, rtol=1e-4)
    assert density(x, 10, 1.0)[200:].max() < 2 * np.median(expected)  # the copies are not the densest


def test_g2is_budgets_sum_exactly_and_sets_satisfy_both_constraints():
    from dsel_assets.core.select.g2is import G2isConfig, component_budgets, g2is_order

    # largest remainder by hand: 7 x [0.5, 0.3, 0.2] = [3.5, 2.1, 1.4] -> floors [3, 2, 1], the
    # one left over goes to the largest remainder (0.5): [4, 2, 1]
    assert component_budgets(np.array([0.5, 0.3, 0.2]), 7).tolist() == [4, 2, 1]
    # 10 x [0.34, 0.33, 0.33] = [3.4, 3.3, 3.3] -> [3, 3, 3] + 1 to the first: [4, 3, 3]
    assert component_budgets(np.array([0.34, 0.33, 0.33]), 10).tolist() == [4, 3, 3]
    rng = np.random.default_rng(11)
    direction = rng.normal(size=16)
    pool = rng.normal(size=(400, 16))  # zero-mean: many pairs disagree, so both constraints bind
    queries = direction + 0.1 * rng.normal(size=(12, 16))
    config = G2isConfig(val_k=0.5, delta=0.8)
    order, diag = g2is_order(pool, queries, 20, config)
    # the components, independently: PCA of the centred queries, as many as reach half the variance
    _, sv, vt = np.linalg.svd(queries - queries.mean(axis=0), full_matrices=False)
    share = sv**2 / (sv**2).sum()
    n_comp = int(np.argmax(np.cumsum(share) >= 0.5)) + 1
    assert diag["components"] == n_comp
    assert [b for b, _ in diag["budgets_filled"]] == component_budgets(share[:n_comp], 20).tolist()
    assert len(order) == len(set(order)) <= 20
    start, checked = 0, 0
    for component, (_, filled) in zip(vt[:n_comp], diag["budgets_filled"], strict=True):
        members = order[start : start + filled]
        start += filled
        total = np.zeros(16)
        for i, a in enumerate(members):
            for b in members[:i]:
                assert pool[a] @ pool[b] >= 0  # (i) non-negative agreement with every earlier member
            if i:  # (ii) alignment with the component (|cos| ignores its sign) keeps >= delta of its value
                before = abs(total @ component) / np.linalg.norm(total)
                after = abs((total + pool[a]) @ component) / np.linalg.norm(total + pool[a])
                assert after >= 0.8 * before - 1e-12
                checked += 1
            total = total + pool[a]
    assert checked >= 10  # the constraints were exercised, not vacuous


@pytest.mark.parametrize("exact_search_rows", [0, 100])  # 100: the clustered (faiss) neighbour search
def test_g2is_leaves_out_rows_without_a_feature_as_if_they_were_not_in_the_pool(exact_search_rows):
    rng = np.random.default_rng(5)
    pool = rng.normal(size=(3000, 16)).astype(np.float32)
    gaps = rng.choice(3000, 60, replace=False)
    pool[gaps] = np.nan
    queries = (rng.normal(size=16) + 0.1 * rng.normal(size=(12, 16))).astype(np.float32)
    ids = np.array(pool_ids(3000))
    config = build_config("g2is", {"exact_search_rows": exact_search_rows})
    kept = np.setdiff1d(np.arange(3000), gaps)
    with_gaps = get("g2is").select(ids, 50, config, pool_gradients=pool, query_gradients=(queries, ["t"] * 12))
    without = get("g2is").select(
        ids[kept], 50, config, pool_gradients=pool[kept], query_gradients=(queries, ["t"] * 12)
    )
    assert not set(with_gaps.ids) & set(ids[gaps])
    assert with_gaps.ids == without.ids and len(with_gaps.ids) == 50
    assert with_gaps.diagnostics["eligible"] == 2940


def test_small2large_quotas_and_lowest_learning_percentage_first():
    from dsel_assets.core.select.small2large import cluster_quotas

    assert cluster_quotas(np.array([50, 30, 20]), 10).tolist() == [5, 3, 2]
    assert cluster_quotas(np.array([97, 2, 1]), 10).sum() == 10
    assert cluster_quotas(np.array([97, 2, 1]), 10).min() >= 1  # one per non-empty cluster
    rng = np.random.default_rng(12)
    x = np.concatenate([rng.normal(c, 0.05, size=(50, 2)) for c in (0, 5)]).astype(np.float32)
    lp = rng.uniform(0, 1, 100)
    sel = get("small2large").select(
        pool_ids(100),
        10,
        build_config("small2large", {"n_clusters": "2"}),
        learning_percentage=lp,
        sentence_embeddings=x,
    )
    rows = [int(i[1:]) for i in sel.ids]
    for half in (range(50), range(50, 100)):
        chosen = [r for r in rows if r in half]
        assert len(chosen) == 5 and max(lp[chosen]) <= np.sort(lp[list(half)])[4]
    twin = get("small2large_random").select(
        pool_ids(100),
        10,
        build_config("small2large_random", {"n_clusters": "2"}),
        learning_percentage=lp,
        sentence_embeddings=x,
    )
    assert sum(int(i[1:]) < 50 for i in twin.ids) == 5 and twin.ids != sel.ids


def test_ifd_rankers_exclude_and_order_as_specified():
    values = np.array([0.8, 1.0, 1.2, 0.3, np.nan])
    cherry = get("cherry_ifd").select(pool_ids(5), 5, build_config("cherry_ifd"), ifd=values)
    assert cherry.ids == ["p001", "p000", "p003"]  # IFD > 1 excluded, IFD = 1 kept, NaN undefined
    sf = get("superfiltering").select(pool_ids(5), 5, build_config("superfiltering"), superfiltering_ifd=values)
    assert sf.ids == ["p000", "p003"]  # strictly < 1
    margins = {"min_margin": np.array([0.5, 0.1, 0.9]), "mean_entropy": np.array([1.0, 3.0, 2.0])}
    assert get("uncertainty").select(pool_ids(3), 2, build_config("uncertainty"), uncertainty=margins).ids == [
        "p001",
        "p000",
    ]
    by_entropy = build_config("uncertainty", {"score": "mean_entropy"})
    assert get("uncertainty").select(pool_ids(3), 2, by_entropy, uncertainty=margins).ids == ["p001", "p002"]
    gs = np.arange(100) / 100
    assert (
        get("nuggets")
        .select(pool_ids(100), 100, build_config("nuggets", {"threshold": "0.9"}), golden_score=gs)
        .diagnostics["eligible"]
        == 9
    )


def test_superfiltering_d_diversifies_the_ifd_shortlist():
    rng = np.random.default_rng(13)
    x = np.concatenate([rng.normal(c, 0.01, size=(20, 3)) for c in np.eye(3) * 4]).astype(np.float32)
    ifd = np.concatenate([np.full(20, 0.9), np.full(20, 0.8), np.full(20, 0.1)])
    sel = get("superfiltering_d").select(
        pool_ids(60),
        2,
        build_config("superfiltering_d", {"top_m": "40"}),
        superfiltering_ifd=ifd,
        sentence_embeddings=x,
    )
    assert sorted(int(i[1:]) // 20 for i in sel.ids) == [0, 1]  # one per cluster of the shortlist


def test_diversify_conquer_softmax_rounds_and_budget():
    from dsel_assets.core.select.diversify_conquer import softmax

    np.testing.assert_allclose(softmax(np.array([0.0, np.log(3)])), [0.25, 0.75])

    rng = np.random.default_rng(14)
    x = np.concatenate([rng.normal(c, 0.1, size=(60, 2)) for c in ([1, 0], [-1, 0], [0, 1])]).astype(np.float32)
    trainer = SyntheticTrainer(x)
    sel = get("diversify_conquer").select(
        pool_ids(180),
        30,
        build_config("diversify_conquer", {"n_clusters": "3"}),
        sentence_embeddings=x,
        trainer=trainer,
    )
    assert len(sel.ids) == len(set(sel.ids)) == 30
    rounds = sel.diagnostics["per_round_cluster_counts"]
    assert [sum(r) for r in rounds] == [10, 10, 10]  # k / R per round, not a per-cluster count
    assert [c[:2] for c in trainer.calls] == [("score", 0), ("score", 1)]  # trained between rounds
    hard = np.argmax([np.mean(1 - x[a * 60 : (a + 1) * 60, 0]) for a in range(3)])  # cluster far from the direction
    assert sum(int(i[1:]) // 60 == hard for i in sel.ids) > 10  # the hard cluster got more than its third


def separated_blobs() -> tuple[np.ndarray, np.ndarray]:
    """Ten well-separated blobs of 3, 5, 8, 12, 20, 30, 40, 50, 60 and 80 points in 8-d (k-means
    with K = 10 finds exactly them), and the blob of each point."""
    sizes = [3, 5, 8, 12, 20, 30, 40, 50, 60, 80]
    rng = np.random.default_rng(16)
    centers = rng.normal(size=(10, 8)) * 100
    x = np.concatenate([rng.normal(c, 0.1, size=(n, 8)) for c, n in zip(centers, sizes, strict=True)])
    return x, np.repeat(np.arange(10), sizes)


def test_diversify_conquer_round_zero_takes_equal_quotas_for_every_seed():
    """Ten well-separated blobs of sizes 3..80 (so k-means finds exactly the blobs); round 0 of
    k = 309 in 3 rounds is 103 picks. By hand: a share of 10.3 exhausts the blobs of 3, 5 and
    8 (16 picks); 87 over the other seven is 12.4, which exhausts the blob of 12; the last 75
    over six blobs is 12.5: three get 12, three get 13. Counted from the selected ids."""

    x, blob = separated_blobs()
    for seed in range(30):
        config = build_config("diversify_conquer", {"n_clusters": "10", "seed": str(seed)})
        sel = get("diversify_conquer").select(
            pool_ids(len(x)), 309, config, sentence_embeddings=x.astype(np.float32), trainer=SyntheticTrainer(x)
        )
        counts = np.bincount(blob[[int(i[1:]) for i in sel.ids[:103]]], minlength=10)
        assert counts[:4].tolist() == [3, 5, 8, 12] and sorted(counts[4:].tolist()) == [12, 12, 12, 13, 13, 13]


def test_diversify_conquer_floor_round_zero_is_the_reference_quota_and_later_rounds_make_up_the_rest():
    """The same blobs (308 examples); k = 300 in 3 rounds, K = 10: the reference takes
    int(300 / 3 / 10) = 10 from every blob (all 3, 5 and 8 of the small ones), 7 x 10 + 3 + 5 + 8
    = 86 in round 0; the 14 it leaves of its 100 go to round 1, which takes 114, and round 2
    takes 100: 300 in all."""

    x, blob = separated_blobs()
    for seed in range(10):
        params = {"n_clusters": "10", "seed": str(seed), "round0": "floor", "kmeans_restarts": "2"}
        sel = get("diversify_conquer").select(
            pool_ids(len(x)),
            300,
            build_config("diversify_conquer", params),
            sentence_embeddings=x.astype(np.float32),
            trainer=SyntheticTrainer(x),
        )
        counts = np.bincount(blob[[int(i[1:]) for i in sel.ids[:86]]], minlength=10)
        assert counts.tolist() == [3, 5, 8, 10, 10, 10, 10, 10, 10, 10]
        assert [sum(r) for r in sel.diagnostics["per_round_cluster_counts"]] == [86, 114, 100]
        assert len(set(sel.ids)) == 300
    one_round = build_config("diversify_conquer", {"n_clusters": "10", "rounds": "1", "round0": "floor"})
    sel = get("diversify_conquer").select(
        pool_ids(len(x)), 150, one_round, sentence_embeddings=x.astype(np.float32), trainer=SyntheticTrainer(x)
    )
    assert len(set(sel.ids)) == 150  # the shortfall of the only round filled by equal quotas
    with pytest.raises(ValueError, match="diversify_conquer.kmeans_restarts: must be >= 1"):
        build_config("diversify_conquer", {"kmeans_restarts": "0"})


def test_diversify_conquer_weights_by_hand():
    from dsel_assets.core.select.diversify_conquer import round_weights

    # by hand: cluster means [0, ln 3] -> softmax [0.25, 0.75]
    scores, cluster_of = np.array([0.0, np.log(3), np.log(3)]), np.array([0, 1, 1])
    np.testing.assert_allclose(round_weights(scores, cluster_of, np.array([0.5, 0.5]), False), [0.25, 0.75])
    # the product form: [0.25, 0.75] x previous [0.75, 0.25] = [0.1875, 0.1875] -> [0.5, 0.5]
    np.testing.assert_allclose(round_weights(scores, cluster_of, np.array([0.75, 0.25]), True), [0.5, 0.5])
    # a cluster with no selected example is scored with the mean of all selected scores (here
    # (1 + 0) / 2), not the minimum: softmax([1, 0, 0.5]) = [0.5065, 0.1863, 0.3072]
    weights = round_weights(np.array([1.0, 0.0]), np.array([0, 1]), np.full(3, 1 / 3), True)
    np.testing.assert_allclose(weights, [0.5065, 0.1863, 0.3072], atol=1e-4)


class WarpingTrainer:
    """Each round "trains" and re-embeds the pool with a different seeded linear map, so the
    k-center picks of a round depend on which space they are computed in."""

    def __init__(self, x):
        self.x = x
        self.spaces = []

    def train_and_embed(self, selected, round_index):
        space = self.x @ np.random.default_rng(100 + round_index).normal(size=(4, 4)) * [1, 5, 0.2, 1]
        self.spaces.append((list(selected), space))
        return space


def brute_force_kcenter(space, selected, extra):
    """Each pick: the point whose distance to its nearest selected point is largest."""
    chosen = list(selected)
    for _ in range(extra):
        gaps = {
            c: min(np.linalg.norm(space[c] - space[s]) for s in chosen) for c in range(len(space)) if c not in chosen
        }
        chosen.append(max(gaps, key=lambda c: (gaps[c], -c)))
    return chosen[len(selected) :]


def test_diverse_evol_trains_then_adds_k_center_picks_in_the_new_space():
    x = np.random.default_rng(15).normal(size=(100, 4)).astype(np.float32)
    trainer = WarpingTrainer(x)
    sel = get("diverse_evol").select(
        pool_ids(100), 12, build_config("diverse_evol"), sentence_embeddings=x, trainer=trainer
    )
    rows = [int(i[1:]) for i in sel.ids]
    assert len(set(rows)) == 12 and len(trainer.spaces) == 2  # 12 = 4 random + 4 + 4 after two trainings
    assert [selected for selected, _ in trainer.spaces] == [rows[:4], rows[:8]]  # trained on the set so far
    for (selected, space), added in zip(trainer.spaces, (rows[4:8], rows[8:12]), strict=True):
        assert added == brute_force_kcenter(space, selected, 4)
    assert rows[4:8] != brute_force_kcenter(x, rows[:4], 4)  # the untrained space would pick others


def float64_kcenter(space, selected, extra):
    """The plain definition in float64: (picks, squared gaps at pick time), ties to the lowest row."""
    space = np.asarray(space, dtype=np.float64)
    gap = np.full(len(space), np.inf)
    for s in selected:
        gap = np.minimum(gap, ((space - space[s]) ** 2).sum(axis=1))
    gap[list(selected)] = -1.0
    picks, gains = [], []
    for _ in range(extra):
        pick = int(np.argmax(gap))
        picks.append(pick)
        gains.append(float(gap[pick]))
        gap = np.minimum(gap, ((space - space[pick]) ** 2).sum(axis=1))
        gap[pick] = -1.0
    return picks, gains


@pytest.mark.parametrize("candidates", [1, 2, 7, 512])
def test_kcenter_batched_picks_match_the_definition_with_ties(candidates):
    """Integer points (exact float32 arithmetic) with duplicate rows and equal gaps: the
    certified batches make the definition's picks, ties to the lowest row, over 25 seeds."""
    for seed in range(25):
        rng = np.random.default_rng(seed)
        x = rng.integers(0, 4, size=(40, 3)).astype(np.float32)
        x[rng.integers(0, 40, 8)] = x[rng.integers(0, 40, 8)]  # duplicates
        first = int(rng.integers(40))
        picks, gains, _ = kcenter_extend(x, [first], 15, candidates=candidates)
        assert picks == brute_force_kcenter(x, [first], 15)
        assert (picks, gains) == float64_kcenter(x, [first], 15)


def test_kcenter_batched_picks_are_farthest_points_on_continuous_data():
    """1,500 Gaussian points, 300 picks after 3 given rows, 32 rows followed per batch, 10
    seeds: every pick's float64 gap is the largest gap at its turn (to float32 rounding: two
    gaps within 1e-6 may come in either order) and its reported gain, in far fewer sweeps."""
    for seed in range(10):
        x = np.random.default_rng(seed).normal(size=(1500, 8)).astype(np.float32)
        picks, gains, sweeps = kcenter_extend(x, [5, 9, 700], 300, candidates=32)
        assert len(set(picks)) == 300 and not {5, 9, 700} & set(picks)
        space = x.astype(np.float64)
        gap = np.min([((space - space[s]) ** 2).sum(axis=1) for s in (5, 9, 700)], axis=0)
        for pick, gain in zip(picks, gains, strict=True):
            gap[[5, 9, 700]] = -1.0
            assert gap[pick] == pytest.approx(gap.max(), rel=1e-6) and gain == pytest.approx(gap[pick], rel=1e-5)
            gap = np.minimum(gap, ((space - space[pick]) ** 2).sum(axis=1))
            gap[pick] = -1.0
        assert sweeps < 300 / 4


def test_kcenter_extend_stops_when_the_pool_is_used_up():
    x = np.random.default_rng(0).normal(size=(6, 2)).astype(np.float32)
    picks, gains, _ = kcenter_extend(x, [2, 2], 10, candidates=2)
    assert sorted(picks) == [0, 1, 3, 4, 5] and gains == sorted(gains, reverse=True)
