"""Selection assets: one asset per registered method (a factory over the registry); each
materialization computes that method's selection at every configured budget."""

import dataclasses
import hashlib
import itertools
import json
import time
import typing
from datetime import datetime, timezone

import dagster as dg
import numpy as np
import polars as pl
import pydantic
from pydantic import Field

from dsel_assets.core.select import Budget, build_config
from dsel_assets.core.select.base import method_target
from dsel_assets.core.select.diagnostics import set_measures
from dsel_assets.core.select.knn_tsds import CheckpointFeatures
from dsel_assets.core.select.registry import MethodSpec, target_problem
from dsel_assets.core.select.targeted import LESS, Influence, representation_needs
from dsel_assets.core.select.targeted import representations as method_representations
from dsel_assets.pipeline import registry
from dsel_assets.pipeline.assets._factory import model_asset
from dsel_assets.pipeline.catalog import randomness_sources, selection_pairs
from dsel_assets.pipeline.metadata import markdown_table
from dsel_assets.pipeline.names import POOL, SELECTIONS, selection_asset_name, selection_key
from dsel_assets.pipeline.progress import Meter
from dsel_assets.pipeline.stored import latest_warmup_manifest, load_vectors
from resources.gradient_settings import GradientSettings
from resources.lance_store import LanceStore
from resources.models import ModelEmbeddingSettings, SelectionModel, SentenceEmbeddingSettings
from resources.store import StateStore
from resources.tracking import DatasetRef, MlflowTracker

DEFAULT_BUDGETS = ["5%", "10%"]


def coverage(value, batches: list[str]) -> dict:
    """Pool rows for which a loaded representation has any finite value, and the pool batches
    (one entry per pool row in ``batches``) where it has none: a batch never computed. Single
    rows a representation excluded with a reason (e.g. truncation left no response token) are
    accounted for by that representation's own check."""
    if isinstance(value, Influence):
        value = value.scores
    if isinstance(value, dict):
        value = np.column_stack(list(value.values())) if value else np.empty((len(batches), 0))
    if isinstance(value, CheckpointFeatures):  # a row counts when every checkpoint has it
        mask = np.logical_and.reduce([np.isfinite(f).any(axis=1) for f in value.features])
    else:
        mask = np.isfinite(value).any(axis=1) if value.size else np.zeros(len(batches), dtype=bool)
    covered = {batch for batch, has in zip(batches, mask.tolist(), strict=True) if has}
    return {"rows": int(mask.sum()), "batches_without_rows": sorted(set(batches) - covered)}


class SelectionConfig(dg.Config):
    """What every selection asset takes; each asset's subclass adds its method's ``params``."""

    budgets: list[str] = Field(
        default=DEFAULT_BUDGETS, description="Budgets: counts (500), fractions (0.05) or percentages (5%)"
    )
    seeds: list[int] = Field(
        default=[],
        description="Selection seeds: one replicate per seed (methods with a 'seed' parameter, e.g. random); "
        "empty = the 'seed' parameter's value",
    )
    warmup_seed: int | None = Field(
        default=None,
        description="Methods on the LESS warmup (dsel compare --selection-seeds): the seed of the latest warmup "
        "(checked), stored as the replicate with this selection_seed; only that replicate's rows of each budget are "
        "replaced, the other warmup seeds' stay. At most one 'seeds' value (the method's own seed, if it has one)",
    )
    warmup_replicates: list[int] = Field(
        default=[],
        description="With warmup_seed: the selection seeds of every replicate of the comparison; stored replicates "
        "outside it are dropped (empty: none are)",
    )


def load_representation(
    need: str,
    lance: LanceStore,
    store: StateStore,
    pool_ids: list[str],
    grad_settings: GradientSettings,
    selection_model: SelectionModel | None = None,
    log=print,
    embedding_settings: ModelEmbeddingSettings | None = None,
    template: str = "chat",
    sentence_settings: SentenceEmbeddingSettings | None = None,
):
    """(representation aligned to ``pool_ids``, its DatasetRef for lineage), by its declared loader;
    IFDs under ``template``."""
    context = registry.LoadContext(
        lance,
        store,
        pool_ids,
        grad_settings,
        selection_model,
        log,
        embedding_settings,
        template,
        sentence_settings or SentenceEmbeddingSettings(),
    )
    return registry.load(need, context)


#: How the asset descriptions name each representation of a targeted method.
REPRESENTATION_LABELS = {
    "rds": "RDS+ (cosine of position-weighted model embeddings)",
    "embed": "EMBED (cosine of all-MiniLM-L6-v2 sentence embeddings)",
}


def selection_config_class(spec: MethodSpec, key: str, pinned: dict[str, str]) -> type[SelectionConfig]:
    """The config of one selection asset: budgets, seeds, and the method's parameters as typed,
    documented fields generated from its config dataclass (type, default, help), so the
    launchpad shows and checks them; ``pinned`` values become the defaults."""
    hints = typing.get_type_hints(spec.config_cls)
    fields = {
        f.name: (hints[f.name], Field(default=pinned.get(f.name, f.default), description=f.metadata.get("help", "")))
        for f in dataclasses.fields(spec.config_cls)
    }
    title = "".join(part.capitalize() for part in key.split("_"))
    params = pydantic.create_model(f"{title}Params", __base__=dg.Config, **fields)
    described = Field(
        default_factory=params, description=f"Parameters of {spec.name} (see docs/methods/{spec.name}.md)"
    )
    return pydantic.create_model(f"{title}SelectionConfig", __base__=SelectionConfig, params=(params, described))


def typed_params(method: str, params: dict[str, object]) -> dict[str, object]:
    """``params`` (e.g. ``--param`` strings) converted to the method's field types, for run
    config; a wrong name or value fails here, naming the field."""
    config = build_config(method, params)
    return {name: getattr(config, name) for name in params}


def build_selection_asset(spec: MethodSpec, representation: str = LESS) -> dg.AssetsDefinition:
    """The asset of one method on one representation: reads the pool and what the method needs
    under that representation (the similarity matrix and vectors standing in for gradients)."""
    key = selection_key(spec.name, representation)
    needs = representation_needs(spec.needs, representation)  # selector argument -> representation
    pinned = {"representation": representation} if len(method_representations(spec.config_cls)) > 1 else {}
    deps = [
        POOL,
        *dict.fromkeys(dg.AssetKey(registry.representation(need).asset) for need in needs.values()),
    ]
    on = f" On {REPRESENTATION_LABELS[representation]}." if representation in REPRESENTATION_LABELS else ""
    # trains the model between rounds, or computes gradients of the examples it draws
    runs_model = bool({"trainer", "less_scorer"} & set(spec.needs))

    config_class = selection_config_class(spec, key, pinned)
    target = method_target(spec.config_cls)

    def _selection(
        context: dg.AssetExecutionContext,
        config: config_class,
        store: StateStore,
        lance: LanceStore,
        tracker: MlflowTracker,
        grad_settings: GradientSettings,
        selection_model: SelectionModel,
        model_embedding_settings: ModelEmbeddingSettings,
        sentence_embedding_settings: SentenceEmbeddingSettings,
    ) -> dg.MaterializeResult:
        method_config = build_config(spec.name, config.params.model_dump())
        asked = vars(method_config).get("representation", representation)
        if asked != representation:
            raise ValueError(
                f"representation: {selection_asset_name(key)} selects on {representation}; "
                f"{asked} is {selection_asset_name(selection_key(spec.name, asked))}"
            )
        budgets = [Budget.parse(b) for b in config.budgets]
        replicates = seed_replicates(method_config, list(config.seeds))  # before any work
        reads_warmup = "warmup" in randomness_sources(spec, representation, method_config)
        if config.warmup_seed is not None:
            replicates = warmup_replicate(key, reads_warmup, replicates, config)
        with store.session() as db:
            db.ensure_schema()
            version, _ = db.pool_version()
            frame = db.split_rows("pool", ("pool_id", "task", "batch"))
            stored_tasks = db.split_task_counts()
            # the warmup its gradient inputs come from (the latest), for lineage and the warmup seed check
            warmup = current_warmup(db) if reads_warmup else None
        pool_ids = frame["pool_id"].to_list()
        if not pool_ids:
            raise RuntimeError("pool: no examples yet; ingest data first (dsel ingest PATH)")
        if target is not None:  # a missing or unknown target task: before any representation is read
            labels = {task for (split, task) in stored_tasks if split == target.split}
            problem = target_problem(spec.name, method_config.task, labels)
            if problem:
                raise ValueError(f"{key}.task: {problem}")
        if config.warmup_seed is not None and warmup["seed"] != config.warmup_seed:
            raise RuntimeError(
                f"warmup_seed: the latest warmup ({warmup['key']}) has seed {warmup['seed']}, "
                f"not {config.warmup_seed}; materialize warmup_checkpoint with seed {config.warmup_seed} "
                "(and the gradient assets) first"
            )
        representations, inputs = {}, [DatasetRef("pool", store.location, version)]
        for argument, need in needs.items():
            representations[argument], ref = load_representation(
                need,
                lance,
                store,
                pool_ids,
                grad_settings,
                selection_model,
                context.log.info,
                model_embedding_settings,
                template=getattr(method_config, "template", "chat"),
                sentence_settings=sentence_embedding_settings,
            )
            inputs.append(ref)
        # what defines this selection's inputs: the model, the feature settings and each input's version
        settings = json.dumps(
            {
                **selection_model.identity(),
                "grad_dim": grad_settings.dim,
                "projection": grad_settings.suffix(),
                "pooling": model_embedding_settings.pooling,
                "sentence_text": sentence_embedding_settings.text,
                "inputs": {ref.name: f"{ref.uri.rstrip('/').rsplit('/', 1)[-1]}@{ref.digest}" for ref in inputs},
            },
            sort_keys=True,
        )
        checked = {a: n for a, n in needs.items() if registry.representation(n).coverage_checked}
        sentences = sentence_embedding_settings.dataset  # the set measures' embeddings
        covered = {n: coverage(representations[a], frame["batch"].to_list()) for a, n in checked.items()}
        for need, found in covered.items():
            if found["rows"] < len(pool_ids):
                context.log.warning(f"{need} covers {found['rows']} of {len(pool_ids)} pool rows")
        params = {
            "method": key,
            "budgets": ",".join(b.label for b in budgets),
            "pool_version": version,
            **vars(method_config),
        }
        pending: dict[str, list[pl.DataFrame]] = {}
        if config.seeds:
            params["seeds"] = ",".join(map(str, config.seeds))
        if warmup is not None:
            params |= {"warmup": warmup["key"], "warmup_seed": warmup["seed"]}
        summary = []
        meter = Meter(context.asset_key.to_user_string(), len(budgets) * len(replicates), "selections")
        with tracker.run(context, params=params, inputs=inputs) as run:
            for budget, (selection_seed, replicate_config) in itertools.product(budgets, replicates):
                k = budget.count(len(pool_ids))
                started = time.perf_counter()
                selection = spec.select(pool_ids, k, replicate_config, **representations)
                seconds = time.perf_counter() - started
                if not selection.ids:  # a filter that leaves nothing: say so, store nothing
                    eligible = selection.diagnostics.get("eligible")
                    raise RuntimeError(
                        f"{key} @ {budget.label}: selected 0 of {len(pool_ids)} pool rows"
                        + (f": none is eligible under {vars(replicate_config)}" if eligible == 0 else "")
                        + f" ({spec.description}); nothing stored, try other parameters or another model"
                    )
                selection.diagnostics.update(  # FL coverage and NovelSum on sentence embeddings, or why not
                    set_measures(pool_ids, selection.ids, lambda: load_vectors(lance, sentences, pool_ids)[0])
                )
                if covered:
                    selection.diagnostics["coverage"] = covered
                if warmup is not None:
                    selection.diagnostics["warmup"] = warmup
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
                        "settings": settings,
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
                if config.warmup_seed is not None:  # one warmup seed's replicate: the others' rows stay
                    with store.session() as db:
                        family = list(config.warmup_replicates) or None
                        db.write_selection_replicate(key, budget.label, selection_seed, rows, family)
                else:
                    pending.setdefault(budget.label, []).append(rows)
                if len(pending.get(budget.label, ())) == len(replicates):  # every seed of this budget: at once
                    with store.session() as db:
                        db.write_selection(key, budget.label, pl.concat(pending.pop(budget.label)))
                label = budget.label if len(replicates) == 1 else f"{budget.label}.seed{selection_seed}"
                run.log_metrics({f"{label}.k": k, f"{label}.selected": len(selection.ids), f"{label}.seconds": seconds})
                context.log.info(f"{key} @ {label}: {len(selection.ids)} of {len(pool_ids)} in {seconds:.2f}s")
                meter.update(len(summary) + 1)
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

    declare = model_asset if runs_model else dg.asset
    return declare(
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
    )(_selection)


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


def warmup_replicate(key: str, reads_warmup: bool, replicates: list[tuple[int, object]], config) -> list:
    """The one replicate of a ``warmup_seed`` selection, stored under that seed; refused, naming
    the fix, for a method that reads nothing of the warmup or with several method seeds."""
    if not reads_warmup:
        raise ValueError(f"warmup_seed: {selection_asset_name(key)} reads nothing from the warmup; leave it unset")
    if len(replicates) != 1:
        raise ValueError(f"warmup_seed: one selection per warmup seed; give at most one seed, got {config.seeds}")
    if config.warmup_replicates and config.warmup_seed not in config.warmup_replicates:
        raise ValueError(f"warmup_replicates: {list(config.warmup_replicates)} lacks warmup_seed {config.warmup_seed}")
    return [(config.warmup_seed, replicates[0][1])]


def current_warmup(db) -> dict:
    """{"key", "seed"} of the latest warmup (what gradient features, influence and LESS scores are
    read from)."""
    key, _, manifest = latest_warmup_manifest(db)
    return {"key": key, "seed": int(manifest["config"]["seed"])}


def hash_config(params: dict) -> str:
    """Short stable hash of a parameter dict (data versions)."""
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:12]


selection_assets = [build_selection_asset(spec, representation) for spec, representation in selection_pairs()]
