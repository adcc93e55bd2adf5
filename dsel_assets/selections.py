"""Selection assets: one asset per registered method (a factory over the registry); each
materialization computes that method's selection at every configured budget."""

import hashlib
import json
import time
from datetime import datetime, timezone

import dagster as dg
import numpy as np
import polars as pl
from dagster_duckdb import DuckDBResource
from pydantic import Field

from dsel_assets import tables
from dsel_assets.core.select import Budget, build_config, methods
from dsel_assets.core.select.registry import MethodSpec
from dsel_assets.core.select.targeted import Influence
from dsel_assets.gradients import INFLUENCE
from dsel_assets.metadata import markdown_table
from dsel_assets.pool import pool
from dsel_assets.representations import SENTENCE_EMBEDDINGS
from resources.gradient_settings import GradientSettings
from resources.lance_store import LanceStore
from resources.tracking import DatasetRef, MlflowTracker

SELECTIONS = "selections"
DEFAULT_BUDGETS = ["5%", "10%"]

#: Representation name (registry ``needs``) -> the asset that materializes it.
REPRESENTATION_ASSETS = {
    SENTENCE_EMBEDDINGS: dg.AssetKey(SENTENCE_EMBEDDINGS),
    "less_scores": dg.AssetKey(INFLUENCE),
    "influence": dg.AssetKey(INFLUENCE),
}


class SelectionConfig(dg.Config):
    budgets: list[str] = Field(
        default=DEFAULT_BUDGETS, description="Budgets: counts (500), fractions (0.05) or percentages (5%)"
    )
    params: dict[str, str] = Field(default={}, description="Method parameters by name (validated against the registry)")


def load_vectors(lance: LanceStore, name: str, pool_ids: list[str]) -> tuple[np.ndarray, int]:
    """Rows of Lance dataset ``name`` aligned to ``pool_ids`` (float32), and its version."""
    version = lance.version(name)
    if version is None:
        raise RuntimeError(f"{name}: no Lance dataset yet; materialize {name} first")
    table = lance.read(name, ["pool_id", "vector"], version=version)
    vectors = table.column("vector").combine_chunks()
    dim = vectors.type.list_size
    matrix = vectors.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
    row_of = {pid: i for i, pid in enumerate(table.column("pool_id").to_pylist())}
    missing = [pid for pid in pool_ids if pid not in row_of]
    if missing:
        raise RuntimeError(
            f"{name}: {len(missing)} pool ids have no row (e.g. {missing[0]}); materialize {name} for every pool batch"
        )
    return matrix[[row_of[pid] for pid in pool_ids]].astype(np.float32), version


def load_less_scores(duckdb: DuckDBResource, pool_ids: list[str]) -> tuple[dict[str, np.ndarray], str]:
    """task -> LESS score per pool id (NaN where the example has no gradient feature)."""
    with duckdb.get_connection() as conn:
        if not tables.scalar(conn, "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'less_scores'"):
            raise RuntimeError("less_scores: none yet; materialize influence first")
        rows = tables.frame(conn, "SELECT pool_id, task, score FROM less_scores")
        warmup = tables.one(conn, "SELECT warmup FROM warmups ORDER BY created_at DESC LIMIT 1")
    row_of = {pid: i for i, pid in enumerate(pool_ids)}
    scores: dict[str, np.ndarray] = {}
    for (task,), group in rows.group_by(["task"], maintain_order=True):
        column = np.full(len(pool_ids), np.nan)
        for pid, score in zip(group["pool_id"], group["score"], strict=True):
            if pid in row_of:
                column[row_of[pid]] = score
        scores[task] = column
    return scores, warmup[0] if warmup else ""


def load_influence(
    lance: LanceStore, duckdb: DuckDBResource, pool_ids: list[str], grad_settings: GradientSettings
) -> tuple[Influence, DatasetRef]:
    """The pool x query influence matrix aligned to ``pool_ids`` (NaN rows: no feature)."""
    name = f"{INFLUENCE}_{grad_settings.suffix()}"
    version = lance.version(name)
    if version is None:
        raise RuntimeError(f"{name}: no influence matrix yet; materialize influence first")
    table = lance.read(name, ["pool_id", "scores"], version=version)
    with duckdb.get_connection() as conn:
        columns = tables.frame(conn, "SELECT col, task, subtask FROM influence_columns ORDER BY col")
    flat = table.column("scores").combine_chunks()
    matrix = flat.flatten().to_numpy(zero_copy_only=False).reshape(table.num_rows, -1)
    scores = np.full((len(pool_ids), matrix.shape[1]), np.nan, dtype=np.float32)
    row_of = {pid: i for i, pid in enumerate(pool_ids)}
    for source_row, pid in enumerate(table.column("pool_id").to_pylist()):
        if pid in row_of:
            scores[row_of[pid]] = matrix[source_row]
    influence = Influence(scores, tuple(columns["task"].to_list()), tuple(columns["subtask"].to_list()))
    return influence, DatasetRef(name, lance.uri(name), str(version))


def load_representation(
    need: str, lance: LanceStore, duckdb: DuckDBResource, pool_ids: list[str], grad_settings: GradientSettings
):
    """(representation aligned to ``pool_ids``, its DatasetRef for lineage)."""
    if need == "influence":
        return load_influence(lance, duckdb, pool_ids, grad_settings)
    if need == "less_scores":
        scores, warmup = load_less_scores(duckdb, pool_ids)
        return scores, DatasetRef("less_scores", str(duckdb.database), warmup)
    vectors, version = load_vectors(lance, need, pool_ids)
    return vectors, DatasetRef(need, lance.uri(need), str(version))


def selection_asset_name(method: str) -> str:
    return f"selection_{method}"


def build_selection_asset(spec: MethodSpec) -> dg.AssetsDefinition:
    """The asset for one method: reads the pool and the representations the method needs."""
    deps = [pool, *[REPRESENTATION_ASSETS[need] for need in spec.needs]]

    @dg.asset(
        name=selection_asset_name(spec.name),
        deps=deps,
        group_name=SELECTIONS,
        code_version=f"{spec.name}-1",
        kinds={"duckdb"},
        description=f"{spec.description} ({spec.reference})",
        metadata={"method": spec.name, "family": spec.family, "needs": ", ".join(spec.needs) or "-"},
    )
    def _selection(
        context: dg.AssetExecutionContext,
        config: SelectionConfig,
        duckdb: DuckDBResource,
        lance: LanceStore,
        tracker: MlflowTracker,
        grad_settings: GradientSettings,
    ) -> dg.MaterializeResult:
        method_config = build_config(spec.name, config.params)
        budgets = [Budget.parse(b) for b in config.budgets]
        with duckdb.get_connection() as conn:
            tables.ensure_schema(conn)
            version, _ = tables.pool_version(conn)
            frame = tables.frame(conn, "SELECT pool_id, task FROM examples WHERE split = 'pool' ORDER BY pool_id")
        pool_ids = frame["pool_id"].to_list()
        if not pool_ids:
            raise RuntimeError("pool: no examples yet; ingest data first (dsel ingest PATH)")
        representations, inputs = {}, [DatasetRef("pool", str(duckdb.database), version)]
        for need in spec.needs:
            representations[need], ref = load_representation(need, lance, duckdb, pool_ids, grad_settings)
            inputs.append(ref)
        params = {
            "method": spec.name,
            "budgets": ",".join(b.label for b in budgets),
            "pool_version": version,
            **vars(method_config),
        }
        summary = []
        with tracker.run(context, params=params, inputs=inputs) as run:
            for budget in budgets:
                k = budget.count(len(pool_ids))
                started = time.perf_counter()
                selection = spec.select(pool_ids, k, method_config, **representations)
                seconds = time.perf_counter() - started
                rows = pl.DataFrame(
                    {
                        "method": spec.name,
                        "budget": budget.label,
                        "k": k,
                        "rank": list(range(len(selection.ids))),
                        "pool_id": selection.ids,
                        "score": selection.scores if selection.scores is not None else [None] * len(selection.ids),
                        "pool_version": version,
                        "config": json.dumps(vars(method_config)),
                        "mlflow_run_id": run.run_id,
                        "created_at": datetime.now(timezone.utc),
                    },
                    schema_overrides={"score": pl.Float64, "k": pl.Int32, "rank": pl.Int32},
                )
                with duckdb.get_connection() as conn:
                    tables.write_selection(conn, spec.name, budget.label, rows)
                run.log_metrics(
                    {
                        f"{budget.label}.k": k,
                        f"{budget.label}.selected": len(selection.ids),
                        f"{budget.label}.seconds": seconds,
                    }
                )
                context.log.info(
                    f"{spec.name} @ {budget.label}: {len(selection.ids)} of {len(pool_ids)} in {seconds:.2f}s"
                )
                summary.append((budget.label, k, len(selection.ids), json.dumps(selection.diagnostics)))
        return dg.MaterializeResult(
            metadata={
                "pool_version": version,
                "pool_size": len(pool_ids),
                "budgets": dg.MetadataValue.md(markdown_table(["budget", "k", "selected", "diagnostics"], summary)),
                "config": dg.MetadataValue.json(vars(method_config)),
                **run.metadata(),
            },
            data_version=dg.DataVersion(hash_config({**params, "inputs": [i.digest for i in inputs]})),
        )

    return _selection


def hash_config(params: dict) -> str:
    """Short stable hash of a parameter dict (data versions)."""
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:12]


def available(spec: MethodSpec) -> bool:
    """A method gets an asset once every representation it needs has one (the others are
    registered, tested on synthetic inputs, and wired as their representations land)."""
    return set(spec.needs) <= set(REPRESENTATION_ASSETS)


selection_assets = [build_selection_asset(spec) for spec in methods().values() if available(spec)]
