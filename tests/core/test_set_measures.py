"""The set measures stored with every selection: FL coverage and NovelSum, against hand
computations, bounded by sampling on large pools, and a recorded reason when unavailable."""

import math

import numpy as np
import pytest

from dsel_assets.core.select import diagnostics
from dsel_assets.core.select.diagnostics import fl_coverage, set_measures

R = math.sqrt(0.5)
#: unit vectors at 0, 90, 45 and 180 degrees
POOL = np.array([[1, 0], [0, 1], [R, R], [-1, 0]], dtype=np.float32)
IDS = ["a", "b", "c", "d"]


def test_fl_coverage_by_hand():
    """{a}: cosines 1, 0, 0.7071, -1 -> clipped at 0 -> mean (1 + 0.7071) / 4; {a, b}: (2 + 0.7071) / 4."""
    assert fl_coverage(POOL, POOL[:1]) == pytest.approx((1 + R) / 4, abs=1e-6)
    assert fl_coverage(POOL, POOL[:2]) == pytest.approx((2 + R) / 4, abs=1e-6)
    assert fl_coverage(3 * POOL, 5 * POOL[:2]) == pytest.approx((2 + R) / 4, abs=1e-6)  # scale-free
    assert fl_coverage(POOL, POOL[:0]) == 0.0


def brute_novelsum(x, neighbors=10, beta=0.5, alpha=1.0):
    """NovelSum by its definition, one pair at a time."""
    n = len(x)
    k = min(neighbors, n - 1)
    sigma = [
        1 / np.mean(sorted(float(((x[i] - x[j]) ** 2).sum()) for j in range(n) if j != i)[:k]) ** beta for i in range(n)
    ]
    total = 0.0
    for i in range(n):
        cos = [float(x[i] @ x[j] / np.linalg.norm(x[i]) / np.linalg.norm(x[j])) for j in range(n)]
        d = sorted((1 - cos[j]) * (sigma[i] + sigma[j]) for j in range(n) if j != i)
        total += np.mean([v / (r + 1) ** alpha for r, v in enumerate(d)])
    return total / n


def test_novelsum_by_hand():
    """a, b, c: squared distances 2, 0.5858, 0.5858, so sigma = (2 / 2.5858)^0.5 for a and b,
    (1 / 0.5858)^0.5 for c; e.g. a's distances sorted 0.6403, 1.7589 weigh 1 and 1/2."""
    got = set_measures(IDS, ["a", "b", "c"], lambda: POOL)
    sigma_ab, sigma_c = 1 / math.sqrt((2 + (2 - 2 * R)) / 2), 1 / math.sqrt(2 - 2 * R)
    near, far = (1 - R) * (sigma_ab + sigma_c), 2 * sigma_ab
    by_hand = (2 * (near + far / 2) / 2 + (near + near / 2) / 2) / 3
    assert by_hand == pytest.approx(0.66665, abs=1e-5)
    assert got["novelsum"] == pytest.approx(by_hand, rel=1e-5)
    assert got["novelsum"] == pytest.approx(brute_novelsum(POOL[:3]), rel=1e-5)
    assert got["fl_coverage"] == pytest.approx(3 / 4, abs=1e-6)  # d, opposite to a, is covered by nothing
    assert (got["fl_coverage_points"], got["novelsum_points"]) == (4, 3)


def test_large_pools_are_sampled_and_estimates_stay_close(monkeypatch):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 8)).astype(np.float32)
    ids = [f"p{i}" for i in range(3000)]
    selected = ids[::20]
    exact = set_measures(ids, selected, lambda: x)
    assert exact["fl_coverage"] == pytest.approx(fl_coverage(x, x[::20]))
    assert exact["novelsum"] == pytest.approx(brute_novelsum(x[::20]), rel=1e-5)
    monkeypatch.setattr(diagnostics, "COVERAGE_POINTS", 500)
    monkeypatch.setattr(diagnostics, "NOVELSUM_POINTS", 100)
    monkeypatch.setattr(diagnostics, "BLOCK_BYTES", 4 * 150 * 7)  # blocks of 7 pool rows
    sampled = set_measures(ids, selected, lambda: x)
    assert (sampled["fl_coverage_points"], sampled["novelsum_points"]) == (500, 100)
    assert sampled["fl_coverage"] == pytest.approx(exact["fl_coverage"], abs=0.03)  # 0.5 / sqrt(500) = 0.022
    assert sampled == set_measures(ids, selected, lambda: x)  # seeded


def test_unavailable_embeddings_are_recorded_not_raised():
    def missing():
        raise RuntimeError("sentence_embeddings: no Lance dataset yet; materialize sentence_embeddings first")

    assert set_measures(IDS, ["a"], missing) == {
        "set_measures_unavailable": "sentence_embeddings: no Lance dataset yet; materialize sentence_embeddings first"
    }
    bad = POOL.copy()
    bad[1, 0] = np.nan
    assert set_measures(IDS, ["a"], lambda: bad) == {
        "set_measures_unavailable": "sentence embeddings: non-finite values"
    }
