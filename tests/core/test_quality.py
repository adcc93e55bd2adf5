"""Quality values (dsel_assets/core/quality.py) by hand: a record's own score wins, on its own
scale; otherwise exp(-L(A|Q)); neither gives no value; provided scores off (0, 1] beside
likelihood rows are named as mixed scales."""

import math

from dsel_assets.core.quality import COLUMN_SCORE, MODEL_LIKELIHOOD, column_score, mixed_scales, quality_values


def test_column_scores_are_finite_numbers_on_their_own_scale():
    """DEITA's scorers give 1-6: 3 stays 3 (it was clamped to 1, so such scores all tied)."""
    assert column_score(0.25) == 0.25 and column_score("0.75") == 0.75 and column_score(3) == 3.0
    assert column_score(-2) == -2.0 and column_score("5.5") == 5.5
    for not_a_score in (None, True, "good", [0.5], {"v": 1}, float("nan"), "nan", float("inf"), "-inf"):
        assert column_score(not_a_score) is None, not_a_score


def test_quality_prefers_the_records_score_then_the_likelihood():
    values, how = quality_values([4.5, None, "x", None], [2.0, math.log(4), 0.0, None])
    assert values == [4.5, 0.25, 1.0, None]
    assert how == [COLUMN_SCORE, MODEL_LIKELIHOOD, MODEL_LIKELIHOOD, MODEL_LIKELIHOOD]


def test_mixed_scales_are_named_only_where_both_kinds_meet_off_the_unit_interval():
    deita = [COLUMN_SCORE, COLUMN_SCORE, MODEL_LIKELIHOOD]
    found = mixed_scales([2.5, 5.5, 0.4], deita)
    assert found.startswith("2 provided scores span [2.5, 5.5] while 1 rows without one use the model likelihood")
    assert mixed_scales([0.2, 0.9, 0.4], deita) is None  # one scale: both in [0, 1]
    assert mixed_scales([2.5, 5.5], [COLUMN_SCORE, COLUMN_SCORE]) is None  # every row scored by the data
    assert mixed_scales([0.3, None], [MODEL_LIKELIHOOD, MODEL_LIKELIHOOD]) is None  # none provided
