"""The catalog of selections: which (method, representation) pairs have a selection asset, the
key each is stored under, how a ``METHOD@REPRESENTATION`` entry names one, and where each
selection's randomness comes from (derived from the method and representation registries)."""

import json
from collections.abc import Iterable

import polars as pl

from dsel_assets.core.select import build_config, methods
from dsel_assets.core.select.registry import MethodSpec, has_seed, seed_in_use
from dsel_assets.core.select.targeted import LESS, representation_needs
from dsel_assets.core.select.targeted import representations as method_representations
from dsel_assets.pipeline import registry
from dsel_assets.pipeline.names import BASE, FULL_POOL, WARMUP, selection_key


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


def available(spec: MethodSpec, representation: str | None = None) -> bool:
    """A method gets an asset (per representation) once every representation it needs has one
    (the others are registered, tested on synthetic inputs, and wired as their representations land)."""
    return set(representation_needs(spec.needs, representation or LESS).values()) <= set(registry.REPRESENTATION_SPECS)


def selection_pairs(only_available: bool = True) -> list[tuple[MethodSpec, str]]:
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
    return [selection_key(spec.name, representation) for spec, representation in selection_pairs()]


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
_NO_SELECTION = (BASE, FULL_POOL)


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
            source = "warmup" if declared.seeded_by == WARMUP else "upstream"
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
    known = {selection_key(spec.name, r): (spec, r) for spec, r in selection_pairs(only_available=False)}
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


def randomness_by_key(keys: Iterable[str], db=None) -> dict[str, str]:
    """Selection key (the ``method`` column of the selections, finetuned_models and eval tables) ->
    ``selection_randomness`` of that method on that representation. With ``db`` (the state
    store), under the parameters its latest stored selection ran with, and with the warmup counted
    as sampled (``warmup_sampled``: ``less`` -> ``seed``) where the stored replicates each read
    another warmup (``samples_warmup``; dsel compare's warmup seeds); without, under the method's
    defaults. ``base`` and ``full_pool`` (no selection) are ``none``; an unknown key is a KeyError."""
    keys = list(dict.fromkeys(keys))
    stored, replicates = {}, None
    if db is not None and db.table_exists("selections"):
        stored = db.selection_configs([k for k in keys if k not in _NO_SELECTION])
        replicates = db.selection_replicates([k for k in keys if k not in _NO_SELECTION])
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


def trained_keys() -> list[str]:
    """The key of every fine-tune asset (``finetuned_<key>``): each selection key, then the full pool."""
    return [*selection_keys(), FULL_POOL]


def evaluated_keys() -> list[str]:
    """The key of every eval asset (``eval_<key>``): the untouched model, then every fine-tune's."""
    return [BASE, *trained_keys()]
