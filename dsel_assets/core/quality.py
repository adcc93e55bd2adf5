"""Per-example quality in [0, 1] (docs/methods/deita_filter.md, qdit.md): a source's own ``score`` where it has one,
else the selection model's per-token likelihood of the reference answer, exp(-L(A|Q))."""

from __future__ import annotations

import math
from collections.abc import Sequence

COLUMN_SCORE, MODEL_LIKELIHOOD = "column_score", "model_likelihood"


def column_score(value: object) -> float | None:
    """A record's ``score`` as a number clamped to [0, 1]; None when it is not a number (absent,
    text that is not numeric, a boolean, a list, NaN)."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else min(max(number, 0.0), 1.0)


def quality_values(scores: Sequence[object], losses: Sequence[float | None]) -> tuple[list[float | None], list[str]]:
    """(quality, how) per example from its ``score`` field and its L(A|Q) (None when unscored)."""
    values, how = [], []
    for score, loss in zip(scores, losses, strict=True):
        number = column_score(score)
        if number is not None:
            values.append(number)
            how.append(COLUMN_SCORE)
        else:
            values.append(None if loss is None else math.exp(-loss))
            how.append(MODEL_LIKELIHOOD)
    return values, how
