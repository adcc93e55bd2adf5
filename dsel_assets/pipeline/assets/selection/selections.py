"""Selection assets: one asset per registered method (a factory over the registry); each
materialization computes that method's selection at every configured budget."""

import dataclasses
import hashlib
import itertools
import json
import time
import typing
from collections.abc import Iterable
from datetime import datetime, timezone

import dagster as dg
import numpy as np
import polars as pl
import pydantic
from pydantic import Field

from dsel_assets.core.select import Budget, build_config, methods
from dsel_assets.core.select.diagnostics import set_measures
from dsel_assets.core.select.registry import MethodSpec, has_seed, seed_in_use
from dsel_assets.core.select.targeted import LESS, Influence, representation_needs
from dsel_assets.core.select.targeted import representations as method_representations
from dsel_assets.pipeline.assets._factory import model_asset
from dsel_assets.pipeline.assets.ingest.pool import pool
from dsel_assets.pipeline.assets.representations import registry
from dsel_assets.pipeline.assets.representations.embeddings import SENTENCE_EMBEDDINGS
from dsel_assets.pipeline.assets.representations.gradients import latest_warmup_manifest
from dsel_assets.pipeline.assets.representations.similarity import load_vectors
from dsel_assets.pipeline.metadata import markdown_table
from dsel_assets.pipeline.progress import Meter
from dsel_assets.store import queries, schema, tables
from resources.gradient_settings import GradientSettings
from resources.lance_store import LanceStore
from resources.models import ModelEmbeddingSettings, SelectionModel
from resources.store import StateStore
from resources.tracking import DatasetRef, MlflowTracker

SELECTIONS = "selections"
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
):
    """(representation aligned to ``pool_ids``, its DatasetRef for lineage), by its declared loader;
    IFDs under ``template``."""
    context = registry.LoadContext(
        lance, store, pool_ids, grad_settings, selection_model, log, embedding_settings, template
    )
    return registry.load(need, context)


def selection_asset_name(method: str) -> str:
    return f"selection_{method}"


def selection_key(method: str, representation: str | None = None) -> str:
    """What a selection is stored, checked and reported under (the ``method`` column): the
    method's name on its own representation (LESS gradients for targeted methods), else
    ``<method>_<representation>``, e.g. ``round_robin_rds``."""
    return method if representation in (None, LESS) else f"{method}_{representation}"


def parse_entry(entry: str) -> tuple[str, str | None]:
    """``METHOD`` or ``METHOD@REPRESENTATION`` (a targeted method on one of its representations,
    e.g. ``round_robin@rds``) -> (method, representation or None); a wrong name or representation
    is a ValueError naming the entry and the valid choices."""
    method, at, representation = entry.partition("@")
    known = methods()
    if method not in known:
        raise ValueError(f"methods: {entry!r}: {method!r} is not a method; one of {sorted(known)}")
    if not at:
        return method, None
    choices = method_representations(known[method].config_cls)
    if len(choices) == 1:
        with_choice = sorted(n for n, s in known.items() if len(method_representations(s.config_cls)) > 1)
        raise ValueError(
            f"methods: {entry!r}: {method} has no representations to choose from (only {', '.join(with_choice)} "
            f"do); write {method}"
        )
    if representation not in choices:
        raise ValueError(
            f"methods: {entry!r}: {representation!r} is not a representation of {method}; one of {list(choices)}"
        )
    return method, representation


def entry_key(entry: str) -> str:
    """The selection key of an entry: its selection, fine-tune and eval assets are
    ``selection_<key>``, ``finetuned_<key>``, ``eval_<key>`` (``round_robin@rds`` -> ``round_robin_rds``,
    ``round_robin@less`` and ``round_robin`` -> ``round_robin``)."""
    return selection_key(*parse_entry(entry))


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
        pool,
        *dict.fromkeys(dg.AssetKey(registry.representation(need).asset) for need in needs.values()),
    ]
    on = f" On {REPRESENTATION_LABELS[representation]}." if representation in REPRESENTATION_LABELS else ""
    # trains the model between rounds, or computes gradients of the examples it draws
    runs_model = bool({"trainer", "less_scorer"} & set(spec.needs))

    config_class = selection_config_class(spec, key, pinned)

    def _selection(
        context: dg.AssetExecutionContext,
        config: config_class,
        store: StateStore,
        lance: LanceStore,
        tracker: MlflowTracker,
        grad_settings: GradientSettings,
        selection_model: SelectionModel,
        model_embedding_settings: ModelEmbeddingSettings,
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
        with store.get_connection() as conn:
            tables.ensure_schema(conn)
            version, _ = tables.pool_version(conn)
            frame = queries.split_rows(conn, "pool", ("pool_id", "task", "batch"))
            # the warmup its gradient inputs come from (the latest), for lineage and the warmup seed check
            warmup = current_warmup(conn) if reads_warmup else None
        pool_ids = frame["pool_id"].to_list()
        if not pool_ids:
            raise RuntimeError("pool: no examples yet; ingest data first (dsel ingest PATH)")
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
            )
            inputs.append(ref)
        # what defines this selection's inputs: the model, the feature settings and each input's version
        settings = json.dumps(
            {
                **selection_model.identity(),
                "grad_dim": grad_settings.dim,
                "projection": grad_settings.suffix(),
                "pooling": model_embedding_settings.pooling,
                "inputs": {ref.name: f"{ref.uri.rstrip('/').rsplit('/', 1)[-1]}@{ref.digest}" for ref in inputs},
            },
            sort_keys=True,
        )
        checked = {a: n for a, n in needs.items() if registry.representation(n).coverage_checked}
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
                    set_measures(pool_ids, selection.ids, lambda: load_vectors(lance, SENTENCE_EMBEDDINGS, pool_ids)[0])
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
                    with store.get_connection() as conn:
                        family = list(config.warmup_replicates) or None
                        tables.write_selection_replicate(conn, key, budget.label, selection_seed, rows, family)
                else:
                    pending.setdefault(budget.label, []).append(rows)
                if len(pending.get(budget.label, ())) == len(replicates):  # every seed of this budget: at once
                    with store.get_connection() as conn:
                        tables.write_selection(conn, key, budget.label, pl.concat(pending.pop(budget.label)))
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


def current_warmup(conn) -> dict:
    """{"key", "seed"} of the latest warmup (what gradient features, influence and LESS scores are
    read from)."""
    key, _, manifest = latest_warmup_manifest(conn)
    return {"key": key, "seed": int(manifest["config"]["seed"])}


def hash_config(params: dict) -> str:
    """Short stable hash of a parameter dict (data versions)."""
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:12]


def available(spec: MethodSpec, representation: str | None = None) -> bool:
    """A method gets an asset (per representation) once every representation it needs has one
    (the others are registered, tested on synthetic inputs, and wired as their representations land)."""
    return set(representation_needs(spec.needs, representation or LESS).values()) <= set(registry.REPRESENTATION_SPECS)


def _method_representations(only_available: bool = True) -> list[tuple[MethodSpec, str]]:
    """(method, representation) of every selection asset (every pair, with ``only_available=False``)."""
    return [
        (spec, representation)
        for spec in methods().values()
        for representation in method_representations(spec.config_cls)
        if not only_available or available(spec, representation)
    ]


def selection_keys() -> list[str]:
    """The key of every selection asset (``selection_<key>``; its fine-tune and eval assets are
    ``finetuned_<key>`` and ``eval_<key>``): each method on each representation it has an asset for."""
    return [selection_key(spec.name, representation) for spec, representation in _method_representations()]


selection_assets = [build_selection_asset(spec, representation) for spec, representation in _method_representations()]


# --- where a selection's randomness comes from ---

#: The sources of a selection's randomness, in the order ``selection_randomness`` joins them:
#: ``seed``: the method's own ``seed`` parameter - selection seeds sample it (``dsel compare
#: --selection-seeds``, the selection assets' ``seeds``); ``warmup``: it ranks features derived from
#: the LESS warmup LoRA checkpoint (gradient features, influence, LESS scores, the on-demand LESS
#: scorer), one checkpoint whose seed (sample, shuffle, LoRA init) the selection seeds do not reach;
#: ``upstream``: an input that another seeded asset fixes (Cherry's pre-experience model, the
#: learning percentage's training, k-means label clusters, Nuggets' k-means anchors, Data
#: Whisperer's draws), not sampled either. A method with none of them is ``none``: a
#: deterministic function of fixed inputs (fixed in-code seeds, e.g. the round trainer's LoRA init
#: or the clustered neighbour search's k-means, are part of the function, not sampled randomness).
RANDOMNESS_SOURCES = ("seed", "warmup", "upstream")
NO_RANDOMNESS = "none"
#: Comparison rows that are no selection: the untouched model and the whole pool.
_NO_SELECTION = ("base", "full_pool")


def randomness_sources(spec: MethodSpec, representation: str | None = None, config=None) -> dict[str, list[str]]:
    """Source (``RANDOMNESS_SOURCES``) -> what carries it (``seed``; the seeding asset's name) for
    ``spec`` on ``representation`` (default: the config's, else LESS). Without ``config``: what the
    method can draw on (``seed`` when it has one); with a config: under those parameters (e.g.
    facility location's ``seed`` only with ``optimizer=stochastic``)."""
    if representation is None:
        representation = getattr(config, "representation", LESS)
    found: dict[str, list[str]] = {}
    if has_seed(spec) if config is None else seed_in_use(config):
        found["seed"] = ["seed"]
    for need in representation_needs(spec.needs, representation).values():
        declared = registry.REPRESENTATION_SPECS.get(need)
        if declared is not None and declared.seeded_by:
            source = "warmup" if declared.seeded_by == registry.WARMUP else "upstream"
            assets = found.setdefault(source, [])
            if declared.seeded_by not in assets:
                assets.append(declared.seeded_by)
    return {source: found[source] for source in RANDOMNESS_SOURCES if source in found}


def selection_randomness(spec: MethodSpec, representation: str | None = None, config=None) -> str:
    """Where ``spec``'s selection on ``representation`` gets its randomness: ``seed``, ``warmup``,
    ``upstream`` or ``none`` (see ``RANDOMNESS_SOURCES``), several joined by ``+`` in that order
    (``seed+warmup``: selection seeds sample part of it, e.g. cluster_ucb's draws but not its
    gradients). ``config``: under those parameters rather than whatever the method allows."""
    return "+".join(randomness_sources(spec, representation, config)) or NO_RANDOMNESS


def randomness_by_representation(spec: MethodSpec, defaults: bool = False) -> dict[str, str]:
    """Selection key -> ``selection_randomness`` of ``spec`` on each of its representations: what
    it can draw on, or (``defaults``) under its default parameters."""
    config = build_config(spec.name) if defaults else None
    return {
        selection_key(spec.name, r): selection_randomness(spec, r, config)
        for r in method_representations(spec.config_cls)
    }


def randomness_summary(spec: MethodSpec) -> str:
    """``dsel methods`` and the method pages: the kind on the method's own representation, the
    other representations' where they differ (``warmup; rds, embed: none``), and the kind under the
    default parameters where those leave a source unused (``seed (default parameters: none)``)."""
    kinds = randomness_by_representation(spec)
    representation_of = dict(zip(kinds, method_representations(spec.config_cls), strict=True))
    defaults = randomness_by_representation(spec, defaults=True)
    own = next(iter(kinds))

    def at(key: str) -> str:
        kind = kinds[key]
        return kind if defaults[key] == kind else f"{kind} (default parameters: {defaults[key]})"

    others: dict[str, list[str]] = {}
    for key in kinds:
        if key != own and at(key) != at(own):
            others.setdefault(at(key), []).append(representation_of[key])
    return "; ".join([at(own), *(f"{', '.join(reps)}: {kind}" for kind, reps in others.items())])


def key_method(key: str) -> tuple[MethodSpec, str]:
    """(method, representation) of a selection key (the ``method`` column), e.g. ``round_robin_rds``
    -> (round_robin, rds); an unknown key is a KeyError naming the known ones."""
    known = {selection_key(spec.name, r): (spec, r) for spec, r in _method_representations(only_available=False)}
    if key not in known:
        raise KeyError(f"selection key: {key!r} is not one of {sorted(known)}")
    return known[key]


def warmup_sampled(kind: str) -> str:
    """The randomness kind once selection replicates sample the warmup too (one warmup seed each,
    ``dsel compare --selection-seeds``): its ``warmup`` is then part of what the replicates sample,
    like a ``seed`` (``warmup`` and ``seed+warmup`` -> ``seed``; ``upstream`` stays unsampled)."""
    sources = {"seed" if source == "warmup" else source for source in kind.split("+")} - {NO_RANDOMNESS}
    return "+".join(s for s in RANDOMNESS_SOURCES if s in sources) or NO_RANDOMNESS


def samples_warmup(replicates: pl.DataFrame) -> bool:
    """Whether one method's stored replicates (``queries.selection_replicates`` rows) sample the
    warmup: some budget has two or more, and in every budget that does each replicate read a
    different warmup (the ``warmup`` its diagnostics record)."""
    replicated = False
    for _, group in replicates.group_by("budget"):
        if group.height < 2:
            continue  # one selection: the statistics treat its warmup as not sampled anyway
        warmups = [(json.loads(d or "{}").get("warmup") or {}).get("key") for d in group["diagnostics"].to_list()]
        if None in warmups or len(set(warmups)) != len(warmups):
            return False
        replicated = True
    return replicated


def randomness_by_key(keys: Iterable[str], conn=None) -> dict[str, str]:
    """Selection key (the ``method`` column of the selections, finetuned_models and eval tables) ->
    ``selection_randomness`` of that method on that representation. With ``conn`` (the state
    store), under the parameters its latest stored selection ran with, and with the warmup counted
    as sampled (``warmup_sampled``: ``less`` -> ``seed``) where the stored replicates each read
    another warmup (``samples_warmup``; dsel compare's warmup seeds); without, under the method's
    defaults. ``base`` and ``full_pool`` (no selection) are ``none``; an unknown key is a KeyError."""
    keys = list(dict.fromkeys(keys))
    stored, replicates = {}, None
    if conn is not None and schema.table_exists(conn, "selections"):
        stored = queries.selection_configs(conn, [k for k in keys if k not in _NO_SELECTION])
        replicates = queries.selection_replicates(conn, [k for k in keys if k not in _NO_SELECTION])
    out = {}
    for key in keys:
        if key in _NO_SELECTION:
            out[key] = NO_RANDOMNESS
            continue
        spec, representation = key_method(key)
        try:
            config = build_config(spec.name, stored.get(key, {}))
        except (TypeError, ValueError):  # stored by an older version of the method's parameters
            config = build_config(spec.name)
        out[key] = selection_randomness(spec, representation, config)
        sampled = replicates is not None and "warmup" in out[key].split("+")
        if sampled and samples_warmup(replicates.filter(pl.col("method") == key)):
            out[key] = warmup_sampled(out[key])
    return out
