"""KNN-Uniform and KNN-KDE against a transcription of the study's arithmetic
(dcml-lab/targeted-instruction-selection @c1dc028, selection/tsds_subset.py:
``run_tsds_knn_uniform``, ``run_tsds_kde`` and ``_knn_weighted_cosine_dist_topk_chunked``),
written with plain numpy and heapq on small inputs; expected values come from it or by hand."""

import heapq

import numpy as np
import pytest

from dsel_assets.core.select import build_config, get
from dsel_assets.core.select.knn_tsds import CheckpointFeatures, kde_mass, shared_k, uniform_mass
from dsel_assets.core.select.targeted import Influence

from ..helpers import pool_ids

ALPHA, C = 0.01, 5.0


def reference_uniform(cossim: np.ndarray) -> np.ndarray:
    """run_tsds_knn_uniform's probabilities; cossim is [M queries, N pool]."""
    m, n = cossim.shape
    dist = 1.0 - cossim
    big_l = min(5000, n)
    top = np.argsort(dist, axis=1, kind="stable")[:, :big_l]
    d = np.take_along_axis(dist, top, axis=1)
    k = 1
    while k < big_l:
        gaps = (d[:, k][:, None] - d[:, :k]).sum()
        if (ALPHA / C) * gaps < (1.0 - ALPHA) * m:
            k += 1
        else:
            break
    probs = np.zeros(n)
    for i in range(m):
        probs[top[i, :k]] += 1.0 / (k * m)
    return probs


def reference_kde(cossim: np.ndarray, embeds: list[np.ndarray], lrs: list[float]) -> np.ndarray:
    """run_tsds_kde's probabilities (without its refusal of fewer than 10,000 reached rows)."""
    sigma = 0.75
    n = embeds[0].shape[0]
    max_k = min(5000, max(1, n // 10))
    kde_k = min(1000, max(1, n // 10))
    kk = int(min(max(max_k, 2), n))
    dist = np.maximum(1.0 - cossim, 0.0)
    order = np.argsort(dist, axis=1, kind="mergesort")
    top_dists = np.take_along_axis(dist, order, axis=1)[:, :kk]
    top_indices = order[:, :kk]
    cand = np.unique(top_indices.reshape(-1))
    sim = sum(lr * (e[cand] @ e[cand].T) for e, lr in zip(embeds, lrs, strict=True))
    top_sim = -np.sort(-sim, axis=1)[:, : min(kde_k, len(cand))]
    knn_dist = np.sort(np.maximum(1.0 - top_sim, 0.0), axis=1)
    kernel = 1.0 - 2.0 * knn_dist / sigma**2
    kde = (kernel * (kernel > 0)).sum(axis=-1)
    kde_map = {int(cand[i]): float(kde[i]) for i in range(len(cand))}
    top_kdes = np.vectorize(lambda t: kde_map[int(t)])(top_indices)
    m = top_indices.shape[0]
    last_k = [0] * m
    heap = [(1.0 / top_kdes[j][0], 0, j) for j in range(m)]
    heapq.heapify(heap)
    dist_weighted_sum = [top_dists[j][0] / top_kdes[j][0] for j in range(m)]
    s = 0.0
    cost = np.zeros(m)
    total_cost = 0.0
    while heap:
        count, curr_k, curr_j = heapq.heappop(heap)
        s = count
        total_cost -= cost[curr_j]
        cost[curr_j] = top_dists[curr_j][curr_k + 1] * count - dist_weighted_sum[curr_j]
        total_cost += cost[curr_j]
        if (ALPHA / C) * total_cost >= (1 - ALPHA) * m:
            break
        last_k[curr_j] = curr_k
        if curr_k < max_k - 2:
            count += 1.0 / top_kdes[curr_j][curr_k + 1]
            heapq.heappush(heap, (count, curr_k + 1, curr_j))
            dist_weighted_sum[curr_j] += top_dists[curr_j][curr_k + 1] / top_kdes[curr_j][curr_k + 1]
    probs = np.zeros(n)
    for j in range(m):
        prob_sum = 0.0
        for k in range(last_k[j] + 1):
            probs[top_indices[j][k]] += 1.0 / m / s / top_kdes[j][k]
            prob_sum += 1.0 / m / s / top_kdes[j][k]
        probs[top_indices[j][last_k[j] + 1]] += max(1.0 / m - prob_sum, 0.0)
    return probs


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def checkpoints(seed: int, n: int, m: int, t: int = 3, d: int = 12):
    """Per-checkpoint unit features of a clustered pool and its queries, learning-rate weights,
    and the LESS-style weighted cosine [N, M] between them."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(4, d))
    pool = [unit(centres[rng.integers(0, 4, n)] + rng.normal(scale=0.6, size=(n, d))) for _ in range(t)]
    queries = [unit(centres[rng.integers(0, 4, m)] + rng.normal(scale=0.6, size=(m, d))) for _ in range(t)]
    lrs = rng.uniform(0.2, 1.0, t)
    lrs = (lrs / lrs.sum()).tolist()
    scores = sum(lr * (p @ q.T) for p, q, lr in zip(pool, queries, lrs, strict=True))
    return pool, lrs, scores


@pytest.mark.parametrize("seed", range(25))
def test_uniform_mass_matches_the_reference(seed):
    rng = np.random.default_rng(seed)
    n, m = int(rng.integers(30, 400)), int(rng.integers(1, 12))
    _, _, scores = checkpoints(seed, n, m)
    mass, found = uniform_mass(scores, build_config("knn_uniform"))
    np.testing.assert_allclose(mass, reference_uniform(scores.T), rtol=1e-9, atol=1e-15)
    assert 1 <= found["neighbors"] <= n


@pytest.mark.parametrize("seed", range(25))
def test_kde_mass_matches_the_reference(seed):
    rng = np.random.default_rng(100 + seed)
    n, m = int(rng.integers(40, 400)), int(rng.integers(1, 12))
    pool, lrs, scores = checkpoints(100 + seed, n, m)
    features = CheckpointFeatures(tuple(p.astype(np.float32) for p in pool), tuple(lrs))
    mass, _ = kde_mass(scores, features, build_config("knn_kde"))
    expected = reference_kde(scores.T, pool, lrs)
    np.testing.assert_allclose(mass, expected, rtol=2e-4, atol=1e-7)  # densities from float32 search
    assert mass.sum() == pytest.approx(1.0) and expected.sum() == pytest.approx(1.0)


@pytest.mark.parametrize("seed", range(10))
def test_the_selections_rank_by_the_reference_mass_ties_by_lower_row(seed):
    pool, lrs, scores = checkpoints(200 + seed, 300, 5)
    ids = pool_ids(300)
    influence = Influence(scores.astype(np.float32), ("t",) * 5)
    expected = reference_uniform(scores.T)
    order = np.lexsort((np.arange(300), -expected))[:30]
    got = get("knn_uniform").select(ids, 30, build_config("knn_uniform"), influence=influence)
    assert got.ids == [ids[i] for i in order]
    features = CheckpointFeatures(tuple(p.astype(np.float32) for p in pool), tuple(lrs))
    config = build_config("knn_kde")
    kde = get("knn_kde").select(ids, 30, config, influence=influence, pool_checkpoint_gradients=features)
    reference = reference_kde(scores.T, pool, lrs)
    order = np.lexsort((np.arange(300), -reference))[:31]
    # the reference's ranking up to the first near-tie (densities come from a float32 search)
    close = np.flatnonzero(-np.diff(reference[order]) < 1e-6)
    cut = int(close[0]) if len(close) else 30
    assert kde.ids[:cut] == [ids[i] for i in order[:cut]]


def test_shared_k_by_hand():
    # alpha / C = 0.5 and (1 - alpha) M = 0.5: stop at the first K whose gap sum reaches 1
    d = np.array([[0.0, 0.5, 1.0, 3.0]])
    assert shared_k(d, 0.5, 1.0) == 2  # K=1: 0.5; K=2: (1 - 0) + (1 - 0.5) = 1.5
    assert shared_k(np.array([[0.0, 0.1, 0.2, 0.3]]), 0.5, 1.0) == 4  # never reached: all fetched
    # two queries share one K, and the bar is (1 - alpha) M = 1, so a gap sum of 2:
    # K=1: 0.5 + 0; K=2: 1.5 + 0.2 = 1.7; K=3: (9 - 1.5) + (0.6 - 0.1) = 8
    assert shared_k(np.array([[0.0, 0.5, 1.0, 3.0], [0.0, 0.0, 0.1, 0.2]]), 0.5, 1.0) == 3


def test_one_embedding_matrix_is_one_checkpoint_and_configs_name_their_key():
    pool, _, scores = checkpoints(7, 120, 3, t=1)
    influence = Influence(scores.astype(np.float32), ("t",) * 3)
    config = build_config("knn_kde", {"representation": "embed"})
    plain = get("knn_kde").select(pool_ids(120), 10, config, influence=influence, pool_checkpoint_gradients=pool[0])
    wrapped = CheckpointFeatures((pool[0],), (1.0,))
    again = get("knn_kde").select(pool_ids(120), 10, config, influence=influence, pool_checkpoint_gradients=wrapped)
    assert plain.ids == again.ids
    for method, key, value in (("knn_uniform", "alpha", "1.5"), ("knn_kde", "sigma", "0"), ("knn_kde", "c", "-1")):
        with pytest.raises(ValueError, match=f"{method}.{key}: must be"):
            build_config(method, {key: value})
