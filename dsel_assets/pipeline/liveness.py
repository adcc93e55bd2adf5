"""Runs whose process is gone, and steps waiting on a concurrency pool.

A ``kill -9`` (or a crash, an OOM kill) leaves its run STARTED for ever and its ``gpu`` pool slot
claimed: every later model step waits for that slot for ever, and the re-curation sensor keeps
waiting for a batch run that will never finish. Dagster frees nothing by itself here (its
``InstanceConcurrencyContext`` frees pending claims on a clean exit only, and the daemon's
slot reaper only frees runs already in a finished status, when ``free_slots_after_run_end_seconds``
is set). While an in-process step waits for a slot, Dagster spins without sleeping, logs the wait
at DEBUG only, and defers Ctrl-C (and SIGTERM) until a step starts: with a dead holder, never.

A run is reaped only on proof that its processes are gone, never on a guess:

- a run ``dsel`` executes in-process carries its process in its tags (``dsel/pid``,
  ``dsel/host``, ``dsel/process_started``: the start time, so a reused pid is told apart);
- a run the daemon launched through a gRPC code server on this host has its worker's pid in its
  event log ("Started process for run (pid: N)") and each multiprocess step worker's pid
  ('Executing step "X" in subprocess.'); a pid whose process started after the event that names
  it is another process.

Runs on another host, runs whose steps run elsewhere (a step-delegating executor such as
Kubernetes) and runs with no recorded process are left alone.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import psutil
from dagster._core.events import DagsterEventType, JobFailureData, RunFailureReason
from dagster._core.storage.dagster_run import ACTIVE_RUN_STATUSES, FINISHED_STATUSES, RunsFilter
from dagster._core.storage.tags import GRPC_INFO_TAG
from dagster._utils.concurrency import ConcurrencyKeyInfo
from dagster._utils.interrupts import check_captured_interrupt
from sqlalchemy.exc import SQLAlchemyError

PID_TAG = "dsel/pid"
HOST_TAG = "dsel/host"
STARTED_TAG = "dsel/process_started"
#: Seconds of tolerance between a process's start time and the tag or event that records it.
SLACK_S = 1.0
#: How often a waiting run checks the pool, and how often it says for whom it waits.
POLL_S = 1.0
SAY_EVERY_S = 30.0

Log = Callable[[str], None]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def process_tags() -> dict[str, str]:
    """Run tags naming this process, so a run it leaves behind can be proven dead later."""
    return {
        PID_TAG: str(os.getpid()),
        HOST_TAG: socket.gethostname(),
        STARTED_TAG: repr(psutil.Process().create_time()),
    }


@dataclass(frozen=True)
class Worker:
    """A process executing a run: its pid and its start time, exact (from our tags) or an upper
    bound (the time of the first event it wrote)."""

    pid: int
    started: float
    exact: bool

    def alive(self) -> bool:
        """Whether this very process still runs (a zombie does not; a younger process with the
        same pid is another process)."""
        try:
            proc = psutil.Process(self.pid)
            if proc.status() == psutil.STATUS_ZOMBIE:
                return False
            created = proc.create_time()
        except psutil.NoSuchProcess:
            return False
        except psutil.AccessDenied:  # cannot tell: never fail a run we cannot prove dead
            return True
        if self.exact:
            return abs(created - self.started) < SLACK_S
        return created <= self.started + SLACK_S


def workers(instance: dg.DagsterInstance, run: dg.DagsterRun) -> list[Worker] | None:
    """The processes on this host that execute ``run``; None when they are unknown or elsewhere."""
    tags = run.tags
    if PID_TAG in tags:
        if tags.get(HOST_TAG) != socket.gethostname():
            return None
        try:
            return [Worker(int(tags[PID_TAG]), float(tags[STARTED_TAG]), exact=True)]
        except (KeyError, ValueError):
            return None
    try:
        grpc = json.loads(tags.get(GRPC_INFO_TAG) or "null")
    except json.JSONDecodeError:
        return None
    if not isinstance(grpc, dict) or not ("socket" in grpc or grpc.get("host") in _local_hosts()):
        return None
    first_seen: dict[int, float] = {}
    has_run_worker = False
    records = instance.get_records_for_run(
        run.run_id, of_type={DagsterEventType.ENGINE_EVENT, DagsterEventType.STEP_WORKER_STARTED}
    ).records
    for record in records:
        event = record.event_log_entry.dagster_event
        if event is None:
            continue
        message = event.message or ""
        run_worker = event.event_type == DagsterEventType.ENGINE_EVENT and message.startswith("Started process for run")
        step_worker = event.event_type == DagsterEventType.STEP_WORKER_STARTED
        if step_worker and not message.endswith("in subprocess."):
            return None  # a step worker that is not a local subprocess (e.g. a Kubernetes job)
        pid = (getattr(event.event_specific_data, "metadata", None) or {}).get("pid")
        if (run_worker or step_worker) and pid is not None:
            first_seen.setdefault(int(pid.value), record.timestamp)
            has_run_worker = has_run_worker or run_worker
    if not has_run_worker:
        return None
    return [Worker(pid, started, exact=False) for pid, started in first_seen.items()]


def _local_hosts() -> set[str]:
    return {"localhost", "127.0.0.1", "::1", socket.gethostname()}


def reap_dead_runs(
    instance: dg.DagsterInstance, log: Log = _stderr, end_tracked: Callable[[str], int] | None = None
) -> list[str]:
    """Mark each in-progress run whose processes are all gone failed (canceled if it was
    canceling), free its concurrency slots and pending claims, and free the slots that finished or
    deleted runs still hold; ``end_tracked(run_id)`` ends the run's MLflow runs (they never ended
    either). One ``log`` line per run. Returns the ids of the runs acted on."""
    storage = instance.event_log_storage
    slots = storage.supports_global_concurrency_limits
    acted = []
    for record in instance.get_run_records(RunsFilter(statuses=ACTIVE_RUN_STATUSES)):
        run = record.dagster_run
        procs = workers(instance, run)
        if not procs or any(proc.alive() for proc in procs):
            continue
        pids = ", ".join(str(proc.pid) for proc in procs)
        message = f"process {pids} on {socket.gethostname()} is gone"
        if run.status == dg.DagsterRunStatus.CANCELING:
            instance.report_run_canceled(run, f"{message}; marked canceled by dsel")
            marked = "canceled"
        else:
            failure = JobFailureData(error=None, failure_reason=RunFailureReason.UNEXPECTED_TERMINATION)
            instance.report_run_failed(run, f"{message}; marked failed by dsel", failure)
            marked = "failed"
        if slots:
            storage.free_concurrency_slots_for_run(run.run_id)
        ended = end_tracked(run.run_id) if end_tracked is not None else 0
        tracked = f"; {ended} MLflow run(s) ended FAILED" if ended else ""
        log(f"[dsel] run {run.run_id[:8]}: process {pids} is gone; marked {marked} and freed its slots{tracked}")
        acted.append(run.run_id)
    if slots:
        acted += _free_finished_holders(instance, log)
    return acted


def reap_for_cli(home: str | None) -> None:
    """At the start of a ``dsel`` command: reap the dead runs of the state home (``--home``, else
    ``DSEL_HOME``), one stderr line each; nothing when the home has no Dagster instance yet. A
    storage error (a locked database) is reported, not fatal: the command may not need Dagster."""
    from resources.home import DselHome
    from resources.tracking import MlflowTracker, tracking_uri

    paths = DselHome(Path(home).expanduser().resolve()) if home else DselHome.from_env()
    if not paths.dagster_ready.exists():  # no instance yet, or another command is creating it
        return
    # not ``with``: entering an instance sets Dagster's process-wide definitions-state storage,
    # which must never outlive this short-lived instance
    instance = dg.DagsterInstance.from_config(str(paths.dagster))
    tracker = MlflowTracker(tracking_uri=tracking_uri(paths))
    try:
        reap_dead_runs(instance, end_tracked=tracker.fail_runs_of)
    except SQLAlchemyError as exc:
        _stderr(f"[dsel] could not check for runs left by killed processes: {exc}")
    finally:
        instance.dispose()


def _free_finished_holders(instance: dg.DagsterInstance, log: Log) -> list[str]:
    """Free the slots and pending claims of runs that are finished (or deleted) but hold some."""
    storage = instance.event_log_storage
    held: dict[str, set[str]] = {}
    for pool, info in storage.get_concurrency_infos(sorted(storage.get_concurrency_keys())).items():
        for run_id in info.active_run_ids | {step.run_id for step in info.pending_steps}:
            held.setdefault(run_id, set()).add(pool)
    if not held:
        return []
    status = {
        r.dagster_run.run_id: r.dagster_run.status for r in instance.get_run_records(RunsFilter(run_ids=list(held)))
    }
    freed = []
    for run_id, pools in sorted(held.items()):
        if run_id in status and status[run_id] not in FINISHED_STATUSES:
            continue
        storage.free_concurrency_slots_for_run(run_id)
        state = status[run_id].value if run_id in status else "deleted"
        log(f"[dsel] run {run_id[:8]}: {state} but held slots in {', '.join(sorted(pools))}; freed them")
        freed.append(run_id)
    return freed


def _infos(instance: dg.DagsterInstance, pools: Iterable[str]) -> dict[str, ConcurrencyKeyInfo]:
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return {}
    return dict(storage.get_concurrency_infos(sorted(pools)))


def _holders(info: ConcurrencyKeyInfo, own_run_id: str | None = None) -> list[str] | None:
    """The runs holding every slot of a pool (a step assigned a slot holds it); None when one is
    free for ``own_run_id``."""
    assigned = [s.run_id for s in info.pending_steps if s.assigned_timestamp is not None and s.run_id != own_run_id]
    if not info.slot_count or len(assigned) < info.slot_count:
        return None
    return sorted(set(assigned))


def describe_run(instance: dg.DagsterInstance, run_id: str) -> str:
    """``run <id> (pid N)``: a run and the process executing it, as far as it is known."""
    run = instance.get_run_by_id(run_id)
    tags = run.tags if run is not None else {}
    if PID_TAG in tags:
        host = tags.get(HOST_TAG)
        where = "" if host == socket.gethostname() else f" on {host}"
        return f"run {run_id} (pid {tags[PID_TAG]}{where})"
    procs = workers(instance, run) if run is not None else None
    return f"run {run_id} (pid {', '.join(str(p.pid) for p in procs) if procs else 'unknown'})"


def _say_waiting(instance: dg.DagsterInstance, pool: str, holders: list[str], log: Log) -> None:
    log(f"[dsel] waiting for the {pool!r} slot held by {', '.join(describe_run(instance, r) for r in holders)}")


def wait_for_slots(instance: dg.DagsterInstance, pools: Iterable[str], log: Log = _stderr) -> None:
    """Return once every pool in ``pools`` has a free slot: dead holders are reaped, live ones named
    every ``SAY_EVERY_S``. A plain sleep loop in the caller's thread, so Ctrl-C stops it at once."""
    pools = sorted(pools)
    said = -SAY_EVERY_S
    while True:
        busy = {pool: h for pool, info in _infos(instance, pools).items() if (h := _holders(info))}
        if busy:
            reap_dead_runs(instance, log)
            busy = {pool: h for pool, info in _infos(instance, busy).items() if (h := _holders(info))}
        if not busy:
            return
        if time.monotonic() - said >= SAY_EVERY_S:
            for pool, holders in busy.items():
                _say_waiting(instance, pool, holders, log)
            said = time.monotonic()
        time.sleep(POLL_S)


@contextlib.contextmanager
def watch_slots(instance: dg.DagsterInstance, run_id: str, pools: Iterable[str], log: Log = _stderr) -> Iterator[None]:
    """Around an in-process execution of run ``run_id`` in this thread: while one of its steps waits
    inside Dagster for a slot of ``pools``, reap dead holders, name live ones every ``SAY_EVERY_S``,
    and turn a Ctrl-C or SIGTERM that Dagster captured meanwhile into a KeyboardInterrupt here
    (Dagster would act on it only once a step starts)."""
    pools = sorted(pools)
    if not pools:
        yield
        return
    target = threading.get_ident() if threading.current_thread() is threading.main_thread() else None
    stop = threading.Event()

    def watch() -> None:
        said = -SAY_EVERY_S
        while not stop.wait(POLL_S):
            infos = _infos(instance, pools)
            waiting = {
                pool: info
                for pool, info in infos.items()
                if any(s.run_id == run_id and s.assigned_timestamp is None for s in info.pending_steps)
            }
            if not waiting:
                continue
            if target is not None and check_captured_interrupt():
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(target), ctypes.py_object(KeyboardInterrupt))
                return
            if reap_dead_runs(instance, log) or time.monotonic() - said < SAY_EVERY_S:
                continue
            for pool, info in waiting.items():
                if holders := _holders(info, run_id) or sorted(info.active_run_ids - {run_id}):
                    _say_waiting(instance, pool, holders, log)
            said = time.monotonic()

    thread = threading.Thread(target=watch, name=f"dsel-slots-{run_id[:8]}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
