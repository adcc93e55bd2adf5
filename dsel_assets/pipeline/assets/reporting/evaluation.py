"""Eval scores: every fine-tuned model (and the untouched base model) on the held-out eval
sets, per task: response-token loss, exact match or ROUGE-L, balance across tasks. Results are
keyed by (model, eval sample, eval config, code version): a rerun with unchanged inputs reuses them."""

import hashlib
import json
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
from pydantic import Field

from dsel_assets.core.data.schema import content_hashes
from dsel_assets.core.evaluation import EvalConfig, EvalExample, balance, eval_sample, evaluate, summarize
from dsel_assets.core.harness import check_tasks, harness_rows
from dsel_assets.core.models.finetune import load_finetuned
from dsel_assets.pipeline.assets._factory import model_asset
from dsel_assets.pipeline.catalog import evaluated_keys
from dsel_assets.pipeline.metadata import markdown_table
from dsel_assets.pipeline.names import BASE, EVALUATION, POOL, eval_asset_name, finetuned_asset_name, model_label
from dsel_assets.pipeline.progress import Meter
from dsel_assets.pipeline.settings_versions import row_code_version
from resources.home import StateHome
from resources.models import SelectionModel
from resources.object_store import object_store
from resources.store import StateStore
from resources.tracking import DatasetRef, MlflowTracker


class EvalRunConfig(dg.Config):
    """The same for every model of a comparison."""

    tasks: list[str] = Field(default=[], description="Eval tasks to score; empty = every task with an eval set")
    max_per_task: int = Field(default=50, description="Eval examples per task (seeded sample; 0 = all)")
    max_new_tokens: int = Field(default=128, description="Greedy generation cap")
    max_length: int = Field(default=512, description="Tokens of prompt + reference for the loss")
    batch_size: int = Field(default=16, description="Examples per forward / generate call")
    max_batch_tokens: int = Field(default=0, description="Cap on padded tokens per loss forward (0 = none)")
    generate: bool = Field(default=True, description="Generate and grade checkable answers")
    seed: int = Field(default=0, description="Eval sample seed")
    eval_version: str = Field(
        default="", description="The eval sample version a comparison froze; another one is refused ('' = current)"
    )
    lm_eval_tasks: list[str] = Field(
        default=[],
        description="lm-evaluation-harness tasks to score too (installed, or YAMLs in <home>/lm_eval_tasks)",
    )
    lm_eval_limit: int = Field(default=0, description="Documents per lm-eval task (0 = all)")

    def to_core(self) -> EvalConfig:
        return EvalConfig(
            self.max_per_task,
            self.max_new_tokens,
            self.max_length,
            self.batch_size,
            self.max_batch_tokens,
            self.generate,
            self.seed,
            tuple(self.lm_eval_tasks),
            self.lm_eval_limit,
        )


def load_eval_set(db, tasks: list[str], config: EvalConfig) -> tuple[list[EvalExample], str, int]:
    """The eval sample (same for every model), its version, and how many eval rows were left
    out because their prompt also appears in the pool or a query set (same question, another
    answer: e.g. a dialogue summarised twice). Whole conversations cannot repeat across
    splits (ids are content hashes, unique in the store); this is re-checked."""
    rows = db.split_rows("eval", ("pool_id", "task", "messages", "meta"))
    if tasks:
        unknown = sorted(set(tasks) - set(rows["task"].to_list()))
        if unknown:
            raise ValueError(f"tasks: no eval set for {unknown}; eval tasks: {sorted(set(rows['task']))}")
        rows = rows.filter(pl.col("task").is_in(tasks))
    if rows.height == 0:
        raise RuntimeError("eval: no eval examples; ingest an eval set (dsel ingest FILE --split eval)")
    leaked = db.count_outside_split(rows["pool_id"].to_list(), "eval")
    if leaked:
        raise RuntimeError(f"eval: {leaked} eval examples also appear in the pool or query sets")
    seen = db.split_rows(("pool", "query"), ("messages",))["messages"].to_list()
    seen_prompts = {content_hashes(m)[1] for m in seen}
    examples = [
        EvalExample(pid, task, messages, json.loads(meta) if meta else {})
        for pid, task, messages, meta in rows.iter_rows()
        if content_hashes(messages)[1] not in seen_prompts
    ]
    sample = eval_sample(examples, config.max_per_task, config.seed)
    version = hashlib.sha256(json.dumps([[e.pool_id for e in sample], config.to_dict()]).encode()).hexdigest()[:16]
    return sample, version, rows.height - len(examples)


def evaluate_models(
    context: dg.AssetExecutionContext,
    method: str,
    config: EvalRunConfig,
    store: StateStore,
    target_model: SelectionModel,
    tracker: MlflowTracker,
    harness_folder: Path,
) -> dg.MaterializeResult:
    """Score every current model of ``method`` (``base``: the untouched target model) on the eval
    sets, and on the lm-eval tasks the config names (local task YAMLs in ``harness_folder``)."""
    core = config.to_core()
    if core.lm_eval_tasks:
        check_tasks(core.lm_eval_tasks, harness_folder)
    identity = target_model.identity()
    code_version = row_code_version(context)
    with store.session() as db:
        db.ensure_schema()
        sample, eval_version, contaminated = load_eval_set(db, list(config.tasks), core)
        if config.eval_version and eval_version != config.eval_version:
            raise RuntimeError(
                f"eval: the eval set changed during the comparison (version {config.eval_version} -> {eval_version}: "
                "eval rows added, or pool rows sharing their prompts); run dsel compare again to compare on it"
            )
        if method == BASE:
            models = [(f"base-{identity['model_hash']}", "0", None, 0, 0, 0)]
        else:
            found = db.finetuned_models_of(method, identity["model_hash"])
            if found.height == 0:
                raise RuntimeError(
                    f"{finetuned_asset_name(method)}: no models of {identity['model']} yet; materialize it first"
                )
            models = list(found.iter_rows())
        done = db.eval_keys()
    base, tokenizer = None, None
    summary = []
    params = {"method": method, **core.to_dict(), **identity, "eval_version": eval_version, "eval_n": len(sample)}
    inputs = [DatasetRef("eval_set", store.location, eval_version)]
    with tracker.run(context, params=params, inputs=inputs) as run:
        meter, scored = Meter(eval_asset_name(method), len(models), "models"), 0
        for position, (model_key, budget, path, train_size, selection_seed, seed) in enumerate(models):
            label = model_label(method, budget, selection_seed, seed)
            eval_key = hashlib.sha256(f"{model_key}/{eval_version}/{code_version}".encode()).hexdigest()[:16]
            if eval_key in done:
                context.log.info(f"{label}: eval {eval_key} already stored; reused")
                with store.session() as db:
                    per_task = db.eval_task_scores(eval_key)
            else:
                if base is None:
                    base, tokenizer = target_model.load()
                started = time.perf_counter()
                model = base if path is None else load_finetuned(base, object_store().local_copy(path))
                rows = evaluate(model, tokenizer, sample, core, context.log.info)
                if core.lm_eval_tasks:
                    context.log.info(f"{label}: lm-eval {', '.join(core.lm_eval_tasks)}")
                    rows += harness_rows(
                        model,
                        tokenizer,
                        core.lm_eval_tasks,
                        harness_folder,
                        core.lm_eval_limit,
                        core.batch_size,
                        core.seed,
                    )
                if path is not None:
                    base = model.unload()
                seconds = time.perf_counter() - started
                scored += 1
                tick = meter.update(scored, len(models) - (position + 1 - scored))  # reused evals are no work
                context.log.info(
                    f"{label}: {len(rows)} eval examples in {seconds:.0f}s; "
                    f"model {position + 1}/{len(models)} of {method}, ETA {(tick.eta or 0.0) / 60:.1f} min"
                )
                per_task = summarize(rows)
                child = run.child(
                    f"eval {label}",
                    {"model_key": model_key, "eval_key": eval_key, "budget": budget, "seed": seed},
                    {
                        **{f"{t['task']}.{k}": t[k] for t in per_task for k in ("score", "loss") if t[k] is not None},
                        **{f"balance.{k}": v for k, v in balance(per_task).items() if isinstance(v, float)},
                        "seconds": seconds,
                    },
                )
                _write_eval(store, method, budget, model_key, eval_key, eval_version, train_size, rows, per_task, child)
            stats = balance(per_task)
            mean_loss = float(np.mean([t["loss"] for t in per_task if t["loss"] is not None] or [np.nan]))
            summary.append((budget, selection_seed, seed, model_key, mean_loss, stats["mean"], stats["worst"]))
    return dg.MaterializeResult(
        metadata={
            "eval_version": eval_version,
            "eval_examples": len(sample),
            "eval_rows_sharing_a_prompt_with_pool_or_query": contaminated,
            "models": dg.MetadataValue.md(
                markdown_table(
                    ["budget", "selection seed", "seed", "model_key", "mean loss", "mean score", "worst task"], summary
                )
            ),
            **run.metadata(),
        },
        data_version=dg.DataVersion(hashlib.sha256(json.dumps(summary, default=str).encode()).hexdigest()[:12]),
    )


def _write_eval(store, method, budget, model_key, eval_key, eval_version, train_size, rows, per_task, run_id) -> None:
    """Replace the rows of one model in eval_scores and eval_examples (one transaction each)."""
    now = datetime.now(timezone.utc)
    scores = pl.DataFrame(
        [
            {
                "eval_key": eval_key,
                "model_key": model_key,
                "method": method,
                "budget": budget,
                "train_size": train_size,
                **t,
                "eval_version": eval_version,
                "mlflow_run_id": run_id,
                "created_at": now,
            }
            for t in per_task
        ],
        schema_overrides={"n": pl.Int32, "train_size": pl.Int32, "score": pl.Float64, "loss": pl.Float64},
    )
    examples = pl.DataFrame(
        [{"eval_key": eval_key, "model_key": model_key, "method": method, "budget": budget, **asdict(r)} for r in rows],
        schema_overrides={"score": pl.Float64, "loss": pl.Float64, "prediction": pl.String, "metric": pl.String},
    )
    with store.session() as db:
        db.replace_rows("eval_scores", {"model_key": model_key}, scores)
        db.replace_rows("eval_examples", {"model_key": model_key}, examples)


def build_eval_asset(method: str) -> dg.AssetsDefinition:
    """The eval asset of one fine-tune asset's models (of the untouched model, for ``base``)."""
    upstream = POOL if method == BASE else finetuned_asset_name(method)
    what = "the untouched target model (zero-shot baseline)" if method == BASE else f"every model of {upstream}"

    @model_asset(
        name=eval_asset_name(method),
        deps=[upstream],
        group_name=EVALUATION,
        code_version="eval-1",
        kinds={"duckdb"},
        metadata={"method": method},
        description=f"Eval scores of {what} per eval task: loss, exact match / ROUGE-L, balance.",
    )
    def _eval(
        context: dg.AssetExecutionContext,
        config: EvalRunConfig,
        store: StateStore,
        target_model: SelectionModel,
        tracker: MlflowTracker,
        home: StateHome,
    ) -> dg.MaterializeResult:
        return evaluate_models(context, method, config, store, target_model, tracker, home.paths.lm_eval_tasks)

    return _eval


eval_assets = [build_eval_asset(key) for key in evaluated_keys()]
