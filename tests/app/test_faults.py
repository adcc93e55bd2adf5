"""kill -9 at each stage that writes, then the same command again: every row exactly once, no
concurrency slot left to a dead run, no hang (each command has a timeout), and no partial raw
copy trusted. The commands run as real ``dsel`` processes on the tiny model."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import dagster as dg
import lance
import polars as pl
import pytest

from resources.store import open_state

from ..helpers import write_jsonl

REPO = Path(__file__).resolve().parents[2]
RUN_TIMEOUT_S = 420


def dsel_env(home: Path) -> dict[str, str]:
    env = {**os.environ, "DSEL_HOME": str(home), "DSEL_MODEL": "tiny", "HF_HUB_OFFLINE": "1", "DSEL_DEVICE": "cpu"}
    env.pop("DAGSTER_HOME", None)
    return env


def kill_when(args: list[str], home: Path, ready, timeout: float = RUN_TIMEOUT_S, delay_s: float = 0.0) -> str:
    """Start ``dsel ARGS``; SIGKILL it ``delay_s`` after ``ready(output_so_far)`` first holds
    (checked every 10 ms). Fails if the command ends or times out first."""
    proc = subprocess.Popen(
        [sys.executable, "-u", "-m", "dsel_assets.app.cli", "-v", *args],  # -v: the step log lines kill points watch
        cwd=REPO,
        env=dsel_env(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            output = "".join(lines)
            if ready(output):
                time.sleep(delay_s)
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=30)
                return output
            if proc.poll() is not None:
                reader.join(timeout=10)
                ended = f"dsel {' '.join(args)} ended (rc {proc.returncode}) before the kill point"
                pytest.fail(f"{ended}:\n{''.join(lines)[-3000:]}")
            time.sleep(0.01)
        pytest.fail(f"dsel {' '.join(args)}: kill point not reached in {timeout:.0f}s:\n{''.join(lines)[-3000:]}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def run_dsel(args: list[str], home: Path, timeout: float = RUN_TIMEOUT_S) -> str:
    """``dsel ARGS`` to the end within ``timeout`` (a hang fails the test instead of CI)."""
    try:
        done = subprocess.run(
            [sys.executable, "-m", "dsel_assets.app.cli", "-v", *args],
            cwd=REPO,
            env=dsel_env(home),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"dsel {' '.join(args)} hung for {timeout}s:\n{(exc.stderr or b'')[-3000:]}")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done.stdout + done.stderr


def stored(home: Path, table: str, columns: list[str], match: dict | None = None) -> pl.DataFrame:
    """``columns`` of the rows of ``table`` whose ``match`` columns equal the values (all rows by default)."""
    with open_state(home / "dsel.duckdb", read_only=True) as db:
        return db.rows_matching(table, columns, match or {})


def id_counts(home: Path, table: str) -> tuple[int, int]:
    """(rows, distinct pool ids) of ``table``."""
    ids = stored(home, table, ["pool_id"])["pool_id"]
    return ids.len(), ids.drop_nulls().n_unique()


def quarantine_reasons(home: Path) -> list[tuple[str, int]]:
    with open_state(home / "dsel.duckdb", read_only=True) as db:
        return db.quarantine_reasons().rows()


def no_slot_held(home: Path) -> None:
    """Every concurrency slot of the instance is free and no run is left STARTED."""
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        for pool in instance.event_log_storage.get_concurrency_keys():
            info = instance.event_log_storage.get_concurrency_info(pool)
            assert not [s for s in info.claimed_slots], (pool, info.claimed_slots)
        started = instance.get_run_records(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
        assert not started, [r.dagster_run.run_id for r in started]


def qa_lines(n: int, offset: int = 0, task: str = "math") -> list[str]:
    return [
        json.dumps({"question": f"What is {i} plus {i + 3}? Show the sum.", "answer": f"The sum is {2 * i + 3}."})
        for i in range(offset, offset + n)
    ]


def test_kill_during_the_raw_copy(tmp_path):
    home = tmp_path / "home"
    # one huge record (rejected by size before any tokenizing) between good ones: a long copy
    big = tmp_path / "big.jsonl"
    with big.open("w") as fh:
        fh.write("\n".join(qa_lines(3)) + "\n")
        fh.write(json.dumps({"question": "x" * (200 << 20), "answer": "y"}) + "\n")
        fh.write("\n".join(qa_lines(3, offset=3)) + "\n")
    sha = hashlib.sha256(big.read_bytes()).hexdigest()

    def copying(_: str) -> bool:
        partial = list((home / "raw").glob(".incoming-*")) if (home / "raw").is_dir() else []
        return any(p.stat().st_size > 0 for p in partial)

    kill_when(["ingest", str(big)], home, copying)
    assert not (home / "raw" / sha / "big.jsonl").exists()  # nothing partial under the final name
    run_dsel(["ingest", str(big)], home)
    stored = home / "raw" / sha / "big.jsonl"
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == sha
    assert not list((home / "raw").glob(".incoming-*"))
    assert id_counts(home, "examples") == (6, 6)
    assert quarantine_reasons(home) == [("record_too_large", 1)]


def test_kill_during_validation(tmp_path):
    home = tmp_path / "home"
    pool = write_jsonl(tmp_path / "pool.jsonl", qa_lines(20000))
    kill_when(["ingest", str(pool)], home, lambda out: "batch_job for batch" in out, delay_s=1.0)
    run_dsel(["ingest", str(pool)], home)
    assert id_counts(home, "examples") == (20000, 20000)
    assert stored(home, "quarantine", ["batch"]).height == 0
    no_slot_held(home)


def test_kill_during_a_score_chunk_then_rerun_gets_the_slot(tmp_path):
    home = tmp_path / "home"
    pool = write_jsonl(tmp_path / "pool.jsonl", qa_lines(400))
    run_dsel(["ingest", str(pool)], home)
    kill_when(["score", "loss"], home, lambda out: re.search(r"loss_scores\[\S+\]: 128/400", out) is not None)
    started = time.monotonic()
    out = run_dsel(["score", "loss"], home, timeout=240)  # was: waited forever on the dead run's "gpu" slot
    assert time.monotonic() - started < 240
    assert "marked failed" in out or "reaped" in out or "is gone" in out, out[-2000:]
    assert id_counts(home, "loss_scores") == (400, 400)
    no_slot_held(home)


def test_kill_during_a_gradient_chunk(tmp_path):
    home = tmp_path / "home"
    write_jsonl(tmp_path / "pool.jsonl", qa_lines(200))  # two feature chunks (128 + 72)
    write_jsonl(tmp_path / "query.jsonl", qa_lines(4, offset=1000))
    run_dsel(["ingest", str(tmp_path / "query.jsonl"), "--split", "query", "--task", "math"], home)
    run_dsel(["ingest", str(tmp_path / "pool.jsonl"), "--task", "math"], home)
    select = ["select", "--method", "less", "--budget", "5%", "--target", "math", "--grad-dim", "256"]
    kill_when(select, home, lambda out: re.search(r"pool[^\n]*: 128/200 examples", out) is not None)
    run_dsel(select, home)
    features = lance.dataset(str(home / "lance" / "pool_grad_features_d256_rademacher0.lance")).to_table()
    rows: dict[tuple, list[str]] = {}
    for warmup, checkpoint, pool_id in zip(
        *(features.column(c).to_pylist() for c in ("warmup", "checkpoint", "pool_id")), strict=True
    ):
        rows.setdefault((warmup, checkpoint), []).append(pool_id)
    assert rows and all(len(ids) == len(set(ids)) == 200 for ids in rows.values()), {k: len(v) for k, v in rows.items()}
    assert stored(home, "selections", ["pool_id"], {"method": "less"}).height == 10
    no_slot_held(home)


def test_kill_during_a_fine_tune(tmp_path):
    home = tmp_path / "home"
    run = ["run", "--per-capability", "5", "--finetune-epochs", "2", "--eval-per-task", "1"]
    kill_when(run, home, lambda out: "fine-tuning on" in out)
    run_dsel(run, home)
    rows, distinct = id_counts(home, "examples")
    assert rows == distinct
    no_slot_held(home)
