"""Ingest as one consistent step: the raw store, batch keys and states, options checked first,
concurrent processes, a damaged state database, and what reaches metadata and logs."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dsel_assets.app.cli import main
from dsel_assets.app.runs import run_batches
from dsel_assets.core.models.loading import resolve
from dsel_assets.pipeline.code_location import build_definitions
from dsel_assets.store import duckdb_backend, raw_files, schema, tables
from dsel_assets.store.errors import StateDatabaseError
from dsel_assets.store.state import State
from resources.models import resolve_model
from resources.store import open_state
from resources.tracking import MlflowTracker, TrackedRun, redact_uri, restore_credentials

from ..helpers import small_tmpfs, write_jsonl

REPO = Path(__file__).resolve().parents[2]
LANCE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")  # resources/lance_store.py's rule


def qa(n: int, offset: int = 0) -> list[str]:
    return [json.dumps({"question": f"What is {i} + 1?", "answer": f"{i + 1}"}) for i in range(offset, offset + n)]


@pytest.fixture()
def tiny(monkeypatch, home):
    monkeypatch.setenv("DSEL_MODEL", "tiny")
    monkeypatch.setenv("DAGSTER_HOME", str(home.dagster))


def test_partial_raw_copy_is_replaced_and_the_stored_hash_is_of_the_stored_bytes(tmp_path):
    src = write_jsonl(tmp_path / "data.jsonl", qa(200))
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    raw = tmp_path / "raw"
    (raw / sha).mkdir(parents=True)
    (raw / sha / "data.jsonl").write_bytes(src.read_bytes()[:100])  # what a killed copy left
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    orphan = raw / f".incoming-{dead.stdout.strip()}-abc"  # a temporary of a process that died
    orphan.write_bytes(b"partial")
    stored, stored_sha, size = raw_files.store_raw_file(src, raw)
    stored = Path(stored)
    assert stored == raw / sha / "data.jsonl" and stored_sha == sha and size == src.stat().st_size
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == sha
    assert not orphan.exists() and not list(raw.glob(".incoming-*"))
    # an intact stored copy is kept (not rewritten)
    before = stored.stat().st_mtime_ns
    time.sleep(0.01)
    assert raw_files.store_raw_file(src, raw)[0] == str(stored) and stored.stat().st_mtime_ns == before


def test_batch_keys_hold_the_split_and_are_valid_names(tmp_path):
    src = write_jsonl(tmp_path / "x.jsonl", qa(2))
    with open_state(tmp_path / "db.duckdb") as db:
        pool, _ = db.register_batch(src, tmp_path / "raw", source="-evil name", task="t")
        query, created = db.register_batch(src, tmp_path / "raw", source="-evil name", task="t", split="query")
    assert created and pool.batch != query.batch
    for key in (pool.batch, query.batch, tables.batch_key("---", "ab" * 32), tables.batch_key("", "cd" * 32)):
        assert LANCE_NAME.match(key) and key[0].isalnum(), key
    assert pool.batch.startswith("evil_name-pool-") and query.batch.startswith("evil_name-query-")


def test_same_file_as_pool_then_query_is_two_batches(home, tiny, tmp_path, capsys):
    src = write_jsonl(tmp_path / "q.jsonl", qa(3))
    assert main(["ingest", str(src)]) == 0
    assert main(["ingest", str(src), "--split", "query"]) == 0  # was a primary-key traceback
    with open_state(home.duckdb, read_only=True) as db:
        splits = db.rows_matching("batches", ["split"], {}).group_by("split").len().sort("split")
        assert splits.rows() == [("pool", 1), ("query", 1)]
        # the second copy of each record is a duplicate: nothing counted twice, nothing lost
        assert db.rows_matching("examples", ["pool_id"], {}).height == 3
        assert db.quarantine_reasons().rows() == [("duplicate", 3)]


def test_options_are_checked_before_anything_is_stored(home, tiny, tmp_path, capsys):
    src = write_jsonl(tmp_path / "x.jsonl", [json.dumps({"q": "Hi?", "a": "Hello."})])
    assert main(["ingest", str(src), "--layout", "nonsense"]) == 2
    assert main(["ingest", str(src), "--layout", "mapped"]) == 2
    assert main(["ingest", str(src), "--layout", "qa", "--mapping", "prompt=q,response=a"]) == 2
    err = capsys.readouterr().err
    assert err.count("dsel: error:") == 3 and "layout" in err and "mapping" in err and "Traceback" not in err
    assert not list(Path(home.raw).rglob("*"))
    if home.duckdb.exists():
        with open_state(home.duckdb, read_only=True) as db:
            tables_present = db.table_exists("batches")
            assert not tables_present or db.rows_matching("batches", ["batch"], {}).height == 0


def test_force_takes_the_new_options(home, tiny, tmp_path, capsys):
    src = write_jsonl(tmp_path / "custom.jsonl", [json.dumps({"q": f"Q{i}?", "a": f"A{i}."}) for i in range(3)])
    assert main(["ingest", str(src)]) == 0
    assert "unknown_layout=3" in capsys.readouterr().out
    assert main(["ingest", str(src), "--force", "--mapping", "prompt=q,response=a"]) == 0
    with open_state(home.duckdb, read_only=True) as db:
        assert db.rows_matching("examples", ["pool_id"], {}).height == 3
        assert db.rows_matching("quarantine", ["batch"], {}).height == 0
        layouts = db.rows_matching("batches", ["layout", "mapping"], {}).rows()
        assert layouts == [(None, "prompt=q,response=a")]


def test_a_failed_validation_is_listed_and_retried(home, tiny, tmp_path, capsys):
    src = write_jsonl(tmp_path / "lost.jsonl", qa(4))
    with open_state(home.duckdb) as db:
        manifest, _ = db.register_batch(src, home.raw, source="lost", task="math")
    Path(manifest.stored_path).unlink()  # the raw copy vanished before validation
    defs = build_definitions(home, model="tiny")
    assert run_batches(defs, [manifest.batch], "batch_job") == [manifest.batch]
    err = capsys.readouterr().err
    assert "FileNotFoundError" in err or "No such file" in err
    assert main(["status"]) == 0
    out = capsys.readouterr().out
    assert manifest.batch in out and "No such file" in out
    # a plain rerun does not skip the unvalidated batch ("already batch"): it re-stores and validates it
    assert main(["ingest", str(src), "--source", "lost", "--task", "math"]) == 0
    out = capsys.readouterr().out
    assert "already batch" not in out and re.search(rf"{manifest.batch}\s+4\s+4\s+0", out)
    with open_state(home.duckdb, read_only=True) as db:
        states = db.rows_matching("batches", ["error", "validated_at"], {}).rows()
        assert [(error, validated_at is not None) for error, validated_at in states] == [(None, True)]
    assert main(["ingest", str(src)]) == 0
    assert "already batch" in capsys.readouterr().out


def test_a_full_disk_names_the_file_and_a_rerun_resumes(home, tiny, tmp_path, capsys):
    folder = tmp_path / "drop"
    folder.mkdir()
    write_jsonl(folder / "a_small.jsonl", qa(3))
    write_jsonl(folder / "b_big.jsonl", qa(4000, offset=100))
    write_jsonl(folder / "c_small.jsonl", qa(2, offset=10_000))
    assert (folder / "b_big.jsonl").stat().st_size > 64 << 10
    with small_tmpfs(Path(home.raw)) as resize:
        assert main(["ingest", str(folder)]) == 1
        err = capsys.readouterr().err
        assert "b_big.jsonl" in err and "1 earlier file(s) stored, not yet validated" in err and "Traceback" not in err
        assert [p.name for p in Path(home.raw).rglob("*.jsonl")] == ["a_small.jsonl"]
        resize(4096)
        assert main(["ingest", str(folder)]) == 0
        assert "already batch" not in capsys.readouterr().out
        with open_state(home.duckdb, read_only=True) as db:
            validated = db.rows_matching("batches", ["validated_at"], {})["validated_at"]
            assert (validated.len(), validated.is_not_null().all()) == (3, True)
            assert db.rows_matching("examples", ["pool_id"], {}).height == 3 + 4000 + 2


def test_a_full_state_home_says_so(home, tiny, tmp_path, capsys):
    """Whatever library fails first on a full disk, and in whatever words, the error says that
    the state home's disk is full and that the same command resumes."""
    root = tmp_path / "full"
    src = write_jsonl(tmp_path / "big.jsonl", qa(4000))
    with small_tmpfs(root):
        assert main(["--home", str(root), "ingest", str(src)]) == 1
    err = capsys.readouterr().err
    assert f"the state home's disk is full (0.0 MiB free at {root})" in err and "run the same command again" in err
    assert "Traceback" not in err


def test_a_second_writer_waits_then_gives_a_clear_error(tmp_path):
    database = tmp_path / "db.duckdb"
    duckdb_backend.connect(database).close()
    hold = f"import duckdb, time; c = duckdb.connect({str(database)!r}); print('held', flush=True); time.sleep(3)"
    holder = subprocess.Popen(
        [sys.executable, "-c", hold],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        messages: list[str] = []
        with pytest.raises(StateDatabaseError, match="still in use by another process"):
            duckdb_backend.connect(database, wait_s=0.5, log=messages.append)
        assert len(messages) == 1 and "waiting up to" in messages[0]
        started = time.monotonic()
        with duckdb_backend.connect(database, wait_s=30) as conn:  # waits for the holder, then works
            db = State(conn)
            assert db.migrate() == schema.SCHEMA_VERSION and db.table_exists("batches")
        assert time.monotonic() - started < 30
    finally:
        holder.kill()
        holder.wait(timeout=10)


def test_a_corrupt_state_database_is_one_line_not_a_traceback(home, capsys):
    home.duckdb.write_bytes(b"not a database" * 100)
    assert main(["status"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot be opened" in err and "Traceback" not in err
    assert "disk is full" not in err  # the disk hint only where the disk is really (nearly) full


def test_two_concurrent_ingests_on_a_fresh_home_both_land(tmp_path):
    home = tmp_path / "fresh"
    env = {**os.environ, "DSEL_MODEL": "tiny", "HF_HUB_OFFLINE": "1", "DSEL_HOME": str(home)}
    env.pop("DAGSTER_HOME", None)
    files = [write_jsonl(tmp_path / f"part{i}.jsonl", qa(5, offset=10 * i)) for i in range(2)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "dsel_assets.app.cli", "-v", "ingest", str(f)],  # -v: library errors live
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for f in files
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err[-2000:]
        assert "Traceback" not in err and "duplicate column name" not in err
    with open_state(home / "dsel.duckdb", read_only=True) as db:
        batches = db.rows_matching("examples", ["batch"], {})["batch"]
    assert (batches.len(), batches.drop_nulls().n_unique()) == (10, 2)


def test_credentials_never_reach_metadata(tmp_path):
    secret = "postgresql://alice:s3cret@db.internal:5432/mlflow?sslmode=require&token=abc123"
    redacted = redact_uri(secret)
    assert "s3cret" not in redacted and "alice" not in redacted and "abc123" not in redacted
    assert redacted == "postgresql://***@db.internal:5432/mlflow?sslmode=require&token=***"
    assert restore_credentials(redacted, [None, secret]) == secret
    assert redact_uri("sqlite:////home/x/mlflow.db") == "sqlite:////home/x/mlflow.db"
    run = TrackedRun(client=None, run_id="r", experiment_id="1", tracking_uri=secret)
    assert "s3cret" not in json.dumps(run.metadata())


def test_mlflow_store_is_created_once_under_a_lock(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = (
        "import sys; from resources.tracking import MlflowTracker; "
        f"print(MlflowTracker(tracking_uri={uri!r}).experiment_id())"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(3)
    ]
    outputs = [p.communicate(timeout=180) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-1500:] for _, err in outputs]
    assert len({out.strip() for out, _ in outputs}) == 1
    assert MlflowTracker(tracking_uri=uri).experiment_id() == outputs[0][0].strip()


def test_unknown_model_names_are_refused_unless_the_hub_is_allowed(home, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DSEL_ALLOW_HUB", raising=False)
    with pytest.raises(ValueError, match="DSEL_ALLOW_HUB=1"):
        resolve("smolm2")  # a typo of an alias
    src = write_jsonl(tmp_path / "x.jsonl", qa(1))
    assert main(["ingest", str(src), "--model", "./no/such/model"]) == 2
    assert "DSEL_ALLOW_HUB=1" in capsys.readouterr().err
    assert not list(Path(home.raw).rglob("*"))
    monkeypatch.setenv("DSEL_ALLOW_HUB", "1")  # read by the resources, which hand it to the core
    assert resolve_model("org/some-model").path == "org/some-model"
    assert resolve("org/some-model", allow_hub=True).path == "org/some-model"
