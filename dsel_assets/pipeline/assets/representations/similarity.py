"""Pool x query similarity of the embedding representations the targeted-instruction-selection
study sets beside LESS gradients (the ``influence`` asset): RDS+ (position-weighted model
embeddings) and EMBED (MiniLM sentence embeddings), both cosine. Same contract as
``influence``: a Lance dataset with one score row per pool example and one column per query
row, whose task and subtask are in the DuckDB table ``<asset>_columns``. The pool side is
streamed chunk by chunk from the per-batch embedding datasets; only N x Q is held."""

import dagster as dg
import numpy as np
import polars as pl
import pyarrow as pa
from pydantic import Field

from dsel_assets.core.select.targeted import cosine_scores
from dsel_assets.pipeline.assets._factory import model_asset
from dsel_assets.pipeline.metadata import markdown_table
from dsel_assets.pipeline.names import (
    EMBED_SIMILARITY,
    MODEL_EMBEDDINGS,
    POOL,
    RDS_SIMILARITY,
    REPRESENTATIONS,
    SENTENCE_EMBEDDINGS,
    columns_table,
    rds_dataset,
    rds_queries_dataset,
)
from dsel_assets.pipeline.stored import load_vectors, matrix_table, query_rows, vector_matrix, vector_table
from resources.lance_store import LanceStore
from resources.models import ModelEmbeddingSettings, SelectionModel, SentenceEmbeddingSettings
from resources.store import StateStore
from resources.tracking import DatasetRef, MlflowTracker

RDS_POOLING = "position_weighted"
#: The study's representations are asked for (``dsel select --param representation=...``, the UI,
#: ``curation_job``): out of the default run and its re-curation, like the other expensive ones.
STUDY_TAGS = {"dsel/cost": "high"}


class SimilarityConfig(dg.Config):
    chunk: int = Field(default=4096, gt=0, description="Pool rows per streamed block (bounds memory)")


def check_rds_pooling(settings: ModelEmbeddingSettings) -> None:
    """RDS+ is defined on position-weighted model embeddings: refuse another pinned pooling."""
    if settings.pooling != RDS_POOLING:
        raise ValueError(
            f"pooling: RDS+ needs {RDS_POOLING} model embeddings; this home pins {settings.pooling!r} "
            f"(switch it: dsel score model_embeddings --pooling {RDS_POOLING} --change-settings)"
        )


def store_similarity(
    context: dg.AssetExecutionContext,
    store: StateStore,
    lance: LanceStore,
    tracker: MlflowTracker,
    source: DatasetRef,
    query_frame: pl.DataFrame,
    query_vectors: np.ndarray,
    chunk: int,
    dataset: str,
    params: dict,
) -> dg.MaterializeResult:
    """Cosine of every pool vector of ``source`` (streamed ``chunk`` rows at a time) with the
    query vectors; the matrix to Lance ``dataset``, its columns to DuckDB, one MLflow run."""
    asset = context.asset_key.path[-1]
    with store.session() as db:
        version, _ = db.pool_version()
        pool_ids = db.split_rows("pool", ("pool_id",))["pool_id"].to_list()
    chunks = (
        (b.column("pool_id").to_pylist(), vector_matrix(b.column("vector")))
        for b in lance.iter_batches(source.name, ["pool_id", "vector"], batch_size=chunk)
    )
    ids, scores = cosine_scores(pool_ids, query_vectors, chunks)
    if not ids:
        raise RuntimeError(f"{asset}: no pool row has a vector in {source.name}; materialize it for the pool batches")
    if len(ids) < len(pool_ids):
        context.log.warning(f"{asset}: {source.name} covers {len(ids)} of {len(pool_ids)} pool rows")
    lance_version = lance.overwrite(dataset, matrix_table(ids, scores))
    columns = query_frame.select("pool_id", "task", "subtask").with_row_index("col")
    with store.session() as db:
        db.replace_table(columns_table(asset), columns)
    low, high = float(scores.min()), float(scores.max())
    with tracker.run(context, params={**params, "pool_version": version, "chunk": chunk}, inputs=[source]) as run:
        run.log_metrics({"pool_rows": len(ids), "query_columns": scores.shape[1], "min": low, "max": high})
        run.log_datasets([DatasetRef(dataset, lance.uri(dataset), str(lance_version), "output")])
    counts = query_frame.group_by("task").len().sort("task").rows()
    return dg.MaterializeResult(
        metadata={
            "shape": f"{len(ids)} x {scores.shape[1]}",
            "pool_rows_covered": f"{len(ids)} of {len(pool_ids)}",
            "score_range": f"[{low:.4f}, {high:.4f}]",
            "lance_dataset": dataset,
            "lance_version": lance_version,
            "queries": dg.MetadataValue.md(markdown_table(["task", "queries"], counts)),
            **run.metadata(),
        },
        data_version=dg.DataVersion(f"{dataset}-v{lance_version}-{version}"),
    )


@model_asset(
    name=RDS_SIMILARITY,
    deps=[MODEL_EMBEDDINGS, POOL],
    group_name=REPRESENTATIONS,
    code_version="rds_similarity-1",
    kinds={"lance", "duckdb"},
    tags=STUDY_TAGS,
    description="RDS+: cosine between the position-weighted model embeddings of the pool (model_embeddings) "
    "and of the query rows (embedded here with the same model, pooling and length); pool x query in Lance, "
    "query columns in DuckDB rds_similarity_columns.",
)
def rds_similarity(
    context: dg.AssetExecutionContext,
    config: SimilarityConfig,
    store: StateStore,
    lance: LanceStore,
    selection_model: SelectionModel,
    model_embedding_settings: ModelEmbeddingSettings,
    tracker: MlflowTracker,
) -> dg.MaterializeResult:
    from dsel_assets.core.models.model_embeddings import model_embeddings as embed

    settings = model_embedding_settings
    check_rds_pooling(settings)
    identity = selection_model.identity()
    with store.session() as db:
        query_set = query_rows(db)
    model, tokenizer = selection_model.load()
    vectors = embed(
        model,
        tokenizer,
        query_set["messages"].to_list(),
        settings.pooling,
        settings.max_length,
        settings.batch_size,
        settings.bos,
    )
    stored = vector_table(query_set["pool_id"].to_list(), "queries", vectors, identity["model"])
    stored = stored.append_column("task", pa.array(query_set["task"].to_list(), pa.string()))
    lance.overwrite(rds_queries_dataset(identity["model_hash"]), stored)
    pool_dataset = settings.dataset(identity["model_hash"])
    source = DatasetRef(pool_dataset, lance.uri(pool_dataset), str(lance.version(pool_dataset)))
    return store_similarity(
        context,
        store,
        lance,
        tracker,
        source,
        query_set,
        vector_matrix(stored.column("vector")),  # as stored (float16), like the pool side
        config.chunk,
        rds_dataset(identity["model_hash"]),
        {**identity, "pooling": settings.pooling, "max_length": settings.max_length, "bos": settings.bos},
    )


@dg.asset(
    name=EMBED_SIMILARITY,
    deps=[SENTENCE_EMBEDDINGS, POOL],
    group_name=REPRESENTATIONS,
    code_version="embed_similarity-1",
    kinds={"lance", "duckdb"},
    tags=STUDY_TAGS,
    description="EMBED: cosine between the sentence embeddings (all-MiniLM-L6-v2) of the pool and of the query "
    "rows (sentence_embeddings embeds every batch, query batches included); pool x query in Lance, query "
    "columns in DuckDB embed_similarity_columns.",
)
def embed_similarity(
    context: dg.AssetExecutionContext,
    config: SimilarityConfig,
    store: StateStore,
    lance: LanceStore,
    sentence_embedding_settings: SentenceEmbeddingSettings,
    tracker: MlflowTracker,
) -> dg.MaterializeResult:
    settings = sentence_embedding_settings
    with store.session() as db:
        query_set = query_rows(db)
    query_vectors, version = load_vectors(lance, settings.dataset, query_set["pool_id"].to_list())
    source = DatasetRef(settings.dataset, lance.uri(settings.dataset), str(version))
    return store_similarity(
        context,
        store,
        lance,
        tracker,
        source,
        query_set,
        query_vectors,
        config.chunk,
        settings.similarity_dataset,
        {"sentence_text": settings.text},
    )
