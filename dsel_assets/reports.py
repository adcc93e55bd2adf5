"""Reports: the selection diagnostics table (METHODS.md section 3) and the comparison of
methods by what the models trained on their selections can do (eval scores per task,
balance across tasks, plots)."""

import base64
import json
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
from dagster_duckdb import DuckDBResource

from dsel_assets import tables
from dsel_assets.core.select.diagnostics import summarize
from dsel_assets.evaluation import EVAL_SQL, eval_assets
from dsel_assets.metadata import markdown_table
from dsel_assets.representations import SENTENCE_EMBEDDINGS
from dsel_assets.selections import load_vectors, selection_assets
from resources.home import StateHome
from resources.lance_store import LanceStore
from resources.tracking import DatasetRef, MlflowTracker

REPORTS = "reports"
REPORT_COLUMNS = ["method", "budget", "size", "task_entropy", "noise_fraction", "query_similarity", "task_counts"]


def selection_report_frame(conn, lance: LanceStore) -> pl.DataFrame:
    """One row per stored (method, budget): size, task mix, known-noise rate, query similarity."""
    selected = tables.frame(
        conn,
        """SELECT s.method, s.budget, s.rank, s.pool_id, e.task, json_extract_string(e.meta, '$.noise') AS noise
           FROM selections s JOIN examples e USING (pool_id)
           WHERE e.split = 'pool' ORDER BY s.method, s.budget, s.rank""",
    )
    queries = tables.frame(conn, "SELECT pool_id FROM examples WHERE split = 'query' ORDER BY pool_id")
    has_vectors = lance.version(SENTENCE_EMBEDDINGS) is not None
    query_vectors = None
    if has_vectors and queries.height:
        query_vectors, _ = load_vectors(lance, SENTENCE_EMBEDDINGS, queries["pool_id"].to_list())
    has_noise_labels = tables.scalar(
        conn, "SELECT count(*) > 0 FROM examples WHERE split = 'pool' AND json_exists(meta, '$.noise')"
    )
    rows = []
    for (method, budget), group in selected.group_by(["method", "budget"], maintain_order=True):
        vectors = load_vectors(lance, SENTENCE_EMBEDDINGS, group["pool_id"].to_list())[0] if has_vectors else None
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
    deps=selection_assets,
    group_name=REPORTS,
    code_version="selection_report-1",
    kinds={"duckdb"},
    description="Results table: per method and budget, size, task-mix entropy, fraction of "
    "known-noisy rows, mean similarity to the query sets. Also written to reports/.",
)
def selection_report(
    context: dg.AssetExecutionContext,
    duckdb: DuckDBResource,
    lance: LanceStore,
    tracker: MlflowTracker,
    home: StateHome,
) -> dg.MaterializeResult:
    with duckdb.get_connection() as conn:
        tables.ensure_schema(conn)
        report = selection_report_frame(conn, lance)
        version, _ = tables.pool_version(conn)
        tables.replace_table(conn, "selection_report", report)
    markdown = markdown_table(report.columns, report.rows(), limit=500)
    path = home.paths.reports / "selection_report.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(markdown + "\n", encoding="utf-8")
    task_mix = home.paths.reports / "selection_task_mix.png"
    _plot_task_mix(report, task_mix)
    with tracker.run(
        context, params={"pool_version": version}, inputs=[DatasetRef("selections", str(duckdb.database), version)]
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
    return dg.MaterializeResult(
        metadata={
            "report": dg.MetadataValue.md(markdown),
            "task_mix": dg.MetadataValue.md(_embedded(task_mix)),
            "path": dg.MetadataValue.path(str(path)),
            "rows": report.height,
            **run.metadata(),
        },
    )


def _pyplot():
    """matplotlib's pyplot on the non-interactive Agg backend (assets run headless)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_task_mix(report: pl.DataFrame, path: Path) -> None:
    """Stacked bars: the task shares of every selection (method @ budget)."""
    plt = _pyplot()

    counts = [json.loads(c) for c in report["task_counts"].to_list()]
    tasks = sorted({t for c in counts for t in c})
    labels = [f"{m}@{b}" for m, b in zip(report["method"], report["budget"], strict=True)]
    fig, ax = plt.subplots(figsize=(8, max(3, 0.22 * len(labels) + 1)))
    left = np.zeros(len(labels))
    for task in tasks:
        share = np.array([c.get(task, 0) / max(sum(c.values()), 1) for c in counts])
        ax.barh(labels, share, left=left, label=task)
        left += share
    ax.set_xlabel("share of the selection")
    ax.set_title("Task mix per selection")
    ax.invert_yaxis()
    ax.tick_params(axis="y", labelsize=7)
    ax.legend(fontsize=7, loc="lower right", ncol=2)
    _save(plt, fig, path)


COMPARISON_COLUMNS = ["method", "budget", "train_size", "task", "metric", "n", "score", "loss"]
DIAGNOSTIC_COLUMNS = ["task_entropy", "noise_fraction", "query_similarity"]


def comparison_frames(conn) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(method x budget x task eval rows + the selection's cheap diagnostics, and per model
    the balance across tasks: min / mean / max score and the worst task)."""
    conn.execute(EVAL_SQL)
    scores = tables.frame(conn, f"SELECT {', '.join(COMPARISON_COLUMNS)} FROM eval_scores")
    if tables.scalar(conn, "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'selection_report'"):
        diagnostics = tables.frame(
            conn, f"SELECT method, budget, {', '.join(DIAGNOSTIC_COLUMNS)} FROM selection_report"
        )
        scores = scores.join(diagnostics, on=["method", "budget"], how="left")
    else:
        scores = scores.with_columns([pl.lit(None, pl.Float64).alias(c) for c in DIAGNOSTIC_COLUMNS])
    scores = scores.sort(["train_size", "method", "task"])
    scored = scores.filter(pl.col("score").is_not_null())
    balance = (
        scored.sort("score")
        .group_by(["method", "budget", "train_size"], maintain_order=False)
        .agg(
            pl.col("score").min().alias("min"),
            pl.col("score").mean().alias("mean"),
            pl.col("score").max().alias("max"),
            pl.col("task").first().alias("worst_task"),
            pl.col("loss").mean().alias("mean_loss"),
        )
        .sort(["train_size", "method"])
    )
    return scores, balance


def _plot_budget_curves(balance: pl.DataFrame, path: Path) -> None:
    """Mean eval score against training-set size, one line per method; baselines as points."""
    plt = _pyplot()

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (method,), group in balance.group_by(["method"], maintain_order=True):
        group = group.sort("train_size")
        style = "o--" if group.height == 1 else "o-"
        ax.plot(group["train_size"].to_list(), group["mean"].to_list(), style, label=method)
    ax.set_xlabel("training examples (selection size)")
    ax.set_ylabel("mean score over eval tasks")
    ax.set_title("Eval score vs budget")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    _save(plt, fig, path)


def _plot_task_bars(scores: pl.DataFrame, path: Path) -> None:
    """Per-task score bars, one bar per model (method @ budget)."""
    plt = _pyplot()

    scored = scores.filter(pl.col("score").is_not_null())
    tasks = sorted(set(scored["task"].to_list()))
    models = scored.select("method", "budget", "train_size").unique().sort(["train_size", "method"]).rows()
    fig, ax = plt.subplots(figsize=(max(7, 1.2 * len(tasks) + 0.3 * len(models)), 4.5))
    width = 0.8 / max(len(models), 1)
    for i, (method, budget, _) in enumerate(models):
        rows = scored.filter((pl.col("method") == method) & (pl.col("budget") == budget))
        value = dict(zip(rows["task"].to_list(), rows["score"].to_list(), strict=True))
        ax.bar(np.arange(len(tasks)) + i * width, [value.get(t, 0.0) for t in tasks], width, label=f"{method}@{budget}")
    ax.set_xticks(np.arange(len(tasks)) + 0.4 - width / 2, tasks, rotation=20, ha="right")
    ax.set_ylim(0, max(0.05, 1.15 * max(scored["score"].to_list(), default=0.0)))
    ax.set_ylabel("score (exact match / ROUGE-L)")
    ax.set_title("Per-task eval score")
    ax.legend(fontsize=7, ncol=2)
    _save(plt, fig, path)


def _embedded(path: Path) -> str:
    """Markdown image with the PNG inline (the Dagster UI renders data URIs)."""
    return f"![{path.stem}](data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()})"


@dg.asset(
    deps=[*[a.key for a in eval_assets], selection_report],
    group_name=REPORTS,
    code_version="comparison_report-1",
    kinds={"duckdb"},
    description="Method x budget x task eval table (+ baselines and the selections' cheap diagnostics), "
    "balance across tasks, and plots (score vs budget, per-task bars). Written to reports/.",
)
def comparison_report(
    context: dg.AssetExecutionContext,
    duckdb: DuckDBResource,
    tracker: MlflowTracker,
    home: StateHome,
) -> dg.MaterializeResult:
    with duckdb.get_connection() as conn:
        tables.ensure_schema(conn)
        scores, balance = comparison_frames(conn)
        tables.replace_table(conn, "comparison_report", scores)
        tables.replace_table(conn, "comparison_balance", balance)
    if scores.height == 0:
        raise RuntimeError("comparison_report: no eval scores yet; materialize eval_base / eval_<method> first")
    out = home.paths.reports
    out.mkdir(parents=True, exist_ok=True)
    curves, bars = out / "comparison_budget_curves.png", out / "comparison_task_bars.png"
    _plot_budget_curves(balance, curves)
    _plot_task_bars(scores, bars)
    table_md = markdown_table(scores.columns, scores.rows(), limit=500)
    balance_md = markdown_table(balance.columns, balance.rows(), limit=200)
    markdown = f"## Eval scores\n\n{table_md}\n\n## Balance across tasks\n\n{balance_md}\n"
    path = out / "comparison_report.md"
    path.write_text(markdown + f"\n![curves]({curves.name})\n\n![tasks]({bars.name})\n", encoding="utf-8")
    with tracker.run(context, params={"models": balance.height, "rows": scores.height}) as run:
        for row in balance.iter_rows(named=True):
            if row["mean"] is not None:
                run.log_metrics({f"{row['method']}.{row['budget']}.mean_score": row["mean"]})
        for artifact in (path, curves, bars):
            run.log_artifact(str(artifact))
    context.log.info("comparison report:\n" + balance_md)
    return dg.MaterializeResult(
        metadata={
            "report": dg.MetadataValue.md(table_md),
            "balance": dg.MetadataValue.md(balance_md),
            "budget_curves": dg.MetadataValue.md(_embedded(curves)),
            "task_bars": dg.MetadataValue.md(_embedded(bars)),
            "path": dg.MetadataValue.path(str(path)),
            "models": balance.height,
            **run.metadata(),
        },
    )
