"""Cherry LLM's pre-experience (docs/methods/cherry_ifd_pre_experienced.md): a model briefly fine-tuned on a
small diverse sample of the pool, and the IFD of every pool example under that model.

Pool-wide, not per batch: the sample comes from k-means over the whole pool, so a new batch
changes the model and with it every score. Both assets are keyed by content (sample, config,
base model, code) and reuse what is stored: an unchanged pool trains nothing and scores nothing.
"""

import hashlib
import json

import dagster as dg
import polars as pl
from pydantic import Field

from dsel_assets.core.models.finetune import MANIFEST, FinetuneConfig, finetune, load_finetuned, read_finetuned
from dsel_assets.core.models.lora import LoraSettings
from dsel_assets.core.models.pre_experience import pre_experience_sample
from dsel_assets.core.models.sft import encode_conversation
from dsel_assets.pipeline.assets._factory import model_asset
from dsel_assets.pipeline.names import (
    LOSS_SCORES,
    MODEL_EMBEDDINGS,
    MODELS,
    POOL,
    PRE_EXPERIENCED_MODEL,
    PRE_EXPERIENCED_SCORES,
    REPRESENTATIONS,
)
from dsel_assets.pipeline.scoring import SCORE_BATCH, score_frame, score_resumably, template_hash
from dsel_assets.pipeline.settings_versions import row_code_version
from dsel_assets.pipeline.stored import load_scalars, load_vectors
from dsel_assets.store import schema
from resources.home import StateHome
from resources.lance_store import LanceStore
from resources.models import ModelEmbeddingSettings, SelectionModel
from resources.object_store import object_store
from resources.store import StateStore
from resources.tracking import DatasetRef, MlflowTracker


class PreExperienceConfig(dg.Config):
    n_clusters: int = Field(default=100, description="k-means clusters on the model embeddings (capped at pool size)")
    per_cluster: int = Field(default=10, description="Examples taken from each cluster's 25th-75th perplexity band")
    epochs: int = Field(default=1, description="Passes over the sample ('brief' fine-tuning)")
    lr: float = Field(default=2e-4, description="Peak learning rate")
    batch_size: int = Field(default=8, description="Examples per step")
    max_length: int = Field(default=512, description="Tokens per example")
    lora_r: int = Field(default=8, description="LoRA rank")
    seed: int = Field(default=0, description="k-means, shuffle and LoRA-init seed")

    def finetune_config(self) -> FinetuneConfig:
        return FinetuneConfig(
            epochs=self.epochs,
            lr=self.lr,
            batch_size=self.batch_size,
            max_length=self.max_length,
            seed=self.seed,
            lora=LoraSettings(r=self.lora_r, alpha=2 * self.lora_r, dropout=0.05),
        )


@model_asset(
    name=PRE_EXPERIENCED_MODEL,
    deps=[POOL, MODEL_EMBEDDINGS, LOSS_SCORES],
    group_name=MODELS,
    code_version="cherry_pre_experienced_model-2",
    kinds={"duckdb"},
    tags={"dsel/cost": "high"},
    description="Cherry pre-experience: k-means on model embeddings, per cluster up to 10 examples evenly spaced "
    "over the 25th-75th perplexity band, a brief LoRA fine-tune on them; adapter under models/pre_experience/.",
)
def cherry_pre_experienced_model(
    context: dg.AssetExecutionContext,
    config: PreExperienceConfig,
    store: StateStore,
    lance: LanceStore,
    selection_model: SelectionModel,
    model_embedding_settings: ModelEmbeddingSettings,
    tracker: MlflowTracker,
    home: StateHome,
) -> dg.MaterializeResult:
    """Perplexity is ``ppl_conditioned`` of ``loss_scores`` (the same model, before training);
    examples without one (a recorded reason) are left out of the sample."""
    identity = selection_model.identity()
    with store.session() as db:
        rows = db.split_rows("pool")
        version, _ = db.pool_version()
    ids = rows["pool_id"].to_list()
    if not ids:
        raise RuntimeError("pool: no examples yet; ingest data first (dsel ingest PATH)")
    embeddings_name = model_embedding_settings.dataset(identity["model_hash"])
    vectors, embeddings_version = load_vectors(lance, embeddings_name, ids)
    perplexity = load_scalars(store, LOSS_SCORES, ["ppl_conditioned"], ids, defined_only=True)["ppl_conditioned"]
    sample, cluster = pre_experience_sample(vectors, perplexity, config.n_clusters, config.per_cluster, config.seed)
    if len(sample) == 0:
        raise RuntimeError("loss_scores: no pool example has a defined perplexity; nothing to pre-experience on")
    sample_ids = [ids[i] for i in sample]
    clusters = int(cluster.max()) + 1
    core = config.finetune_config()
    code_version = row_code_version(context)
    key = hashlib.sha256(
        json.dumps([sample_ids, core.to_dict(), identity["model_hash"], code_version], sort_keys=True).encode()
    ).hexdigest()[:12]
    out_uri = home.paths.artifacts.uri(f"models/pre_experience/{key}")
    stored = home.paths.artifacts.find(f"models/pre_experience/{key}")
    manifest = None if stored is None else read_finetuned(stored)
    reused = manifest is not None
    inputs = [
        DatasetRef("pool", store.location, version),
        DatasetRef(embeddings_name, lance.uri(embeddings_name), str(embeddings_version)),
    ]
    with tracker.run(context, params={**core.to_dict(), **identity, "adapter": key}, inputs=inputs) as run:
        if not reused:
            base, tokenizer = selection_model.load()
            by_id = dict(zip(ids, rows["messages"].to_list(), strict=True))
            encoded = [e for p in sample_ids if (e := encode_conversation(tokenizer, by_id[p], core.max_length))]
            context.log.info(f"pre-experience: fine-tuning on {len(encoded)} examples from {clusters} clusters")
            extra = {"sample": sample_ids, "pool_version": version, "base_model": identity, "adapter": key}
            with home.paths.artifacts.objects.writing(out_uri) as out_dir:
                manifest = finetune(base, encoded, core, out_dir, tokenizer.pad_token_id, extra, context.log.info)
                run.log_artifact(str(out_dir / MANIFEST))
        final_loss = manifest["curve"][-1]["loss"]
        run.log_metrics({"sample": len(sample_ids), "clusters": clusters, "final_loss": final_loss})
    table = pl.DataFrame(
        {
            "pool_id": sample_ids,
            "cluster": cluster[sample].tolist(),
            "perplexity": perplexity[sample].tolist(),
            "adapter": key,
            "path": out_uri,
            "pool_version": version,
        }
    )
    with store.session() as db:
        db.replace_table("pre_experience_sample", table)
    return dg.MaterializeResult(
        metadata={
            "adapter": key,
            "path": out_uri,
            "sample": len(sample_ids),
            "clusters": clusters,
            "final_loss": final_loss,
            "reused": reused,
            **identity,
            **run.metadata(),
        },
        data_version=dg.DataVersion(key),
    )


@model_asset(
    name=PRE_EXPERIENCED_SCORES,
    deps=[PRE_EXPERIENCED_MODEL],
    group_name=REPRESENTATIONS,
    code_version="cherry_pre_experienced_scores-1",
    kinds={"duckdb"},
    tags={"dsel/cost": "high"},
    description="L(A|Q), L(A), IFD (loss ratio) and the other loss scores of every pool example under the "
    "pre-experienced model: Cherry's IFD as its paper computes it.",
)
def cherry_pre_experienced_scores(
    context: dg.AssetExecutionContext,
    store: StateStore,
    selection_model: SelectionModel,
    tracker: MlflowTracker,
) -> dg.MaterializeResult:
    """Resumable by chunk; rows of another adapter or code version, or of ids that left the
    pool, are deleted."""
    identity = selection_model.identity()
    code_version = row_code_version(context)
    with store.session() as db:
        found = db.rows_matching("pre_experience_sample", ["adapter", "path"], {}).head(1)
        if found.height == 0:
            raise RuntimeError(f"{PRE_EXPERIENCED_MODEL}: no adapter yet; materialize it first")
        adapter, path = found.row(0)
        db.ensure_score_table(PRE_EXPERIENCED_SCORES, extra=(schema.Column("adapter", "text"),))
        rows = db.split_rows("pool", ("pool_id", "batch", "messages"))
        keep = {"adapter": adapter, "code_version": code_version}
    batch_of = dict(zip(rows["pool_id"].to_list(), rows["batch"].to_list(), strict=True))
    items = list(zip(rows["pool_id"].to_list(), rows["messages"].to_list(), strict=True))

    def scorer():
        base, tokenizer = selection_model.load()
        model = load_finetuned(base, object_store().local_copy(path))
        fixed = {**identity, "template": template_hash(tokenizer), "code_version": code_version, "adapter": adapter}
        batching = selection_model.batching(SCORE_BATCH, context.log.warning)
        return lambda chunk: score_frame(model, tokenizer, chunk, fixed, batching=batching).with_columns(
            pl.col("pool_id").replace_strict(batch_of).alias("batch")
        )

    with tracker.run(context, params={**identity, "adapter": adapter, "code_version": code_version}) as run:
        done = score_resumably(context, store, PRE_EXPERIENCED_SCORES, items, keep, scorer, "ifd_loss_ratio")
        n, mean_ifd = done.stats.rows, done.stats.mean
        run.log_metrics({"rows": n, "computed": done.computed, "undefined": done.stats.undefined, "mean_ifd": mean_ifd})
    return dg.MaterializeResult(
        metadata={
            **done.metadata(),
            "mean_ifd": mean_ifd,
            "adapter": adapter,
            **identity,
            **run.metadata(),
        },
        data_version=dg.DataVersion(f"{adapter}-{code_version}-{n}"),
    )
