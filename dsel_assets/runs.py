"""In-process runs of an asset closure on the persistent instance (CLI and benchmarks):
everything a set of target assets needs, in dependency order, per-batch assets once per
pool batch and pool-wide assets once."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import dagster as dg

from dsel_assets.pool import pool_batches

#: Console logging at INFO for CLI runs (Dagster's DEBUG event stream stays in the event log).
QUIET = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}


def materialize_closure(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    targets: Iterable[dg.AssetKey],
    run_config: dict | None = None,
    only_missing: bool = True,
    log: Callable[[str], None] = print,
) -> None:
    """Materialize ``targets`` and their upstream assets in topological order: runs of
    consecutive per-batch assets go through ``batch_job`` for every known pool batch, runs of
    pool-wide assets through ``curation_job``. With ``only_missing`` an upstream asset that is
    already materialized (a per-batch asset: for that batch) is skipped; targets and the pool
    itself always run."""
    graph = defs.resolve_asset_graph()
    targets = set(targets)
    wanted = dg.AssetSelection.assets(*targets).upstream().resolve(graph)
    ordered = [key for key in graph.toposorted_asset_keys if key in wanted]
    batches = sorted(instance.get_dynamic_partitions(pool_batches.name))
    ops = (run_config or {}).get("ops", {})
    groups: list[tuple[bool, list[dg.AssetKey]]] = []
    for key in ordered:
        partitioned = graph.get(key).partitions_def is not None
        if groups and groups[-1][0] == partitioned:
            groups[-1][1].append(key)
        else:
            groups.append((partitioned, [key]))
    for partitioned, keys in groups:
        if partitioned:
            for batch in batches:
                todo = [
                    k
                    for k in keys
                    if not only_missing or k in targets or batch not in instance.get_materialized_partitions(k)
                ]
                if todo:
                    _execute(defs, instance, "batch_job", todo, ops, log, batch)
        else:
            todo = [
                k
                for k in keys
                if not only_missing
                or k in targets
                or k.to_user_string() == "pool"
                or instance.get_latest_materialization_event(k) is None
            ]
            if todo:
                _execute(defs, instance, "curation_job", todo, ops, log)


def _execute(defs, instance, job_name: str, keys: list[dg.AssetKey], ops: dict, log, batch: str | None = None) -> None:
    names = {k.to_user_string() for k in keys}
    config = {**QUIET, "ops": {name: value for name, value in ops.items() if name in names}}
    where = f" for batch {batch}" if batch else ""
    log(f"[dsel] materializing {', '.join(sorted(names))}{where} ...")
    defs.resolve_job_def(job_name).execute_in_process(
        instance=instance, partition_key=batch, asset_selection=keys, run_config=config
    )


def run_batches(
    defs: dg.Definitions,
    batches: list[str],
    job_name: str,
    run_config: dict | None = None,
    asset_selection: list[dg.AssetKey] | None = None,
) -> None:
    """Register ``batches`` as dynamic partitions (once) and run ``job_name`` for each."""
    instance = dg.DagsterInstance.get()
    new = [b for b in batches if not instance.has_dynamic_partition(pool_batches.name, b)]
    if new:
        instance.add_dynamic_partitions(pool_batches.name, new)
    job = defs.resolve_job_def(job_name)
    for batch in batches:
        print(f"[dsel] {job_name} for batch {batch} ...", flush=True)
        job.execute_in_process(
            instance=instance,
            partition_key=batch,
            run_config={**QUIET, **(run_config or {})},
            asset_selection=asset_selection,
        )
