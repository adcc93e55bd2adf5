"""The representation registry: one declaration per representation a selection method can
need (the names in its ``needs``), saying which asset materializes it, how a selection loads it
and how the pipeline treats it. The selection assets' deps and availability, the loading, the
coverage check, the ``dsel score`` kinds and the per-batch jobs are all derived from it, so a
name is spelt in one place and a misspelt need fails a test instead of dropping a method."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any

import numpy as np

from dsel_assets.core.influence import checkpoint_weights
from dsel_assets.core.memory import require_memory
from dsel_assets.core.select.knn_tsds import CheckpointFeatures
from dsel_assets.core.select.mig import Labels
from dsel_assets.core.select.score_rankers import UNCERTAINTY
from dsel_assets.core.select.targeted import Influence
from dsel_assets.pipeline.gradient_scorer import load_less_scorer
from dsel_assets.pipeline.names import (
    EMBED_SIMILARITY,
    INFLUENCE,
    LOSS_SCORES,
    MODEL_EMBEDDINGS,
    POOL,
    POOL_GRAD_FEATURES,
    QUERY_GRAD_FEATURES,
    RDS_SIMILARITY,
    SENTENCE_EMBEDDINGS,
    WARMUP,
    columns_table,
    grad_features_dataset,
    influence_dataset,
    rds_dataset,
    rds_queries_dataset,
    score_table,
)
from dsel_assets.pipeline.round_trainer import LoraEpochTrainer, LoraRoundTrainer
from dsel_assets.pipeline.stored import (
    fill_rows,
    latest_warmup_manifest,
    load_scalars,
    load_vectors,
    query_rows,
    vector_matrix,
)
from resources.gradient_settings import GradientSettings
from resources.lance_store import LanceStore
from resources.models import ModelEmbeddingSettings, SelectionModel, SentenceEmbeddingSettings
from resources.store import StateStore
from resources.tracking import DatasetRef


@dataclass(frozen=True)
class LoadContext:
    """What a loader reads from: the stores, the pool ids to align rows to, and the settings
    that pick a dataset (gradient dimension, selection model, pooling, scoring template, the
    sentence embeddings' text)."""

    lance: LanceStore
    store: StateStore
    pool_ids: list[str]
    grad_settings: GradientSettings
    selection_model: SelectionModel | None = None
    log: Callable[[str], None] = print
    embedding_settings: ModelEmbeddingSettings | None = None
    template: str = "chat"
    sentence_settings: SentenceEmbeddingSettings = field(default_factory=SentenceEmbeddingSettings)


#: (representation aligned to the pool ids, its DatasetRef for lineage)
Loader = Callable[[LoadContext], tuple[Any, DatasetRef]]


class Value(Enum):
    """What a representation's loader returns, its rows aligned to the pool. Declared with each
    representation, checked on every load, and the key by which the tests synthesize one."""

    SCALAR = "one float per example, NaN where undefined"
    VECTORS = "float32 [examples, dim], NaN rows for examples without one"
    CHECKPOINT_VECTORS = "CheckpointFeatures: VECTORS at every checkpoint, with its weight"
    SIMILARITY = "Influence: float32 [examples, queries], the task of each query column"
    TASK_SCORES = "task -> SCALAR"
    NAMED_SCORES = "score name -> SCALAR"
    QUERY_VECTORS = "(float32 [queries, dim], the task of each query)"
    LABELS = "Labels: label ids per example, an embedding per label"
    TASK_OF_EXAMPLE = "the task name of each example"
    SCORER = "(drawn ids, task) -> their scores, computed on demand"
    TRAINER = "a RoundTrainer, trained between rounds"
    EPOCH_TRAINER = "an EpochTrainer: one training run whose data the selector picks between epochs"

    def problem(self, loaded: Any, rows: int) -> str | None:
        """Why ``loaded`` is not a value of this kind for a pool of ``rows`` examples, or None."""
        if self is Value.QUERY_VECTORS:
            ok = isinstance(loaded, tuple) and len(loaded) == 2 and len(loaded[0]) == len(loaded[1])
            return None if ok else f"not (query vectors, task per query): {type(loaded).__name__}"
        if self is Value.SCORER:
            return None if callable(loaded) else f"not callable: {type(loaded).__name__}"
        if self is Value.TRAINER or self is Value.EPOCH_TRAINER:
            needed = ("train_epochs",) if self is Value.EPOCH_TRAINER else ("train_and_score", "train_and_embed")
            missing = [m for m in needed if not hasattr(loaded, m)]
            return f"a trainer without {missing}" if missing else None
        expected = {
            Value.SCALAR: np.ndarray,
            Value.VECTORS: np.ndarray,
            Value.CHECKPOINT_VECTORS: CheckpointFeatures,
            Value.SIMILARITY: Influence,
            Value.TASK_SCORES: dict,
            Value.NAMED_SCORES: dict,
            Value.LABELS: Labels,
            Value.TASK_OF_EXAMPLE: np.ndarray,
        }[self]
        if not isinstance(loaded, expected):
            return f"a {type(loaded).__name__}, not a {expected.__name__}"
        dims = {Value.SCALAR: 1, Value.VECTORS: 2, Value.TASK_OF_EXAMPLE: 1}.get(self)
        if dims is not None and loaded.ndim != dims:
            return f"{loaded.ndim} dimensions, not {dims}"
        columns = list(loaded.values()) if isinstance(loaded, dict) else [loaded]
        found = {len(column) for column in columns}
        return None if found <= {rows} else f"{sorted(found)} rows for a pool of {rows}"


@dataclass(frozen=True)
class RepresentationSpec:
    """A declared representation.

    ``per_batch``: its asset is computed per pool batch (in ``batch_job``, out of ``curation_job``);
    ``cli_kind``: what ``dsel score`` calls its asset, with the settings besides the model that
    command pins (``pinned``) and the asset whose config its ``--param`` sets (``configured_by``);
    ``coverage_checked``: missing rows load as NaN, so a selection records how many pool rows it
    covers and its check fails when that is not the whole pool; ``templated``: read from the table
    of the method's scoring ``template`` parameter; ``seeded_by``: the asset whose ``seed`` config
    fixes what this representation holds (``warmup_checkpoint`` for the LESS gradients and what is
    built on them), when one does: a selection on it varies with that seed, which the selection's
    own ``seed`` does not reach (``catalog.selection_randomness``; a test checks it against the
    asset graph); ``checked_columns``: score columns of a per-batch score table that its
    asset's check requires finite unless the row gives a reason (the check is generated);
    ``value``: what its loader returns (checked on load; tests synthesize it from this)."""

    name: str
    asset: str
    load: Loader
    description: str
    value: Value
    per_batch: bool = False
    cli_kind: str | None = None
    pinned: tuple[str, ...] = ()
    configured_by: str | None = None
    coverage_checked: bool = False
    templated: bool = False
    seeded_by: str | None = None
    checked_columns: tuple[str, ...] = ()


#: Every declared representation, by name (the vocabulary of the method registry's ``needs``).
REPRESENTATION_SPECS: dict[str, RepresentationSpec] = {}


def declare(name: str, asset: str, load: Loader, description: str, value: Value, **flags: Any) -> RepresentationSpec:
    """Declare a representation; a repeated name or CLI kind, CLI settings without a CLI kind, or
    an asset declared both per batch and pool-wide is refused."""
    spec = RepresentationSpec(name, asset, load, description, value, **flags)
    if name in REPRESENTATION_SPECS:
        raise ValueError(f"representation: {name!r} is already declared")
    if (spec.pinned or spec.configured_by) and not spec.cli_kind:
        raise ValueError(f"{name}: pinned / configured_by only apply to a cli_kind")
    for other in REPRESENTATION_SPECS.values():
        if spec.cli_kind and other.cli_kind == spec.cli_kind:
            raise ValueError(f"{name}: cli_kind {spec.cli_kind!r} is already {other.name}'s")
        if other.asset == asset and other.per_batch != spec.per_batch:
            raise ValueError(f"{name}: asset {asset} is per_batch={other.per_batch} for {other.name}")
    if spec.checked_columns and not spec.per_batch:
        raise ValueError(f"{name}: checked_columns only apply to a per_batch representation")
    REPRESENTATION_SPECS[name] = spec
    return spec


def representation(name: str) -> RepresentationSpec:
    """The declaration of ``name``; an unknown name is a KeyError naming the known ones."""
    if name not in REPRESENTATION_SPECS:
        raise KeyError(f"representation: {name!r} is not one of {sorted(REPRESENTATION_SPECS)}")
    return REPRESENTATION_SPECS[name]


def score_kinds() -> dict[str, RepresentationSpec]:
    """``dsel score KIND``: the representation of each kind, by kind. A kind materializes that
    representation's asset, which can serve others too (``loss`` and ``uncertainty`` both compute
    ``loss_scores``; see :func:`served_by`)."""
    return {spec.cli_kind: spec for spec in REPRESENTATION_SPECS.values() if spec.cli_kind}


def load(name: str, ctx: LoadContext) -> tuple[Any, DatasetRef]:
    """Representation ``name`` aligned to ``ctx.pool_ids``, and its DatasetRef; only a templated
    one is read under ``ctx.template``, every other under ``chat``."""
    spec = representation(name)
    loaded, ref = spec.load(ctx if spec.templated else replace(ctx, template="chat"))
    problem = spec.value.problem(loaded, len(ctx.pool_ids))
    if problem:
        raise RuntimeError(f"internal error: representation {name} loaded {problem} ({spec.value.value} declared)")
    return loaded, ref


def served_by(asset: str) -> list[str]:
    """The representations that ``asset`` materializes."""
    return [name for name, spec in REPRESENTATION_SPECS.items() if spec.asset == asset]


def per_batch_assets() -> tuple[str, ...]:
    """The representation assets computed per pool batch, each once."""
    return tuple(dict.fromkeys(spec.asset for spec in REPRESENTATION_SPECS.values() if spec.per_batch))


def checked_score_columns() -> dict[str, list[str]]:
    """Per-batch score asset -> the columns its generated check holds finite (those of every
    representation it serves, in declaration order)."""
    found: dict[str, list[str]] = {}
    for spec in REPRESENTATION_SPECS.values():
        if spec.checked_columns:
            columns = found.setdefault(spec.asset, [])
            columns += [c for c in spec.checked_columns if c not in columns]
    return found


# --- loaders: each aligns rows to ``ctx.pool_ids`` (NaN where a pool id has none, unless noted) ---


def lance_vectors(dataset: Callable[[LoadContext], str]) -> Loader:
    """Vectors of the Lance dataset that ``dataset`` names (every pool id must have a row)."""

    def read(ctx: LoadContext) -> tuple[np.ndarray, DatasetRef]:
        name = dataset(ctx)
        vectors, version = load_vectors(ctx.lance, name, ctx.pool_ids)
        return vectors, DatasetRef(name, ctx.lance.uri(name), str(version))

    return read


def model_embeddings_dataset(ctx: LoadContext) -> str:
    """The dataset of the configured pooling and the selection model's weights."""
    return (ctx.embedding_settings or ModelEmbeddingSettings()).dataset(ctx.selection_model.identity()["model_hash"])


def less_scores_by_task(ctx: LoadContext) -> tuple[dict[str, np.ndarray], DatasetRef]:
    """task -> LESS score per pool id (NaN where the example has no gradient feature)."""
    with ctx.store.session() as db:
        if not db.table_exists("less_scores"):
            raise RuntimeError("less_scores: none yet; materialize influence first")
        rows = db.less_scores()
        warmup = db.latest_warmup()
    row_of = {pid: i for i, pid in enumerate(ctx.pool_ids)}
    scores: dict[str, np.ndarray] = {}
    for (task,), group in rows.group_by(["task"], maintain_order=True):
        column = np.full(len(ctx.pool_ids), np.nan)
        for pid, score in zip(group["pool_id"], group["score"], strict=True):
            if pid in row_of:
                column[row_of[pid]] = score
        scores[task] = column
    return scores, DatasetRef("less_scores", ctx.store.location, warmup[0] if warmup else "")


def similarity_dataset(asset: str, ctx: LoadContext) -> str:
    """The Lance dataset that pool x query matrix asset ``asset`` writes for these settings."""
    if asset == INFLUENCE:
        return influence_dataset(ctx.grad_settings.suffix())
    if asset == RDS_SIMILARITY:
        return rds_dataset(ctx.selection_model.identity()["model_hash"])
    return ctx.sentence_settings.similarity_dataset


def similarity_matrix(asset: str, *, task_scores: bool = False) -> Loader:
    """The pool x query matrix of ``asset`` (NaN rows: no feature or vector) with the task and
    subtask of each query column (an Influence), or its LESS task scores (R1.5)."""

    def read(ctx: LoadContext) -> tuple[Any, DatasetRef]:
        name = similarity_dataset(asset, ctx)
        version = ctx.lance.version(name)
        if version is None:
            raise RuntimeError(f"{name}: no similarity matrix yet; materialize {asset} first")
        table = ctx.lance.read(name, ["pool_id", "scores"], version=version)
        with ctx.store.session() as db:
            columns = db.similarity_columns(columns_table(asset))
        matrix = vector_matrix(table.column("scores"))
        scores = np.full((len(ctx.pool_ids), matrix.shape[1]), np.nan, dtype=np.float32)
        row_of = {pid: i for i, pid in enumerate(ctx.pool_ids)}
        for source_row, pid in enumerate(table.column("pool_id").to_pylist()):
            if pid in row_of:
                scores[row_of[pid]] = matrix[source_row]
        influence = Influence(scores, tuple(columns["task"].to_list()), tuple(columns["subtask"].to_list()))
        ref = DatasetRef(name, ctx.lance.uri(name), str(version))
        return (influence.task_scores() if task_scores else influence), ref

    return read


def scalar(name: str, table: str, column: str, defined_only: bool) -> Loader:
    """One value per example: ``column`` of the score table ``table`` (under the context's
    scoring template)."""

    def read(ctx: LoadContext) -> tuple[np.ndarray, DatasetRef]:
        source = score_table(table, ctx.template)
        values = load_scalars(ctx.store, source, [column], ctx.pool_ids, defined_only)[column]
        return values, DatasetRef(name, ctx.store.location, source)

    return read


UNCERTAINTY_COLUMNS = UNCERTAINTY  # what the uncertainty ranker reads
#: The losses of a loss-score row and their ratio (both IFDs are read from such a table).
LOSS_COLUMNS = ("loss_conditioned", "loss_unconditioned", "ifd_loss_ratio")


def uncertainty_scores(name: str, table: str) -> Loader:
    """Column -> value per example of every uncertainty score in score table ``table``."""

    def read(ctx: LoadContext) -> tuple[dict[str, np.ndarray], DatasetRef]:
        values = load_scalars(ctx.store, table, list(UNCERTAINTY_COLUMNS), ctx.pool_ids)
        return values, DatasetRef(name, ctx.store.location, table)

    return read


def fits_in_memory(rows: int, dim: int) -> None:
    """Refuse, saying what it would take, a pool gradient matrix that memory cannot hold: the
    float32 matrix and the float16 copy it is read through (docs/SCALING.md: G2IS and KNN-KDE
    passed 8 GB at 100k x 8192)."""
    require_memory(
        rows * dim * 6,
        f"pool_gradients: {rows:,} x {dim} features",
        "pin a smaller gradient dimension on a new home (DSEL_GRAD_DIM / --grad-dim) or use a method on the "
        "influence matrix (less, bids, round_robin)",
    )


def gradient_features(kind: str) -> Loader:
    """Gradient features of the latest warmup's last checkpoint: pool rows (``kind="pool"``; NaN
    rows where an example has none), or (query matrix, query tasks) (``kind="query"``)."""

    def read(ctx: LoadContext) -> tuple[Any, DatasetRef]:
        if kind == "pool":
            fits_in_memory(len(ctx.pool_ids), ctx.grad_settings.dim)
        with ctx.store.session() as db:
            warmup, _, manifest = latest_warmup_manifest(db)
        last = max(c["epoch"] for c in manifest["checkpoints"])
        name = grad_features_dataset(kind, ctx.grad_settings.suffix())
        columns = ["pool_id", "vector"] + (["task"] if kind == "query" else [])
        table = ctx.lance.read(name, columns, equal={"warmup": warmup, "checkpoint": last})
        ref = DatasetRef(name, ctx.lance.uri(name), str(ctx.lance.version(name)))
        if kind == "query":
            return (vector_matrix(table.column("vector")).astype(np.float32), table.column("task").to_pylist()), ref
        return aligned_to_pool(table, {p: i for i, p in enumerate(ctx.pool_ids)}), ref

    return read


def aligned_to_pool(table, position: dict[str, int]) -> np.ndarray:
    """The ``vector`` column of ``table`` as float32 rows in pool order (``position``: pool id ->
    row); NaN rows for pool ids the table lacks, table rows of other ids dropped."""
    rows = np.array([position.get(p, -1) for p in table.column("pool_id").to_pylist()], dtype=np.int64)
    aligned = np.full((len(position), table.schema.field("vector").type.list_size), np.nan, dtype=np.float32)
    return fill_rows(table.column("vector"), aligned, rows)


def checkpoint_gradient_features(ctx: LoadContext) -> tuple[CheckpointFeatures, DatasetRef]:
    """The pool's gradient features at every checkpoint of the latest warmup, rows aligned to
    the pool ids (NaN where an example has none), each checkpoint weighted by its mean learning
    rate (KNN-KDE's density, as TSDS measures it)."""
    with ctx.store.session() as db:
        warmup, _, manifest = latest_warmup_manifest(db)
    weights = checkpoint_weights({c["epoch"]: c["lr_mean"] for c in manifest["checkpoints"]})
    fits_in_memory(len(ctx.pool_ids), ctx.grad_settings.dim * len(weights))
    name = grad_features_dataset("pool", ctx.grad_settings.suffix())
    position = {p: i for i, p in enumerate(ctx.pool_ids)}
    features = [
        aligned_to_pool(
            ctx.lance.read(name, ["pool_id", "vector"], equal={"warmup": warmup, "checkpoint": c}), position
        )
        for c in sorted(weights)
    ]
    ref = DatasetRef(name, ctx.lance.uri(name), str(ctx.lance.version(name)))
    return CheckpointFeatures(tuple(features), tuple(weights[c] for c in sorted(weights))), ref


def label_sets(ctx: LoadContext) -> tuple[Labels, DatasetRef]:
    """Each example's label ids and the embedding of every label (MIG)."""
    with ctx.store.session() as db:
        pairs, vocab = db.label_sets()
    members: dict[str, list[int]] = {}
    for pid, label in zip(pairs["pool_id"], pairs["label"], strict=True):
        members.setdefault(pid, []).append(int(label))
    embeddings = np.asarray(vocab["embedding"].to_list(), dtype=np.float64)
    sets = Labels([members.get(p, []) for p in ctx.pool_ids], embeddings)
    return sets, DatasetRef("labels", ctx.store.location, str(len(embeddings)))


def pool_task_labels(ctx: LoadContext) -> tuple[np.ndarray, DatasetRef]:
    """The task label of each pool id (the pool's ``task`` column, as ingested), as strings; a
    pool id the pool no longer holds is an error (the pool changed while the selection ran)."""
    with ctx.store.session() as db:
        rows = db.split_rows("pool", ("pool_id", "task"))
        version, _ = db.pool_version()
    task_of = dict(zip(rows["pool_id"].to_list(), rows["task"].to_list(), strict=True))
    missing = [p for p in ctx.pool_ids if p not in task_of]
    if missing:
        raise RuntimeError(f"pool_tasks: {len(missing)} pool ids are no longer in the pool (e.g. {missing[0]}); rerun")
    labels = np.array([str(task_of[p]) for p in ctx.pool_ids], dtype=object)
    return labels, DatasetRef("pool_tasks", ctx.store.location, version)


def round_trainer(ctx: LoadContext) -> tuple[LoraRoundTrainer, DatasetRef]:
    """A LoRA trainer on the selection model over the pool's conversations (iterative methods)."""
    with ctx.store.session() as db:
        rows = db.split_rows("pool")
    by_id = dict(zip(rows["pool_id"].to_list(), rows["messages"].to_list(), strict=True))
    selection_model = ctx.selection_model
    model, tokenizer = selection_model.load()
    conversations = [by_id[p] for p in ctx.pool_ids]
    trainer = LoraRoundTrainer(
        model, tokenizer, conversations, log=ctx.log, max_tokens=selection_model.max_batch_tokens
    )
    return trainer, DatasetRef("selection_model", selection_model.model, selection_model.identity()["model_hash"])


def epoch_trainer(ctx: LoadContext) -> tuple[LoraEpochTrainer, DatasetRef]:
    """A LoRA run on the selection model over the pool's conversations whose data changes between
    epochs, scoring with the query rows' gradients under the model as trained (ClusterUCB)."""
    with ctx.store.session() as db:
        rows = db.split_rows("pool")
        queries = query_rows(db)
    by_id = dict(zip(rows["pool_id"].to_list(), rows["messages"].to_list(), strict=True))
    selection_model = ctx.selection_model
    model, tokenizer = selection_model.load()
    trainer = LoraEpochTrainer(
        model,
        tokenizer,
        [by_id[p] for p in ctx.pool_ids],
        queries["messages"].to_list(),
        queries["task"].to_list(),
        [s or None for s in queries["subtask"].to_list()],
        ctx.grad_settings.feature_config(),
        log=ctx.log,
        max_tokens=selection_model.max_batch_tokens,
    )
    return trainer, DatasetRef("selection_model", selection_model.model, selection_model.identity()["model_hash"])


def on_demand_less_scorer(ctx: LoadContext) -> tuple[Any, DatasetRef]:
    """A scorer that computes the LESS scores of the examples a method draws (cluster_ucb)."""
    return load_less_scorer(ctx.lance, ctx.store, ctx.pool_ids, ctx.grad_settings, ctx.selection_model)


def query_vectors(dataset: Callable[[LoadContext], str]) -> Loader:
    """(query vectors of the Lance dataset ``dataset`` names, in column order; task per row)."""

    def read(ctx: LoadContext) -> tuple[tuple[np.ndarray, list], DatasetRef]:
        name = dataset(ctx)
        with ctx.store.session() as db:
            rows = query_rows(db)
        vectors, version = load_vectors(ctx.lance, name, rows["pool_id"].to_list())
        return (vectors, rows["task"].to_list()), DatasetRef(name, ctx.lance.uri(name), str(version))

    return read


def rds_queries_name(ctx: LoadContext) -> str:
    """The query vectors that rds_similarity wrote for the selection model's weights."""
    return rds_queries_dataset(ctx.selection_model.identity()["model_hash"])


# --- the declarations ---


def declare_scalar(
    name: str, table: str, column: str, description: str, defined_only: bool = False, **flags: Any
) -> RepresentationSpec:
    """A representation of one value per example: ``column`` of the score table that asset
    ``table`` writes (NaN where its row records a reason, with ``defined_only``)."""
    return declare(name, table, scalar(name, table, column, defined_only), description, Value.SCALAR, **flags)


IFD = "ifd_loss_ratio"  # declared with defined_only: NaN where a reason is recorded

declare(
    SENTENCE_EMBEDDINGS,
    SENTENCE_EMBEDDINGS,
    lance_vectors(lambda ctx: ctx.sentence_settings.dataset),
    "all-MiniLM-L6-v2 sentence embedding per example (of its conversation, or its instruction only)",
    Value.VECTORS,
    per_batch=True,
    cli_kind="sentence_embeddings",
    pinned=("sentence_text",),
)
declare(
    MODEL_EMBEDDINGS,
    MODEL_EMBEDDINGS,
    lance_vectors(model_embeddings_dataset),
    "the selection model's hidden states per example, pooled as configured",
    Value.VECTORS,
    per_batch=True,
    cli_kind="model_embeddings",
    pinned=("pooling", "embed_max_length", "embed_bos"),
)
declare(
    "pool_gradients",
    POOL_GRAD_FEATURES,
    gradient_features("pool"),
    "LoRA gradient features of the pool (latest warmup, last checkpoint)",
    Value.VECTORS,
    per_batch=True,
    coverage_checked=True,
    seeded_by=WARMUP,
)
declare(
    "pool_checkpoint_gradients",
    POOL_GRAD_FEATURES,
    checkpoint_gradient_features,
    "LoRA gradient features of the pool at every checkpoint of the latest warmup, learning-rate weighted",
    Value.CHECKPOINT_VECTORS,
    per_batch=True,
    coverage_checked=True,
    seeded_by=WARMUP,
)
declare(
    "query_gradients",
    QUERY_GRAD_FEATURES,
    gradient_features("query"),
    "LoRA gradient features of the queries, with the task of each",
    Value.QUERY_VECTORS,
    seeded_by=WARMUP,
)
declare(
    "less_scorer",
    QUERY_GRAD_FEATURES,
    on_demand_less_scorer,
    "LESS scores computed on demand for the examples a method draws (gradient_scorer)",
    Value.SCORER,
    seeded_by=WARMUP,
)
declare(
    INFLUENCE,
    INFLUENCE,
    similarity_matrix(INFLUENCE),
    "pool x query LESS influence matrix",
    Value.SIMILARITY,
    coverage_checked=True,
    seeded_by=WARMUP,
)
declare(
    "less_scores",
    INFLUENCE,
    less_scores_by_task,
    "LESS score per example and task (the influence matrix aggregated per task)",
    Value.TASK_SCORES,
    coverage_checked=True,
    seeded_by=WARMUP,
)
declare(
    RDS_SIMILARITY,
    RDS_SIMILARITY,
    similarity_matrix(RDS_SIMILARITY),
    "pool x query cosine of RDS+ (position-weighted) model embeddings",
    Value.SIMILARITY,
    coverage_checked=True,
)
declare(
    "rds_task_scores",
    RDS_SIMILARITY,
    similarity_matrix(RDS_SIMILARITY, task_scores=True),
    "LESS-style task scores of the RDS+ similarity",
    Value.TASK_SCORES,
    coverage_checked=True,
)
declare(
    "rds_queries",
    RDS_SIMILARITY,
    query_vectors(rds_queries_name),
    "RDS+ model embeddings of the queries that rds_similarity compared",
    Value.QUERY_VECTORS,
)
declare(
    EMBED_SIMILARITY,
    EMBED_SIMILARITY,
    similarity_matrix(EMBED_SIMILARITY),
    "pool x query cosine of sentence embeddings",
    Value.SIMILARITY,
    coverage_checked=True,
)
declare(
    "embed_task_scores",
    EMBED_SIMILARITY,
    similarity_matrix(EMBED_SIMILARITY, task_scores=True),
    "LESS-style task scores of the sentence-embedding similarity",
    Value.TASK_SCORES,
    coverage_checked=True,
)
declare(
    "embed_queries",
    EMBED_SIMILARITY,
    query_vectors(lambda ctx: ctx.sentence_settings.dataset),
    "rows of sentence_embeddings for the queries that embed_similarity compared",
    Value.QUERY_VECTORS,
)
declare_scalar(
    "ifd",
    LOSS_SCORES,
    IFD,
    "Cherry's IFD, L(A|Q) / L(A), with the selection model",
    defined_only=True,
    per_batch=True,
    cli_kind="loss",
    templated=True,
    checked_columns=LOSS_COLUMNS,
)
declare(
    "uncertainty",
    LOSS_SCORES,
    uncertainty_scores("uncertainty", LOSS_SCORES),
    "entropy, least confidence and margins, teacher-forced on the reference responses",
    Value.NAMED_SCORES,
    per_batch=True,
    cli_kind="uncertainty",
    checked_columns=UNCERTAINTY_COLUMNS,
)
declare(
    "uncertainty_greedy",
    "greedy_scores",
    uncertainty_scores("uncertainty_greedy", "greedy_scores"),
    "the same uncertainty scores on the selection model's own greedy generations",
    Value.NAMED_SCORES,
    per_batch=True,
    cli_kind="uncertainty_greedy",
    checked_columns=UNCERTAINTY_COLUMNS,
)
declare_scalar(
    "superfiltering_ifd",
    "proxy_loss_scores",
    "ifd_ppl_ratio",
    "Superfiltering's IFD, ppl(A|Q) / ppl(A), with the proxy model",
    per_batch=True,
    cli_kind="proxy_loss",
    pinned=("proxy_model",),
    templated=True,
    checked_columns=LOSS_COLUMNS,
)
declare_scalar(
    "pre_experienced_ifd",
    "cherry_pre_experienced_scores",
    IFD,
    "Cherry's IFD after its pre-experience LoRA fine-tune",
    defined_only=True,
    cli_kind="pre_experienced_ifd",
    configured_by="cherry_pre_experienced_model",
    seeded_by="cherry_pre_experienced_model",
)
declare_scalar(
    "quality",
    "quality",
    "quality",
    "quality: the data's own score on its scale, else exp(-L(A|Q)) in (0, 1]",
    cli_kind="quality",
)
declare(
    "labels",
    "labels",
    label_sets,
    "label sets per example and an embedding per label (MIG): provided tags, else clusters",
    Value.LABELS,
    cli_kind="labels",
    seeded_by="labels",  # k-means, when the data has no tags
)
declare_scalar(
    "learning_percentage",
    "learning_percentage",
    "lp1",
    "Small2Large learning percentage, the proxy model LoRA-trained on the whole pool",
    defined_only=True,
    cli_kind="learning_percentage",
    pinned=("proxy_model",),
    seeded_by="learning_percentage",
)
declare_scalar(
    "golden_score",
    "golden_score",
    "golden_score",
    "Nuggets golden score: share of anchor tasks the example helps as a one-shot demonstration",
    cli_kind="golden",
    seeded_by="golden_score",  # k-means anchors
)
declare_scalar(
    "whisperer_score",
    "whisperer_score",
    "whisperer_score",
    "Data Whisperer: attention-credited score of the example as a few-shot demonstration",
    cli_kind="whisperer",
    seeded_by="whisperer_score",
)
declare_scalar(
    "response_length",
    "response_lengths",
    "response_tokens",
    "tokens of the example's assistant turns under the selection model's tokenizer",
    per_batch=True,
    cli_kind="length",
    checked_columns=("response_tokens",),
)
declare(
    "pool_tasks",
    POOL,
    pool_task_labels,
    "task label of each pool example, as ingested (task-matched baselines)",
    Value.TASK_OF_EXAMPLE,
)
declare(
    "trainer",
    POOL,
    round_trainer,
    "a LoRA trainer on the selection model, trained between rounds (iterative methods)",
    Value.TRAINER,
)
declare(
    "epoch_trainer",
    POOL,
    epoch_trainer,
    "one LoRA run on the selection model whose data the selector picks between epochs, with LESS scores of the "
    "model as trained (ClusterUCB's reference loop)",
    Value.EPOCH_TRAINER,
)
