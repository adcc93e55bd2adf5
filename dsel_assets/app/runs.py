"""In-process runs of an asset closure on the persistent instance (CLI and benchmarks):
everything a set of target assets needs, in dependency order, per-batch assets once per
pool batch and pool-wide assets once."""

from __future__ import annotations

import difflib
import multiprocessing
import re
import sys
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor

import dagster as dg

from dsel_assets.app import output
from dsel_assets.core.memory import release_memory
from dsel_assets.pipeline.liveness import process_tags, wait_for_slots, watch_slots
from dsel_assets.pipeline.names import pool_batches
from dsel_assets.pipeline.staleness import must_run, stale_resolver
from resources.devices import device_slots, size_gpu_pool

#: The pool: it always runs (cheap; it reconciles the batches), and what follows reads its data version after.
POOL_KEY = dg.AssetKey("pool")


def materialize_closure(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    targets: Iterable[dg.AssetKey],
    run_config: dict | None = None,
    log: Callable[[str], None] = print,
    needs: Iterable[dg.AssetKey] = (),
    build: Callable[[], dg.Definitions] | None = None,
) -> None:
    """Materialize ``targets`` and what they and ``needs`` need, in dependency order: of their upstream
    assets (a per-batch one: per pool batch) those missing, stale by their own code or settings
    or by a parent's new data version, or below one that runs. Models (the LESS warmup) rerun only
    when missing or their own code or settings changed, not because the pool grew: a new warmup
    would invalidate every batch's gradient features. Targets and the pool always run. Runs of
    consecutive per-batch assets go through ``batch_job`` per batch, pool-wide ones through
    ``curation_job``; with several device slots and ``build``, the batches' runs go side by
    side (see :func:`run_batches`)."""
    check_run_config(defs, run_config)
    graph = defs.resolve_asset_graph()
    targets = set(targets)
    wanted = dg.AssetSelection.assets(*targets, *needs).upstream().resolve(graph)
    batches = sorted(instance.get_dynamic_partitions(pool_batches.name))
    always = targets | {POOL_KEY}
    resolver = stale_resolver(instance, graph)
    # batch (None: pool-wide) -> assets to run next; what ran before shows in the resolver as new data versions
    pending: dict[str | None, list[dg.AssetKey]] = {}

    def flush() -> None:
        if None not in pending and _side_by_side_wanted(build, len(pending)):
            runs = [(batch, "batch_job", {"ops": _ops_of(keys, ops)}, keys) for batch, keys in pending.items()]
            outcomes = _side_by_side(build, instance, runs, log, timed=False)
            failures = [f"batch {b}: {failure}" for b, failure, _ in outcomes if failure]
            if failures:
                raise RunFailed("; ".join(failures))
        else:
            for batch, keys in pending.items():
                _execute(defs, instance, "batch_job" if batch else "curation_job", keys, ops, log, batch)
        pending.clear()

    ops = (run_config or {}).get("ops", {})
    for key in (k for k in graph.toposorted_asset_keys if k in wanted):
        node = graph.get(key)
        parents = node.parent_keys
        switching = pending and (None in pending) == node.is_partitioned
        if switching or (key not in always and any(p in always and p in _keys(pending) for p in parents)):
            flush()  # a parent that always runs may or may not get a new data version: read it after
            resolver = stale_resolver(instance, graph)
        for batch in batches if node.is_partitioned else [None]:
            upstream = [*pending.get(None, []), *pending.get(batch, [])] if batch else _keys(pending)
            if (
                key in always
                or must_run(resolver, node, batch, bool(parents & set(upstream)))
                or config_changed(defs, instance, key, batch, ops)
            ):
                pending.setdefault(batch, []).append(key)
    flush()


def config_changed(
    defs: dg.Definitions, instance: dg.DagsterInstance, key: dg.AssetKey, batch: str | None, ops: dict
) -> bool:
    """Whether this run gives the asset a config (``ops``) that differs, defaults filled in, from
    the config of the run that last materialized it (for ``batch``): a setting asked for is new
    work even where code and data are unchanged. An asset this run gives no config keeps what is
    stored (a ``dsel select`` after a ``dsel compare --config warmup_checkpoint.epochs=1`` reuses
    that warmup)."""
    name = key.to_user_string()
    if name not in ops:
        return False
    latest = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[batch] if batch else None), limit=1
    ).records
    run = instance.get_run_by_id(latest[0].run_id) if latest else None
    if run is None:
        return False  # missing: must_run decides
    job = defs.resolve_job_def("batch_job" if batch else "curation_job")

    def effective(value: dict | None) -> dict:
        return dg.validate_run_config(job, {"ops": {name: value or {}}})["ops"][name]

    return effective(ops.get(name)) != effective((run.run_config.get("ops") or {}).get(name))


def _keys(pending: dict[str | None, list[dg.AssetKey]]) -> set[dg.AssetKey]:
    return {key for keys in pending.values() for key in keys}


def check_run_config(defs: dg.Definitions, run_config: dict | None) -> None:
    """Refuse run config that names an asset that takes none, a key the asset does not have or a
    value of the wrong type, before any work: the error names the asset, the key, the value and
    the valid keys with their types and defaults (a run only passes each asset its own config, so
    a typo would otherwise be silently ignored)."""
    graph = defs.resolve_asset_graph()
    for name, value in ((run_config or {}).get("ops") or {}).items():
        key = dg.AssetKey(name)
        if not graph.has(key) or not _config_fields(defs, key):
            configurable = sorted(k.to_user_string() for k in graph.get_all_asset_keys() if _config_fields(defs, k))
            near = difflib.get_close_matches(name, configurable, n=5)
            hint = f"did you mean {', '.join(near)}? " if near else ""
            raise ValueError(f"config: {name!r} is not an asset that takes config; {hint}see dsel status or the UI")
        job = defs.resolve_job_def("batch_job" if graph.get(key).is_partitioned else "curation_job")
        try:
            dg.validate_run_config(job, {"ops": {name: value}})
        except dg.DagsterInvalidConfigError as exc:
            valid = ", ".join(
                f"{field} ({kind}, default {default!r})" for field, kind, default in _config_fields(defs, key)
            )
            raise ValueError(f"config: {name}: {_config_problem(exc, value)}; valid keys: {valid}") from None


def _config_fields(defs: dg.Definitions, key: dg.AssetKey) -> list[tuple[str, str, object]]:
    """(key, type, default) of each config field of the asset's op; empty when it takes none."""
    node = defs.resolve_assets_def(key).node_def
    schema = node.config_schema if hasattr(node, "config_schema") else None
    config_type = schema.config_type if schema is not None else None
    fields = getattr(config_type, "fields", None) or {}
    return [
        (field, _type_name(spec.config_type), spec.default_value if spec.default_provided else None)
        for field, spec in sorted(fields.items())
    ]


def _type_name(config_type) -> str:
    text = str(config_type.given_name or config_type.key)
    for dagster_name, name in (("Array", "list"), ("Bool", "bool"), ("Int", "int"), ("Float", "float"), ("Str", "str")):
        if dagster_name in text:
            return name
    return "object"


def _config_problem(exc: dg.DagsterInvalidConfigError, value: dict) -> str:
    """The first of Dagster's config errors in a user's words: the unknown key, or the key and
    the value that has the wrong type."""
    message = exc.errors[0].message if exc.errors else str(exc)
    unknown = re.search(r'unexpected config entr(?:y|ies) \[?"?([^" \]]+)', message)
    if unknown:
        field = unknown.group(1)
        return f"unknown key {field!r} (value {(value.get('config') or {}).get(field)!r})"
    path = re.search(r"at path root:ops:[^:]+:config:([\w:]+)", message)
    expected = re.search(r'expected type "([^"]+)"', message)
    if path:
        field = path.group(1).split(":")[0]
        given = (value.get("config") or {}).get(field)
        return f"{field}={given!r} is not a valid {expected.group(1) if expected else 'value'}"
    return message.splitlines()[0]


def materialize_only(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    keys: list[dg.AssetKey],
    run_config: dict | None = None,
    log: Callable[[str], None] = print,
) -> None:
    """Materialize exactly ``keys`` (pool-wide assets, e.g. reports over whatever is stored),
    nothing upstream of them."""
    check_run_config(defs, run_config)
    _execute(defs, instance, "curation_job", keys, (run_config or {}).get("ops", {}), log)


def _execute(defs, instance, job_name: str, keys: list[dg.AssetKey], ops: dict, log, batch: str | None = None) -> None:
    names = {k.to_user_string() for k in keys}
    config = {"ops": _ops_of(keys, ops)}
    where = f" for batch {batch}" if batch else ""
    log(f"[dsel] materializing {', '.join(sorted(names))}{where} ...")
    result = execute(
        defs.resolve_job_def(job_name), instance, log, partition_key=batch, asset_selection=keys, run_config=config
    )
    if not result.success:
        raise RunFailed(failure_summary(result))


def _ops_of(keys: Iterable[dg.AssetKey], ops: dict) -> dict:
    """The run config entries of ``keys`` (a run passes each asset its own config)."""
    names = {k.to_user_string() for k in keys}
    return {name: value for name, value in ops.items() if name in names}


def _side_by_side_wanted(build: Callable[[], dg.Definitions] | None, runs: int) -> bool:
    """Whether ``runs`` batch runs go side by side: several of them, several device slots and a
    maker of the definitions for the worker processes."""
    return build is not None and runs > 1 and len(device_slots()) > 1


def _side_by_side(build, instance, runs: list[tuple], log, timed: bool) -> list[tuple[str, str | None, dict]]:
    """``runs`` (batch, job name, run config, asset selection) in one worker process per device
    slot, the ``gpu`` pool sized to the slots; (batch, failure or None, step seconds when
    ``timed``) of each."""
    slots = len(device_slots())
    size_gpu_pool(instance, slots)
    workers = min(slots, len(runs))
    log(f"[dsel] {len(runs)} batches, {workers} at a time (one per device) ...")
    spawn = multiprocessing.get_context("spawn")  # Lance and torch are not fork-safe
    with ProcessPoolExecutor(workers, mp_context=spawn) as pool:
        return list(pool.map(_run_batch, [build] * len(runs), [timed] * len(runs), *zip(*runs, strict=True)))


def run_batches(
    defs: dg.Definitions,
    batches: list[str],
    job_name: str,
    run_config: dict | None = None,
    asset_selection: list[dg.AssetKey] | None = None,
    step_seconds: dict[str, float] | None = None,
    build: Callable[[], dg.Definitions] | None = None,
) -> list[str]:
    """Register ``batches`` as dynamic partitions (once) and run ``job_name`` for each;
    returns the batches whose run failed (each reported on stderr in one line). The seconds
    each step took are added to ``step_seconds`` when given. With several device slots
    (resources.devices) and ``build`` (a picklable maker of the same definitions), the batches
    run side by side in one worker process per slot, each pinned to its own device."""
    instance = dg.DagsterInstance.get()
    new = [b for b in batches if not instance.has_dynamic_partition(pool_batches.name, b)]
    if new:
        instance.add_dynamic_partitions(pool_batches.name, new)
    timed = step_seconds is not None
    if _side_by_side_wanted(build, len(batches)):
        runs = [(batch, job_name, run_config, asset_selection) for batch in batches]
        outcomes = _side_by_side(build, instance, runs, output.progress, timed)
    else:
        job = defs.resolve_job_def(job_name)
        outcomes = (_run_batch_with(job, instance, b, run_config, asset_selection, timed) for b in batches)
    failed = []
    for batch, failure, seconds in outcomes:  # sequential: each batch reported as it ends
        for step, spent in seconds.items():
            step_seconds[step] = step_seconds.get(step, 0.0) + spent
        if failure is not None:  # one bad batch does not stop the others
            print(f"[dsel] batch {batch}: {failure}", file=sys.stderr, flush=True)
            failed.append(batch)
    return failed


def _run_batch(
    build, timed: bool, batch: str, job_name: str, run_config, asset_selection
) -> tuple[str, str | None, dict]:
    """One batch's run in a worker process (definitions built there)."""
    job = build().resolve_job_def(job_name)
    return _run_batch_with(job, dg.DagsterInstance.get(), batch, run_config, asset_selection, timed)


def _run_batch_with(
    job, instance, batch: str, run_config, asset_selection, timed: bool
) -> tuple[str, str | None, dict[str, float]]:
    """(batch, failure summary or None, seconds per step when ``timed``, else none) of one batch's run."""
    output.progress(f"[dsel] {job.name} for batch {batch} ...")
    result = execute(
        job,
        instance,
        _stdout,
        partition_key=batch,
        run_config=run_config,
        asset_selection=asset_selection,
    )
    seconds = step_durations(instance, result.run_id) if timed else {}
    return batch, None if result.success else failure_summary(result), seconds


def step_durations(instance: dg.DagsterInstance, run_id: str) -> dict[str, float]:
    """Seconds from each step's start to its end (success or failure) in run ``run_id``."""
    kinds = {dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE}
    started, seconds = {}, {}
    for entry in instance.all_logs(run_id, of_type=kinds):
        if entry.dagster_event.event_type == dg.DagsterEventType.STEP_START:
            started[entry.step_key] = entry.timestamp
        elif entry.step_key in started:
            seconds[entry.step_key] = entry.timestamp - started[entry.step_key]
    return seconds


def execute(
    job: dg.JobDefinition,
    instance: dg.DagsterInstance,
    log: Callable[[str], None],
    partition_key: str | None = None,
    asset_selection: list[dg.AssetKey] | None = None,
    run_config: dict | None = None,
) -> dg.ExecuteInProcessResult:
    """``job.execute_in_process`` (errors in the result, not raised) tagged with this process, so a
    run it leaves behind when killed can be reaped (dsel_assets/pipeline/liveness.py). First waits, saying
    for whom and interruptibly, until each concurrency pool of the selected steps has a free slot;
    a Ctrl-C while a step waits inside Dagster, or during a step, raises KeyboardInterrupt."""
    if asset_selection is None:
        pools = set(job.graph.pools)
    else:
        graph = job.asset_layer.asset_graph
        pools = {pool for key in asset_selection for pool in graph.get(key).pools or ()}
    wait_for_slots(instance, pools, log)
    run_id = str(uuid.uuid4())
    job, run_config = _with_console(job, run_config)
    with watch_slots(instance, run_id, pools, log):
        result = job.execute_in_process(
            instance=instance,
            run_id=run_id,
            partition_key=partition_key,
            asset_selection=asset_selection,
            run_config=run_config,
            tags=process_tags(),
            raise_on_error=False,
        )
    output.record_run(instance, result.run_id)
    release_memory()  # the run's steps ran in this process: what they freed goes back to the system
    if _interrupted(result):
        raise KeyboardInterrupt
    return result


def _with_console(job: dg.JobDefinition, run_config: dict | None) -> tuple[dg.JobDefinition, dict]:
    """The job and run config with the command's console: with ``-v`` Dagster's own console logger
    at INFO (its DEBUG event stream stays in the event log), else dsel's (``output.run_warnings``);
    the INFO lines not shown go to the log file (``output.record_run``)."""
    if output.verbosity() >= output.VERBOSE:
        return job, {"loggers": {"console": {"config": {"log_level": "INFO"}}}, **(run_config or {})}
    return job.with_logger_defs({"console": output.run_warnings}), {"loggers": {"console": {}}, **(run_config or {})}


def _interrupted(result: dg.ExecuteInProcessResult) -> bool:
    """Whether the run ended on Ctrl-C or SIGTERM (with ``raise_on_error=False`` Dagster records
    that as a run failure and returns)."""
    failures = [e for e in result.all_events if e.event_type == dg.DagsterEventType.RUN_FAILURE]
    error = failures[0].job_failure_data.error if failures else None
    return error is not None and error.cls_name in {"KeyboardInterrupt", "DagsterExecutionInterruptedError"}


def _stdout(line: str) -> None:
    output.progress(line)


class RunFailed(RuntimeError):
    """A Dagster run failed; the message names the step and its error (no traceback)."""


def failure_summary(result: dg.ExecuteInProcessResult) -> str:
    """``run <id>: step <key> failed: <error>`` for each failed step of an in-process run."""
    failures = [
        f"step {event.step_key} failed: {_root_message(event.step_failure_data.error)}"
        for event in result.all_events
        if event.is_step_failure
    ]
    for check in result.get_asset_check_evaluations():  # a failed check says why (its "problems")
        problems = check.metadata.get("problems")
        if not check.passed and problems is not None:
            why = " ".join(line.lstrip("- ") for line in str(problems.value).splitlines() if line.strip())
            failures.append(f"check {check.asset_key.to_user_string()}:{check.check_name}: {why}")
    return f"run {result.run_id[:8]}: " + ("; ".join(failures) or "failed (see `dagster` logs)")


def _root_message(error) -> str:
    """The innermost cause of a serialized Dagster error, in one line."""
    while error.cause is not None:
        error = error.cause
    return error.message.strip().splitlines()[-1] if error.message.strip() else error.cls_name or "error"
