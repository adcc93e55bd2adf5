"""MIG's label sets from provided tags or embedding clusters (dsel_assets/core/labels.py),
against hand-built expectations."""

import numpy as np

from dsel_assets.core.labels import cluster_labels, provided_labels


def test_provided_tags_become_sorted_names_and_per_example_indices():
    labelled = provided_labels([["math", "algebra"], ["code"], ["algebra"]])
    assert labelled.names == ["algebra", "code", "math"]
    assert labelled.members == [[2, 0], [1], [0]]
    assert labelled.how.startswith("provided")


def test_a_pool_not_fully_tagged_is_not_labelled_by_its_tags():
    for tag_lists in ([["a"], None], [["a"], []], [["a"], ["b", 3]], [["a"], "a"]):
        assert provided_labels(tag_lists) is None, tag_lists


def test_cluster_labels_give_each_example_its_cluster():
    rng = np.random.default_rng(0)
    centres = np.array([[10.0, 0.0], [-10.0, 0.0], [0.0, 10.0]])
    truth = np.repeat(np.arange(3), 10)
    vectors = centres[truth] + rng.normal(scale=0.1, size=(30, 2))
    labelled, centroids = cluster_labels(vectors, n_clusters=3, seed=0)
    assert labelled.names == ["cluster-0", "cluster-1", "cluster-2"]
    assigned = np.array([m[0] for m in labelled.members])
    # the same partition as the truth, whatever the cluster numbering
    assert len({(t, a) for t, a in zip(truth, assigned, strict=True)}) == 3
    assert np.allclose(centroids[assigned], centres[truth], atol=0.2)


def test_cluster_count_is_capped_at_one_per_five_examples():
    vectors = np.random.default_rng(1).normal(size=(12, 4))
    labelled, centroids = cluster_labels(vectors, n_clusters=50, seed=0)
    assert len(labelled.names) == len(centroids) == 2  # 12 // 5
    labelled, _ = cluster_labels(vectors[:3], n_clusters=50, seed=0)
    assert len(labelled.names) == 1
