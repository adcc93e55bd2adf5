"""The one result type of every selector, and budgets."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np


@dataclass(frozen=True)
class Budget:
    """A count (``500``) or a fraction of the pool (``0.05`` / ``"5%"``); ``k = floor(p * N)``."""

    value: float
    is_fraction: bool

    @classmethod
    def parse(cls, spec: str | float | int | Budget) -> Budget:
        if isinstance(spec, Budget):
            return spec
        text = str(spec).strip()
        try:
            if text.endswith("%"):
                budget = cls(float(text[:-1]) / 100.0, True)
            else:
                value = float(text)
                if value < 1:
                    budget = cls(value, True)
                elif value.is_integer():
                    budget = cls(value, False)
                else:
                    raise ValueError
        except ValueError:
            raise ValueError(
                f"budget: expected a count (500), a fraction (0.05) or a percentage (5%), got {spec!r}"
            ) from None
        if not math.isfinite(budget.value) or budget.value <= 0 or (budget.is_fraction and budget.value > 1):
            raise ValueError(f"budget: must be a positive count or a fraction in (0, 1], got {spec!r}")
        return budget

    def count(self, n: int) -> int:
        """The number of examples this budget allows out of ``n``."""
        k = math.floor(self.value * n + 1e-9) if self.is_fraction else int(self.value)
        return min(k, n)

    @property
    def label(self) -> str:
        """Stable text form: ``5pct`` or ``500``."""
        if self.is_fraction:
            return f"{self.value * 100:g}pct"
        return str(int(self.value))


@dataclass(frozen=True)
class Target:
    """What a method's ``task`` parameter names: a task label of the ``split`` ("query": the
    query set's, "pool": the pool's); ``required``: '' (every task) is refused."""

    split: Literal["query", "pool"]
    required: bool

    @property
    def where(self) -> str:
        """The split in words, for messages."""
        return "the query set" if self.split == "query" else "the pool"


def target_field(split: Literal["query", "pool"], required: bool, help: str) -> Any:
    """A method's ``task`` parameter, declaring what it names so callers check it before any work."""
    return field(default="", metadata={"help": help, "target": Target(split, required)})


def method_target(config_cls: type) -> Target | None:
    """The declared target of a method's config class; None when it has no ``task`` parameter."""
    found = next((f for f in dataclasses.fields(config_cls) if f.name == "task"), None)
    return None if found is None else found.metadata["target"]


@dataclass
class Selection:
    """An ordering of unique pool ids, best first; a budget is a prefix of it."""

    method: str
    ids: list[str]
    scores: list[float] | None = None
    diagnostics: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(set(self.ids)) != len(self.ids):
            raise ValueError(f"{self.method}: selection holds duplicate ids")
        if self.scores is not None and len(self.scores) != len(self.ids):
            raise ValueError(f"{self.method}: {len(self.scores)} scores for {len(self.ids)} ids")

    def prefix(self, k: int) -> Selection:
        scores = None if self.scores is None else self.scores[:k]
        return dataclasses.replace(self, ids=self.ids[:k], scores=scores)


def check_inputs(ids: np.ndarray | list[str], **arrays: np.ndarray | None) -> np.ndarray:
    """Ids as an array of unique strings; every representation array has one row per id."""
    ids = np.asarray(ids, dtype=object)
    if len(ids) == 0:
        raise ValueError("ids: the pool is empty; nothing to select from")
    if len(set(ids.tolist())) != len(ids):
        raise ValueError("ids: pool ids must be unique")
    for name, array in arrays.items():
        if array is not None and len(array) != len(ids):
            raise ValueError(f"{name}: {len(array)} rows for {len(ids)} ids")
    return ids


def rank_by_score(
    method: str, ids: np.ndarray, scores: np.ndarray, k: int, descending: bool = True, **diagnostics
) -> Selection:
    """Top ``k`` ids by score (NaN = not eligible), ties broken by lower id: the ordering of
    every score-ranking method (LESS, IFD, golden score, uncertainty, ...)."""
    scores = np.asarray(scores, dtype=np.float64)
    eligible = np.flatnonzero(np.isfinite(scores))
    key = -scores[eligible] if descending else scores[eligible]
    order = eligible[np.lexsort((ids[eligible].astype(str), key))][:k]
    return Selection(
        method,
        [str(i) for i in ids[order]],
        scores[order].tolist(),
        diagnostics={"eligible": len(eligible), **diagnostics},
    )
