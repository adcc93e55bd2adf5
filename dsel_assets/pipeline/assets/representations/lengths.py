"""Response lengths (docs/methods/longest.md): the tokens of each pool example's assistant turns
under the selection model's tokenizer, per pool batch. A tokenizer pass, no model forward."""

import dagster as dg
import polars as pl

from dsel_assets.core.models.templates import response_token_counts
from dsel_assets.pipeline.names import POOL_BATCH, REPRESENTATIONS, pool_batches
from resources.models import SelectionModel
from resources.store import StateStore
from resources.tracking import DatasetRef, MlflowTracker

CODE_VERSION = "response_lengths-1"


@dg.asset(
    partitions_def=pool_batches,
    deps=[POOL_BATCH],
    group_name=REPRESENTATIONS,
    code_version=CODE_VERSION,
    kinds={"duckdb"},
    description="Tokens of each pool example's assistant turns under the selection model's tokenizer "
    "(the `response_tokens` column of a score table).",
)
def response_lengths(
    context: dg.AssetExecutionContext, store: StateStore, selection_model: SelectionModel, tracker: MlflowTracker
) -> dg.MaterializeResult:
    batch, identity = context.partition_key, selection_model.identity()
    with store.session() as db:
        manifest = db.get_batch(batch)
        rows = db.split_rows("pool", batch=batch)
    counts = response_token_counts(selection_model.tokenizer(), rows["messages"].to_list())
    frame = pl.DataFrame(
        {"pool_id": rows["pool_id"], "response_tokens": pl.Series(counts, dtype=pl.Int32)}
    ).with_columns(
        batch=pl.lit(batch),
        model=pl.lit(identity["model"]),
        model_hash=pl.lit(identity["model_hash"]),
        code_version=pl.lit(CODE_VERSION),
        reason=pl.lit(""),
    )
    inputs = [DatasetRef(f"pool_batch/{batch}", manifest.stored_path, manifest.sha256)]
    with tracker.run(context, params={"batch": batch, **identity}, inputs=inputs) as run:
        with store.session() as db:
            db.ensure_score_table("response_lengths")
            db.replace_rows("response_lengths", {"batch": batch}, frame)
        mean = float(frame["response_tokens"].mean() or 0.0)
        run.log_metrics({"rows": frame.height, "mean_response_tokens": mean})
    return dg.MaterializeResult(
        metadata={"rows": frame.height, "mean_response_tokens": round(mean, 1), **identity, **run.metadata()}
    )
