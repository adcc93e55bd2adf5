"""Runs left behind by a killed process (dsel_assets/pipeline/liveness.py): a ``kill -9`` during a step in
the ``gpu`` pool, against a real instance in a temp dir with the state home's ``dagster.yaml``
(pool limit 1). Every child process runs under a timeout, so no test can hang."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import psutil
import pytest
from dagster._core.events import EngineEventData
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.tags import GRPC_INFO_TAG
from dagster._core.test_utils import create_run_for_test

from dsel_assets.pipeline.liveness import HOST_TAG, PID_TAG, STARTED_TAG, process_tags, reap_dead_runs

ROOT = Path(__file__).resolve().parents[2]
#: A job with one asset in the "gpu" pool that sleeps argv[2] seconds, executed by ``runs.execute``;
#: argv[1] ``dagster`` skips our own wait so a step waits inside Dagster's executor instead.
CHILD = """
import sys
import time

import dagster as dg

from dsel_assets.app import runs
@dg.asset(pool="gpu")
def hog() -> None:
    time.sleep(float(sys.argv[2]))


if sys.argv[1] == "dagster":
    runs.wait_for_slots = lambda instance, pools, log: None
job = dg.Definitions(assets=[hog], jobs=[dg.define_asset_job("hog_job", [hog])]).resolve_job_def("hog_job")
result = runs.execute(job, dg.DagsterInstance.get(), lambda line: print(line, flush=True))
print("done", result.success, flush=True)
"""


@pytest.fixture()
def instance(home, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(home.dagster))
    home.use_as_dagster_home()  # the dagster.yaml the CLI writes: one slot per pool
    with dg.DagsterInstance.from_config(str(home.dagster)) as instance:
        instance.event_log_storage.get_concurrency_keys()  # create the storage before any child does
        yield instance


@pytest.fixture()
def spawn(tmp_path, home):
    """Start the child job (mode, seconds) with its output in a file; kills what is left at the end."""
    script = tmp_path / "child.py"
    script.write_text(CHILD, encoding="utf-8")
    env = {**os.environ, "PYTHONFAULTHANDLER": "1", "DAGSTER_HOME": str(home.dagster), "PYTHONPATH": str(ROOT)}
    started: list[tuple[subprocess.Popen, Path]] = []

    def start(mode: str, seconds: float) -> tuple[subprocess.Popen, Path]:
        out = tmp_path / f"child-{len(started)}.log"
        with out.open("w") as handle:
            proc = subprocess.Popen(
                [sys.executable, str(script), mode, str(seconds)], env=env, stdout=handle, stderr=handle
            )
        started.append((proc, out))
        return proc, out

    yield start
    for proc, _ in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def until(predicate, timeout: float = 60.0):
    """``predicate()`` once it is truthy; fails after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s")


def wait_or_dump(proc: subprocess.Popen, out: Path, timeout: float) -> int:
    """``proc``'s exit status; if it is still alive after ``timeout`` s, fail with the stacks of its
    threads (SIGABRT makes the child's faulthandler write them to its log)."""
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        proc.wait(10)
        raise AssertionError(f"still running {timeout} s later; its log and stacks:\n{out.read_text()}") from None


def gpu_holders(instance) -> set[str]:
    info = instance.event_log_storage.get_concurrency_info("gpu")
    return info.active_run_ids | {step.run_id for step in info.pending_steps}


def holding_run(instance) -> str:
    """The run that claimed the gpu slot (waits for one)."""
    return until(lambda: next(iter(instance.event_log_storage.get_concurrency_info("gpu").active_run_ids), None))


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(30)
    return proc.pid


def started_run(instance, tags: dict[str, str], job_name: str = "hog_job") -> dg.DagsterRun:
    return create_run_for_test(instance, job_name=job_name, status=dg.DagsterRunStatus.STARTED, tags=tags)


def claim_gpu(instance, run_id: str) -> None:
    storage = instance.event_log_storage
    storage.initialize_concurrency_limit_to_default("gpu")
    assert storage.claim_concurrency_slot("gpu", run_id, "hog").is_claimed


def status(instance, run_id: str) -> dg.DagsterRunStatus:
    return instance.get_run_by_id(run_id).status


def test_killed_run_is_reaped_and_the_slot_is_free_again(instance, spawn, tmp_path):
    from resources.tracking import MlflowTracker

    holder, _ = spawn("dsel", 600)
    run_id = holding_run(instance)
    tracker = MlflowTracker(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = tracker._client()
    killed = client.create_run(tracker.experiment_id(), tags={"dagster.run_id": run_id}).info.run_id
    other = client.create_run(tracker.experiment_id(), tags={"dagster.run_id": "0" * 36}).info.run_id
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(10)
    assert status(instance, run_id) == dg.DagsterRunStatus.STARTED and run_id in gpu_holders(instance)

    lines: list[str] = []
    assert reap_dead_runs(instance, lines.append, end_tracked=tracker.fail_runs_of) == [run_id]
    assert lines == [
        f"[dsel] run {run_id[:8]}: process {holder.pid} is gone; marked failed and freed its slots; "
        "1 MLflow run(s) ended FAILED"
    ]
    assert status(instance, run_id) == dg.DagsterRunStatus.FAILURE
    # the killed step's MLflow run is no longer RUNNING for ever; another run's is left alone
    assert client.get_run(killed).info.status == "FAILED" and client.get_run(other).info.status == "RUNNING"
    assert not gpu_holders(instance)
    rerun, out = spawn("dsel", 0)
    assert rerun.wait(60) == 0 and "done True" in out.read_text()


def test_a_waiting_run_names_the_holder_and_goes_on_when_it_is_killed(instance, spawn):
    holder, _ = spawn("dsel", 600)
    run_id = holding_run(instance)
    waiter, out = spawn("dsel", 0)
    until(lambda: f"waiting for the 'gpu' slot held by run {run_id} (pid {holder.pid})" in out.read_text())
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(10)
    assert waiter.wait(30) == 0, out.read_text()
    text = out.read_text()
    assert f"run {run_id[:8]}: process {holder.pid} is gone" in text and "done True" in text


@pytest.mark.parametrize("mode", ["dsel", "dagster"])  # waiting in our loop, or inside Dagster's executor
def test_ctrl_c_stops_a_waiting_run_at_once(instance, spawn, mode):
    holder, _ = spawn("dsel", 600)
    run_id = holding_run(instance)
    waiter, out = spawn(mode, 0)
    until(lambda: "waiting for the 'gpu' slot" in out.read_text())
    sent = time.monotonic()
    waiter.send_signal(signal.SIGINT)
    returncode = wait_or_dump(waiter, out, 20)
    assert time.monotonic() - sent < 10  # 1 s unloaded; slack for a busy CI machine
    assert returncode in (130, -signal.SIGINT) and "KeyboardInterrupt" in out.read_text()
    assert gpu_holders(instance) == {run_id}  # the waiter's pending claim is gone, the holder keeps its slot
    for record in instance.get_run_records():
        if record.dagster_run.tags.get(PID_TAG) == str(waiter.pid):
            assert record.dagster_run.status == dg.DagsterRunStatus.FAILURE


def test_a_run_whose_process_is_alive_is_left_alone(instance):
    run = started_run(instance, process_tags())
    claim_gpu(instance, run.run_id)
    assert reap_dead_runs(instance) == []
    assert status(instance, run.run_id) == dg.DagsterRunStatus.STARTED and gpu_holders(instance) == {run.run_id}


def test_a_run_on_another_host_is_left_alone(instance):
    run = started_run(instance, {PID_TAG: str(dead_pid()), HOST_TAG: "elsewhere.example", STARTED_TAG: "1.0"})
    assert reap_dead_runs(instance) == []
    assert status(instance, run.run_id) == dg.DagsterRunStatus.STARTED


def test_a_reused_pid_is_not_taken_for_the_run_process(instance):
    started = psutil.Process().create_time() - 100  # this pid, but a process that started earlier
    run = started_run(instance, {**process_tags(), STARTED_TAG: repr(started)})
    assert reap_dead_runs(instance, lambda line: None) == [run.run_id]
    assert status(instance, run.run_id) == dg.DagsterRunStatus.FAILURE


def test_slots_of_finished_runs_are_freed_and_unknown_processes_left_alone(instance):
    finished = create_run_for_test(instance, job_name="hog_job", status=dg.DagsterRunStatus.FAILURE)
    claim_gpu(instance, finished.run_id)
    untagged = started_run(instance, {})  # no recorded process: it cannot be proven dead
    lines: list[str] = []
    assert reap_dead_runs(instance, lines.append) == [finished.run_id]
    assert lines == [f"[dsel] run {finished.run_id[:8]}: FAILURE but held slots in gpu; freed them"]
    assert not gpu_holders(instance)
    assert status(instance, untagged.run_id) == dg.DagsterRunStatus.STARTED


def worker_event(instance, run: dg.DagsterRun, pid: int, at: float, message: str | None = None) -> None:
    """The event Dagster logs when a process starts working on ``run``, written at time ``at``."""
    kind = dg.DagsterEventType.STEP_WORKER_STARTED if message else dg.DagsterEventType.ENGINE_EVENT
    event = dg.DagsterEvent(
        kind.value,
        job_name=run.job_name,
        message=message or f"Started process for run (pid: {pid}).",
        event_specific_data=EngineEventData(metadata={"pid": dg.MetadataValue.text(str(pid))}),
    )
    instance.store_event(
        EventLogEntry(
            error_info=None,
            level=logging.DEBUG,
            user_message="",
            run_id=run.run_id,
            timestamp=at,
            dagster_event=event,
        )
    )


def test_daemon_launched_runs_by_the_pids_in_their_event_log(instance):
    """Runs a local code server started, by the worker pids Dagster logs: a pid whose process
    started after that event is another process; a step worker that is not a local subprocess
    (a Kubernetes job) makes the run's processes unknown."""
    local = {GRPC_INFO_TAG: '{"host": "localhost", "port": 4266}'}
    dead, alive, reused, remote_steps, elsewhere = (started_run(instance, local) for _ in range(5))
    now, born = time.time(), psutil.Process().create_time()
    worker_event(instance, dead, dead_pid(), now)
    worker_event(instance, dead, dead_pid(), now, 'Executing step "hog" in subprocess.')
    worker_event(instance, alive, os.getpid(), now)
    worker_event(instance, reused, os.getpid(), born - 100)
    worker_event(instance, remote_steps, dead_pid(), now)
    worker_event(instance, remote_steps, dead_pid(), now, 'Step worker started for "hog".')
    instance.add_run_tags(elsewhere.run_id, {GRPC_INFO_TAG: '{"host": "code-server.example", "port": 4266}'})
    worker_event(instance, elsewhere, dead_pid(), now)
    assert sorted(reap_dead_runs(instance, lambda line: None)) == sorted([dead.run_id, reused.run_id])
    for run in (alive, remote_steps, elsewhere):
        assert status(instance, run.run_id) == dg.DagsterRunStatus.STARTED


def test_recuration_is_not_blocked_by_a_killed_batch_run(home, instance):
    from dsel_assets.pipeline.code_location import build_definitions

    defs = build_definitions(home, model="tiny", device="cpu")
    killed = started_run(
        instance, {PID_TAG: str(dead_pid()), HOST_TAG: process_tags()[HOST_TAG], STARTED_TAG: "1.0"}, "batch_job"
    )
    finished = create_run_for_test(instance, job_name="batch_job", status=dg.DagsterRunStatus.SUCCESS)
    with dg.build_run_status_sensor_context(
        sensor_name="recuration_sensor",
        dagster_event=dg.DagsterEvent(dg.DagsterEventType.RUN_SUCCESS.value, job_name="batch_job"),
        dagster_instance=instance,
        dagster_run=finished,
        repository_def=defs.get_repository_def(),
    ) as context:
        result = defs.resolve_sensor_def("recuration_sensor")(context)
    assert isinstance(result, dg.RunRequest) or "no curation asset is stale" in result.skip_message, result
    assert status(instance, killed.run_id) == dg.DagsterRunStatus.FAILURE
