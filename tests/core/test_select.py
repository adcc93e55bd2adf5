"""Selectors, tested over the whole registry (parameters built from it, not a hand list)."""

import dataclasses

import numpy as np
import pytest

from dsel_assets.core.select import Budget, Selection, build_config, get, methods
from dsel_assets.core.select.base import method_target
from dsel_assets.core.select.diagnostics import normalised_entropy, summarize

from ..representation_fixtures import synthetic_inputs

METHODS = sorted(methods())


#: Parameters a method cannot run without (a target task for targeted methods).
REQUIRED = {"task": "t0"}


def fields(name):
    return {f.name for f in dataclasses.fields(get(name).config_cls)}


def params_for(name, seed=0, **params):
    base = {k: v for k, v in REQUIRED.items() if k in fields(name)}
    if "seed" in fields(name):
        base["seed"] = seed
    return {**base, **params}


def inputs(spec, n=240):
    return synthetic_inputs(spec.needs, n=n)


def run(name, k, seed=0, n=240, **params):
    spec = get(name)
    ids, reps = inputs(spec, n=n)
    return spec.select(ids, k, build_config(name, params_for(name, seed, **params)), **reps)


@pytest.mark.parametrize("name", METHODS)
def test_exact_budget_unique_ids_from_the_pool(name):
    ids, _ = inputs(get(name))
    for k in (0, 1, 12, 24, 240):
        sel = run(name, k)
        assert isinstance(sel, Selection) and sel.method == name
        # exactly min(k, eligible), less any under-fill the method reports (DEITA, G2IS)
        expected = min(k, sel.diagnostics["eligible"]) - sel.diagnostics.get("under_fill", 0)
        assert len(sel.ids) == expected and len(set(sel.ids)) == expected
        assert set(sel.ids) <= set(ids)


@pytest.mark.parametrize("name", METHODS)
def test_same_seed_same_ids(name):
    assert run(name, 24, seed=5).ids == run(name, 24, seed=5).ids


@pytest.mark.parametrize("name", METHODS)
def test_duplicate_ids_and_misaligned_representations_are_refused(name):
    spec = get(name)
    ids, reps = inputs(spec)
    with pytest.raises(ValueError, match="unique"):
        spec.select(ids[:-1] + [ids[0]], 5, build_config(name, params_for(name)), **reps)
    if reps:
        with pytest.raises(ValueError, match="rows"):
            spec.select(ids[:-1], 5, build_config(name, params_for(name)), **reps)


@pytest.mark.parametrize("name", METHODS)
def test_empty_and_tiny_pools(name):
    spec = get(name)
    _, reps = inputs(spec, n=3)
    with pytest.raises(ValueError, match="empty"):
        spec.select([], 5, build_config(name, params_for(name)), **{k: v for k, v in reps.items()})
    for n in (1, 3):
        ids, reps = inputs(spec, n=n)
        sel = spec.select(ids, 5, build_config(name, params_for(name)), **reps)
        assert len(sel.ids) <= n and len(set(sel.ids)) == len(sel.ids)


@pytest.mark.parametrize("name", METHODS)
def test_config_validation_names_the_field(name):
    with pytest.raises(ValueError, match=rf"{name}: unknown parameter\(s\) no_such='1'; valid: ") as raised:
        build_config(name, {"no_such": "1"})
    for field_name, type_name, default, _ in get(name).parameters():  # each valid key with its type and default
        assert f"{field_name} ({type_name}, default {default!r})" in str(raised.value)
    if "seed" in fields(name):
        with pytest.raises(ValueError, match=rf"{name}\.seed: expected int"):
            build_config(name, {"seed": "abc"})
    config = build_config(name, params_for(name, seed=7))
    assert getattr(config, "seed", 7) == 7
    assert build_config(name, dataclasses.asdict(config)) == config  # round trip


@pytest.mark.parametrize("name", [m for m in METHODS if "task" in fields(m)])
def test_a_declared_target_is_what_the_selector_accepts(name):
    """The target a ``task`` parameter declares (the CLI checks it before any work) is what the
    selector does: a required one refuses '' (every task), an optional one selects with it; the
    pool's task labels are named by the method that reads them."""
    target = method_target(get(name).config_cls)
    assert (target.split == "pool") == ("pool_tasks" in get(name).needs)
    if target.required:
        with pytest.raises(ValueError, match=rf"{name}\.task: .*required"):
            run(name, 10, task="")
    else:
        assert len(run(name, 10, task="").ids) == 10


def test_unknown_method_lists_the_available_ones():
    with pytest.raises(KeyError, match="random"):
        get("no_such_method")


def test_random_budgets_are_nested_prefixes():
    small, large = run("random", 12), run("random", 48)
    assert large.ids[:12] == small.ids


def test_kmeans_random_balances_and_redistributes():
    # 3 clusters of very different size: 5, 20, 200 points; quota 10 each for k = 30
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(c, 0.01, size=(n, 2)) for c, n in ((0, 5), (5, 20), (10, 200))]).astype(np.float32)
    ids = [f"p{i}" for i in range(len(x))]
    sel = get("kmeans_random").select(ids, 30, build_config("kmeans_random", {"n_clusters": 3}), sentence_embeddings=x)
    group = np.array([0] * 5 + [1] * 20 + [2] * 200)
    counts = np.bincount(group[[ids.index(i) for i in sel.ids]], minlength=3)
    assert counts.tolist() == [5, 12, 13]  # small cluster exhausted, its quota shared
    with pytest.raises(ValueError, match="n_clusters"):
        build_config("kmeans_random", {"n_clusters": 0})


def test_kmeans_centroids_takes_one_point_per_well_separated_cluster():
    rng = np.random.default_rng(1)
    centers = np.array([[0, 0], [10, 0], [0, 10], [10, 10]], dtype=np.float32)
    x = np.concatenate([rng.normal(c, 0.1, size=(30, 2)) for c in centers]).astype(np.float32)
    ids = [f"p{i}" for i in range(len(x))]
    sel = get("kmeans_centroids").select(ids, 4, build_config("kmeans_centroids"), sentence_embeddings=x)
    assert sorted(ids.index(i) // 30 for i in sel.ids) == [0, 1, 2, 3]


def separated_blobs(seed, blobs=16, size=30, dim=8):
    """``blobs`` tight clusters of ``size`` points, 1,000x farther apart than they are wide."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=100.0, size=(blobs, dim))
    labels = np.repeat(np.arange(blobs), size)
    return (centres[labels] + rng.normal(scale=0.1, size=(len(labels), dim))).astype(np.float32), labels


@pytest.mark.parametrize("seed", range(10))
def test_two_level_kmeans_recovers_separated_blobs(seed):
    """16 equal blobs: 4 groups, each group's share is exactly its number of blobs, so every
    cluster is one whole blob, as one-level k-means finds them."""
    from dsel_assets.core.clustering import kmeans, two_level_kmeans

    x, labels = separated_blobs(seed)
    for clustering in (kmeans, two_level_kmeans):
        centroids, assignment = clustering(x, 16, seed)
        assert len(centroids) == 16
        assert all(len(set(labels[assignment == c])) == 1 for c in range(16))  # no cluster spans blobs
        assert len(set(assignment.tolist())) == 16  # and no blob is split
        np.testing.assert_allclose(centroids[assignment], [x[labels == b].mean(axis=0) for b in labels], atol=1e-3)


@pytest.mark.parametrize("seed", range(5))
def test_kmeans_fits_a_sample_past_256_rows_per_cluster_and_assigns_every_row(seed):
    """5 blobs of 600 rows (3,000 > 256 x 5): centroids from a 1,280-row sample, each within
    0.05 of its blob's mean (noise 0.1 / sqrt(~256) per axis), and every row assigned to its
    nearest centroid - its own blob."""
    from dsel_assets.core.clustering import FIT_ROWS_PER_CLUSTER, kmeans

    x, labels = separated_blobs(seed, blobs=5, size=600)
    assert len(x) > FIT_ROWS_PER_CLUSTER * 5
    centroids, assignment = kmeans(x, 5, seed)
    nearest = np.argmin(((x[:, None, :] - centroids[None]) ** 2).sum(axis=2), axis=1)
    assert np.array_equal(assignment, nearest)
    assert all(len(set(labels[assignment == c])) == 1 for c in range(5)) and len(set(assignment.tolist())) == 5
    means = np.array([x[labels == labels[assignment == c][0]].mean(axis=0) for c in range(5)])
    assert np.abs(centroids - means).max() < 0.05


@pytest.mark.parametrize(("n", "clusters"), [(50, 1), (50, 2), (50, 7), (50, 50), (200, 30), (7, 20)])
def test_two_level_kmeans_gives_exactly_the_clusters_asked(n, clusters):
    from dsel_assets.core.clustering import two_level_kmeans

    for seed in range(5):
        x = np.random.default_rng(seed).normal(size=(n, 4)).astype(np.float32)
        centroids, assignment = two_level_kmeans(x, clusters, seed)
        assert len(centroids) == min(clusters, n)
        assert assignment.min() >= 0 and assignment.max() < len(centroids)


def test_capped_shares_by_hand():
    from dsel_assets.core.clustering import capped_shares

    assert capped_shares([10, 10, 80], [10, 10, 2], 12).tolist() == [5, 5, 2]  # 9.6 capped at 2: 10 left, halved
    assert capped_shares([50, 30, 20], [100, 1, 1], 10).tolist() == [8, 1, 1]  # 3 and 2 capped: 8 left
    assert capped_shares([1, 1, 1], [5, 5, 5], 4).tolist() == [2, 1, 1]  # equal remainders: first entry
    assert capped_shares([3, 1], [1, 1], 5).tolist() == [1, 1]  # k above the caps: every cap
    assert capped_shares([7, 2, 1], [10, 10, 10], 10).tolist() == [7, 2, 1]


@pytest.mark.parametrize("seed", range(5))
def test_two_level_kmeans_gives_a_block_of_duplicates_one_cluster(seed):
    """200 copies of one far point beside 200 distinct points, 10 clusters: by rows the copies'
    group would take 5 centroids of one point (4 left empty); capped at its distinct rows it
    takes 1, and all 10 clusters hold rows."""
    from dsel_assets.core.clustering import two_level_kmeans

    rng = np.random.default_rng(seed)
    x = np.concatenate([np.full((200, 4), 1000.0), rng.normal(size=(200, 4))]).astype(np.float32)
    centroids, assignment = two_level_kmeans(x, 10, seed)
    assert len(centroids) == 10 and len(set(assignment[:200].tolist())) == 1
    assert len(set(assignment.tolist())) == 10


def test_kmeans_centroids_two_levels_take_one_point_per_blob():
    """Forced two-level k-means (flat_kmeans_rows below the pool): one pick per blob, each the
    blob's point nearest its mean."""
    x, labels = separated_blobs(3)
    ids = [f"p{i}" for i in range(len(x))]
    config = build_config("kmeans_centroids", {"flat_kmeans_rows": 100})
    sel = get("kmeans_centroids").select(ids, 16, config, sentence_embeddings=x)
    rows = [ids.index(i) for i in sel.ids]
    assert sel.diagnostics["kmeans"] == "two levels" and sorted(labels[rows]) == list(range(16))
    for row in rows:
        blob = x[labels == labels[row]]
        nearest = np.argmin(((blob - blob.mean(axis=0)) ** 2).sum(axis=1))
        assert np.array_equal(x[row], blob[nearest])
    with pytest.raises(ValueError, match="kmeans_centroids.flat_kmeans_rows"):
        build_config("kmeans_centroids", {"flat_kmeans_rows": -1})


def nearest_unused_by_definition(x, centroids, k):
    """Each centroid in turn takes the first unused row of its stable argsort by squared L2."""
    taken, rows = set(), []
    for centroid in centroids[:k]:
        distances = ((x - centroid) ** 2).sum(axis=1)
        rows.append(next(int(j) for j in np.argsort(distances, kind="stable") if int(j) not in taken))
        taken.add(rows[-1])
    return rows


@pytest.mark.parametrize("seed", range(20))
def test_kmeans_centroids_nearest_unused_rows_match_the_definition(seed):
    """The searched shortcut makes the same picks as scanning every row for every centroid,
    with duplicate rows (ties), centroids on rows and repeated centroids (collisions), and with
    one candidate per centroid (mostly full scans)."""
    from dsel_assets.core.select.kmeans_centroids import nearest_unused

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(300, 8)).astype(np.float32)
    x[rng.integers(300, size=40)] = x[rng.integers(300, size=40)]  # duplicated rows
    centroids = np.concatenate([rng.normal(size=(30, 8)), x[rng.integers(300, size=20)]]).astype(np.float32)
    centroids[rng.integers(50, size=10)] = centroids[rng.integers(50, size=10)]  # repeated centroids
    k = int(rng.integers(1, 51))
    expected = nearest_unused_by_definition(x, centroids, k)
    assert nearest_unused(x, centroids, k)[0] == expected
    assert nearest_unused(x, centroids, k, candidates=3)[0] == expected  # some searched, some scanned
    assert nearest_unused(x, centroids, k, candidates=1)[0] == expected


def test_budget_parsing():
    assert Budget.parse("5%").count(600) == 30
    assert Budget.parse(0.05).count(601) == 30  # floor(p * N)
    assert Budget.parse("0.1").label == "10pct"
    assert Budget.parse("500").count(100) == 100 and Budget.parse(500).label == "500"
    for bad in ("abc", "0", "-5", "150%", "2.5"):
        with pytest.raises(ValueError, match="budget"):
            Budget.parse(bad)


def test_diagnostics():
    assert normalised_entropy(["a", "b", "a", "b"]) == pytest.approx(1.0)
    assert normalised_entropy(["a", "a"]) == 0.0
    q = np.eye(3, dtype=np.float32)[:1]
    stats = summarize(["a", "b"], noise=[None, "wrong_answer"], selected_vectors=np.eye(3)[:2], query_vectors=q)
    assert stats["noise_fraction"] == 0.5 and stats["query_similarity"] == 0.5
    assert stats["task_counts"] == {"a": 1, "b": 1}


def test_less_ranks_by_the_task_score_and_skips_missing_features():
    ids = ["a", "b", "c", "d", "e"]
    scores = {"math": np.array([0.1, np.nan, 0.9, 0.5, 0.5]), "code": np.zeros(5)}
    sel = get("less").select(ids, 4, build_config("less", {"task": "math"}), less_scores=scores)
    assert sel.ids == ["c", "d", "e", "a"] and sel.scores == [0.9, 0.5, 0.5, 0.1]  # ties by lower id
    assert sel.diagnostics["eligible"] == 4
    assert get("less").select(ids, 5, build_config("less", {"task": "math"}), less_scores=scores).ids == sel.ids
    with pytest.raises(ValueError, match=r"less\.task: required \(a task label of the query set\)"):
        get("less").select(ids, 2, build_config("less"), less_scores=scores)
    with pytest.raises(ValueError, match="not one of"):
        get("less").select(ids, 2, build_config("less", {"task": "bio"}), less_scores=scores)
