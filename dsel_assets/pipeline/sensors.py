"""New data and re-curation: the inbox sensor, the re-curation sensor and schedule.

- ``inbox_sensor``: a finished file in the inbox becomes a pool batch (a dynamic partition; same
  sha256, same batch: never ingested twice) and one ``batch_job`` run for **that partition**.
- ``recuration_sensor``: when a ``batch_job`` run succeeds and no other is queued or running,
  re-runs the curation assets Dagster reports stale (the grown pool, new representation
  partitions) with the run config each last ran with.
- ``recuration_schedule``: the same request on a cron (``DSEL_RECURATE_CRON``), which also
  catches code-version changes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from pathlib import Path

import dagster as dg
import duckdb as duckdb_lib
from dagster._core.storage.dagster_run import IN_PROGRESS_RUN_STATUSES, RunsFilter

from dsel_assets.core.data.catalog import labels_for
from dsel_assets.pipeline.assets.ingest import inbox
from dsel_assets.pipeline.liveness import reap_dead_runs
from dsel_assets.pipeline.names import MODELS, POOL, REPORTS, REPRESENTATIONS, SELECTIONS, pool_batches
from dsel_assets.pipeline.staleness import is_missing, is_stale, stale_resolver
from dsel_assets.store.errors import StateDatabaseError
from jobs import EXPENSIVE, batch_job, curation_job
from resources.home import StateHome
from resources.inbox import InboxSettings
from resources.store import StateStore

#: What re-curation may re-run: pool-wide curation assets. Models (warmup: re-training it would
#: invalidate every batch's gradient features), fine-tuning and evaluation, and the expensive
#: representations stay with explicit runs.
CURATION = dg.AssetSelection.groups(POOL, REPRESENTATIONS, SELECTIONS, REPORTS) - EXPENSIVE
NOT_RECURATED = dg.AssetSelection.groups(MODELS)


def batch_assets(instance: dg.DagsterInstance, asset_graph) -> list[dg.AssetKey]:
    """``batch_job``'s assets that can run now: those whose parents outside the job (the warmup
    of gradient features) have been materialized at least once; expensive ones (model
    embeddings) only on request (``dsel score``)."""
    keys = (batch_job.selection - EXPENSIVE).resolve(asset_graph)
    return sorted(
        (
            key
            for key in keys
            if all(
                instance.get_latest_materialization_event(parent) is not None
                for parent in asset_graph.get(key).parent_keys - keys
            )
        ),
        key=lambda k: k.to_user_string(),
    )


def last_op_config(instance: dg.DagsterInstance, keys: list[dg.AssetKey]) -> dict:
    """Each asset's op config from the run that last materialized it (budgets, method params,
    targets), so re-curation repeats the curation that was asked for."""
    ops = {}
    for key in keys:
        event = instance.get_latest_materialization_event(key)
        run = instance.get_run_by_id(event.run_id) if event is not None else None
        config = (run.run_config.get("ops", {}) if run is not None else {}).get(key.to_python_identifier())
        if config:
            ops[key.to_python_identifier()] = config
    return ops


def recuration_request(
    instance: dg.DagsterInstance, asset_graph, run_key_prefix: str | None = None
) -> dg.RunRequest | dg.SkipReason:
    """A ``curation_job`` run of the stale curation assets and the materialized ones downstream
    of them (the report), with their last run config; a skip reason when nothing is stale."""
    resolver = stale_resolver(instance, asset_graph)
    candidates = {
        key for key in (CURATION - NOT_RECURATED).resolve(asset_graph) if not asset_graph.get(key).is_partitioned
    }
    stale = {key for key in candidates if is_stale(resolver, key)}
    if not stale:
        return dg.SkipReason("no curation asset is stale")
    downstream = dg.AssetSelection.assets(*stale).downstream().resolve(asset_graph) & candidates
    keys = sorted(
        stale | {k for k in downstream if not is_missing(resolver, k)},
        key=lambda k: k.to_user_string(),
    )
    pool_version = resolver.get_current_data_version(dg.AssetKey("pool")).value
    names = [k.to_user_string() for k in keys]
    run_key = None
    if run_key_prefix is not None:
        digest = hashlib.sha256(json.dumps(names).encode()).hexdigest()[:8]
        run_key = f"{run_key_prefix}-{pool_version}-{digest}"
    return dg.RunRequest(
        run_key=run_key,
        asset_selection=keys,
        run_config={"ops": last_op_config(instance, keys)},
        tags={"dsel/trigger": "recuration", "dsel/pool_version": str(pool_version)},
    )


def _inbox_tick(
    context: dg.SensorEvaluationContext, settings: InboxSettings, store: StateStore, home: StateHome
) -> dg.SensorResult:
    """One inbox tick: register each ready file as a batch and request its run. An error with one
    file (any exception) stays that file's: logged, retried on later ticks and set aside to
    ``inbox/rejected/`` after ``settings.max_attempts``; the other files go on."""
    root = Path(settings.path)
    root.mkdir(parents=True, exist_ok=True)
    seen = inbox.load_state(context.cursor)
    ready, state, notes = inbox.scan(
        root, seen, time.time(), settings.grace_seconds, settings.max_file_bytes, settings.max_attempts
    )
    for note in notes:
        (context.log.warning if isinstance(note, inbox.Alert) else context.log.info)(note)
    known = set(context.instance.get_dynamic_partitions(pool_batches.name))
    new_batches, requests = [], []
    assets = batch_assets(context.instance, context.repository_def.asset_graph) if ready else []
    waiting = {item.name: item for item in ready}

    def fail(item: inbox.Ready, exc: Exception) -> None:
        context.log.warning(inbox.failed(root, item.name, item.path, item.entry, exc, state, settings.max_attempts))

    try:
        with store.session() if ready else contextlib.nullcontext() as db:
            for item in ready:
                del waiting[item.name]
                try:
                    if not inbox.unchanged(item):  # replaced since scanned (by a link?): judged afresh next tick
                        context.log.warning(f"{item.name}: changed since it was scanned; looking again next tick")
                        continue
                    labels = labels_for(item.path, None, None, None if item.split == "pool" else item.split)
                    manifest, created = db.register_batch(
                        item.path,
                        home.paths.raw,
                        source=labels.source,
                        task=labels.task,
                        split=labels.split,
                        objects=home.paths.artifacts.objects,
                    )
                except Exception as exc:  # this file's fault only: counted, the others go on
                    fail(item, exc)
                    continue
                try:
                    moved = f"moved to {inbox.archive(root, item, manifest.sha256)}"
                except Exception as exc:  # registered all the same: the batch runs, the move is retried
                    fail(item, exc)
                    moved = "left in the inbox"
                if item.problem:
                    context.log.warning(f"{item.name}: ingested unfinished after the grace period ({item.problem})")
                if not created and manifest.batch in known:
                    context.log.info(f"{item.name}: same sha256 as batch {manifest.batch}; not ingested again")
                    continue
                context.log.info(f"{item.name} -> batch {manifest.batch} ({labels.split}); {moved}")
                if manifest.batch not in known:
                    new_batches.append(manifest.batch)
                    known.add(manifest.batch)
                requests.append(
                    dg.RunRequest(
                        run_key=f"inbox-{manifest.batch}",
                        partition_key=manifest.batch,
                        asset_selection=assets,
                        tags={"dsel/trigger": "inbox", "dsel/file": item.name, "dsel/sha256": manifest.sha256},
                    )
                )
    except (OSError, duckdb_lib.Error, StateDatabaseError) as exc:  # locked by a run: not the files' fault
        context.log.warning(f"database not available ({exc}); {len(waiting)} ready file(s) wait for the next tick")
        state.update({name: list(item.entry) for name, item in waiting.items()})
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[pool_batches.build_add_request(new_batches)] if new_batches else [],
        cursor=json.dumps(state, sort_keys=True),
    )


def build_automation(
    interval: int = 30, cron: str | None = None
) -> tuple[list[dg.SensorDefinition], list[dg.ScheduleDefinition]]:
    """The sensors and the schedule: the inbox is scanned every ``interval`` seconds; the
    re-curation schedule runs on ``cron`` (it starts stopped when there is none)."""

    @dg.sensor(
        name="inbox_sensor",
        job=batch_job,
        minimum_interval_seconds=interval,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="A finished file in the inbox becomes a pool batch and a batch_job run for that batch only.",
    )
    def inbox_sensor(
        context: dg.SensorEvaluationContext, inbox_settings: InboxSettings, store: StateStore, home: StateHome
    ) -> dg.SensorResult:
        return _inbox_tick(context, inbox_settings, store, home)

    @dg.run_status_sensor(
        name="recuration_sensor",
        run_status=dg.DagsterRunStatus.SUCCESS,
        monitored_jobs=[batch_job],
        request_job=curation_job,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="After batch runs finish, re-runs the stale selections over the grown pool.",
    )
    def recuration_sensor(context: dg.RunStatusSensorContext) -> dg.RunRequest | dg.SkipReason:
        reap_dead_runs(context.instance, context.log.warning)  # a killed batch run would block re-curation for ever
        pending = context.instance.get_run_records(
            RunsFilter(job_name=batch_job.name, statuses=IN_PROGRESS_RUN_STATUSES), limit=1
        )
        if pending:
            return dg.SkipReason(f"batch run {pending[0].dagster_run.run_id} still queued or running")
        return recuration_request(context.instance, context.repository_def.asset_graph, run_key_prefix="recurate")

    @dg.schedule(
        name="recuration_schedule",
        cron_schedule=cron or "0 */6 * * *",
        job=curation_job,
        default_status=dg.DefaultScheduleStatus.RUNNING if cron else dg.DefaultScheduleStatus.STOPPED,
        description="Periodic re-curation: re-runs stale selections (new data, new code versions).",
    )
    def recuration_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
        return recuration_request(context.instance, context.repository_def.asset_graph)

    return [inbox_sensor, recuration_sensor], [recuration_schedule]
