"""The skeleton every per-example score asset shares: score a chunk of examples into table rows
with their lineage columns, and resume a partly scored table (rows of the same identity are kept,
stale ones dropped)."""

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import dagster as dg
import polars as pl

from dsel_assets.core.models.batching import Batching
from dsel_assets.core.models.scoring import ExampleScores, score_examples
from dsel_assets.core.models.templates import ALPACA_PROMPT
from dsel_assets.pipeline.metadata import markdown_table
from dsel_assets.pipeline.progress import Meter
from dsel_assets.store import queries
from resources.store import StateStore

SCORE_COLUMNS = list(ExampleScores.__dataclass_fields__)


CHUNK = 128


SCORE_BATCH = 8  # examples per forward (fewer after an out-of-memory error; tokens capped by the model resource)


SCORING_VERSION = "1"  # of score_examples: rows of the same version, model and template are interchangeable


GREEDY_MAX_NEW_TOKENS = 128  # length cap of the greedy generations that greedy_scores is scored on


def template_hash(tokenizer, template: str = "chat") -> str:
    """Short hash of the prompt format: the tokenizer's chat template, or the Alpaca prompt."""
    text = ALPACA_PROMPT if template == "alpaca" else getattr(tokenizer, "chat_template", None) or "role: content"
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def score_frame(
    model,
    tokenizer,
    chunk: list[tuple[str, list[dict]]],
    fixed: dict,
    response: str = "reference",
    template: str = "chat",
    batching: Batching | int = 8,
):
    """The scores of ``chunk`` ((pool id, messages) pairs) as table rows, each with the
    ``fixed`` lineage columns (batch, model identity, template, code version, ...) and the
    scoring template; ``batching`` as :func:`score_examples` takes it."""
    scored = [
        {"pool_id": i, **fixed, "prompt_template": template, **{c: getattr(s, c) for c in SCORE_COLUMNS}}
        for i, s in score_examples(
            model,
            tokenizer,
            chunk,
            batch_size=batching,
            response=response,
            max_new_tokens=GREEDY_MAX_NEW_TOKENS,
            template=template,
        )
    ]
    return pl.DataFrame(scored).with_columns(
        [pl.col(c).cast(pl.Float64) for c in SCORE_COLUMNS if c not in ("response_tokens", "reason")]
    )


@dataclass(frozen=True)
class ScoreRun:
    """What a resumable score asset did: rows scored now, rows kept from an earlier run, and the
    table's summary once stale rows are gone."""

    computed: int
    reused: int
    stats: queries.ScoreSummary

    def metadata(self) -> dict:
        return {
            "rows": self.stats.rows,
            "computed": self.computed,
            "reused_after_resume": self.reused,
            "undefined": self.stats.undefined,
            "undefined_reasons": dg.MetadataValue.md(markdown_table(["reason", "rows"], self.stats.reasons)),
        }


def score_resumably(
    context: dg.AssetExecutionContext,
    store: StateStore,
    table: str,
    items: list[tuple[str, list[dict]]],
    keep: dict[str, object],
    scorer: Callable[[], Callable[[list[tuple[str, list[dict]]]], pl.DataFrame]],
    value_column: str,
    batch: str | None = None,
) -> ScoreRun:
    """The skeleton every per-example score asset shares. Ids of ``items`` already stored under
    the ``keep`` identity (model hash, code version, ...) are reused; the rest are scored
    ``CHUNK`` at a time by the function ``scorer()`` returns (called only when something is
    left, so a finished rerun loads no model), each chunk upserted in one transaction (a crash
    loses at most one chunk) and logged with its rate and ETA. Then rows of another identity or
    of ids that left the pool (of ``batch``, for a per-batch asset) are deleted."""
    scope = {} if batch is None else {"batch": batch}
    with store.session() as db:
        done = set(db.rows_matching(table, ["pool_id"], {**scope, **keep})["pool_id"])
    todo = [item for item in items if item[0] not in done]
    written = 0
    if todo:
        score_chunk = scorer()  # loads the model: not part of the rate
        meter = Meter(f"{table}[{batch}]" if batch else table, len(todo), log=context.log.info)
        for start in range(0, len(todo), CHUNK):
            chunk = todo[start : start + CHUNK]
            frame = score_chunk(chunk)
            with store.session() as db:
                db.upsert_by_id(table, frame, scope)
            written += len(chunk)
            meter.update(written)
    with store.session() as db:
        db.delete_stale(table, keep, batch=batch)
        stats = db.score_summary(table, value_column, batch=batch)
    return ScoreRun(written, len(items) - len(todo), stats)


def score_code_version(name: str) -> str:
    """The code version of score asset ``name``: rows of one version, model and template are
    the same numbers whichever asset computed them."""
    return f"{name}-{SCORING_VERSION}"
