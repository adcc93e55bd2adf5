"""Progress of long steps as units done of a total. A step's :class:`Meter` computes the rate and
ETA, logs one line per update through the step's logger (the log file, or live with ``-v``) and
hands each update to the listeners a command installed (the CLI's stage bars in
:mod:`dsel_assets.app.output`). Stages group steps the way a person reads a run."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

#: Step-name prefixes and the stage they belong to (anything else computes representations).
STAGES = (
    ("pool_batch", "ingestion"),
    ("selection_report", "reports"),
    ("comparison_report", "reports"),
    ("selection_", "selections"),
    ("finetuned_", "fine-tuning"),
    ("eval_", "evaluation"),
)


def stage_of(step: str) -> str:
    return next((stage for prefix, stage in STAGES if step.startswith(prefix)), "representations")


@dataclass(frozen=True)
class Tick:
    """One update of a step: ``done`` of ``total`` units after ``elapsed`` seconds."""

    step: str
    done: int
    total: int
    unit: str
    elapsed: float

    @property
    def rate(self) -> float:
        return self.done / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta(self) -> float | None:
        """Seconds left at the rate so far; None before the first unit."""
        return (self.total - self.done) / self.rate if self.rate > 0 else None


_listeners: list[Callable[[Tick], None]] = []


@contextmanager
def listening(listener: Callable[[Tick], None]) -> Iterator[None]:
    """Hand every step's updates to ``listener`` while the block runs."""
    _listeners.append(listener)
    try:
        yield
    finally:
        _listeners.remove(listener)


class Meter:
    """``total`` units of work of ``step`` (an asset name, with its batch where it has one)."""

    def __init__(
        self,
        step: str,
        total: int,
        unit: str = "examples",
        log: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ):
        self.step, self.total, self.unit, self.log, self.clock = step, total, unit, log, clock
        self.started = clock()

    def update(self, done: int, total: int | None = None) -> Tick:
        """``done`` units so far (of ``total`` when the count became known only now): log the
        rate and ETA, tell the listeners."""
        self.total = self.total if total is None else total
        tick = Tick(self.step, done, self.total, self.unit, self.clock() - self.started)
        if self.log is not None:
            eta = "" if tick.eta is None else f", ETA {tick.eta:.0f}s"
            self.log(f"{self.step}: {done}/{self.total} {self.unit}, {tick.rate:.2f} {self.unit}/s{eta}")
        for listener in list(_listeners):
            listener(tick)
        return tick
