"""Asset checks, blocking where a bad result must not flow on (a failed blocking check stops
the run before any downstream asset reads the result).

- selections: exactly ``min(k, eligible)`` ids (less an under-fill the method reports, the
  stated reason), unique ids and ranks, every id in the pool version the rows claim;
- per-batch representations: one row per pool id of the batch, no NaN/inf, unit norm where the
  asset promises L2-normalised vectors;
- evaluation: the eval set shares no content (conversation or prompt hash) with the query sets
  or the evaluated models' training data (:func:`disjointness_result`).

The ``*_problems`` functions are pure (frames and arrays in, problem lines out) so they are
tested on deliberately corrupted data without a run.
"""

import json
import warnings
from collections.abc import Callable, Iterable, Mapping

import dagster as dg
import numpy as np
import polars as pl

from dsel_assets.core.data.schema import content_hashes
from dsel_assets.pipeline.catalog import evaluated_keys, selection_keys
from dsel_assets.pipeline.metadata import markdown_table
from dsel_assets.pipeline.names import (
    BASE,
    FULL_POOL,
    MODEL_EMBEDDINGS,
    POOL_GRAD_FEATURES,
    SENTENCE_EMBEDDINGS,
    eval_asset_name,
    grad_features_dataset,
    pool_batches,
    score_tables,
    selection_asset_name,
)
from dsel_assets.pipeline.registry import checked_score_columns, per_batch_assets
from dsel_assets.pipeline.stored import latest_warmup_manifest, vector_matrix
from resources.gradient_settings import GradientSettings
from resources.lance_store import LanceStore
from resources.models import ModelEmbeddingSettings, SelectionModel, SentenceEmbeddingSettings
from resources.store import StateStore

#: float16 storage keeps a unit vector's norm within about 1e-3; 1e-2 leaves room for rounding.
NORM_TOLERANCE = 1e-2
MAX_LISTED = 10


def _result(problems: list[str], **metadata) -> dg.AssetCheckResult:
    """Passed when there are no problems; otherwise the first problems as metadata."""
    shown = problems[:MAX_LISTED] + ([f"... {len(problems) - MAX_LISTED} more"] if len(problems) > MAX_LISTED else [])
    return dg.AssetCheckResult(
        passed=not problems,
        severity=dg.AssetCheckSeverity.ERROR,
        description="; ".join(shown[:3]) or None,
        metadata={**metadata, "problems": dg.MetadataValue.md("\n".join(f"- {p}" for p in shown) or "none")},
    )


def selection_problems(rows: pl.DataFrame, pool_ids: Mapping[str, set[str]]) -> list[str]:
    """What is wrong with the stored rows of one method (columns ``budget, k, eligible, rank,
    pool_id, pool_version, diagnostics`` and optionally ``selection_seed``: each seed's
    replicate is checked on its own); ``pool_ids`` maps a pool version to its ids."""
    problems = []
    if "selection_seed" not in rows.columns:
        rows = rows.with_columns(pl.lit(0).alias("selection_seed"))
    for (budget_label, seed), group in rows.group_by(["budget", "selection_seed"], maintain_order=True):
        budget = budget_label if seed == 0 else f"{budget_label} (seed {seed})"
        k, eligible = int(group["k"][0]), int(group["eligible"][0])
        diagnostics = json.loads(group["diagnostics"][0] or "{}")
        under_fill = int(diagnostics.get("under_fill", 0))
        expected = min(k, eligible) - under_fill
        if group.height != expected:
            problems.append(
                f"{budget}: {group.height} rows, expected min(k={k}, eligible={eligible}) - under_fill={under_fill}"
                f" = {expected}"
            )
        duplicated = group.height - group["pool_id"].n_unique()
        if duplicated:
            problems.append(f"{budget}: {duplicated} repeated pool ids")
        if sorted(group["rank"].to_list()) != list(range(group.height)):
            problems.append(f"{budget}: ranks are not 0..{group.height - 1}")
        for (version,), part in group.group_by(["pool_version"]):
            known = pool_ids.get(version)
            if known is None:
                problems.append(f"{budget}: pool version {version} is not recorded in pool_versions")
                continue
            foreign = [p for p in part["pool_id"].to_list() if p not in known]
            if foreign:
                problems.append(f"{budget}: {len(foreign)} ids not in pool version {version} (e.g. {foreign[0]})")
            for need, covered in diagnostics.get("coverage", {}).items():
                if not isinstance(covered, dict):  # written before coverage was recorded per batch
                    problems.append(f"{budget}: {need} coverage in an older format; re-materialize the selection")
                elif covered["batches_without_rows"]:
                    problems.append(
                        f"{budget}: {need} has no row for pool batch(es) {covered['batches_without_rows']} of pool "
                        f"version {version}; compute it for every pool batch"
                    )
    return problems


def vector_problems(
    expected_ids: Iterable[str], ids: list[str], matrix: np.ndarray, unit_norm: bool, allowed_missing: int = 0
) -> list[str]:
    """One row per expected id (``allowed_missing`` may lack one, e.g. excluded with a reason),
    none other, finite values, unit L2 norm when promised."""
    expected = set(expected_ids)
    problems = []
    duplicated = len(ids) - len(set(ids))
    if duplicated:
        problems.append(f"{duplicated} repeated pool ids")
    extra = sorted(set(ids) - expected)
    if extra:
        problems.append(f"{len(extra)} rows for ids outside the batch (e.g. {extra[0]})")
    missing = sorted(expected - set(ids))
    if len(missing) > allowed_missing:
        problems.append(f"{len(missing)} pool ids without a row, {allowed_missing} allowed (e.g. {missing[0]})")
    if matrix.size:
        values = matrix.astype(np.float32)
        bad = np.flatnonzero(~np.isfinite(values).all(axis=1))
        if bad.size:
            problems.append(f"{bad.size} rows with NaN or inf (e.g. {ids[bad[0]]})")
        if unit_norm:
            norms = np.linalg.norm(np.nan_to_num(values), axis=1)
            off = np.flatnonzero(np.abs(norms - 1) > NORM_TOLERANCE)
            if off.size:
                problems.append(f"{off.size} rows not unit norm (e.g. {ids[off[0]]}: {norms[off[0]]:.4f})")
    return problems


def stored_vector_problems(
    lance: LanceStore,
    dataset: str,
    where: dict[str, object],
    expected_ids: Iterable[str],
    unit_norm: bool,
    allowed_missing: int = 0,
) -> tuple[list[str], int]:
    """:func:`vector_problems` of the rows of Lance ``dataset`` matching ``where``, and their count."""
    table = lance.read(dataset, ["pool_id", "vector"], equal=where)
    matrix = vector_matrix(table.column("vector")) if table.num_rows else np.empty((0, 0))
    ids = table.column("pool_id").to_pylist()
    return vector_problems(expected_ids, ids, matrix, unit_norm, allowed_missing), len(ids)


def score_problems(expected_ids: Iterable[str], rows: pl.DataFrame, columns: list[str]) -> list[str]:
    """A per-example score table: one row per expected id, and finite ``columns`` wherever no
    reason explains an undefined value."""
    problems = vector_problems(expected_ids, rows["pool_id"].to_list(), np.empty((0, 0)), unit_norm=False)
    defined = rows.filter(pl.col("reason") == "")
    for column in columns:
        bad = defined.filter(~pl.col(column).cast(pl.Float64).is_finite() | pl.col(column).is_null())
        if bad.height:
            problems.append(f"{column}: {bad.height} rows not finite without a reason (e.g. {bad['pool_id'][0]})")
    return problems


def _batch_ids(db, batch: str, pool_only: bool) -> list[str]:
    rows = db.split_rows("pool", ("pool_id",), batch=batch) if pool_only else db.batch_rows(batch, ("pool_id",))
    return rows["pool_id"].to_list()


def pool_ids_by_version(db, versions: list[str]) -> dict[str, set[str]]:
    """Pool ids of each recorded pool version (its batches' pool rows)."""
    found = {}
    for version in versions:
        ids = db.pool_ids_of_version(version)
        if ids is not None:
            found[version] = ids
    return found


def build_selection_check(method: str) -> dg.AssetChecksDefinition:
    """The blocking check of the selection asset of selection key ``method``."""

    @dg.asset_check(
        asset=selection_asset_name(method),
        name="selection_is_valid",
        blocking=True,
        description="Exactly min(k, eligible) ids (less a reported under-fill), unique, ranked 0..n-1, "
        "every id in the pool version the selection claims, per-batch representations covering that whole pool.",
    )
    def _check(store: StateStore) -> dg.AssetCheckResult:
        with store.session() as db:
            db.ensure_schema()
            rows = db.method_selections(
                method,
                ("budget", "selection_seed", "k", "eligible", "rank", "pool_id", "pool_version", "diagnostics"),
            )
            known = pool_ids_by_version(db, rows["pool_version"].unique().to_list())
        sizes = (
            rows.group_by("budget", "selection_seed")
            .agg(pl.len().alias("rows"), pl.first("k"), pl.first("eligible"))
            .sort("budget", "selection_seed")
        )
        problems = selection_problems(rows, known) if rows.height else [f"no stored rows for method {method}"]
        return _result(problems, budgets=dg.MetadataValue.md(markdown_table(sizes.columns, sizes.rows())))

    return _check


def _partitioned_check(**kwargs) -> Callable[[Callable], dg.AssetChecksDefinition]:
    """``dg.asset_check`` per pool batch, blocking (partitioned checks are a Dagster preview
    feature; its warning is silenced here, where we chose it)."""

    def decorate(fn: Callable) -> dg.AssetChecksDefinition:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", dg.PreviewWarning)
            return dg.asset_check(partitions_def=pool_batches, blocking=True, **kwargs)(fn)

    return decorate


@_partitioned_check(
    asset=SENTENCE_EMBEDDINGS,
    name="one_unit_vector_per_example",
    description="One finite, unit-norm embedding per example of the batch, none for other ids.",
)
def sentence_embeddings_check(
    context: dg.AssetCheckExecutionContext,
    store: StateStore,
    lance: LanceStore,
    sentence_embedding_settings: SentenceEmbeddingSettings,
) -> dg.AssetCheckResult:
    batch, dataset = context.partition_key, sentence_embedding_settings.dataset
    with store.session() as db:
        expected = _batch_ids(db, batch, pool_only=False)
    if not lance.exists(dataset):
        return _result([] if not expected else ["no Lance dataset"], rows=0)
    problems, rows = stored_vector_problems(lance, dataset, {"batch": batch}, expected, unit_norm=True)
    return _result(problems, rows=rows)


@_partitioned_check(
    asset=MODEL_EMBEDDINGS,
    name="one_vector_per_example",
    description="One finite embedding per pool example of the batch in the dataset of the current model "
    "and pooling, none for other ids.",
)
def model_embeddings_check(
    context: dg.AssetCheckExecutionContext,
    store: StateStore,
    lance: LanceStore,
    selection_model: SelectionModel,
    model_embedding_settings: ModelEmbeddingSettings,
) -> dg.AssetCheckResult:
    batch = context.partition_key
    with store.session() as db:
        expected = _batch_ids(db, batch, pool_only=True)
    dataset = model_embedding_settings.dataset(selection_model.identity()["model_hash"])
    if not lance.exists(dataset):
        return _result([] if not expected else [f"no Lance dataset {dataset}"], rows=0)
    problems, rows = stored_vector_problems(lance, dataset, {"batch": batch}, expected, unit_norm=False)
    return _result(problems, rows=rows, dataset=dataset)


@_partitioned_check(
    asset=POOL_GRAD_FEATURES,
    name="one_unit_feature_per_example",
    description="Per checkpoint of the latest warmup: one finite, unit-norm gradient feature per pool "
    "example of the batch, except those the asset reported excluded.",
)
def pool_grad_features_check(
    context: dg.AssetCheckExecutionContext, store: StateStore, lance: LanceStore, grad_settings: GradientSettings
) -> dg.AssetCheckResult:
    batch = context.partition_key
    with store.session() as db:
        manifest = db.get_batch(batch)
        if manifest.split != "pool":
            return _result([], skipped=f"{manifest.split} batch: no pool features")
        expected = _batch_ids(db, batch, pool_only=True)
        warmup, _, warmup_manifest = latest_warmup_manifest(db)
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(POOL_GRAD_FEATURES), asset_partitions=[batch]), limit=1
    ).records
    excluded = int(records[0].asset_materialization.metadata["excluded"].value) if records else 0
    dataset = grad_features_dataset("pool", grad_settings.suffix())
    problems, rows = [], []
    for point in warmup_manifest["checkpoints"]:
        where = {"batch": batch, "warmup": warmup, "checkpoint": point["epoch"]}
        found, count = stored_vector_problems(lance, dataset, where, expected, True, allowed_missing=excluded)
        problems += [f"checkpoint {point['epoch']}: {p}" for p in found]
        rows.append((point["epoch"], count))
    return _result(problems, warmup=warmup, rows=dg.MetadataValue.md(markdown_table(["checkpoint", "rows"], rows)))


def build_score_check(table: str, columns: list[str]) -> dg.AssetChecksDefinition:
    """One row per pool example of the batch in the score table of asset ``table``, and in its
    other scoring template's table (``names.score_tables``) where that one holds the batch."""

    @_partitioned_check(
        asset=table,
        name="one_score_row_per_example",
        description=f"One row per pool example of the batch; {', '.join(columns)} finite unless a reason is given.",
    )
    def _check(context: dg.AssetCheckExecutionContext, store: StateStore) -> dg.AssetCheckResult:
        batch = context.partition_key
        with store.session() as db:
            expected = _batch_ids(db, batch, pool_only=True)
            found = {
                name: db.rows_matching(name, ["pool_id", "reason", *columns], {"batch": batch})
                for name in score_tables(table)
                if db.table_exists(name)
            }
        checked = {name: rows for name, rows in found.items() if rows.height} or found
        if not checked:
            return _result([] if not expected else [f"no table {table}"], rows=0)
        problems = [f"{name}: {p}" for name, rows in checked.items() for p in score_problems(expected, rows, columns)]
        return _result(problems, rows=sum(rows.height for rows in checked.values()))

    return _check


def content_overlap(db, left_ids: list[str], right_ids: list[str]) -> list[tuple[str, str, str]]:
    """(left id, right id, "conversation" | "prompt") for every pair sharing content."""

    def hashed(ids: list[str]) -> dict[str, tuple[str, str]]:
        return {p: content_hashes(m) for p, m in db.messages_of(ids).items()}

    left, right = hashed(left_ids), hashed(right_ids)
    by_full = {h[0]: p for p, h in right.items()}
    by_prompt = {h[1]: p for p, h in right.items()}
    found = []
    for pid, (full, prompt) in left.items():
        if full in by_full:
            found.append((pid, by_full[full], "conversation"))
        elif prompt in by_prompt:
            found.append((pid, by_prompt[prompt], "prompt"))
    return found


def disjointness_result(db, eval_ids: list[str], others: Mapping[str, list[str]]) -> dg.AssetCheckResult:
    """Check result for an evaluation: ``eval_ids`` share no conversation and no prompt with any
    of ``others`` (e.g. {"query set": ids, "training selection": ids}). For the fine-tune and
    evaluation assets' blocking checks."""
    problems, counts = [], []
    for name, ids in others.items():
        overlap = content_overlap(db, eval_ids, ids)
        counts.append((name, len(ids), len(overlap)))
        problems += [f"eval {e} shares its {kind} with {name} example {o}" for e, o, kind in overlap]
    return _result(
        problems,
        eval_examples=len(eval_ids),
        overlap=dg.MetadataValue.md(markdown_table(["set", "size", "overlapping"], counts)),
    )


def build_eval_check(method: str) -> dg.AssetChecksDefinition:
    """The eval set of ``eval_<method>`` shares no conversation or prompt with the query sets or
    with what the evaluated models were trained on (the method's selections at every budget, or
    the pool)."""

    @dg.asset_check(
        asset=eval_asset_name(method),
        name="eval_set_is_disjoint",
        blocking=True,
        description="Eval examples share no content hash (conversation or prompt) with the query sets or the "
        "training data of the evaluated models.",
    )
    def _check(store: StateStore) -> dg.AssetCheckResult:
        with store.session() as db:

            def split_ids(split: str) -> list[str]:
                return db.split_rows(split, ("pool_id",))["pool_id"].to_list()

            others = {"query sets": split_ids("query")}
            if method == FULL_POOL:
                others["training pool"] = split_ids("pool")
            elif method != BASE:
                others["training selection"] = db.selected_ids(method)
            # the examples the models were scored on (eval_<method> drops overlapping ones before scoring)
            scored = db.evaluated_ids(method)
            return disjointness_result(db, scored, others)

    return _check


#: The check of each per-batch vector asset, by asset name. A per-batch score asset gets its
#: check from the registry (``checked_columns``); every other per-batch asset needs one here
#: (the code location refuses to build without it).
VECTOR_CHECKS: dict[str, dg.AssetChecksDefinition] = {
    SENTENCE_EMBEDDINGS: sentence_embeddings_check,
    MODEL_EMBEDDINGS: model_embeddings_check,
    POOL_GRAD_FEATURES: pool_grad_features_check,
}


def batch_check(asset: str) -> dg.AssetChecksDefinition:
    """The check of per-batch representation asset ``asset``."""
    scored = checked_score_columns()
    if asset in scored:
        return build_score_check(asset, scored[asset])
    if asset in VECTOR_CHECKS:
        return VECTOR_CHECKS[asset]
    raise RuntimeError(
        f"checks: per-batch representation asset {asset} has no check: declare its checked_columns in the "
        "registry, or add its check to checks.VECTOR_CHECKS"
    )


def build_checks() -> list[dg.AssetChecksDefinition]:
    """Every asset check of the code location: one per selection and eval asset, and one per
    representation asset the registry declares per batch."""
    return [
        *map(build_selection_check, selection_keys()),
        *map(batch_check, per_batch_assets()),
        *map(build_eval_check, evaluated_keys()),
    ]
