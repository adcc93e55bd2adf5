"""Facility-location kernels: the precomputed option, the sparse kNN fallback of every kernel
and the refusal that names the memory a kernel would need."""

import numpy as np
import pytest

from dsel_assets.core.select import _facility, _neighbours, build_config, get
from dsel_assets.core.select._facility import FacilityLocation, dense_kernel, greedy, knn_kernel

from ..helpers import pool_ids

EMBEDDING_KERNELS = [("cosine", 1.0), ("rbf", 0.05), ("dot", 1.0)]


def clustered(n=600, d=16, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(12, d))
    return (centres[rng.integers(12, size=n)] + 0.6 * rng.normal(size=(n, d))).astype(np.float32)


def objective(covers, order):
    """FL(S) under a dense kernel, negatives covering nothing."""
    return float(np.maximum(covers[order].max(axis=0), 0).sum(dtype=np.float64))


def select_fl(x, k, **params):
    config = build_config("facility_location", {key: str(value) for key, value in params.items()})
    return get("facility_location").select(pool_ids(len(x)), k, config, sentence_embeddings=x)


def cosine_matrix(x):
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    return (u @ u.T).astype(np.float32)


@pytest.mark.parametrize(("kind", "gamma"), EMBEDDING_KERNELS)
def test_sparse_selection_keeps_the_dense_objective(kind, gamma):
    """Measured: sparse picks reach 0.998-1.001 of the dense greedy objective here (greedy is not
    optimal, so sparse may even win); the sparse objective is a lower bound of the dense one."""
    x = clustered()
    dense = dense_kernel(x, kind, gamma)
    sparse_covers = knn_kernel(x, 20, kind, gamma)
    by_dense = greedy(FacilityLocation(dense), 30)[0]
    by_sparse, sparse_gains = greedy(FacilityLocation(sparse_covers), 30)
    assert objective(dense, by_sparse) / objective(dense, by_dense) >= 0.99
    assert sum(sparse_gains) <= objective(dense, by_sparse) + 1e-3
    assert greedy(FacilityLocation(sparse_covers), 30, "naive")[0] == by_sparse


@pytest.mark.parametrize(("kind", "gamma"), EMBEDDING_KERNELS)
def test_every_kernel_falls_back_to_its_sparse_graph_beyond_the_cap(kind, gamma):
    x = clustered(400)
    sel = select_fl(x, 20, kernel=kind, gamma=gamma, memory_cap_mb=0.5, n_neighbors=20)  # dense 0.61 MB
    assert sel.diagnostics["kernel"] == f"knn {kind} (dense 0.61 MB over memory_cap_mb, exact search)"
    assert sel.ids == [f"p{i:03d}" for i in greedy(FacilityLocation(knn_kernel(x, 20, kind, gamma)), 20)[0]]


def brute_force_neighbours(x, kind, gamma, k):
    """Each row's ``k`` most similar rows under the kernel, by sorting the whole matrix."""
    if kind == "rbf":
        sims = np.exp(-gamma * ((x[:, None, :] - x[None, :, :]) ** 2).sum(axis=2))
    else:
        sims = cosine_matrix(x) if kind == "cosine" else x @ x.T
    return np.argsort(-sims, axis=1, kind="stable")[:, :k], sims


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize(("kind", "gamma"), EMBEDDING_KERNELS)
def test_approximate_search_beyond_exact_search_rows(kind, gamma, seed, monkeypatch):
    """Past ``exact_search_rows`` the graph comes from the clustered search: every similarity it
    keeps is the exact one (brute force), each point keeps itself, and on clustered data it
    finds most true neighbours (brute force; measured over these seeds with 8 of 128 cells
    probed: cosine and rbf 0.945-0.954, dot 0.844-0.927 - inner products of unnormalised rows
    cluster worse) and keeps the objective."""
    monkeypatch.setattr(_neighbours, "PROBED_CELLS", 8)  # of 128 cells: as sparse a probe as at 1M rows
    x = clustered(2000, seed=seed)
    approximate = knn_kernel(x, 10, kind, gamma, exact_rows=500)
    truth, sims = brute_force_neighbours(x, kind, gamma, 11)
    graph = approximate.tocsc()  # column v: v's neighbours
    recall = []
    for v in range(len(x)):
        found = graph.indices[graph.indptr[v] : graph.indptr[v + 1]]
        values = graph.data[graph.indptr[v] : graph.indptr[v + 1]]
        assert v in found and len(found) == 11
        np.testing.assert_allclose(values, np.maximum(sims[v, found], 0), rtol=1e-4, atol=1e-4)
        recall.append(len(set(found) & set(truth[v])) / 11)
    assert np.mean(recall) >= (0.8 if kind == "dot" else 0.93)
    dense = dense_kernel(x, kind, gamma)
    by_exact = greedy(FacilityLocation(knn_kernel(x, 10, kind, gamma)), 40)[0]
    by_approximate = greedy(FacilityLocation(approximate), 40)[0]
    assert objective(dense, by_approximate) / objective(dense, by_exact) >= 0.99


def test_exact_search_rows_is_a_checked_option_reported_in_the_diagnostics():
    x = clustered(400)
    sel = select_fl(x, 20, kernel="knn", n_neighbors=10, exact_search_rows=100)
    # 4 sqrt(400) = 80 cells, rounded to 2^6
    assert sel.diagnostics["kernel"] == "knn (approximate search: 64 cells, each compared with its 64 nearest)"
    assert select_fl(x, 20, kernel="knn", n_neighbors=10).diagnostics["kernel"] == "knn (exact search)"
    for method in ("facility_location", "qdit", "expdesign_hybrid", "g2is", "knn_kde"):
        with pytest.raises(ValueError, match=f"{method}.exact_search_rows: must be >= 0"):
            build_config(method, {"exact_search_rows": "-1"})


def test_sparse_graph_keeps_each_point_and_its_neighbours_in_blocks(monkeypatch):
    x = clustered(300)
    whole = knn_kernel(x, 7, "dot")
    monkeypatch.setattr(_neighbours, "SEARCH_ROWS", 64)
    monkeypatch.setattr(_facility, "BLOCK_BYTES", 4 * 300 * 50)
    assert (knn_kernel(x, 7, "dot") != whole).nnz == 0
    np.testing.assert_allclose(whole.diagonal(), np.maximum((x * x).sum(axis=1), 0), rtol=1e-5)
    assert whole.nnz == 300 * 8
    s = cosine_matrix(x)
    np.testing.assert_allclose(knn_kernel(s, 7, "precomputed").toarray(), knn_kernel(x, 7).toarray(), atol=1e-5)


@pytest.mark.parametrize("kind", ["cosine", "rbf", "dot", "precomputed", "knn"])
def test_refusal_names_the_memory_of_both_forms(kind, tmp_path):
    x = clustered(200)
    path = tmp_path / "similarity.npy"
    np.save(path, cosine_matrix(x))
    params = {"similarity_path": path} if kind == "precomputed" else {}
    with pytest.raises(ValueError) as error:
        select_fl(x, 5, kernel=kind, memory_cap_mb=0.01, n_neighbors=50, **params)
    assert str(error.value) == (
        f"memory_cap_mb: a {kind} kernel for 200 points needs 0.15 MB dense or 0.16 MB as a 50-neighbour graph, "
        "over the cap of 0.01 MB; raise memory_cap_mb or lower n_neighbors"
    )


@pytest.mark.parametrize("cap", [2048, 0.5])
def test_precomputed_cosine_matrix_equals_the_cosine_kernel(cap, tmp_path):
    x = clustered(400, seed=3)
    path = tmp_path / "similarity.npy"
    np.save(path, cosine_matrix(x))  # unclipped: negative similarities cover nothing either way
    cosine = select_fl(x, 25, memory_cap_mb=cap, n_neighbors=20)
    precomputed = select_fl(x, 25, kernel="precomputed", similarity_path=path, memory_cap_mb=cap, n_neighbors=20)
    assert precomputed.ids == cosine.ids
    np.testing.assert_allclose(precomputed.scores, cosine.scores, rtol=1e-4)
    assert precomputed.diagnostics["kernel"].startswith("knn precomputed" if cap < 1 else "precomputed")


def test_precomputed_rows_are_the_covered_points(tmp_path):
    """[v, c] = sim(v, c): a column of ones covers every row, so c = 2 is picked first."""
    s = np.full((4, 4), 0.1, dtype=np.float32)
    s[:, 2] = 1.0
    np.save(tmp_path / "s.npy", s)
    sel = select_fl(np.zeros((4, 3), dtype=np.float32), 2, kernel="precomputed", similarity_path=tmp_path / "s.npy")
    assert sel.ids[0] == "p002" and sel.scores[0] == pytest.approx(4.0)


def test_precomputed_inputs_are_checked(tmp_path):
    with pytest.raises(ValueError, match="similarity_path: set it exactly when kernel=precomputed"):
        build_config("facility_location", {"kernel": "precomputed"})
    with pytest.raises(ValueError, match="similarity_path: set it exactly when kernel=precomputed"):
        build_config("facility_location", {"similarity_path": "s.npy"})
    x = np.zeros((3, 2), dtype=np.float32)
    np.save(tmp_path / "wide.npy", np.ones((3, 4), dtype=np.float32))
    with pytest.raises(ValueError, match=r"expected an N x N matrix for N = 3, got shape \(3, 4\)"):
        select_fl(x, 1, kernel="precomputed", similarity_path=tmp_path / "wide.npy")
    np.save(tmp_path / "nan.npy", np.full((3, 3), np.nan, dtype=np.float32))
    with pytest.raises(ValueError, match=r"similarity: non-finite entries in rows 0..2"):
        select_fl(x, 1, kernel="precomputed", similarity_path=tmp_path / "nan.npy")
    with pytest.raises(ValueError, match="cannot read"):
        select_fl(x, 1, kernel="precomputed", similarity_path=tmp_path / "missing.npy")
