"""Per-example quality (docs/methods/deita_filter.md, qdit.md): a source's own ``score`` where it has
one, on the data's own scale (DEITA's scorers give 1-6, the methods' reference code reads them
so), else the selection model's per-token likelihood of the reference answer, exp(-L(A|Q)), in
(0, 1]."""

from __future__ import annotations

import math
from collections.abc import Sequence

COLUMN_SCORE, MODEL_LIKELIHOOD = "column_score", "model_likelihood"


def column_score(value: object) -> float | None:
    """A record's ``score`` as a finite number, as given; None when it is not one (absent, text
    that is not numeric, a boolean, a list, NaN, infinity)."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


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


def mixed_scales(values: Sequence[float | None], how: Sequence[str]) -> str | None:
    """Why the pool's qualities are not on one scale, or None: provided scores outside [0, 1]
    beside rows that fall back to the model's likelihood (which lies in (0, 1]), so every provided
    score outranks, or is outranked by, every fallback by scale alone."""
    provided = [v for v, h in zip(values, how, strict=True) if h == COLUMN_SCORE]
    fallback = sum(h == MODEL_LIKELIHOOD for h in how)
    if not provided or not fallback or 0.0 <= min(provided) <= max(provided) <= 1.0:
        return None
    return (
        f"{len(provided)} provided scores span [{min(provided):g}, {max(provided):g}] while {fallback} rows without "
        "one use the model likelihood exp(-L(A|Q)) in (0, 1]: the two scales are not comparable; give every "
        "source a score on one scale, or none"
    )
