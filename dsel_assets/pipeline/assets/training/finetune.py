"""Fine-tuned models: one asset per selection method (LoRA SFT on each stored budget of its
selection) and the full-pool baseline. Models are keyed by (config, selection version, base
model hash, code version): a rerun with unchanged inputs reuses the stored adapter."""

import hashlib
import json
import time
from datetime import datetime, timezone

import dagster as dg
import polars as pl
from pydantic import Field

from dsel_assets.core.models.finetune import (
    MANIFEST,
    FinetuneConfig,
    finetune,
    model_key,
    read_finetuned,
    selection_version,
)
from dsel_assets.core.models.lora import LoraSettings
from dsel_assets.core.models.sft import encode_conversation
from dsel_assets.core.select.base import Budget
from dsel_assets.pipeline.assets._factory import model_asset
from dsel_assets.pipeline.catalog import trained_keys
from dsel_assets.pipeline.metadata import markdown_table
from dsel_assets.pipeline.names import (
    FULL_BUDGET,
    FULL_POOL,
    MODELS,
    POOL,
    finetuned_asset_name,
    model_label,
    selection_asset_name,
)
from dsel_assets.pipeline.progress import Meter
from dsel_assets.pipeline.settings_versions import row_code_version
from resources.home import StateHome
from resources.models import SelectionModel
from resources.store import StateStore
from resources.tracking import DatasetRef, MlflowTracker

#: Methods whose models the default job trains (the rest: curation_job, the UI, ``dsel finetune``).
DEFAULT_FINETUNED = ("random", "less")


class FinetuneRunConfig(dg.Config):
    """The same for every selection of a comparison (set it once per run)."""

    budgets: list[str] = Field(default=[], description="Stored budgets to train on; empty = every stored budget")
    epochs: int = Field(default=3, description="Passes over the selection")
    lr: float = Field(default=2e-4, description="Peak learning rate (linear schedule)")
    warmup_ratio: float = Field(default=0.03, description="Share of steps with linear LR warm-up")
    batch_size: int = Field(default=8, description="Examples per step")
    max_length: int = Field(default=512, description="Tokens per example (right-truncated)")
    seeds: list[int] = Field(default=[0], description="Training seeds (shuffle, dropout, LoRA init): one model each")
    lora_r: int = Field(default=8, description="LoRA rank")
    lora_alpha: int = Field(default=16, description="LoRA alpha")
    lora_dropout: float = Field(default=0.05, description="LoRA dropout")
    lora_targets: list[str] = Field(default=["q_proj", "k_proj", "v_proj", "o_proj"], description="LoRA modules")

    def to_core(self, seed: int) -> FinetuneConfig:
        lora = LoraSettings(self.lora_r, self.lora_alpha, self.lora_dropout, tuple(self.lora_targets))
        return FinetuneConfig(
            epochs=self.epochs,
            lr=self.lr,
            warmup_ratio=self.warmup_ratio,
            batch_size=self.batch_size,
            max_length=self.max_length,
            seed=seed,
            lora=lora,
        )


def _budget_label(budget: str) -> str:
    """A budget as selections store it: ``5%`` and ``0.05`` are ``5pct``; a stored label stays."""
    try:
        return Budget.parse(budget).label
    except ValueError:
        return budget


def _training_sets(db, method: str, budgets: list[str]) -> dict[tuple[str, int], tuple[list[str], str]]:
    """(budget, selection seed) -> (selected pool ids in rank order, pool version) for one method."""
    if method == FULL_POOL:
        version, _ = db.pool_version()
        ids = db.split_rows("pool", ("pool_id",))
        return {(FULL_BUDGET, 0): (ids["pool_id"].to_list(), version)}
    rows = db.method_selections(method)
    if rows.height == 0:
        raise RuntimeError(f"{selection_asset_name(method)}: no stored selection; materialize it first")
    stored = rows["budget"].unique(maintain_order=True).to_list()
    budgets = [_budget_label(b) for b in budgets]
    unknown = sorted(set(budgets) - set(stored))
    if unknown:
        raise ValueError(f"budgets: {unknown} not stored for {method}; stored: {stored}")
    out = {}
    for (budget, selection_seed), group in rows.group_by(["budget", "selection_seed"], maintain_order=True):
        if not budgets or budget in budgets:
            out[budget, selection_seed] = (group["pool_id"].to_list(), group["pool_version"][0])
    return out


def train_models(
    context: dg.AssetExecutionContext,
    method: str,
    config: FinetuneRunConfig,
    store: StateStore,
    target_model: SelectionModel,
    tracker: MlflowTracker,
    home: StateHome,
) -> dg.MaterializeResult:
    """Fine-tune one LoRA adapter per (training set, training seed) of ``method``, reusing
    stored ones; training sets are the stored budgets and selection seeds of its selection."""
    seeds = list(config.seeds)
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds: need distinct training seeds, got {seeds}")
    shared = config.to_core(seeds[0]).to_dict()
    identity = target_model.identity()
    code_version = row_code_version(context)
    with store.session() as db:
        db.ensure_schema()
        sets = _training_sets(db, method, list(config.budgets))
        wanted = sorted({pid for ids, _ in sets.values() for pid in ids})
        by_id = db.messages_of(wanted)
    base, tokenizer = None, None
    summary, records = [], []
    params = {"method": method, **shared, "seed": ",".join(map(str, seeds)), **identity}
    inputs = [DatasetRef(f"selection/{method}@{b}#{s}", store.location, pv) for (b, s), (_, pv) in sets.items()]
    plan = [(budget, selection_seed, seed) for budget, selection_seed in sets for seed in seeds]
    meter, trained = Meter(finetuned_asset_name(method), len(plan), "models"), 0
    with tracker.run(context, params=params, inputs=inputs) as run:
        for done, (budget, selection_seed, seed) in enumerate(plan):
            core = config.to_core(seed)
            ids, pool_version = sets[budget, selection_seed]
            label = model_label(method, budget, selection_seed, seed)
            sel_version = selection_version(method, budget, ids, pool_version)
            key = model_key(core, sel_version, identity["model_hash"], code_version)
            out_uri = home.paths.artifacts.uri(f"models/finetuned/{key}")
            stored = home.paths.artifacts.find(f"models/finetuned/{key}")
            manifest = None if stored is None else read_finetuned(stored)
            reused = manifest is not None
            started = time.perf_counter()
            if not reused:
                if base is None:
                    base, tokenizer = target_model.load()
                encoded = [e for p in ids if (e := encode_conversation(tokenizer, by_id[p], core.max_length))]
                context.log.info(f"{label}: fine-tuning on {len(encoded)} of {len(ids)} examples")
                extra = {
                    "method": method,
                    "budget": budget,
                    "selection_seed": selection_seed,
                    "selection_version": sel_version,
                    "pool_version": pool_version,
                    "selected": len(ids),
                    "base_model": identity,
                    "code_version": code_version,
                    "model_key": key,
                    "dagster_run_id": context.run_id,
                }
                with home.paths.artifacts.objects.writing(out_uri) as out_dir:
                    manifest = finetune(
                        base,
                        encoded,
                        core,
                        out_dir,
                        tokenizer.pad_token_id,
                        extra,
                        context.log.info,
                        max_tokens=target_model.max_batch_tokens,
                    )
                    run.log_artifact(str(out_dir / MANIFEST))
                trained += 1
            seconds = time.perf_counter() - started
            final_loss = manifest["curve"][-1]["loss"]
            tick = meter.update(trained, len(plan) - (done + 1 - trained))  # reused models are no work
            context.log.info(
                f"{label}: {'reused' if reused else f'trained in {seconds:.0f}s'}; "
                f"model {done + 1}/{len(plan)} of {method}, ETA {(tick.eta or 0.0) / 60:.1f} min"
            )
            child = run.child(
                label,
                {"budget": budget, "selection_version": sel_version, "model_key": key, "reused": reused, "seed": seed},
                {"final_loss": final_loss, "examples": manifest["examples"], "seconds": seconds},
                curve=[]
                if reused
                else [{"step": p["step"], "loss": p["loss"], "lr": p["lr"]} for p in manifest["curve"]],
            )
            records.append(
                {
                    "model_key": key,
                    "method": method,
                    "budget": budget,
                    "selection_seed": selection_seed,
                    "seed": seed,
                    "selection_version": sel_version,
                    "pool_version": pool_version,
                    "path": out_uri,
                    "base_model": identity["model"],
                    "base_model_hash": identity["model_hash"],
                    "config": json.dumps(core.to_dict()),
                    "examples": manifest["examples"],
                    "final_loss": final_loss,
                    "mlflow_run_id": child,
                    "created_at": datetime.now(timezone.utc),
                }
            )
            reuse = "yes" if reused else "no"
            summary.append((budget, selection_seed, seed, key, manifest["examples"], f"{final_loss:.4f}", reuse))
    with store.session() as db:
        frame = pl.DataFrame(
            records, schema_overrides={"examples": pl.Int32, "selection_seed": pl.Int32, "seed": pl.Int32}
        )
        # this base model's models of the method; another model's stay queryable by its hash
        db.replace_rows("finetuned_models", {"method": method, "base_model_hash": identity["model_hash"]}, frame)
    header = ["budget", "selection seed", "seed", "model_key", "examples", "final loss", "reused"]
    return dg.MaterializeResult(
        metadata={
            "models": dg.MetadataValue.md(markdown_table(header, summary)),
            "base_model": identity["model"],
            "config": dg.MetadataValue.json({**shared, "seeds": seeds}),
            **run.metadata(),
        },
        data_version=dg.DataVersion(
            hashlib.sha256("-".join(r["model_key"] for r in records).encode()).hexdigest()[:16]
        ),
    )


def build_finetuned_asset(method: str, deps: list, tags: dict[str, str] | None) -> dg.AssetsDefinition:
    source = "the whole pool (baseline)" if method == FULL_POOL else f"each budget of {selection_asset_name(method)}"

    @model_asset(
        name=finetuned_asset_name(method),
        deps=deps,
        group_name=MODELS,
        code_version="finetuned-1",
        tags=tags,
        metadata={"method": method},
        description=f"LoRA SFT of the target model on {source}; adapter + manifest under models/finetuned/.",
    )
    def _finetuned(
        context: dg.AssetExecutionContext,
        config: FinetuneRunConfig,
        store: StateStore,
        target_model: SelectionModel,
        tracker: MlflowTracker,
        home: StateHome,
    ) -> dg.MaterializeResult:
        return train_models(context, method, config, store, target_model, tracker, home)

    return _finetuned


def _tags(method: str) -> dict[str, str] | None:
    return None if method in DEFAULT_FINETUNED else {"dsel/cost": "high"}


#: One per selection asset: every method on every representation it has a selection for
#: (``finetuned_round_robin_rds`` trains on ``selection_round_robin_rds``), and the full pool.
finetuned_assets = [
    build_finetuned_asset(key, [POOL if key == FULL_POOL else selection_asset_name(key)], _tags(key))
    for key in trained_keys()
]
