"""Pool assets: each ingested file is a batch (dynamic partition) validated into the
``examples`` and ``quarantine`` tables; ``pool`` is the union with its version."""

import dagster as dg
import polars as pl

from dsel_assets.core.data.validate import validate_file
from dsel_assets.core.models.templates import token_counter
from dsel_assets.pipeline.metadata import markdown_table
from dsel_assets.pipeline.names import POOL, pool_batches
from dsel_assets.pipeline.progress import Meter
from dsel_assets.store import tables
from resources.ingest import IngestLimits
from resources.models import SelectionModel
from resources.object_store import object_store
from resources.store import StateStore
from resources.tracking import DatasetRef, MlflowTracker


@dg.asset(
    partitions_def=pool_batches,
    group_name=POOL,
    code_version="pool_batch-1",
    kinds={"duckdb"},
    description="One ingested file, validated: canonical rows to `examples`, bad rows with "
    "their reason to `quarantine`. accepted + quarantined = read, always.",
)
def pool_batch(
    context: dg.AssetExecutionContext,
    store: StateStore,
    selection_model: SelectionModel,
    tracker: MlflowTracker,
    ingest_limits: IngestLimits,
) -> dg.MaterializeResult:
    batch = context.partition_key
    with store.session() as db:
        manifest = db.get_batch(batch)
        known = db.ids_before(batch)
    context.log.info(f"validating {manifest.stored_path} ({manifest.size_bytes} bytes) as batch {batch}")
    try:
        result = validate_file(
            object_store().local_copy(manifest.stored_path),
            fmt=manifest.fmt,
            layout=manifest.layout,
            mapping=manifest.mapping,
            count_tokens=token_counter(selection_model.tokenizer()),
            max_tokens=selection_model.max_tokens,
            known_ids=known,
            max_record_bytes=ingest_limits.max_record_bytes,
            max_file_bytes=ingest_limits.max_file_bytes,
        )
        accepted = tables.accepted_frame(manifest, result.accepted)
        quarantined = tables.quarantine_frame(manifest, result.quarantined)
        with store.session() as db:
            db.replace_batch(manifest, accepted, quarantined)
    except Exception as exc:  # recorded for `dsel status`; the batch stays unvalidated, so a rerun retries it
        with store.session() as db:
            db.mark_batch_failed(batch, f"{type(exc).__name__}: {exc}")
        raise
    Meter(f"pool_batch[{batch}]", result.read, "records").update(result.read)
    reasons = result.reasons()
    params = {
        "batch": batch,
        "source": manifest.source,
        "task": manifest.task,
        "split": manifest.split,
        "layout": result.layout,
        "max_tokens": selection_model.max_tokens,
        "max_record_bytes": ingest_limits.max_record_bytes,
        **selection_model.identity(),
    }
    inputs = [DatasetRef(f"raw/{manifest.source}", manifest.stored_path, manifest.sha256)]
    with tracker.run(context, params=params, inputs=inputs) as run:
        run.log_metrics({"read": result.read, "accepted": len(result.accepted), "quarantined": len(result.quarantined)})
        run.log_metrics({f"quarantine.{k}": v for k, v in reasons.items()})
    task_counts = accepted.group_by("task").len().sort("task").rows() if accepted.height else []
    return dg.MaterializeResult(
        metadata={
            "read": result.read,
            "accepted": len(result.accepted),
            "quarantined": len(result.quarantined),
            "layout": str(result.layout),
            "file": dg.MetadataValue.path(manifest.original_path),
            "sha256": manifest.sha256,
            "quarantine_reasons": dg.MetadataValue.md(markdown_table(["reason", "rows"], list(reasons.items()))),
            "tasks": dg.MetadataValue.md(markdown_table(["task", "rows"], task_counts)),
            **run.metadata(),
        },
        data_version=dg.DataVersion(f"{manifest.sha256[:16]}-{selection_model.max_tokens}"),
    )


@dg.asset(
    deps=[pool_batch],
    group_name=POOL,
    code_version="pool-1",
    kinds={"duckdb"},
    description="The validated pool over every materialized batch, with its version (hash of the batches' manifests).",
)
def pool(context: dg.AssetExecutionContext, store: StateStore, tracker: MlflowTracker) -> dg.MaterializeResult:
    with store.session() as db:
        db.ensure_schema()
        version, batches = db.pool_version()
        by_task = db.composition()
        reasons = db.quarantine_reasons()
        n_pool = int(by_task.filter(pl.col("split") == "pool")["n"].sum())
        db.record_pool_version(version, batches, n_pool)
    with store.session() as db:
        inputs = [DatasetRef(f"pool_batch/{b}", db.get_batch(b).stored_path, db.get_batch(b).sha256) for b in batches]
    with tracker.run(context, params={"pool_version": version, "batches": ",".join(batches)}, inputs=inputs) as run:
        run.log_metrics({"pool_examples": n_pool, "quarantined": int(reasons["n"].sum()) if reasons.height else 0})
    return dg.MaterializeResult(
        metadata={
            "pool_version": version,
            "pool_examples": n_pool,
            "batches": len(batches),
            "composition": dg.MetadataValue.md(markdown_table(by_task.columns, by_task.rows())),
            "quarantine_reasons": dg.MetadataValue.md(markdown_table(reasons.columns, reasons.rows())),
            **run.metadata(),
        },
        data_version=dg.DataVersion(version),
    )
