"""What a command must materialize, decided by Dagster's own staleness (the resolver behind the
UI's "stale" badge): an asset is stale when its code version (which includes the settings it
computes with, see :mod:`dsel_assets.pipeline.settings_versions`) or the data version of a parent changed
since it last ran. The CLI, the sensors and ``dsel status`` all read it from here."""

from __future__ import annotations

import dagster as dg
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleCauseCategory, StaleStatus
from dagster._core.loader import LoadingContext

from dsel_assets.pipeline.names import MODELS

#: Causes that an asset's own rerun removes; DEPENDENCIES (a stale parent) clears once the parent reruns.
OWN_CAUSES = {StaleCauseCategory.CODE, StaleCauseCategory.DATA}


class _Loading(LoadingContext):
    """The batching/caching scope Dagster's stale-status resolver needs."""

    def __init__(self, instance: dg.DagsterInstance):
        self._instance, self._loaders = instance, {}

    @property
    def instance(self) -> dg.DagsterInstance:
        return self._instance

    @property
    def loaders(self) -> dict:
        return self._loaders


def stale_resolver(instance: dg.DagsterInstance, asset_graph) -> CachingStaleStatusResolver:
    """A fresh resolver (it caches what it read: make a new one after a run)."""
    return CachingStaleStatusResolver(instance, asset_graph, _Loading(instance))


def is_missing(resolver: CachingStaleStatusResolver, key: dg.AssetKey, partition: str | None = None) -> bool:
    return resolver.get_status(key, partition) == StaleStatus.MISSING


def own_causes(resolver: CachingStaleStatusResolver, key: dg.AssetKey, partition: str | None = None) -> set:
    """The categories of the asset's direct stale causes that its own rerun removes: CODE (its
    code or settings changed) and DATA (a parent has a new data version since it ran)."""
    return {cause.category for cause in resolver.get_stale_causes(key, partition)} & OWN_CAUSES


def stale_reasons(resolver: CachingStaleStatusResolver, key: dg.AssetKey, partition: str | None = None) -> list[str]:
    """Why the asset is stale, in words, from its root causes (a new batch, a settings or code
    change upstream); empty when it is fresh or missing."""
    reasons = []
    for cause in resolver.get_stale_root_causes(key, partition):
        where = cause.key.asset_key.to_user_string()
        if cause.key.partition_key:
            where += f"[{cause.key.partition_key}]"
        text = f"{where} {cause.reason}"
        if text not in reasons:
            reasons.append(text)
    return reasons


def must_run(resolver: CachingStaleStatusResolver, node, partition: str | None, parent_runs: bool) -> bool:
    """Whether a command that needs asset ``node`` (for ``partition``) must run it: when missing,
    stale by its own code / settings or a parent's new data version, or when a parent runs now.
    Models (the LESS warmup) only when missing or their own code or settings changed: a grown pool
    is not a reason to retrain a warmup, which would invalidate every batch's gradient features."""
    if is_missing(resolver, node.key, partition):
        return True
    causes = own_causes(resolver, node.key, partition)
    if node.group_name == MODELS:
        return StaleCauseCategory.CODE in causes
    return parent_runs or bool(causes)


def describe(resolver: CachingStaleStatusResolver, graph, node, batches: list[str]) -> str:
    """What the next command that needs the asset does with it, for ``dsel status``: ``fresh``
    (reused), ``stale: <why>`` (rerun; a per-batch asset: in how many batches), ``missing in N of
    M batches``, or ``kept`` for a model that is only stale because the pool grew."""
    if not node.is_partitioned:
        gaps = [
            f"{parent.to_user_string()} missing in {n} of {len(batches)} batches"
            for parent in sorted(node.parent_keys, key=lambda k: k.to_user_string())
            if graph.get(parent).is_partitioned
            for n in [sum(is_missing(resolver, parent, b) for b in batches)]
            if n
        ]
        reasons = stale_reasons(resolver, node.key) if is_stale(resolver, node.key) else []
        if reasons and not must_run(resolver, node, None, parent_runs=False):
            return f"kept ({reasons[0]}; a model reruns only when its code or settings change)"
        return f"stale: {'; '.join([*reasons, *gaps][:2])}" if reasons or gaps else "fresh"
    stale = [b for b in batches if is_stale(resolver, node.key, b)]
    missing = [b for b in batches if is_missing(resolver, node.key, b)]
    parts = []
    if stale:
        why = "; ".join(stale_reasons(resolver, node.key, stale[0])[:2])
        parts.append(f"stale in {len(stale)} of {len(batches)} batches: {why}")
    if missing:
        parts.append(f"missing in {len(missing)} of {len(batches)} batches")
    return ", ".join(parts) or "fresh"


def is_stale(resolver: CachingStaleStatusResolver, key: dg.AssetKey, partition: str | None = None) -> bool:
    return resolver.get_status(key, partition) == StaleStatus.STALE
