"""ROUGE-L between generated and reference texts (rouge-score, Porter stemming): the eval
metric of free-form answers, and Data-Whisperer's reward for a demonstration's answer."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Sequence


@functools.lru_cache(maxsize=1)
def _rouge_scorer():
    """One stemmed ROUGE-L scorer, with two side effects of absl (rouge-score's logger) undone:
    building the scorer logs, and absl calls ``logging.basicConfig()`` when the root logger has
    no handler (a root handler bound to whatever ``sys.stderr`` is then: duplicate console
    lines) - a temporary null handler prevents it; and absl's handler keeps the ``sys.stderr``
    of import time and closes it when ``logging.config.dictConfig`` (MLflow calls it) shuts
    handlers down - unless it is the process's own stderr, which it now is."""
    from absl import logging as absl_logging
    from rouge_score import rouge_scorer

    absl_logging.get_absl_handler().python_handler.stream = sys.__stderr__
    guard = logging.NullHandler()
    logging.root.addHandler(guard)
    try:
        return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    finally:
        logging.root.removeHandler(guard)


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """ROUGE-L F-measure per pair (rouge-score, Porter stemming)."""
    scorer = _rouge_scorer()
    return [scorer.score(ref, pred)["rougeL"].fmeasure for pred, ref in zip(predictions, references, strict=True)]
