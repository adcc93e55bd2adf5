"""Gradient representations (docs/methods/less.md): warmup checkpoints, pool and query gradient
features in Lance, the influence matrix and LESS task scores."""

import hashlib
import json
import time
from collections.abc import Callable, Collection
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from dsel_assets.core.influence import aggregate_less_scores, checkpoint_weights, influence_matrix
from dsel_assets.core.models.features import FeatureConfig, gradient_features
from dsel_assets.core.models.lora import LoraSettings
from dsel_assets.core.models.sft import encode_conversation
from dsel_assets.core.models.warmup import WarmupConfig, load_checkpoint, read_manifest, train_warmup, warmup_sample
from dsel_assets.pipeline.assets._factory import model_asset
from dsel_assets.pipeline.metadata import markdown_table
from dsel_assets.pipeline.names import (
    INFLUENCE,
    MODELS,
    POOL,
    POOL_BATCH,
    REPRESENTATIONS,
    WARMUP,
    columns_table,
    grad_features_dataset,
    influence_dataset,
    pool_batches,
)
from dsel_assets.pipeline.progress import Meter
from dsel_assets.pipeline.settings_versions import row_code_version
from dsel_assets.pipeline.stored import latest_warmup_manifest, matrix_table, vector_matrix, vector_table
from dsel_assets.store import artifacts
from resources.gradient_settings import GradientSettings
from resources.home import StateHome
from resources.lance_store import LanceStore
from resources.models import SelectionModel
from resources.store import StateStore
from resources.tracking import DatasetRef, MlflowTracker


class WarmupRunConfig(dg.Config):
    fraction: float = Field(default=0.05, description="Share of the pool to warm up on (seeded)")
    epochs: int = Field(default=2, description="Epochs; one checkpoint each")
    lr: float = Field(default=2e-4, description="Peak learning rate (linear schedule)")
    warmup_ratio: float = Field(default=0.03, description="Share of steps with linear LR warm-up")
    batch_size: int = Field(default=8, description="Examples per step")
    max_length: int = Field(default=512, description="Tokens per example")
    seed: int = Field(default=0, description="Sample, shuffle and LoRA-init seed")
    lora_r: int = Field(default=8, description="LoRA rank")
    lora_alpha: int = Field(default=32, description="LoRA alpha")
    lora_dropout: float = Field(default=0.1, description="LoRA dropout")
    lora_targets: list[str] = Field(default=["q_proj", "k_proj", "v_proj", "o_proj"], description="LoRA modules")

    def to_core(self) -> WarmupConfig:
        lora = LoraSettings(self.lora_r, self.lora_alpha, self.lora_dropout, tuple(self.lora_targets))
        return WarmupConfig(
            self.fraction, self.epochs, self.lr, self.warmup_ratio, self.batch_size, self.max_length, self.seed, lora
        )


class GradFeaturesConfig(dg.Config):
    checkpoints: list[int] = Field(default=[], description="Warmup epochs to use; empty = all")


@model_asset(
    deps=[POOL],
    group_name=MODELS,
    code_version="warmup_checkpoint-1",
    description="LESS warmup: LoRA on a seeded random fraction of the pool; per epoch the adapter, "
    "the AdamW state by parameter name and the epoch's mean learning rate.",
)
def warmup_checkpoint(
    context: dg.AssetExecutionContext,
    config: WarmupRunConfig,
    store: StateStore,
    selection_model: SelectionModel,
    tracker: MlflowTracker,
    home: StateHome,
) -> dg.MaterializeResult:
    core = config.to_core()
    identity = selection_model.identity()
    with store.session() as db:
        version, _ = db.pool_version()
        pool_rows = db.split_rows("pool")
    if pool_rows.height == 0:
        raise RuntimeError("pool: no examples; ingest data first")
    code_version = row_code_version(context)
    key_source = json.dumps([core.to_dict(), version, identity, code_version], sort_keys=True)
    key = hashlib.sha256(key_source.encode()).hexdigest()[:12]
    out_uri = home.paths.artifacts.uri(f"models/warmup/{key}")
    stored = stored_warmup(home.paths.artifacts.find(f"models/warmup/{key}"))
    params = {**core.to_dict(), **identity, "pool_version": version, "warmup": key}
    if stored is not None:  # the same settings, pool and model: reused (e.g. a rerun of dsel compare's warmup seeds)
        context.log.info(f"warmup {key} (seed {core.seed}): stored, reused (not retrained)")
        inputs = [DatasetRef("pool", store.location, version)]
        with tracker.run(context, params={**params, "reused": True}, inputs=inputs) as run:
            pass
        return _record_warmup(context, store, core, identity, version, key, out_uri, stored, run, reused=True)
    chosen = set(warmup_sample(pool_rows["pool_id"].to_list(), core.fraction, core.seed))
    model, tokenizer = selection_model.load()
    encoded = [
        enc
        for pid, messages in zip(pool_rows["pool_id"], pool_rows["messages"].to_list(), strict=True)
        if pid in chosen and (enc := encode_conversation(tokenizer, messages, core.max_length)) is not None
    ]
    extra = {
        "base_model": identity,
        "pool_version": version,
        "code_version": code_version,
        "warmup": key,
        "sample": sorted(chosen),
    }
    with (
        tracker.run(context, params=params, inputs=[DatasetRef("pool", store.location, version)]) as run,
        home.paths.artifacts.objects.writing(out_uri) as out_dir,
    ):
        meter = Meter(WARMUP, 0, "training steps")  # logged by the trainer's epoch lines
        train_warmup(
            model,
            encoded,
            core,
            out_dir,
            tokenizer.pad_token_id,
            extra,
            context.log.info,
            on_step=meter.update,
            max_tokens=selection_model.max_batch_tokens,
        )
        manifest = read_manifest(out_dir)
        for point in manifest["curve"]:
            run.log_metrics({"loss": point["loss"], "lr": point["lr"]}, step=point["step"])
        run.log_artifact(str(out_dir / "manifest.json"))
    return _record_warmup(context, store, core, identity, version, key, out_uri, manifest, run)


def stored_warmup(folder: Path | None) -> dict | None:
    """The manifest of a complete stored warmup (its manifest written last, every checkpoint
    folder present), else None."""
    if folder is None:
        return None
    try:
        manifest = read_manifest(folder)
    except FileNotFoundError:
        return None
    return manifest if all(Path(c["path"]).is_dir() for c in manifest["checkpoints"]) else None


def _record_warmup(
    context: dg.AssetExecutionContext,
    store: StateStore,
    core: WarmupConfig,
    identity: dict,
    version: str,
    key: str,
    out_uri: str,
    manifest: dict,
    run,
    reused: bool = False,
) -> dg.MaterializeResult:
    """Record warmup ``key`` (trained, or ``reused``) as the latest, and its materialization."""
    with store.session() as db:
        db.ensure_schema()
        db.record_warmup(key, out_uri, version, identity["model"], identity["model_hash"], core.to_dict())
    rows = [
        (c["epoch"], f"{c['lr_mean']:.3g}", artifacts.join(out_uri, Path(c["path"]).name))
        for c in manifest["checkpoints"]
    ]
    return dg.MaterializeResult(
        metadata={
            "warmup": key,
            "seed": core.seed,
            "reused": reused,
            "path": dg.MetadataValue.path(out_uri),
            "examples": manifest["examples"],
            "final_loss": manifest["curve"][-1]["loss"],
            "checkpoints": dg.MetadataValue.md(markdown_table(["epoch", "mean lr", "path"], rows)),
            **run.metadata(),
        },
        data_version=dg.DataVersion(key),
    )


def _both(first: Callable[[int, int], object], then: Callable[[int, int], None] | None) -> Callable[[int, int], None]:
    """A chunk callback calling ``first``, then ``then`` (when given)."""

    def report(done: int, total: int) -> None:
        first(done, total)
        if then is not None:
            then(done, total)

    return report


#: A gradient feature row's key: one per example, warmup checkpoint and warmup (warmups coexist).
FEATURE_KEY = ["pool_id", "checkpoint", "warmup"]


def feature_rows(chunk, batch: str, checkpoint: int, warmup: str) -> pa.Table:
    table = vector_table(chunk.ids, batch, chunk.features, "")
    return (
        table.drop(["model"])
        .append_column("checkpoint", pa.array([checkpoint] * len(chunk.ids), pa.int32()))
        .append_column("warmup", pa.array([warmup] * len(chunk.ids), pa.string()))
        .append_column("loss", pa.array(chunk.losses, pa.float32()))
    )


def write_pool_features(
    lance: LanceStore,
    dataset: str,
    batch: str,
    items: list[tuple[str, list[dict]]],
    warmup: str,
    checkpoints: list[tuple[int, Path]],
    base_model,
    tokenizer,
    config: FeatureConfig,
    log: Callable[[str], None] = print,
    on_chunk: Callable[[int, int], None] | None = None,
    keep: Collection[str] = (),
) -> dict:
    """Adam gradient features of ``items`` for every checkpoint, written chunk by chunk
    (upsert keyed by pool_id + checkpoint + warmup). Rows already stored for this warmup are
    skipped, so a re-run after a crash continues where the last written chunk ended, and a
    warmup computed before is not recomputed. The batch's rows of warmups in ``keep`` (e.g. the
    other warmup seeds of ``dsel compare``) stay; those of any other warmup are stale and go."""
    stats = {"computed": 0, "reused": 0, "excluded": []}
    ids = [i for i, _ in items]
    for epoch, path in checkpoints:
        equal = {"batch": batch, "checkpoint": epoch, "warmup": warmup}
        done = {r for b in lance.iter_batches(dataset, ["pool_id"], equal) for r in b.column("pool_id").to_pylist()}
        todo = [item for item in items if item[0] not in done]
        stats["reused"] += len(items) - len(todo)
        if not todo:
            continue
        model, state = load_checkpoint(base_model, path)  # in place: unloaded below, no second copy
        meter = Meter(f"pool_grad_features[{batch}] checkpoint {epoch}", len(todo), log=log)
        excluded: list[tuple[str, str]] = []
        for chunk in gradient_features(
            model,
            tokenizer,
            todo,
            config,
            state,
            excluded,
            on_chunk=_both(meter.update, on_chunk),
            on_shrink=log,
        ):
            lance.upsert(dataset, feature_rows(chunk, batch, epoch, warmup), on=FEATURE_KEY)
            stats["computed"] += len(chunk.ids)
        stats["excluded"] += [(i, epoch, reason) for i, reason in excluded]
        base_model = model.unload()  # the base without this checkpoint's adapter, for the next one
    # rows of this batch from a warmup not kept or for ids no longer in the batch are stale
    lance.delete(dataset, {"batch": batch}, not_in=("warmup", sorted({warmup, *keep})))
    lance.delete(dataset, {"batch": batch}, not_in=("pool_id", ids))
    return stats


def _checkpoints(manifest: dict, wanted: list[int]) -> list[tuple[int, Path]]:
    available = {c["epoch"]: Path(c["path"]) for c in manifest["checkpoints"]}
    unknown = sorted(set(wanted) - set(available))
    if unknown:
        raise ValueError(f"checkpoints: {unknown} not in the warmup's epochs {sorted(available)}")
    return [(e, available[e]) for e in sorted(wanted or available)]


@model_asset(
    partitions_def=pool_batches,
    deps=[POOL_BATCH, warmup_checkpoint],
    group_name=REPRESENTATIONS,
    code_version="pool_grad_features-1",
    kinds={"lance"},
    description="Adam-preconditioned per-example LoRA gradients of the batch's pool examples, "
    "block-projected to d and L2-normalised, per warmup checkpoint.",
)
def pool_grad_features(
    context: dg.AssetExecutionContext,
    config: GradFeaturesConfig,
    store: StateStore,
    lance: LanceStore,
    selection_model: SelectionModel,
    grad_settings: GradientSettings,
    tracker: MlflowTracker,
) -> dg.MaterializeResult:
    batch = context.partition_key
    dataset = grad_features_dataset("pool", grad_settings.suffix())
    with store.session() as db:
        manifest = db.get_batch(batch)
    if manifest.split != "pool":
        skipped = "query/eval batches get no Adam pool features"
        with tracker.run(context, params={"batch": batch, "split": manifest.split, "skipped": skipped}) as run:
            pass
        return dg.MaterializeResult(
            metadata={"split": manifest.split, "rows_per_checkpoint": 0, "skipped": skipped, **run.metadata()}
        )
    with store.session() as db:
        warmup, warmup_uri, warmup_manifest = latest_warmup_manifest(db)
        keep = db.sibling_warmups(warmup)  # other seeds of this pool and model: kept beside it
        rows = db.split_rows("pool", batch=batch)
        items = list(zip(rows["pool_id"].to_list(), rows["messages"].to_list(), strict=True))
    checkpoints = _checkpoints(warmup_manifest, config.checkpoints)
    params = {
        "batch": batch,
        "warmup": warmup,
        "checkpoints": ",".join(str(e) for e, _ in checkpoints),
        **grad_settings.feature_config().to_dict(),
        **selection_model.identity(),
    }
    inputs = [
        DatasetRef(f"pool_batch/{batch}", manifest.stored_path, manifest.sha256),
        DatasetRef(WARMUP, warmup_uri, warmup),
    ]
    with tracker.run(context, params=params, inputs=inputs) as run:
        started = time.perf_counter()
        stats = {"computed": 0, "reused": 0, "excluded": []}
        if items:
            model, tokenizer = selection_model.load()
            stats = write_pool_features(
                lance,
                dataset,
                batch,
                items,
                warmup,
                checkpoints,
                model,
                tokenizer,
                grad_settings.feature_config(),
                context.log.info,
                keep=keep,
            )
        seconds = time.perf_counter() - started
        version = lance.version(dataset)
        run.log_metrics(
            {
                "computed": stats["computed"],
                "reused": stats["reused"],
                "excluded": len(stats["excluded"]),
                "seconds": seconds,
            }
        )
        if version is not None:
            run.log_datasets([DatasetRef(dataset, lance.uri(dataset), str(version), "output")])
    excluded = [(i, e, r) for i, e, r in stats["excluded"]]
    return dg.MaterializeResult(
        metadata={
            "rows_per_checkpoint": len(items),
            "checkpoints": len(checkpoints),
            "computed": stats["computed"],
            "reused_after_resume": stats["reused"],
            "excluded": len(excluded),
            "excluded_rows": dg.MetadataValue.md(markdown_table(["pool_id", "checkpoint", "reason"], excluded)),
            "examples_per_s": round(stats["computed"] / max(seconds, 1e-9), 2),
            "lance_uri": lance.uri(dataset),
            "lance_version": version or 0,
            "split": manifest.split,
            **run.metadata(),
        },
        data_version=dg.DataVersion(f"{warmup}-lance-v{version}"),
    )


@model_asset(
    deps=[POOL, warmup_checkpoint],
    group_name=REPRESENTATIONS,
    code_version="query_grad_features-1",
    kinds={"lance"},
    description="Plain per-example LoRA gradients ('SGD' features) of every query example, "
    "same projection as the pool, per warmup checkpoint and target task; each warmup's rows are kept "
    "beside the other warmups of the same pool and model, and not recomputed.",
)
def query_grad_features(
    context: dg.AssetExecutionContext,
    store: StateStore,
    lance: LanceStore,
    selection_model: SelectionModel,
    grad_settings: GradientSettings,
    tracker: MlflowTracker,
) -> dg.MaterializeResult:
    dataset = grad_features_dataset("query", grad_settings.suffix())
    with store.session() as db:
        warmup, _, warmup_manifest = latest_warmup_manifest(db)
        keep = db.sibling_warmups(warmup)
        rows = db.split_rows("query", ("pool_id", "task", "messages"), order=("task", "pool_id"))
    if rows.height == 0:
        raise RuntimeError("queries: no query examples; ingest a query set (dsel ingest FILE --split query)")
    task_of = dict(zip(rows["pool_id"], rows["task"], strict=True))
    items = list(zip(rows["pool_id"].to_list(), rows["messages"].to_list(), strict=True))
    config = grad_settings.feature_config()
    stored = {  # this warmup's rows from an earlier run: not recomputed
        (pid, epoch)
        for b in lance.iter_batches(dataset, ["pool_id", "checkpoint"], {"warmup": warmup})
        for pid, epoch in zip(b.column("pool_id").to_pylist(), b.column("checkpoint").to_pylist(), strict=True)
    }
    base, tokenizer = None, None
    tables_out, excluded, reused = [], [], 0
    with tracker.run(context, params={"warmup": warmup, **config.to_dict(), **selection_model.identity()}) as run:
        for epoch, path in _checkpoints(warmup_manifest, []):
            todo = [item for item in items if (item[0], epoch) not in stored]
            reused += len(items) - len(todo)
            if not todo:
                continue
            if base is None:
                base, tokenizer = selection_model.load()
            model, _ = load_checkpoint(base, path)  # in place, unloaded after: no second copy of the model
            shrink = context.log.warning
            for chunk in gradient_features(model, tokenizer, todo, config, None, excluded, on_shrink=shrink):
                table = feature_rows(chunk, "queries", epoch, warmup)
                tables_out.append(table.append_column("task", pa.array([task_of[i] for i in chunk.ids])))
            base = model.unload()
        if tables_out:
            lance.upsert(dataset, pa.concat_tables(tables_out), on=FEATURE_KEY)
        # this warmup's rows of queries no longer ingested, and rows of warmups of another pool or model, are stale
        lance.delete(dataset, {"warmup": warmup}, not_in=("pool_id", [pid for pid, _ in items]))
        lance.delete(dataset, {}, not_in=("warmup", sorted({warmup, *keep})))
        version = lance.version(dataset)
        computed = sum(t.num_rows for t in tables_out)
        run.log_metrics({"queries": len(items), "excluded": len(excluded), "computed": computed, "reused": reused})
        run.log_datasets([DatasetRef(dataset, lance.uri(dataset), str(version), "output")])
    counts = rows.group_by("task").len().sort("task").rows()
    return dg.MaterializeResult(
        metadata={
            "queries": len(items),
            "excluded": len(excluded),
            "computed": computed,
            "reused": reused,
            "lance_version": version,
            "tasks": dg.MetadataValue.md(markdown_table(["task", "queries"], counts)),
            **run.metadata(),
        },
        data_version=dg.DataVersion(f"{warmup}-lance-v{version}"),
    )


@dg.asset(
    deps=[pool_grad_features, query_grad_features],
    group_name=REPRESENTATIONS,
    code_version="influence-1",
    kinds={"lance", "duckdb"},
    description="S = sum_c w_c F_pool F_query^T (w = checkpoint mean LR, normalised), streamed from "
    "Lance batch by batch; plus LESS task scores (mean within subtask, max over subtasks).",
)
def influence(
    context: dg.AssetExecutionContext,
    store: StateStore,
    lance: LanceStore,
    grad_settings: GradientSettings,
    tracker: MlflowTracker,
) -> dg.MaterializeResult:
    pool_dataset = grad_features_dataset("pool", grad_settings.suffix())
    query_dataset = grad_features_dataset("query", grad_settings.suffix())
    with store.session() as db:
        warmup, _, warmup_manifest = latest_warmup_manifest(db)
        version, _ = db.pool_version()
        pool_ids = db.split_rows("pool", ("pool_id",))
        subtask_of = db.query_subtasks()
    weights = checkpoint_weights({c["epoch"]: c["lr_mean"] for c in warmup_manifest["checkpoints"]})
    query_features_table = lance.read(
        query_dataset, ["pool_id", "task", "checkpoint", "vector"], equal={"warmup": warmup}
    )
    columns = (
        pl.from_arrow(query_features_table.select(["pool_id", "task", "checkpoint"]))
        .filter(pl.col("checkpoint") == min(weights))
        .drop("checkpoint")
        .sort(["task", "pool_id"])
    )
    column_of = {q: i for i, q in enumerate(columns["pool_id"])}
    query_features = {}
    for epoch in weights:
        part = query_features_table.filter(pc.equal(query_features_table.column("checkpoint"), epoch))
        order = np.argsort([column_of[q] for q in part.column("pool_id").to_pylist()])
        query_features[epoch] = vector_matrix(part.column("vector"))[order]
    # drop pool examples that have no feature (excluded by truncation) before streaming
    stored = {
        r
        for b in lance.iter_batches(pool_dataset, ["pool_id"], {"warmup": warmup, "checkpoint": min(weights)})
        for r in b.column("pool_id").to_pylist()
    }
    ids = [p for p in pool_ids["pool_id"].to_list() if p in stored]
    in_pool = set(ids)

    def stream():
        """Pool feature batches of the current pool only (rows of dropped batches are skipped)."""
        for epoch in weights:
            for b in lance.iter_batches(pool_dataset, ["pool_id", "vector"], {"warmup": warmup, "checkpoint": epoch}):
                batch_ids = b.column("pool_id").to_pylist()
                keep = [i for i, p in enumerate(batch_ids) if p in in_pool]
                vectors = vector_matrix(b.column("vector"))
                yield epoch, [batch_ids[i] for i in keep], vectors[keep]

    scores = influence_matrix(ids, query_features, stream(), weights)
    by_task = aggregate_less_scores(scores, columns["task"].to_list(), [subtask_of.get(q) for q in columns["pool_id"]])
    less = pl.concat(
        pl.DataFrame({"pool_id": ids, "task": task, "score": task_scores.astype(np.float64)})
        for task, task_scores in by_task.items()
    )
    column_table = columns.with_row_index("col").with_columns(
        pl.col("pool_id").map_elements(lambda q: subtask_of.get(q) or "", return_dtype=pl.String).alias("subtask")
    )
    lance_version = lance.overwrite(influence_dataset(grad_settings.suffix()), matrix_table(ids, scores))
    with store.session() as db, db.transaction():
        db.replace_table(columns_table(INFLUENCE), column_table)
        db.replace_table("less_scores", less)
    inputs = [
        DatasetRef(pool_dataset, lance.uri(pool_dataset), str(lance.version(pool_dataset))),
        DatasetRef(query_dataset, lance.uri(query_dataset), str(lance.version(query_dataset))),
    ]
    with tracker.run(
        context, params={"warmup": warmup, "pool_version": version, "weights": json.dumps(weights)}, inputs=inputs
    ) as run:
        run.log_metrics(
            {
                "pool_rows": len(ids),
                "query_columns": scores.shape[1],
                "min": float(scores.min()),
                "max": float(scores.max()),
            }
        )
    top = less.sort("score", descending=True).group_by("task", maintain_order=True).head(3).rows()
    return dg.MaterializeResult(
        metadata={
            "shape": f"{len(ids)} x {scores.shape[1]}",
            "checkpoint_weights": dg.MetadataValue.json(weights),
            "score_range": f"[{scores.min():.4f}, {scores.max():.4f}]",
            "lance_version": lance_version,
            "top_less_scores": dg.MetadataValue.md(markdown_table(["pool_id", "task", "score"], top)),
            **run.metadata(),
        },
        data_version=dg.DataVersion(f"{warmup}-{version}-lance-v{lance_version}"),
    )
