"""Quality values (dsel_assets/core/quality.py) by hand: a record's own score wins, clamped to
[0, 1]; otherwise exp(-L(A|Q)); neither gives no value."""

import math

from dsel_assets.core.quality import COLUMN_SCORE, MODEL_LIKELIHOOD, column_score, quality_values


def test_column_scores_are_numbers_clamped_to_the_unit_interval():
    assert column_score(0.25) == 0.25 and column_score("0.75") == 0.75 and column_score(3) == 1.0
    assert column_score(-2) == 0.0
    for not_a_score in (None, True, "good", [0.5], {"v": 1}, float("nan"), "nan"):
        assert column_score(not_a_score) is None, not_a_score


def test_quality_prefers_the_records_score_then_the_likelihood():
    values, how = quality_values([0.9, None, "x", None], [2.0, math.log(4), 0.0, None])
    assert values == [0.9, 0.25, 1.0, None]
    assert how == [COLUMN_SCORE, MODEL_LIKELIHOOD, MODEL_LIKELIHOOD, MODEL_LIKELIHOOD]
