"""Per-example representations, partitioned by pool batch and stored in Lance."""

import dagster as dg
import numpy as np

from dsel_assets.core.data.schema import example_text
from dsel_assets.pipeline.assets._factory import model_asset
from dsel_assets.pipeline.names import MODEL_EMBEDDINGS, POOL_BATCH, REPRESENTATIONS, SENTENCE_EMBEDDINGS, pool_batches
from dsel_assets.pipeline.progress import Meter
from dsel_assets.pipeline.stored import vector_table
from resources.lance_store import LanceStore
from resources.models import ModelEmbeddingSettings, SelectionModel, SentenceEmbedder, SentenceEmbeddingSettings
from resources.store import StateStore
from resources.tracking import DatasetRef, MlflowTracker

EMBEDDING_CHUNK = 64  # examples per Lance commit: an interrupted batch loses at most one chunk
EMBED_CHUNK = 2048  # sentence embeddings per progress update


@model_asset(
    name=SENTENCE_EMBEDDINGS,
    partitions_def=pool_batches,
    deps=[POOL_BATCH],
    group_name=REPRESENTATIONS,
    code_version="sentence_embeddings-1",
    kinds={"lance"},
    description="all-MiniLM-L6-v2 embedding (masked mean, L2-normalised) of each example's "
    "instruction + input + response (or, with the pinned sentence_text 'instruction', of its system and "
    "user turns only), float16 in Lance.",
)
def sentence_embeddings(
    context: dg.AssetExecutionContext,
    store: StateStore,
    lance: LanceStore,
    embedder: SentenceEmbedder,
    sentence_embedding_settings: SentenceEmbeddingSettings,
    tracker: MlflowTracker,
) -> dg.MaterializeResult:
    batch, dataset = context.partition_key, sentence_embedding_settings.dataset
    with store.session() as db:
        manifest = db.get_batch(batch)
        rows = db.batch_rows(batch)
    texts = [example_text(m, sentence_embedding_settings.text) for m in rows["messages"].to_list()]
    meter = Meter(f"sentence_embeddings[{batch}]", len(texts), log=context.log.info)
    parts, rate = [], 0.0
    for start in range(0, len(texts), EMBED_CHUNK):
        parts.append(embedder.encode(texts[start : start + EMBED_CHUNK]))
        rate = meter.update(start + len(parts[-1])).rate
    vectors = np.concatenate(parts) if parts else embedder.encode(texts)
    if texts:
        version = lance.replace_partition(
            dataset,
            vector_table(rows["pool_id"].to_list(), batch, vectors, embedder.model_id),
            partition=batch,
        )
    else:  # every row quarantined: nothing to embed, and no rows of an earlier validation may remain
        version = lance.delete(dataset, {"batch": batch}) or 0
    params = {
        "batch": batch,
        "model": embedder.model_id,
        "text": sentence_embedding_settings.text,
        "dim": vectors.shape[1] if len(texts) else 0,
    }
    inputs = [DatasetRef(f"pool_batch/{batch}", manifest.stored_path, manifest.sha256)]
    with tracker.run(context, params=params, inputs=inputs) as run:
        run.log_datasets([DatasetRef(dataset, lance.uri(dataset), str(version), "output")])
        run.log_metrics({"rows": len(texts), "examples_per_s": rate, "lance_version": version})
    return dg.MaterializeResult(
        metadata={
            "rows": len(texts),
            "lance_uri": lance.uri(dataset),
            "lance_version": version,
            "model": embedder.model_id,
            "text": sentence_embedding_settings.text,
            "examples_per_s": round(rate, 1),
            **run.metadata(),
        },
        data_version=dg.DataVersion(f"lance-v{version}"),
    )


@model_asset(
    name=MODEL_EMBEDDINGS,
    partitions_def=pool_batches,
    deps=[POOL_BATCH],
    group_name=REPRESENTATIONS,
    code_version="model_embeddings-1",
    kinds={"lance"},
    tags={"dsel/cost": "high"},
    description="Selection-model embedding of each templated conversation from the last hidden layer, pooled "
    "mean / position_weighted (RDS+) / last_token; Lance dataset "
    "model_embeddings_<pooling>_<model hash>, so pooling and weights are part of its identity.",
)
def model_embeddings(
    context: dg.AssetExecutionContext,
    store: StateStore,
    lance: LanceStore,
    selection_model: SelectionModel,
    model_embedding_settings: ModelEmbeddingSettings,
    tracker: MlflowTracker,
) -> dg.MaterializeResult:
    """Resumable: chunks already stored for this batch (same dataset = same model and pooling)
    are kept; rows of ids that left the batch are deleted."""
    from dsel_assets.core.models.model_embeddings import model_embeddings as embed

    batch, settings = context.partition_key, model_embedding_settings
    identity = selection_model.identity()
    name = settings.dataset(identity["model_hash"])
    with store.session() as db:
        manifest = db.get_batch(batch)
        rows = db.split_rows("pool", batch=batch)
    ids = rows["pool_id"].to_list()
    stored = set()
    if lance.exists(name):
        stored = set(lance.read(name, ["pool_id"], equal={"batch": batch}).column("pool_id").to_pylist())
    todo = [(i, m) for i, m in zip(ids, rows["messages"].to_list(), strict=True) if i not in stored]
    params = {
        "batch": batch,
        **identity,
        "pooling": settings.pooling,
        "max_length": settings.max_length,
        "bos": settings.bos,
    }
    inputs = [DatasetRef(f"pool_batch/{batch}", manifest.stored_path, manifest.sha256)]
    meter = Meter(f"{MODEL_EMBEDDINGS}[{batch}]", len(todo), log=context.log.info)
    with tracker.run(context, params=params, inputs=inputs) as run:
        if todo:
            model, tokenizer = selection_model.load()
            batching = selection_model.batching(settings.batch_size, context.log.warning)
            for start in range(0, len(todo), EMBEDDING_CHUNK):
                chunk = todo[start : start + EMBEDDING_CHUNK]
                conversations = [m for _, m in chunk]
                vectors = embed(
                    model, tokenizer, conversations, settings.pooling, settings.max_length, batching, settings.bos
                )
                lance.upsert(name, vector_table([i for i, _ in chunk], batch, vectors, identity["model"]), ["pool_id"])
                tick = meter.update(start + len(chunk))
        version = lance.delete(name, {"batch": batch}, not_in=("pool_id", ids)) if lance.exists(name) else 0
        rate = tick.rate if todo else 0.0
        run.log_datasets([DatasetRef(name, lance.uri(name), str(version), "output")])
        run.log_metrics({"rows": len(ids), "computed": len(todo), "examples_per_s": rate})
    return dg.MaterializeResult(
        metadata={
            "rows": len(ids),
            "computed": len(todo),
            "reused_after_resume": len(ids) - len(todo),
            "lance_dataset": name,
            "lance_uri": lance.uri(name),
            "lance_version": version,
            "pooling": settings.pooling,
            **identity,
            "examples_per_s": round(rate, 1),
            **run.metadata(),
        },
        data_version=dg.DataVersion(f"{name}-v{version}"),
    )
