"""Long Is More's selection: the k longest responses, hand-checked, over every budget."""

import numpy as np
import pytest

from dsel_assets.core.select import build_config, get

IDS = ["a", "b", "c", "d", "e"]
LENGTHS = np.array([12.0, 250.0, 40.0, 250.0, np.nan])  # b and d tie; e has no length


@pytest.mark.parametrize(
    ("k", "expected"),
    [(1, ["b"]), (2, ["b", "d"]), (3, ["b", "d", "c"]), (4, ["b", "d", "c", "a"]), (5, ["b", "d", "c", "a"])],
)
def test_longest_takes_the_longest_responses_first(k, expected):
    selection = get("longest").select(IDS, k, build_config("longest"), response_length=LENGTHS)
    assert selection.ids == expected
    assert selection.scores == [dict(zip(IDS, LENGTHS, strict=True))[i] for i in expected]
    assert selection.diagnostics["eligible"] == 4


def test_longest_refuses_lengths_of_another_pool():
    with pytest.raises(ValueError, match="response_length: 3 rows for 5 ids"):
        get("longest").select(IDS, 2, build_config("longest"), response_length=LENGTHS[:3])
