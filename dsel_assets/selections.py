"""Selection assets: one asset per registered method (a factory over the registry); each
materialization computes that method's selection at every configured budget."""

import dataclasses
import hashlib
import itertools
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
from dsel_assets.core.select.diagnostics import set_measures
from dsel_assets.core.select.mig import Labels
from dsel_assets.core.select.registry import MethodSpec
from dsel_assets.core.select.targeted import LESS, Influence, representation_needs
from dsel_assets.core.select.targeted import representations as method_representations
from dsel_assets.deployment import GPU_OP_TAGS, GPU_POOL
from dsel_assets.gradients import INFLUENCE
from dsel_assets.metadata import markdown_table
from dsel_assets.pool import pool
from dsel_assets.representations import MODEL_EMBEDDINGS, SENTENCE_EMBEDDINGS, vector_matrix
from dsel_assets.round_trainer import LoraRoundTrainer
from dsel_assets.scores import score_table
from dsel_assets.similarity import (
    EMBED_SIMILARITY,
    RDS_SIMILARITY,
    columns_table,
    load_vectors,
    query_rows,
    rds_dataset,
    rds_queries_dataset,
)
from resources.gradient_settings import GradientSettings
from resources.lance_store import LanceStore
from resources.models import ModelEmbeddingSettings, SelectionModel
from resources.tracking import DatasetRef, MlflowTracker

SELECTIONS = "selections"
DEFAULT_BUDGETS = ["5%", "10%"]

#: Representation name (registry ``needs``) -> the asset that materializes it.
REPRESENTATION_ASSETS = {
    SENTENCE_EMBEDDINGS: dg.AssetKey(SENTENCE_EMBEDDINGS),
    MODEL_EMBEDDINGS: dg.AssetKey(MODEL_EMBEDDINGS),
    "less_scores": dg.AssetKey(INFLUENCE),
    "less_scorer": dg.AssetKey("query_grad_features"),  # LESS scores on demand (gradient_scorer)
    "influence": dg.AssetKey(INFLUENCE),
    "pool_gradients": dg.AssetKey("pool_grad_features"),
    "query_gradients": dg.AssetKey("query_grad_features"),
    "ifd": dg.AssetKey("loss_scores"),
    "pre_experienced_ifd": dg.AssetKey("cherry_pre_experienced_scores"),
    "uncertainty": dg.AssetKey("loss_scores"),
    "superfiltering_ifd": dg.AssetKey("proxy_loss_scores"),
    "quality": dg.AssetKey("quality"),
    "labels": dg.AssetKey("labels"),
    "learning_percentage": dg.AssetKey("learning_percentage"),
    "golden_score": dg.AssetKey("golden_score"),
    "whisperer_score": dg.AssetKey("whisperer_score"),
    "trainer": dg.AssetKey("pool"),  # trains the selection model itself between rounds
    # the targeted study's other representations (core.select.targeted.representation_needs)
    RDS_SIMILARITY: dg.AssetKey(RDS_SIMILARITY),
    "rds_task_scores": dg.AssetKey(RDS_SIMILARITY),
    "rds_queries": dg.AssetKey(RDS_SIMILARITY),
    EMBED_SIMILARITY: dg.AssetKey(EMBED_SIMILARITY),
    "embed_task_scores": dg.AssetKey(EMBED_SIMILARITY),
    "embed_queries": dg.AssetKey(EMBED_SIMILARITY),  # rows of sentence_embeddings that embed_similarity checked
}
#: Needs read as a pool x query matrix (an Influence), or as its LESS task scores (R1.5).
SIMILARITIES = ("influence", RDS_SIMILARITY, EMBED_SIMILARITY)
TASK_SCORES = ("rds_task_scores", "embed_task_scores")

#: Scalar representations: (DuckDB table, column). IFDs are undefined (NaN) where a reason is recorded.
SCALARS = {
    "ifd": ("loss_scores", "CASE WHEN reason = '' THEN ifd_loss_ratio END"),
    "pre_experienced_ifd": ("cherry_pre_experienced_scores", "CASE WHEN reason = '' THEN ifd_loss_ratio END"),
    "superfiltering_ifd": ("proxy_loss_scores", "ifd_ppl_ratio"),
    "quality": ("quality", "quality"),
    "learning_percentage": ("learning_percentage", "CASE WHEN reason = '' THEN lp1 END"),
    "golden_score": ("golden_score", "golden_score"),
    "whisperer_score": ("whisperer_score", "whisperer_score"),
}
#: Scalars read from the table of the method's scoring ``template`` (its ``template`` parameter).
TEMPLATED = ("ifd", "superfiltering_ifd")
UNCERTAINTY_COLUMNS = ("min_margin", "mean_margin", "mean_entropy", "least_confidence")
#: Representations computed per batch whose missing rows load as NaN: a selection over them
#: records how many pool rows they cover, and its check fails when that is not the whole pool.
COVERAGE_CHECKED = ("less_scores", "pool_gradients", *SIMILARITIES, *TASK_SCORES)


def covered_rows(value) -> int:
    """Pool rows for which a loaded representation has any finite value."""
    if isinstance(value, Influence):
        value = value.scores
    if isinstance(value, dict):
        value = np.column_stack(list(value.values())) if value else np.empty((0, 0))
    return int(np.isfinite(value).any(axis=1).sum()) if value.size else 0


class SelectionConfig(dg.Config):
    budgets: list[str] = Field(
        default=DEFAULT_BUDGETS, description="Budgets: counts (500), fractions (0.05) or percentages (5%)"
    )
    params: dict[str, str] = Field(default={}, description="Method parameters by name (validated against the registry)")
    seeds: list[int] = Field(
        default=[],
        description="Selection seeds: one replicate per seed (methods with a 'seed' parameter, e.g. random); "
        "empty = the 'seed' parameter's value",
    )


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


def similarity_dataset(asset: str, grad_settings: GradientSettings, selection_model: SelectionModel | None) -> str:
    """The Lance dataset that pool x query matrix asset ``asset`` writes for these settings."""
    if asset == INFLUENCE:
        return f"{INFLUENCE}_{grad_settings.suffix()}"
    if asset == RDS_SIMILARITY:
        return rds_dataset(selection_model.identity()["model_hash"])
    return EMBED_SIMILARITY


def load_similarity(
    asset: str, lance: LanceStore, duckdb: DuckDBResource, pool_ids: list[str], name: str
) -> tuple[Influence, DatasetRef]:
    """The pool x query matrix of ``asset`` (Lance dataset ``name``) aligned to ``pool_ids``
    (NaN rows: no feature or vector), with the task and subtask of each query column."""
    version = lance.version(name)
    if version is None:
        raise RuntimeError(f"{name}: no similarity matrix yet; materialize {asset} first")
    table = lance.read(name, ["pool_id", "scores"], version=version)
    with duckdb.get_connection() as conn:
        columns = tables.frame(conn, f"SELECT col, task, subtask FROM {columns_table(asset)} ORDER BY col")
    matrix = vector_matrix(table.column("scores"))
    scores = np.full((len(pool_ids), matrix.shape[1]), np.nan, dtype=np.float32)
    row_of = {pid: i for i, pid in enumerate(pool_ids)}
    for source_row, pid in enumerate(table.column("pool_id").to_pylist()):
        if pid in row_of:
            scores[row_of[pid]] = matrix[source_row]
    influence = Influence(scores, tuple(columns["task"].to_list()), tuple(columns["subtask"].to_list()))
    return influence, DatasetRef(name, lance.uri(name), str(version))


def _aligned(rows: pl.DataFrame, pool_ids: list[str], column: str) -> np.ndarray:
    values = dict(zip(rows["pool_id"].to_list(), rows[column].to_list(), strict=True))
    return np.array([np.nan if values.get(p) is None else values[p] for p in pool_ids], dtype=np.float64)


def load_scalars(duckdb: DuckDBResource, table: str, expressions: dict[str, str], pool_ids: list[str]):
    """Columns of a score table aligned to ``pool_ids`` (NaN where missing or undefined)."""
    with duckdb.get_connection() as conn:
        if not tables.scalar(conn, "SELECT count(*) FROM duckdb_tables() WHERE table_name = ?", [table]):
            raise RuntimeError(f"{table}: not materialized yet")
        select = ", ".join(f"{expr} AS {name}" for name, expr in expressions.items())
        rows = tables.frame(conn, f"SELECT pool_id, {select} FROM {table}")
    return {name: _aligned(rows, pool_ids, name) for name in expressions}


def load_gradients(
    lance: LanceStore, duckdb: DuckDBResource, pool_ids: list[str], grad_settings: GradientSettings, kind: str
):
    """Gradient features of the latest warmup's last checkpoint: pool rows aligned to
    ``pool_ids`` (NaN rows where an example has none), or (query matrix, query tasks)."""
    from dsel_assets.gradients import latest_warmup

    with duckdb.get_connection() as conn:
        warmup, _, manifest = latest_warmup(conn)
    last = max(c["epoch"] for c in manifest["checkpoints"])
    name = f"{kind}_grad_features_{grad_settings.suffix()}"
    columns = ["pool_id", "vector"] + (["task"] if kind == "query" else [])
    table = lance.read(name, columns, equal={"warmup": warmup, "checkpoint": last})
    matrix = vector_matrix(table.column("vector")).astype(np.float32)
    ref = DatasetRef(name, lance.uri(name), str(lance.version(name)))
    if kind == "query":
        return (matrix, table.column("task").to_pylist()), ref
    row_of = {p: i for i, p in enumerate(table.column("pool_id").to_pylist())}
    aligned = np.full((len(pool_ids), matrix.shape[1]), np.nan, dtype=np.float32)
    for i, p in enumerate(pool_ids):
        if p in row_of:
            aligned[i] = matrix[row_of[p]]
    return aligned, ref


def load_labels(duckdb: DuckDBResource, pool_ids: list[str]) -> tuple[Labels, DatasetRef]:
    with duckdb.get_connection() as conn:
        pairs = tables.frame(conn, "SELECT pool_id, label FROM labels")
        vocab = tables.frame(conn, "SELECT label, embedding FROM label_vocab ORDER BY label")
    members: dict[str, list[int]] = {}
    for pid, label in zip(pairs["pool_id"], pairs["label"], strict=True):
        members.setdefault(pid, []).append(int(label))
    embeddings = np.asarray(vocab["embedding"].to_list(), dtype=np.float64)
    labels = Labels([members.get(p, []) for p in pool_ids], embeddings)
    return labels, DatasetRef("labels", str(duckdb.database), str(len(embeddings)))


def load_trainer(duckdb: DuckDBResource, pool_ids: list[str], selection_model: SelectionModel, log):
    with duckdb.get_connection() as conn:
        rows = tables.frame(conn, "SELECT pool_id, messages FROM examples WHERE split = 'pool' ORDER BY pool_id")
    by_id = dict(zip(rows["pool_id"].to_list(), rows["messages"].to_list(), strict=True))
    model, tokenizer = selection_model.load()
    trainer = LoraRoundTrainer(model, tokenizer, [by_id[p] for p in pool_ids], log=log)
    return trainer, DatasetRef("selection_model", selection_model.model, selection_model.identity()["model_hash"])


def load_queries(lance: LanceStore, duckdb: DuckDBResource, name: str) -> tuple[tuple[np.ndarray, list], DatasetRef]:
    """(query vectors of Lance dataset ``name`` in column order, task per row) and its ref."""
    with duckdb.get_connection() as conn:
        queries = query_rows(conn)
    vectors, version = load_vectors(lance, name, queries["pool_id"].to_list())
    return (vectors, queries["task"].to_list()), DatasetRef(name, lance.uri(name), str(version))


def load_representation(
    need: str,
    lance: LanceStore,
    duckdb: DuckDBResource,
    pool_ids: list[str],
    grad_settings: GradientSettings,
    selection_model: SelectionModel | None = None,
    log=print,
    embedding_settings: ModelEmbeddingSettings | None = None,
    template: str = "chat",
):
    """(representation aligned to ``pool_ids``, its DatasetRef for lineage); IFDs under ``template``."""
    if need == MODEL_EMBEDDINGS:  # the dataset of the configured pooling and the selection model's weights
        name = (embedding_settings or ModelEmbeddingSettings()).dataset(selection_model.identity()["model_hash"])
        vectors, version = load_vectors(lance, name, pool_ids)
        return vectors, DatasetRef(name, lance.uri(name), str(version))
    if need == "trainer":
        return load_trainer(duckdb, pool_ids, selection_model, log)
    if need in SIMILARITIES or need in TASK_SCORES:
        asset = REPRESENTATION_ASSETS[need].path[-1]
        name = similarity_dataset(asset, grad_settings, selection_model)
        similarity, ref = load_similarity(asset, lance, duckdb, pool_ids, name)
        return (similarity, ref) if need in SIMILARITIES else (similarity.task_scores(), ref)
    if need == "rds_queries":
        return load_queries(lance, duckdb, rds_queries_dataset(selection_model.identity()["model_hash"]))
    if need == "embed_queries":
        return load_queries(lance, duckdb, SENTENCE_EMBEDDINGS)
    if need in ("pool_gradients", "query_gradients"):
        return load_gradients(lance, duckdb, pool_ids, grad_settings, need.split("_")[0])
    if need == "less_scorer":
        from dsel_assets.gradient_scorer import load_less_scorer

        return load_less_scorer(lance, duckdb, pool_ids, grad_settings, selection_model)
    if need == "labels":
        return load_labels(duckdb, pool_ids)
    if need in SCALARS:
        table, expression = SCALARS[need]
        table = score_table(table, template) if need in TEMPLATED else table
        return load_scalars(duckdb, table, {need: expression}, pool_ids)[need], DatasetRef(
            need, str(duckdb.database), table
        )
    if need == "uncertainty":
        values = load_scalars(duckdb, "loss_scores", {c: c for c in UNCERTAINTY_COLUMNS}, pool_ids)
        return values, DatasetRef("uncertainty", str(duckdb.database), "loss_scores")
    if need == "less_scores":
        scores, warmup = load_less_scores(duckdb, pool_ids)
        return scores, DatasetRef("less_scores", str(duckdb.database), warmup)
    vectors, version = load_vectors(lance, need, pool_ids)
    return vectors, DatasetRef(need, lance.uri(need), str(version))


def selection_asset_name(method: str) -> str:
    return f"selection_{method}"


def selection_key(method: str, representation: str | None = None) -> str:
    """What a selection is stored, checked and reported under (the ``method`` column): the
    method's name on its own representation (LESS gradients for targeted methods), else
    ``<method>_<representation>``, e.g. ``round_robin_rds``."""
    return method if representation in (None, LESS) else f"{method}_{representation}"


#: How the asset descriptions name each representation of a targeted method.
REPRESENTATION_LABELS = {
    "rds": "RDS+ (cosine of position-weighted model embeddings)",
    "embed": "EMBED (cosine of all-MiniLM-L6-v2 sentence embeddings)",
}


def build_selection_asset(spec: MethodSpec, representation: str = LESS) -> dg.AssetsDefinition:
    """The asset of one method on one representation: reads the pool and what the method needs
    under that representation (the similarity matrix and vectors standing in for gradients)."""
    key = selection_key(spec.name, representation)
    needs = representation_needs(spec.needs, representation)  # selector argument -> representation
    pinned = {"representation": representation} if len(method_representations(spec.config_cls)) > 1 else {}
    deps = [pool, *dict.fromkeys(REPRESENTATION_ASSETS[need] for need in needs.values())]
    on = f" On {REPRESENTATION_LABELS[representation]}." if representation in REPRESENTATION_LABELS else ""
    # trains the model between rounds, or computes gradients of the examples it draws
    runs_model = bool({"trainer", "less_scorer"} & set(spec.needs))

    @dg.asset(
        name=selection_asset_name(key),
        deps=deps,
        group_name=SELECTIONS,
        code_version=f"{spec.name}-1",
        kinds={"duckdb"},
        description=f"{spec.description}{on} ({spec.reference})",
        metadata={
            "method": key,
            "family": spec.family,
            "needs": ", ".join(needs.values()) or "-",
            **pinned,
        },
        # iterative methods train the model between rounds: out of the default job (see jobs/)
        tags={"dsel/cost": "high"} if spec.family == "iterative" else None,
        pool=GPU_POOL if runs_model else None,
        op_tags=GPU_OP_TAGS if runs_model else None,
    )
    def _selection(
        context: dg.AssetExecutionContext,
        config: SelectionConfig,
        duckdb: DuckDBResource,
        lance: LanceStore,
        tracker: MlflowTracker,
        grad_settings: GradientSettings,
        selection_model: SelectionModel,
        model_embedding_settings: ModelEmbeddingSettings,
    ) -> dg.MaterializeResult:
        method_config = build_config(spec.name, {**pinned, **config.params})
        asked = vars(method_config).get("representation", representation)
        if asked != representation:
            raise ValueError(
                f"representation: {selection_asset_name(key)} selects on {representation}; "
                f"{asked} is {selection_asset_name(selection_key(spec.name, asked))}"
            )
        budgets = [Budget.parse(b) for b in config.budgets]
        replicates = seed_replicates(method_config, list(config.seeds))  # before any work
        with duckdb.get_connection() as conn:
            tables.ensure_schema(conn)
            version, _ = tables.pool_version(conn)
            frame = tables.frame(conn, "SELECT pool_id, task FROM examples WHERE split = 'pool' ORDER BY pool_id")
        pool_ids = frame["pool_id"].to_list()
        if not pool_ids:
            raise RuntimeError("pool: no examples yet; ingest data first (dsel ingest PATH)")
        representations, inputs = {}, [DatasetRef("pool", str(duckdb.database), version)]
        for argument, need in needs.items():
            representations[argument], ref = load_representation(
                need,
                lance,
                duckdb,
                pool_ids,
                grad_settings,
                selection_model,
                context.log.info,
                model_embedding_settings,
                template=getattr(method_config, "template", "chat"),
            )
            inputs.append(ref)
        coverage = {n: covered_rows(representations[a]) for a, n in needs.items() if n in COVERAGE_CHECKED}
        for need, covered in coverage.items():
            if covered < len(pool_ids):
                context.log.warning(f"{need} covers {covered} of {len(pool_ids)} pool rows")
        params = {
            "method": key,
            "budgets": ",".join(b.label for b in budgets),
            "pool_version": version,
            **vars(method_config),
        }
        pending: dict[str, list[pl.DataFrame]] = {}
        if config.seeds:
            params["seeds"] = ",".join(map(str, config.seeds))
        summary = []
        with tracker.run(context, params=params, inputs=inputs) as run:
            for budget, (selection_seed, replicate_config) in itertools.product(budgets, replicates):
                k = budget.count(len(pool_ids))
                started = time.perf_counter()
                selection = spec.select(pool_ids, k, replicate_config, **representations)
                seconds = time.perf_counter() - started
                selection.diagnostics.update(  # FL coverage and NovelSum on sentence embeddings, or why not
                    set_measures(pool_ids, selection.ids, lambda: load_vectors(lance, SENTENCE_EMBEDDINGS, pool_ids)[0])
                )
                if coverage:
                    selection.diagnostics["coverage"] = coverage
                trainer = representations.get("trainer")
                if trainer is not None:  # each training round of an iterative method: a nested MLflow run
                    for entry in trainer.history:
                        run.child(
                            f"{key}@{budget.label} round {entry['round']}",
                            {"budget": budget.label},
                            {k_: v for k_, v in entry.items() if isinstance(v, (int, float))},
                        )
                        context.log.info(f"{key} @ {budget.label}: round {entry['round']} {entry}")
                    selection.diagnostics["rounds_recorded"] = len(trainer.history)
                    trainer.history.clear()
                rows = pl.DataFrame(
                    {
                        "method": key,
                        "budget": budget.label,
                        "selection_seed": selection_seed,
                        "k": k,
                        "eligible": int(selection.diagnostics.get("eligible", len(pool_ids))),
                        "rank": list(range(len(selection.ids))),
                        "pool_id": selection.ids,
                        "score": selection.scores if selection.scores is not None else [None] * len(selection.ids),
                        "pool_version": version,
                        "config": json.dumps(vars(replicate_config)),
                        "diagnostics": json.dumps(selection.diagnostics, default=str),
                        "mlflow_run_id": run.run_id,
                        "created_at": datetime.now(timezone.utc),
                    },
                    schema_overrides={
                        "score": pl.Float64,
                        "k": pl.Int32,
                        "eligible": pl.Int32,
                        "rank": pl.Int32,
                        "selection_seed": pl.Int32,
                    },
                )
                pending.setdefault(budget.label, []).append(rows)
                if len(pending[budget.label]) == len(replicates):  # every seed of this budget: replace at once
                    with duckdb.get_connection() as conn:
                        tables.write_selection(conn, key, budget.label, pl.concat(pending.pop(budget.label)))
                label = budget.label if len(replicates) == 1 else f"{budget.label}.seed{selection_seed}"
                run.log_metrics({f"{label}.k": k, f"{label}.selected": len(selection.ids), f"{label}.seconds": seconds})
                context.log.info(f"{key} @ {label}: {len(selection.ids)} of {len(pool_ids)} in {seconds:.2f}s")
                summary.append((label, k, len(selection.ids), json.dumps(selection.diagnostics)))
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


def seed_replicates(method_config, seeds: list[int]) -> list[tuple[int, object]]:
    """(selection seed, config) per replicate: one per requested seed, else the config itself
    (its own ``seed``, or 0 for a method without one)."""
    if not seeds:
        return [(int(getattr(method_config, "seed", 0)), method_config)]
    if not hasattr(method_config, "seed"):
        raise ValueError(f"seeds: {type(method_config).__name__} has no 'seed' parameter; leave seeds empty")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds: repeated values in {seeds}")
    return [(seed, dataclasses.replace(method_config, seed=seed)) for seed in seeds]


def hash_config(params: dict) -> str:
    """Short stable hash of a parameter dict (data versions)."""
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:12]


def available(spec: MethodSpec, representation: str | None = None) -> bool:
    """A method gets an asset (per representation) once every representation it needs has one
    (the others are registered, tested on synthetic inputs, and wired as their representations land)."""
    return set(representation_needs(spec.needs, representation or LESS).values()) <= set(REPRESENTATION_ASSETS)


selection_assets = [
    build_selection_asset(spec, representation)
    for spec in methods().values()
    for representation in method_representations(spec.config_cls)
    if available(spec, representation)
]
