"""The numbers of METHODS.md section 4 and the properties each selector promises."""

import numpy as np
import pytest

from dsel_assets.core.select import _facility, build_config, get
from dsel_assets.core.select._facility import FacilityLocation, dense_kernel, greedy, knn_kernel
from dsel_assets.core.select.bids import normalise_columns
from dsel_assets.core.select.mig import Labels, phi_prime
from dsel_assets.core.select.novelselect import NovelSelectConfig, novelsum
from dsel_assets.core.select.targeted import Influence


def ids(n):
    return [f"p{i:03d}" for i in range(n)]


def test_kcenter_greedy_order_from_index_zero():
    x = np.array([[0, 0], [1, 0], [0, 1], [5, 5], [5, 6], [10, 0]], dtype=np.float32)
    sel = get("kcenter_greedy").select(ids(6), 4, build_config("kcenter_greedy", {"first": 0}), sentence_embeddings=x)
    assert sel.ids == ["p000", "p005", "p004", "p001"]


def test_mig_phi_prime_and_toy_graph():
    assert phi_prime(np.array([0.0]))[0] == pytest.approx(12.679, abs=1e-3)
    assert phi_prime(np.array([1.0]))[0] == pytest.approx(0.800, abs=1e-3)
    # labels 0 and 1 with similarity 0.95, label 2 isolated
    angle = np.arccos(0.95)
    emb = np.array([[1, 0, 0], [np.cos(angle), np.sin(angle), 0], [0, 0, 1]])
    labels = Labels([[0], [1], [2], [0, 2]], emb)
    sel = get("mig").select(ids(4), 3, build_config("mig"), labels=labels, quality=np.array([4.0, 4, 3, 4]))
    assert sel.ids == ["p000", "p002", "p001"]
    assert sel.scores[0] == pytest.approx(50.72, abs=0.01)
    assert sel.scores[1] == pytest.approx(38.04, abs=0.01)
    assert sel.scores[2] == pytest.approx(2.786, abs=0.002)


def test_bids_normalisation_top_k_and_affine_invariance():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 6))
    z = normalise_columns(a)
    np.testing.assert_allclose(z.mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(z.std(axis=0), 1, atol=1e-12)
    one_task = Influence(a.astype(np.float32), ("t",) * 6)
    sel = get("bids").select(ids(200), 20, build_config("bids"), influence=one_task)
    top = np.argsort(-normalise_columns(a.astype(np.float32).astype(np.float64)).max(axis=1), kind="stable")[:20]
    assert sel.ids == [f"p{i:03d}" for i in top]  # T = 1: top-k
    tasks = ("a", "a", "b", "b", "c", "c")
    base = get("bids").select(ids(200), 30, build_config("bids"), influence=Influence(a, tasks))
    shifted = a * np.array([3.0, 0.5, 1, 10, 2, 1]) + np.array([5.0, -2, 0, 1, 7, -3])
    assert get("bids").select(ids(200), 30, build_config("bids"), influence=Influence(shifted, tasks)).ids == base.ids
    counts = {t: 0 for t in "abc"}
    for i in base.ids:  # balance: each task's best rows are served in turn
        row = int(i[1:])
        counts[tasks[int(np.argmax(normalise_columns(a)[row]))]] += 1
    assert max(counts.values()) - min(counts.values()) <= 12


def test_round_robin_with_one_query_is_top_k_and_cycles_queries():
    rng = np.random.default_rng(1)
    s = rng.uniform(-1, 1, (50, 1)).astype(np.float32)
    sel = get("round_robin").select(ids(50), 10, build_config("round_robin"), influence=Influence(s, ("t",)))
    assert sel.ids == [f"p{i:03d}" for i in np.argsort(-s[:, 0], kind="stable")[:10]]
    twice = np.concatenate([s, s], axis=1)  # identical rows = top-k too
    assert (
        get("round_robin").select(ids(50), 10, build_config("round_robin"), influence=Influence(twice, ("t", "t"))).ids
        == sel.ids
    )
    s2 = np.zeros((4, 2), dtype=np.float32)
    s2[:, 0] = [0.9, 0.8, 0.1, 0.0]
    s2[:, 1] = [0.95, 0.1, 0.2, 0.7]
    order = get("round_robin").select(ids(4), 4, build_config("round_robin"), influence=Influence(s2, ("t", "t")))
    assert order.ids == ["p000", "p003", "p001", "p002"]  # q0 takes 0, q1 (0 taken) takes 3, q0 takes 1, ...


def test_doubly_greedy_uses_the_best_query():
    s = np.array([[0.1, 0.9], [0.5, 0.5], [0.8, 0.0]], dtype=np.float32)
    sel = get("doubly_greedy").select(ids(3), 3, build_config("doubly_greedy"), influence=Influence(s, ("t", "t")))
    assert sel.ids == ["p000", "p002", "p001"]


def test_uot_mass_favours_pool_points_near_queries():
    rng = np.random.default_rng(2)
    s = rng.uniform(-0.2, 0.2, (40, 3)).astype(np.float32)
    s[7] = 0.95
    s[11, 0] = 0.9
    sel = get("uot").select(ids(40), 5, build_config("uot"), influence=Influence(s, ("t",) * 3))
    assert sel.ids[0] == "p007" and "p011" in sel.ids[:3]
    assert len(sel.ids) == 5 and all(m >= 0 for m in sel.scores)
    with pytest.raises(ValueError, match=r"uot.task: 'x' is not one of \['t'\]"):
        get("uot").select(ids(40), 5, build_config("uot", {"task": "x"}), influence=Influence(s, ("t",) * 3))


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
    ours = get("facility_location").select(ids(300), 30, build_config("facility_location"), sentence_embeddings=x)
    ref = apricot.FacilityLocationSelection(30, metric="precomputed", optimizer="lazy", verbose=False).fit(kernel)
    assert [int(i[1:]) for i in ours.ids] == [int(i) for i in ref.ranking]
    np.testing.assert_allclose(ours.scores, ref.gains, rtol=1e-4)


def test_facility_location_falls_back_to_sparse_knn_beyond_the_memory_cap():
    x = np.random.default_rng(5).normal(size=(400, 8)).astype(np.float32)
    config = build_config("facility_location", {"memory_cap_mb": "0.1", "n_neighbors": "20"})
    sel = get("facility_location").select(ids(400), 20, config, sentence_embeddings=x)
    assert sel.diagnostics["kernel"].startswith("knn") and len(set(sel.ids)) == 20
    covers = knn_kernel(x, 20)
    assert covers.nnz <= 400 * 21
    assert greedy(FacilityLocation(covers), 20, "lazy") == greedy(FacilityLocation(covers), 20, "naive")
    with pytest.raises(ValueError, match="memory_cap_mb"):
        get("facility_location").select(
            ids(400),
            5,
            build_config("facility_location", {"kernel": "rbf", "memory_cap_mb": "0.1"}),
            sentence_embeddings=x,
        )


def test_stochastic_greedy_is_seeded_and_close_to_lazy():
    x = np.random.default_rng(6).normal(size=(500, 8)).astype(np.float32)
    cfg = build_config("facility_location", {"optimizer": "stochastic", "seed": "1"})
    a = get("facility_location").select(ids(500), 20, cfg, sentence_embeddings=x)
    assert a.ids == get("facility_location").select(ids(500), 20, cfg, sentence_embeddings=x).ids
    lazy = get("facility_location").select(ids(500), 20, build_config("facility_location"), sentence_embeddings=x)
    assert sum(a.scores) >= 0.9 * sum(lazy.scores)


def test_qdit_interpolates_between_quality_and_diversity():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(100, 8)).astype(np.float32)
    q = rng.uniform(0, 1, 100)
    top_quality = get("qdit").select(
        ids(100), 10, build_config("qdit", {"alpha": "1"}), sentence_embeddings=x, quality=q
    )
    assert top_quality.ids == [f"p{i:03d}" for i in np.argsort(-q, kind="stable")[:10]]
    pure_fl = get("qdit").select(ids(100), 10, build_config("qdit", {"alpha": "0"}), sentence_embeddings=x, quality=q)
    fl = get("facility_location").select(ids(100), 10, build_config("facility_location"), sentence_embeddings=x)
    assert pure_fl.ids == fl.ids


def test_deita_keeps_only_dissimilar_high_quality_examples():
    x = np.array([[1, 0], [0.99, 0.14], [0, 1], [0.7, 0.7]], dtype=np.float32)
    q = np.array([0.9, 0.95, 0.5, 0.1])
    sel = get("deita_filter").select(ids(4), 4, build_config("deita_filter"), sentence_embeddings=x, quality=q)
    assert sel.ids == ["p001", "p002", "p003"]  # p000 is a near-duplicate of the better p001
    assert sel.diagnostics["under_fill"] == 1


def test_kmq_prefers_high_quality_within_clusters():
    rng = np.random.default_rng(8)
    x = np.concatenate([rng.normal(c, 0.05, size=(50, 2)) for c in (0, 5)]).astype(np.float32)
    q = np.concatenate([np.linspace(0, 20, 50), np.linspace(0, 20, 50)])
    sel = get("kmq").select(ids(100), 10, build_config("kmq", {"n_clusters": "2"}), sentence_embeddings=x, quality=q)
    rows = [int(i[1:]) for i in sel.ids]
    assert sum(r < 50 for r in rows) == 5  # equal quota
    assert np.mean(q[rows]) > 15  # exp(quality) weighting picks the best


def test_novelselect_spreads_out_and_novelsum_prefers_diverse_sets():
    rng = np.random.default_rng(9)
    clusters = np.concatenate([rng.normal(c, 0.05, size=(30, 3)) for c in np.eye(3) * 5]).astype(np.float32)
    sel = get("novelselect").select(ids(90), 3, build_config("novelselect"), sentence_embeddings=clusters)
    assert sorted(int(i[1:]) // 30 for i in sel.ids) == [0, 1, 2]
    diverse = clusters[[0, 30, 60, 1, 31, 61]]
    narrow = clusters[:6]
    assert novelsum(diverse, NovelSelectConfig(neighbors=3)) > novelsum(narrow, NovelSelectConfig(neighbors=3))


def test_cluster_ucb_full_budget_equals_less_top_k_and_counts_rewards():
    rng = np.random.default_rng(10)
    grads = rng.normal(size=(300, 6)).astype(np.float32)
    less = {"t": rng.uniform(-1, 1, 300)}
    full = get("cluster_ucb").select(
        ids(300),
        15,
        build_config("cluster_ucb", {"task": "t", "budget_frac": "1", "n_clusters": "10"}),
        pool_gradients=grads,
        less_scores=less,
    )
    top = get("less").select(ids(300), 15, build_config("less", {"task": "t"}), less_scores=less)
    assert full.ids == top.ids and full.diagnostics["rewards_computed"] == 300
    part = get("cluster_ucb").select(
        ids(300),
        15,
        build_config("cluster_ucb", {"task": "t", "n_clusters": "10"}),
        pool_gradients=grads,
        less_scores=less,
    )
    assert part.diagnostics["rewards_computed"] == 60  # int(300 * budget_frac 0.2)
    assert set(part.ids) <= set(top.ids) | set(part.ids) and len(part.ids) == 15


def test_cluster_ucb_never_draws_from_an_exhausted_arm():
    from dsel_assets.core.select.cluster_ucb import ClusterUcbConfig, cluster_ucb_draws

    # arm 0: two great examples, arm 1: many poor ones. After arm 0 is exhausted it must get -inf
    # (the reference's 0 would still beat arm 1's negative UCB and draw past the end).
    assignment = np.array([0, 0] + [1] * 40)
    rewards = np.array([0.9, 0.8] + [-0.5] * 40)
    config = ClusterUcbConfig(budget_frac=0.9, cold_start=0.01, beta=0.0)
    drawn, pulls = cluster_ucb_draws(assignment, lambda i: rewards[i], config)
    assert pulls.count(0) == 1  # its second example; then exhausted (-inf), never drawn again
    assert len(drawn) == int(42 * 0.9) and pulls[1:] == [1] * (len(pulls) - 1)


def test_g2is_budgets_sum_exactly_and_sets_satisfy_both_constraints():
    from dsel_assets.core.select.g2is import G2isConfig, component_budgets, g2is_order

    assert component_budgets(np.array([0.5, 0.3, 0.2]), 7).tolist() == [4, 2, 1]
    assert component_budgets(np.array([0.34, 0.33, 0.33]), 10).sum() == 10
    rng = np.random.default_rng(11)
    direction = rng.normal(size=16)
    pool = rng.normal(size=(400, 16)) + 0.5 * direction
    queries = direction + 0.1 * rng.normal(size=(12, 16))
    config = G2isConfig(val_k=0.5, delta=0.8)
    order, diag = g2is_order(pool, queries, 20, config)
    assert len(order) == len(set(order)) <= 20
    assert sum(b for b, _ in diag["budgets_filled"]) == 20
    start = 0
    for _, filled in diag["budgets_filled"]:
        members = order[start : start + filled]
        start += filled
        for i, a in enumerate(members):
            for b in members[:i]:
                assert pool[a] @ pool[b] >= 0  # (i) non-negative agreement within a component


def test_small2large_quotas_and_lowest_learning_percentage_first():
    from dsel_assets.core.select.small2large import cluster_quotas

    assert cluster_quotas(np.array([50, 30, 20]), 10).tolist() == [5, 3, 2]
    assert cluster_quotas(np.array([97, 2, 1]), 10).sum() == 10
    assert cluster_quotas(np.array([97, 2, 1]), 10).min() >= 1  # one per non-empty cluster
    rng = np.random.default_rng(12)
    x = np.concatenate([rng.normal(c, 0.05, size=(50, 2)) for c in (0, 5)]).astype(np.float32)
    lp = rng.uniform(0, 1, 100)
    sel = get("small2large").select(
        ids(100), 10, build_config("small2large", {"n_clusters": "2"}), learning_percentage=lp, sentence_embeddings=x
    )
    rows = [int(i[1:]) for i in sel.ids]
    for half in (range(50), range(50, 100)):
        chosen = [r for r in rows if r in half]
        assert len(chosen) == 5 and max(lp[chosen]) <= np.sort(lp[list(half)])[4]
    twin = get("small2large_random").select(
        ids(100),
        10,
        build_config("small2large_random", {"n_clusters": "2"}),
        learning_percentage=lp,
        sentence_embeddings=x,
    )
    assert sum(int(i[1:]) < 50 for i in twin.ids) == 5 and twin.ids != sel.ids


def test_ifd_rankers_exclude_and_order_as_specified():
    values = np.array([0.8, 1.0, 1.2, 0.3, np.nan])
    cherry = get("cherry_ifd").select(ids(5), 5, build_config("cherry_ifd"), ifd=values)
    assert cherry.ids == ["p001", "p000", "p003"]  # IFD > 1 excluded, IFD = 1 kept, NaN undefined
    sf = get("superfiltering").select(ids(5), 5, build_config("superfiltering"), superfiltering_ifd=values)
    assert sf.ids == ["p000", "p003"]  # strictly < 1
    margins = {"min_margin": np.array([0.5, 0.1, 0.9]), "mean_entropy": np.array([1.0, 3.0, 2.0])}
    assert get("uncertainty").select(ids(3), 2, build_config("uncertainty"), uncertainty=margins).ids == [
        "p001",
        "p000",
    ]
    by_entropy = build_config("uncertainty", {"score": "mean_entropy"})
    assert get("uncertainty").select(ids(3), 2, by_entropy, uncertainty=margins).ids == ["p001", "p002"]
    gs = np.arange(100) / 100
    assert (
        get("nuggets")
        .select(ids(100), 100, build_config("nuggets", {"threshold": "0.9"}), golden_score=gs)
        .diagnostics["eligible"]
        == 9
    )


def test_superfiltering_d_diversifies_the_ifd_shortlist():
    rng = np.random.default_rng(13)
    x = np.concatenate([rng.normal(c, 0.01, size=(20, 3)) for c in np.eye(3) * 4]).astype(np.float32)
    ifd = np.concatenate([np.full(20, 0.9), np.full(20, 0.8), np.full(20, 0.1)])
    sel = get("superfiltering_d").select(
        ids(60), 2, build_config("superfiltering_d", {"top_m": "40"}), superfiltering_ifd=ifd, sentence_embeddings=x
    )
    assert sorted(int(i[1:]) // 20 for i in sel.ids) == [0, 1]  # one per cluster of the shortlist


def test_diversify_conquer_softmax_rounds_and_budget():
    from dsel_assets.core.select.diversify_conquer import softmax

    np.testing.assert_allclose(softmax(np.array([0.0, np.log(3)])), [0.25, 0.75])
    from .test_select import SyntheticTrainer

    rng = np.random.default_rng(14)
    x = np.concatenate([rng.normal(c, 0.1, size=(60, 2)) for c in ([1, 0], [-1, 0], [0, 1])]).astype(np.float32)
    trainer = SyntheticTrainer(x)
    sel = get("diversify_conquer").select(
        ids(180), 30, build_config("diversify_conquer", {"n_clusters": "3"}), sentence_embeddings=x, trainer=trainer
    )
    assert len(sel.ids) == len(set(sel.ids)) == 30
    rounds = sel.diagnostics["per_round_cluster_counts"]
    assert [sum(r) for r in rounds] == [10, 10, 10]  # k / R per round, not a per-cluster count
    assert max(rounds[0]) - min(rounds[0]) <= 1  # round 0: equal quota
    assert [c[:2] for c in trainer.calls] == [("score", 0), ("score", 1)]  # trained between rounds
    hard = np.argmax([np.mean(1 - x[a * 60 : (a + 1) * 60, 0]) for a in range(3)])  # cluster far from the direction
    assert sum(int(i[1:]) // 60 == hard for i in sel.ids) > 10  # the hard cluster got more than its third


def test_diverse_evol_trains_then_adds_k_center_picks_in_the_new_space():
    from .test_select import SyntheticTrainer

    x = np.random.default_rng(15).normal(size=(100, 4)).astype(np.float32)
    trainer = SyntheticTrainer(x)
    sel = get("diverse_evol").select(ids(100), 12, build_config("diverse_evol"), sentence_embeddings=x, trainer=trainer)
    assert len(sel.ids) == len(set(sel.ids)) == 12
    assert trainer.calls == [("embed", 0, 4), ("embed", 1, 8)]
