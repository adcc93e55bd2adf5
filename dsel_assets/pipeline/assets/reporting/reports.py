"""Reports: the selection diagnostics table (docs/STATISTICS.md) and the comparison of
methods by what the models trained on their selections can do (eval scores per task,
balance across tasks, plots)."""

import base64
import json
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
from pydantic import Field

from dsel_assets.core.data.schema import content_hashes
from dsel_assets.core.select.diagnostics import summarize
from dsel_assets.core.stats import comparison_table
from dsel_assets.pipeline.catalog import evaluated_keys, key_method, randomness_by_key, selection_keys
from dsel_assets.pipeline.metadata import markdown_table
from dsel_assets.pipeline.names import (
    BASE,
    FULL_POOL,
    REPORTS,
    SELECTION_REPORT,
    SENTENCE_EMBEDDINGS,
    eval_asset_name,
    selection_asset_name,
)
from dsel_assets.pipeline.report_html import (
    plot_budget_curves,
    plot_task_deltas,
    plot_task_mix,
    verdict_markdown,
    write_html_report,
)
from dsel_assets.pipeline.stored import load_vectors
from dsel_assets.store import artifacts
from resources.home import StateHome
from resources.lance_store import LanceStore
from resources.models import SelectionModel, SentenceEmbeddingSettings
from resources.store import StateStore
from resources.tracking import DatasetRef, MlflowTracker


def _noise_label(meta: str | None) -> str | None:
    """A record's known-noise label (``meta.noise``) as text, as JSON text extraction gives it."""
    value = (json.loads(meta) if meta else {}).get("noise")
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value)


def selection_report_frame(db, lance: LanceStore, sentences: str = SENTENCE_EMBEDDINGS) -> pl.DataFrame:
    """One row per stored (method, budget): size, task mix, known-noise rate, query similarity
    (on the sentence embeddings of Lance dataset ``sentences``)."""
    selected = db.selected_examples()
    noise = [_noise_label(meta) for meta in selected["meta"].to_list()]
    selected = selected.drop("meta").with_columns(pl.Series("noise", noise, dtype=pl.String))
    query_ids = db.split_rows("query", ("pool_id",))["pool_id"].to_list()
    has_vectors = lance.version(sentences) is not None
    query_vectors = None
    if has_vectors and query_ids:
        query_vectors, _ = load_vectors(lance, sentences, query_ids)
    has_noise_labels = any(v is not None for v in db.meta_field("pool", "noise").values())
    rows = []
    for (method, budget), group in selected.group_by(["method", "budget"], maintain_order=True):
        vectors = load_vectors(lance, sentences, group["pool_id"].to_list())[0] if has_vectors else None
        stats = summarize(
            group["task"].to_list(),
            noise=group["noise"].to_list() if has_noise_labels else None,
            selected_vectors=vectors,
            query_vectors=query_vectors,
        )
        rows.append(
            {
                "method": method,
                "budget": budget,
                "size": stats["size"],
                "task_entropy": stats["task_entropy"],
                "noise_fraction": stats.get("noise_fraction"),
                "query_similarity": stats.get("query_similarity"),
                "task_counts": json.dumps(stats["task_counts"]),
            }
        )
    schema = {
        "method": pl.String,
        "budget": pl.String,
        "size": pl.Int64,
        "task_entropy": pl.Float64,
        "noise_fraction": pl.Float64,
        "query_similarity": pl.Float64,
        "task_counts": pl.String,
    }
    return pl.DataFrame(rows, schema=schema).sort(["method", "size"])


@dg.asset(
    deps=[*map(selection_asset_name, selection_keys()), SENTENCE_EMBEDDINGS],  # query similarity reads the embeddings
    group_name=REPORTS,
    code_version="selection_report-1",
    kinds={"duckdb"},
    description="Results table: per method and budget, size, task-mix entropy, fraction of "
    "known-noisy rows, mean similarity to the query sets. Also written to reports/.",
)
def selection_report(
    context: dg.AssetExecutionContext,
    store: StateStore,
    lance: LanceStore,
    sentence_embedding_settings: SentenceEmbeddingSettings,
    tracker: MlflowTracker,
    home: StateHome,
) -> dg.MaterializeResult:
    with store.session() as db:
        db.ensure_schema()
        report = selection_report_frame(db, lance, sentence_embedding_settings.dataset)
        version, _ = db.pool_version()
        db.replace_table(SELECTION_REPORT, report)
    markdown = markdown_table(report.columns, report.rows(), limit=500)
    reports = home.paths.artifacts.uri("reports")
    with home.paths.artifacts.objects.writing(reports) as out:
        path = out / "selection_report.md"
        path.write_text(markdown + "\n", encoding="utf-8")
        task_mix = plot_task_mix(report.select("method", "budget", "task_counts"), out / "selection_task_mix.png")
        with tracker.run(
            context, params={"pool_version": version}, inputs=[DatasetRef("selections", store.location, version)]
        ) as run:
            for row in report.iter_rows(named=True):
                prefix = f"{row['method']}.{row['budget']}"
                run.log_metrics(
                    {
                        f"{prefix}.{k}": row[k]
                        for k in ("task_entropy", "noise_fraction", "query_similarity")
                        if row[k] is not None and not np.isnan(row[k])
                    }
                )
            run.log_artifact(str(path))
            run.log_artifact(str(task_mix))
        plot = _embedded(task_mix)
    return dg.MaterializeResult(
        metadata={
            "report": dg.MetadataValue.md(markdown),
            "task_mix": dg.MetadataValue.md(plot),
            "path": dg.MetadataValue.path(artifacts.join(reports, path.name)),
            "rows": report.height,
            **run.metadata(),
        },
    )


class ComparisonConfig(dg.Config):
    """Which models the comparison covers (``dsel compare`` sets both to its own)."""

    tasks: list[str] = Field(default=[], description="Eval tasks; empty = every evaluated task")
    methods: list[str] = Field(default=[], description="Methods; empty = every method with eval rows (+ base)")
    n_boot: int = Field(default=2000, description="Bootstrap replicates of every CI and p-value")
    seed: int = Field(default=0, description="Bootstrap seed")
    eval_version: str = Field(default="", description="Only evaluations of this eval sample ('' = any)")


def comparison_rows(
    db, tasks: list[str], methods: list[str], model_hash: str | None, eval_version: str | None = None
) -> pl.DataFrame:
    """One row per (current model, eval example): the models of ``finetuned_models`` fine-tuned
    from base model ``model_hash`` (None: from any, for a home that only ever had one) and that
    untouched base model, with their selection and training seeds, selection size, and the eval
    example's group: the hash of its prompt, so the reference answers of one source item (the three
    summaries of one DialogSum dialogue) resample together."""
    db.ensure_schema()
    rows = db.eval_rows_with_models(BASE, model_hash, eval_version)
    if tasks:
        rows = rows.filter(pl.col("task").is_in(tasks))
    if methods:
        rows = rows.filter(pl.col("method").is_in([*methods, BASE]))
    evaluated = set(rows["pool_id"].to_list())
    prompts = {
        pool_id: content_hashes(messages)[1]
        for pool_id, messages in db.split_rows("eval", ("pool_id", "messages")).iter_rows()
        if pool_id in evaluated
    }
    groups = pl.DataFrame(
        {"pool_id": list(prompts), "group": list(prompts.values())}, schema={"pool_id": pl.String, "group": pl.String}
    )
    return rows.with_columns(pl.col("train_size").cast(pl.Int64)).join(groups, on="pool_id", how="left")


#: the task-matched baseline: targeted methods are also compared with it
TASK_MATCHED = "random_in_task"


def targeted_keys(keys) -> list[str]:
    """The selection keys among ``keys`` whose method is targeted (LESS, BIDS, round_robin@rds, ...)."""
    return [key for key in keys if key not in (BASE, FULL_POOL) and key_method(key)[0].family == "targeted"]


def _task_mix(db) -> pl.DataFrame | None:
    if not db.table_exists(SELECTION_REPORT):
        return None
    return db.report(SELECTION_REPORT).select("method", "budget", "task_counts")


def _embedded(path: Path) -> str:
    """Markdown image with the PNG inline (the Dagster UI renders data URIs)."""
    return f"![{path.stem}](data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()})"


@dg.asset(
    deps=[*map(eval_asset_name, evaluated_keys()), selection_report],
    group_name=REPORTS,
    code_version="comparison_report-3",
    kinds={"duckdb"},
    description="Every method x budget x task against random: the mean with a 95% hierarchical bootstrap CI "
    "(selections, training seeds, eval groups), the difference to random on the same eval rows with its t interval, "
    "raw and Holm-adjusted p-values and the verdict (docs/STATISTICS.md); balance across tasks; a ten-second "
    "summary; plots with error bars; a self-contained HTML report in reports/.",
)
def comparison_report(
    context: dg.AssetExecutionContext,
    config: ComparisonConfig,
    store: StateStore,
    tracker: MlflowTracker,
    home: StateHome,
    target_model: SelectionModel,
) -> dg.MaterializeResult:
    identity = target_model.identity()
    with store.session() as db:
        db.ensure_schema()
        rows = comparison_rows(
            db, list(config.tasks), list(config.methods), identity["model_hash"], config.eval_version or None
        )
        mix = _task_mix(db)
        randomness = randomness_by_key(rows["method"].unique().to_list(), db)
    if rows.height == 0:
        raise RuntimeError(
            f"comparison_report: no eval rows of {identity['model']} yet; materialize eval_base / eval_<method> first"
        )
    table = comparison_table(
        rows,
        n_boot=config.n_boot,
        seed=config.seed,
        randomness=randomness,
        also_against={TASK_MATCHED: targeted_keys(randomness)},
    ).with_columns(
        pl.col("task").is_in(list(config.tasks)).alias("target"),
        # what the numbers are of: the model (and its weights) and the eval sample
        pl.lit(f"{identity['model']} (weights {identity['model_hash']})").alias("model"),
        pl.lit(config.eval_version or "any").alias("eval_version"),
    )
    with store.session() as db:
        db.replace_table("comparison_report", table)
    reports = home.paths.artifacts.uri("reports")
    with home.paths.artifacts.objects.writing(reports) as out:
        images = {
            "Mean eval loss over tasks vs selection size (95% CI)": plot_budget_curves(
                table, out / "comparison_budget_curves.png"
            ),
            "Per-task difference to random (95% CI)": plot_task_deltas(table, out / "comparison_task_deltas.png"),
        }
        if mix is not None and mix.height:
            images["Task mix of each selection"] = plot_task_mix(mix, out / "comparison_task_mix.png")
        models = rows.select("method", "budget", "selection_seed", "seed").unique().height
        settings = {
            "model": f"{identity['model']} (weights {identity['model_hash']})",
            "models": models,
            "tasks": ", ".join(sorted(set(rows["task"].to_list()))),
            "eval examples": rows.select("task", "pool_id").unique().height,
            "eval groups": rows.select("task", "group").unique().height,
            "targets": ", ".join(config.tasks) or "every evaluated task",
            "bootstrap replicates of the mean CIs": config.n_boot,
            "bootstrap seed": config.seed,
            "verdicts": "Welch's t on selection-replicate means, Holm-adjusted over every verdict row",
        }
        markdown = verdict_markdown(table)
        md_path, html_path = out / "comparison_report.md", out / "comparison_report.html"
        md_path.write_text(markdown + "\n", encoding="utf-8")
        write_html_report(table, images, "dsel: method comparison", settings, html_path)
        with tracker.run(context, params={"models": models, **settings}) as run:
            for row in table.filter(pl.col("delta").is_not_null()).iter_rows(named=True):
                name = f"{row['method']}.{row['budget']}.{row['task']}.{row['measure']}"
                run.log_metrics({f"{name}.delta".replace(" ", "_").replace("(", "").replace(")", ""): row["delta"]})
            for artifact in (md_path, html_path, *images.values()):
                run.log_artifact(str(artifact))
        plots = {f"plot_{i}": dg.MetadataValue.md(_embedded(p)) for i, p in enumerate(images.values())}
    html = artifacts.join(reports, html_path.name)
    context.log.info(f"comparison report: {table.height} rows; {html}")
    return dg.MaterializeResult(
        metadata={
            "report": dg.MetadataValue.md(markdown),
            **plots,
            "html": dg.MetadataValue.path(html),
            "models": models,
            **run.metadata(),
        },
    )
