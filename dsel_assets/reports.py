"""The results table: cheap diagnostics (METHODS.md section 3) of every stored selection."""

import json

import dagster as dg
import numpy as np
import polars as pl
from dagster_duckdb import DuckDBResource

from dsel_assets import tables
from dsel_assets.core.select.diagnostics import summarize
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
    return dg.MaterializeResult(
        metadata={
            "report": dg.MetadataValue.md(markdown),
            "path": dg.MetadataValue.path(str(path)),
            "rows": report.height,
            **run.metadata(),
        },
    )
