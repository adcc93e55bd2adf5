"""Model-based scalar representations per pool batch (see docs/methods/): losses, both
IFDs and uncertainty from a model, and per-example quality. Stored in DuckDB with the model
id and hash, chat template, scoring template and code version of every row; undefined scores
carry a reason.

The proxy model (Superfiltering, Superfiltering-D, Small2Large) is the ``proxy_model``
resource: ``DSEL_PROXY_MODEL`` / ``--proxy-model``, pinned in the state home like the selection
model. Its default is the selection model itself: the default selection model, SmolLM2-135M,
is already the smallest instruct model installed, so there is no smaller one to default to
(``tiny`` is a random model for tests). Name a smaller local model when selecting for a larger
one; every proxy score row carries the proxy's name and weights hash."""

import hashlib
import json
import math

import dagster as dg
import numpy as np
import polars as pl
from pydantic import Field

from dsel_assets.core.models.learning_percentage import compute_learning_percentages
from dsel_assets.core.models.lora import LoraSettings
from dsel_assets.core.models.scoring import check_options
from dsel_assets.core.models.warmup import WarmupConfig
from dsel_assets.core.quality import mixed_scales, quality_values
from dsel_assets.pipeline.assets._factory import model_asset
from dsel_assets.pipeline.metadata import markdown_table
from dsel_assets.pipeline.names import (
    LOSS_SCORES,
    POOL,
    POOL_BATCH,
    REPRESENTATIONS,
    SENTENCE_EMBEDDINGS,
    pool_batches,
    score_table,
)
from dsel_assets.pipeline.scoring import (
    GREEDY_MAX_NEW_TOKENS,
    SCORE_BATCH,
    score_code_version,
    score_frame,
    score_resumably,
    template_hash,
)
from dsel_assets.pipeline.settings_versions import row_code_version
from dsel_assets.pipeline.stored import load_vectors
from dsel_assets.store import schema
from resources.lance_store import LanceStore
from resources.models import SelectionModel, SentenceEmbeddingSettings
from resources.store import StateStore
from resources.tracking import DatasetRef, MlflowTracker


class ScoreConfig(dg.Config):
    template: str = Field(
        default="chat",
        description="chat (the model's chat template, L(A) after a BOS) | alpaca (Cherry_LLM's reference "
        "scoring: Alpaca prompt, L(A) after '### Response:', its truncation); alpaca rows go to <asset>_alpaca",
    )


def copy_sibling_rows(db, sibling: str, table: str, batch: str, keep: dict[str, object], template: str) -> int:
    """Copy into ``table`` the rows of ``batch`` that the sibling score asset ``sibling`` already
    computed with the same model weights, template and scoring code (the proxy model is the
    selection model by default: scoring the pool twice would double the cost for the same
    numbers); returns how many. Ids ``table`` already holds are left alone."""
    donor = score_table(sibling, template)
    if not db.table_exists(donor):
        return 0
    have = set(db.rows_matching(table, ["pool_id"], {"batch": batch, **keep})["pool_id"])
    columns = [c.name for c in schema.SCORE_COLUMNS]
    rows = db.rows_matching(
        donor, columns, {"batch": batch, **keep, "code_version": score_code_version(sibling)}
    ).filter(~pl.col("pool_id").is_in(list(have)))
    if rows.height:
        db.upsert_by_id(table, rows.with_columns(code_version=pl.lit(keep["code_version"])), {"batch": batch})
    return rows.height


def build_score_asset(
    name: str,
    model_resource: str,
    description: str,
    response: str = "reference",
    tags: dict | None = None,
    sibling: str | None = None,
) -> dg.AssetsDefinition:
    """A per-batch loss-score asset scored with ``model_resource`` into DuckDB table ``name``
    (``name_alpaca`` for the Alpaca template), teacher-forced on the reference responses or
    (``response="greedy"``) on greedy generations. Rows the ``sibling`` asset computed with the
    same model weights are copied, not recomputed."""

    @model_asset(
        name=name,
        partitions_def=pool_batches,
        deps=[POOL_BATCH],
        group_name=REPRESENTATIONS,
        code_version=score_code_version(name),
        kinds={"duckdb"},
        tags=tags,
        description=description,
        required_resource_keys={model_resource, "store", "tracker"},
    )
    def _scores(context: dg.AssetExecutionContext, config: ScoreConfig) -> dg.MaterializeResult:
        check_options(response, config.template)
        table = score_table(name, config.template)
        model_res: SelectionModel = getattr(context.resources, model_resource)
        store: StateStore = context.resources.store
        tracker: MlflowTracker = context.resources.tracker
        batch = context.partition_key
        identity = model_res.identity()
        code_version = row_code_version(context)
        # the identity of a score row: rows of the same one are reused, rows of another are stale
        keep = {"model_hash": identity["model_hash"], "code_version": code_version, "prompt_template": config.template}
        with store.session() as db:
            db.ensure_score_table(table)
            manifest = db.get_batch(batch)
            rows = db.split_rows("pool", batch=batch)
            copied = 0 if sibling is None else copy_sibling_rows(db, sibling, table, batch, keep, config.template)
        if copied:
            context.log.info(f"{table}: {copied} rows copied from {sibling} (same model weights, template and code)")
        items = list(zip(rows["pool_id"].to_list(), rows["messages"].to_list(), strict=True))

        def scorer():
            model, tokenizer = model_res.load()
            fixed = {"batch": batch, **identity, "template": template_hash(tokenizer, config.template)}
            fixed["code_version"] = code_version
            batching = model_res.batching(SCORE_BATCH, context.log.warning)
            return lambda chunk: score_frame(model, tokenizer, chunk, fixed, response, config.template, batching)

        params = {"batch": batch, **identity, "code_version": code_version, "template": config.template}
        with tracker.run(
            context, params=params, inputs=[DatasetRef(f"pool_batch/{batch}", manifest.stored_path, manifest.sha256)]
        ) as run:
            done = score_resumably(context, store, table, items, keep, scorer, "ifd_loss_ratio", batch=batch)
            stats = done.stats
            metrics = {
                "rows": stats.rows,
                "undefined": stats.undefined,
                "computed": done.computed,
                "mean_ifd": stats.mean,
            }
            run.log_metrics({k: v for k, v in metrics.items() if not (isinstance(v, float) and math.isnan(v))})
        return dg.MaterializeResult(
            metadata={
                **done.metadata(),
                "copied_from_sibling": copied,
                **identity,
                "template": config.template,
                "table": table,
                **run.metadata(),
            },
            data_version=dg.DataVersion(
                hashlib.sha256(json.dumps([batch, identity, code_version, config.template]).encode()).hexdigest()[:16]
            ),
        )

    return _scores


loss_scores = build_score_asset(
    LOSS_SCORES,
    "selection_model",
    "Per example with the selection model: L(A|Q), L(A) over the same response tokens, perplexity, IFD as "
    "loss ratio (Cherry), IFD as perplexity ratio, and uncertainty (entropy, least confidence, margins).",
    sibling="proxy_loss_scores",
)
proxy_loss_scores = build_score_asset(
    "proxy_loss_scores",
    "proxy_model",
    "The same scores from the proxy model (DSEL_PROXY_MODEL / --proxy-model; default the selection model) for "
    "Superfiltering's IFD = ppl(A|Q) / ppl(A); each row names the proxy and its weights hash.",
    sibling=LOSS_SCORES,
)
greedy_scores = build_score_asset(
    "greedy_scores",
    "selection_model",
    "Uncertainty (entropy, least confidence, margins) teacher-forced on the selection model's own "
    f"greedy generation (<= {GREEDY_MAX_NEW_TOKENS} tokens per assistant turn) instead of the reference response.",
    response="greedy",
    tags={"dsel/cost": "high"},
)


@dg.asset(
    deps=[POOL, LOSS_SCORES],
    group_name=REPRESENTATIONS,
    code_version="quality-2",
    kinds={"duckdb"},
    description="Per-example quality: the data's own `score` column where a source has one (on its own scale), "
    "else the selection model's per-token likelihood of the reference, exp(-L(A|Q)).",
)
def quality(context: dg.AssetExecutionContext, store: StateStore, tracker: MlflowTracker) -> dg.MaterializeResult:
    """Which source each value came from is stored beside it (``how``); provided scores off the
    likelihood's (0, 1] beside likelihood rows are a warning (``mixed_scales``)."""
    with store.session() as db:
        db.ensure_score_table(LOSS_SCORES)
        pool_ids = db.split_rows("pool", ("pool_id",))["pool_id"].to_list()
        score_of = db.meta_field("pool", "score")
        scored = db.rows_matching(LOSS_SCORES, ["pool_id", "loss_conditioned"], {})
        loss_of = dict(zip(scored["pool_id"].to_list(), scored["loss_conditioned"].to_list(), strict=True))
        values, how = quality_values([score_of[p] for p in pool_ids], [loss_of.get(p) for p in pool_ids])
        table = pl.DataFrame(
            {"pool_id": pool_ids, "quality": values, "how": how},
            schema={"pool_id": pl.String, "quality": pl.Float64, "how": pl.String},
        )
        db.replace_table("quality", table)
        summary = (
            table.group_by("how", maintain_order=True)
            .agg(
                pl.len().alias("rows"),
                pl.col("quality").count().alias("defined"),
                pl.col("quality").mean().alias("mean"),
            )
            .rows()
        )
        version, _ = db.pool_version()
    mixed = mixed_scales(values, how)
    if mixed:
        context.log.warning(mixed)
    with tracker.run(context, params={"pool_version": version}) as run:
        run.log_metrics({f"rows.{how}": n for how, n, _, _ in summary})
    return dg.MaterializeResult(
        metadata={
            "sources": dg.MetadataValue.md(markdown_table(["how", "rows", "defined", "mean"], summary)),
            "mixed_scales": mixed or "no",
            **run.metadata(),
        },
        data_version=dg.DataVersion(version),
    )


class LearningPercentageConfig(dg.Config):
    epochs: int = Field(default=3, description="Epochs of small-model training on the whole pool")
    lr: float = Field(default=2e-4, description="Peak learning rate")
    batch_size: int = Field(default=8, description="Examples per step")
    max_length: int = Field(default=512, description="Tokens per example")
    seed: int = Field(default=0, description="Shuffle and LoRA-init seed")
    lora_r: int = Field(default=8, description="LoRA rank of the small model's adapters")


@model_asset(
    deps=[POOL],
    group_name=REPRESENTATIONS,
    code_version="learning_percentage-1",
    kinds={"duckdb"},
    tags={"dsel/cost": "high"},
    description="Small2Large learning percentage: the proxy (small) model LoRA-trained on the whole pool, "
    "perplexity of every example before training and after each epoch; LP(i) = (P_(i-1) - P_i) / (P_0 - P_n).",
)
def learning_percentage(
    context: dg.AssetExecutionContext,
    config: LearningPercentageConfig,
    store: StateStore,
    proxy_model: SelectionModel,
    tracker: MlflowTracker,
) -> dg.MaterializeResult:
    """Pool-level, not per batch: LP comes from one training run over the whole pool, so every
    example's value changes when the pool does. Idempotent: rows of the same pool version,
    model, config and code (their ``fingerprint``) are kept instead of training again."""
    core = WarmupConfig(
        epochs=config.epochs,
        lr=config.lr,
        batch_size=config.batch_size,
        max_length=config.max_length,
        seed=config.seed,
        lora=LoraSettings(r=config.lora_r, alpha=4 * config.lora_r, dropout=0.0),
    )
    with store.session() as db:
        rows = db.split_rows("pool")
        version, _ = db.pool_version()
    identity = proxy_model.identity()
    code_version = row_code_version(context)
    fingerprint = hashlib.sha256(
        json.dumps([version, identity, config.model_dump(), code_version], sort_keys=True).encode()
    ).hexdigest()[:16]
    with store.session() as db:
        exists = "fingerprint" in db.columns("learning_percentage")
        stored = None
        if exists:
            stored = db.rows_matching("learning_percentage", ["reason"], {"fingerprint": fingerprint})
    if stored is not None and stored.height == rows.height:
        context.log.info(f"learning percentage: reusing the rows of fingerprint {fingerprint}")
        undefined = int((stored["reason"] != "").sum())
        with tracker.run(context, params={"fingerprint": fingerprint, "reused": True, **identity}) as run:
            run.log_metrics({"rows": stored.height, "undefined": undefined})
        return dg.MaterializeResult(
            metadata={
                "rows": stored.height,
                "undefined": undefined,
                "reused": True,
                "fingerprint": fingerprint,
                **run.metadata(),
            },
            data_version=dg.DataVersion(f"{version}-{identity['model_hash']}-{config.epochs}"),
        )
    with tracker.run(context, params={**core.to_dict(), **identity, "pool_version": version}) as run:
        model, tokenizer = proxy_model.load()
        p, lp, reasons = compute_learning_percentages(
            model, tokenizer, rows["messages"].to_list(), core, context.log.info, proxy_model.max_batch_tokens
        )
        for epoch in range(p.shape[1]):
            run.log_metrics({"median_ppl": float(np.nanmedian(p[:, epoch]))}, step=epoch)
    table = pl.DataFrame(
        {
            "pool_id": rows["pool_id"],
            "lp1": lp[:, 0],
            "lp": lp.tolist(),
            "perplexity": p.tolist(),
            "reason": reasons,
            "model": identity["model"],
            "model_hash": identity["model_hash"],
            "template": template_hash(tokenizer),
            "code_version": code_version,
            "fingerprint": fingerprint,
        }
    )
    with store.session() as db:
        db.replace_table("learning_percentage", table)
    undefined = sum(bool(r) for r in reasons)
    return dg.MaterializeResult(
        metadata={
            "rows": len(reasons),
            "undefined": undefined,
            "epochs": config.epochs,
            "reused": False,
            "fingerprint": fingerprint,
            **identity,
            "median_perplexity_by_epoch": dg.MetadataValue.json(
                [round(float(np.nanmedian(p[:, e])), 3) for e in range(p.shape[1])]
            ),
            **run.metadata(),
        },
        data_version=dg.DataVersion(f"{version}-{identity['model_hash']}-{config.epochs}"),
    )


class GoldenScoreConfig(dg.Config):
    anchors: str = Field(
        default="kmeans",
        description="kmeans (pool points nearest k-means centroids) or "
        "source:NAME (the examples of an ingested source, e.g. source:nuggets_anchors)",
    )
    n_anchors: int = Field(default=100, description="k-means anchors (capped at pool size / 5)")
    batch_size: int = Field(default=16, description="Anchors per batched forward")
    max_tokens: int = Field(default=1024, description="Padded anchor tokens per batched forward")
    max_length: int = Field(default=2048, description="Demonstration + anchor tokens")
    seed: int = Field(default=0, description="k-means seed")


@model_asset(
    deps=[POOL, SENTENCE_EMBEDDINGS],
    group_name=REPRESENTATIONS,
    code_version="golden_score-3",
    kinds={"duckdb"},
    tags={"dsel/cost": "high"},
    description="Nuggets golden score: share of anchor tasks whose answer log-prob rises with the example as a "
    "one-shot demonstration (KV cache of the demonstration reused across batched anchors).",
)
def golden_score(
    context: dg.AssetExecutionContext,
    config: GoldenScoreConfig,
    store: StateStore,
    lance: LanceStore,
    selection_model: SelectionModel,
    sentence_embedding_settings: SentenceEmbeddingSettings,
    tracker: MlflowTracker,
) -> dg.MaterializeResult:
    from dsel_assets.core.models.nuggets import golden_scores, one_shot_cached, prepare_anchors, zero_shot
    from dsel_assets.core.select import build_config, get

    with store.session() as db:
        rows = db.split_rows("pool")
        version, _ = db.pool_version()
        if config.anchors.startswith("source:"):
            anchor_rows = db.source_rows(config.anchors.split(":", 1)[1], ("messages",))
            if anchor_rows.height == 0:
                raise ValueError(f"anchors: no examples from {config.anchors!r}; ingest that source first")
            anchor_messages = anchor_rows["messages"].to_list()
    if config.anchors == "kmeans":
        ids = rows["pool_id"].to_list()
        vectors, _ = load_vectors(lance, sentence_embedding_settings.dataset, ids)
        n = max(1, min(config.n_anchors, len(ids) // 5))
        chosen = (
            get("kmeans_centroids")
            .select(ids, n, build_config("kmeans_centroids", {"seed": config.seed}), sentence_embeddings=vectors)
            .ids
        )
        by_id = dict(zip(ids, rows["messages"].to_list(), strict=True))
        anchor_messages = [by_id[i] for i in chosen]
    elif not config.anchors.startswith("source:"):
        raise ValueError(f"anchors: {config.anchors!r} is not 'kmeans' or 'source:NAME'")
    model, tokenizer = selection_model.load()
    anchors = prepare_anchors(tokenizer, anchor_messages, config.max_length)
    identity = selection_model.identity()
    code_version = row_code_version(context)
    # the anchor set (and model, code) is the identity of a score: rows of the same one are reused
    anchor_set = hashlib.sha256(json.dumps([a.zero_shot_ids for a in anchors]).encode()).hexdigest()[:16]
    keep = {"anchor_set": anchor_set, "model_hash": identity["model_hash"], "code_version": code_version}
    with store.session() as db:
        db.ensure_schema()
    items = list(zip(rows["pool_id"].to_list(), rows["messages"].to_list(), strict=True))
    template = template_hash(tokenizer)

    def scorer():
        lp0 = zero_shot(model, anchors, config.batch_size)

        def score_chunk(chunk: list[tuple[str, list[dict]]]) -> pl.DataFrame:
            lp1, reasons = one_shot_cached(
                model,
                tokenizer,
                [m for _, m in chunk],
                anchors,
                config.batch_size,
                config.max_length,
                config.max_tokens,
            )
            return pl.DataFrame(
                {
                    "pool_id": [i for i, _ in chunk],
                    "golden_score": golden_scores(lp1, lp0),
                    "reason": reasons,
                    "anchors": len(anchors),
                    "anchor_set": anchor_set,
                    **identity,
                    "template": template,
                    "code_version": code_version,
                },
                schema_overrides={"golden_score": pl.Float64, "anchors": pl.Int32},
            )

        return score_chunk

    with tracker.run(
        context,
        params={
            "anchors": config.anchors,
            "n_anchors": len(anchors),
            "anchors_left_out": len(anchor_messages) - len(anchors),
            "anchor_set": anchor_set,
            **identity,
        },
    ) as run:
        done = score_resumably(context, store, "golden_score", items, keep, scorer, "golden_score")
        mean = done.stats.mean  # NaN: no defined score at all
        stats = done.stats
        run.log_metrics({"rows": stats.rows, "computed": done.computed, "undefined": stats.undefined, "mean_gs": mean})
    return dg.MaterializeResult(
        metadata={
            **done.metadata(),
            "anchors": len(anchors),
            "anchors_left_out": len(anchor_messages) - len(anchors),  # longer than half of max_length
            "anchor_set": anchor_set,
            "mean_golden_score": mean,
            **identity,
            **run.metadata(),
        },
        data_version=dg.DataVersion(f"{version}-{anchor_set}-{identity['model_hash']}"),
    )


class WhispererConfig(dg.Config):
    task: str = Field(default="", description="Target task of the queries ('' = every query)")
    n_demos: int = Field(default=5, description="Pool demonstrations per prompt")
    n_queries: int = Field(default=3, description="Target queries per prompt")
    layer: int = Field(default=-1, description="Attention layer (-1 = the middle one, or see reference_layer)")
    reference_layer: bool = Field(
        default=False,
        description="With layer -1: the reference's per-model layer (13 Llama-3-8B and Mistral-Nemo, 16 "
        "Qwen2.5-3B/7B, 10 Mistral-7B, 11 any other model) instead of the middle one",
    )
    max_new_tokens: int = Field(
        default=32,
        description="Greedy answer length cap (0 = none: to the end of turn or 8,192 tokens of prompt and answer, "
        "as the reference)",
    )
    seed: int = Field(default=0, description="Demonstration partition and query sampling seed")


@model_asset(
    deps=[POOL],
    group_name=REPRESENTATIONS,
    code_version="whisperer_score-2",
    kinds={"duckdb"},
    tags={"dsel/cost": "high"},
    description="Data Whisperer: few-shot prompts of pool demonstrations + target queries; each answer's "
    "score is credited to the demonstrations by the attention the query pays them (eager attention).",
)
def whisperer_score(
    context: dg.AssetExecutionContext,
    config: WhispererConfig,
    store: StateStore,
    selection_model: SelectionModel,
    tracker: MlflowTracker,
) -> dg.MaterializeResult:
    """Pool-level, not per batch: prompts mix demonstrations drawn from the whole pool, and each
    example's score is a mean over the rounds it served in."""
    from dsel_assets.core.models.data_whisperer import reference_layer, whisperer_scores

    if config.reference_layer and config.layer >= 0:
        raise ValueError(f"layer: {config.layer} and reference_layer: true both pick the layer; set one")
    if config.max_new_tokens < 0:
        raise ValueError(f"max_new_tokens: {config.max_new_tokens} is negative; a cap >= 1, or 0 for none")
    with store.session() as db:
        rows = db.split_rows("pool")
        query_rows = db.split_rows("query", ("task", "messages"))
        if config.task:
            query_rows = query_rows.filter(pl.col("task") == config.task)
        version, _ = db.pool_version()
    model, tokenizer = selection_model.load()
    model.set_attn_implementation("eager")  # attention weights are read
    n_layers = model.config.num_hidden_layers
    if config.layer >= n_layers:
        raise ValueError(f"layer: {config.layer} is past the model's last layer ({n_layers - 1})")
    layer = (
        config.layer
        if config.layer >= 0
        else reference_layer(selection_model.model, n_layers)
        if config.reference_layer
        else None
    )
    answers: list[tuple[int, bool]] = []  # (tokens, ended) of each generated answer
    with tracker.run(
        context, params={**config.model_dump(), **selection_model.identity(), "pool_version": version}
    ) as run:
        scores = whisperer_scores(
            model,
            tokenizer,
            rows["messages"].to_list(),
            query_rows["messages"].to_list(),
            config.n_demos,
            config.n_queries,
            layer,
            config.max_new_tokens,
            config.seed,
            on_round=lambda d, t: d % 20 == 0 and context.log.info(f"whisperer: round {d}/{t}"),
            on_answer=lambda tokens, ended: answers.append((tokens, ended)),
        )
        cut = sum(not ended for _, ended in answers)
        run.log_metrics({"mean_score": float(np.nanmean(scores)), "queries": query_rows.height, "answers_cut": cut})
    if cut:
        limit = f"max_new_tokens={config.max_new_tokens}" if config.max_new_tokens else "the 8,192-token limit"
        context.log.warning(
            f"{cut} of {len(answers)} answers reached {limit} before their end and are graded (ROUGE-L) "
            "on what was generated" + ("; max_new_tokens: 0 lets them end (slower)" if config.max_new_tokens else "")
        )
    table = pl.DataFrame(
        {
            "pool_id": rows["pool_id"],
            "whisperer_score": scores,
            "reason": ["" if np.isfinite(x) else "never credited as a demonstration" for x in scores],
            **selection_model.identity(),
            "template": template_hash(tokenizer),
            "code_version": row_code_version(context),
        }
    )
    with store.session() as db:
        db.replace_table("whisperer_score", table)
    return dg.MaterializeResult(
        metadata={
            "rows": len(scores),
            "queries": query_rows.height,
            "mean_score": float(np.nanmean(scores)),
            "answers": len(answers),
            "answers_cut": cut,
            "mean_answer_tokens": float(np.mean([tokens for tokens, _ in answers])) if answers else 0.0,
            **run.metadata(),
        },
        data_version=dg.DataVersion(f"{version}-{config.task}-{config.seed}"),
    )
