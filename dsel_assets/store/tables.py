"""Writes of the state database (batches and their rows, score chunks, selections, tables
replaced whole) and the state home's raw-file store, on DuckDB or PostgreSQL alike.

Values are always bound (``?``); frames go in through an Arrow scan on DuckDB and ``COPY`` on
PostgreSQL. Every write that replaces a batch, a chunk or a selection runs in one
transaction, so readers never see half of one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import duckdb
import polars as pl
import psutil

from dsel_assets.store import artifacts, schema
from dsel_assets.store.queries import _in_list, _now, _run, dialect_of
from dsel_assets.store.schema import _IDENTIFIER

SPLITS = ("pool", "query", "eval")
_KEY_CHARS = re.compile(r"[^a-z0-9_-]+")


class StateDatabaseError(RuntimeError):
    """The state database cannot be opened (busy past the wait, or not a DuckDB file)."""


def connect(
    path: str | Path, read_only: bool = False, wait_s: float | None = None, log=None
) -> duckdb.DuckDBPyConnection:
    """Open the state database, waiting (bounded: ``wait_s``, default ``DSEL_DB_WAIT_S`` or
    120 s) while another process holds its write lock, with one message saying so; errors
    become :class:`StateDatabaseError` with what to do."""
    wait_s = float(os.environ.get("DSEL_DB_WAIT_S", "120")) if wait_s is None else wait_s
    deadline, told = time.monotonic() + wait_s, False
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only)
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower():
                raise StateDatabaseError(
                    f"the state database {path} cannot be opened ({exc}); if it is damaged, move it aside "
                    "and re-ingest the raw files (kept under raw/)"
                ) from exc
            if time.monotonic() >= deadline:
                raise StateDatabaseError(
                    f"the state database {path} is still in use by another process after {wait_s:.0f}s "
                    f"({exc}); wait for it to finish or raise DSEL_DB_WAIT_S"
                ) from exc
            if not told and log is not None:
                log(f"[dsel] the state database is in use by another process; waiting up to {wait_s:.0f}s")
                told = True
            time.sleep(0.25)
        except duckdb.Error as exc:
            raise StateDatabaseError(
                f"the state database {path} cannot be opened ({type(exc).__name__}: {exc}); if it is damaged, "
                "move it aside and re-ingest the raw files (kept under raw/)"
            ) from exc


DATABASE_URL = "DSEL_DATABASE_URL"


def database_url() -> str | None:
    """The PostgreSQL URL of a cluster's state database (``DSEL_DATABASE_URL``), read at each
    connection and never kept in configuration, or None for the embedded DuckDB file."""
    return os.environ.get(DATABASE_URL) or None


def redacted(url: str) -> str:
    """``url`` without its password (for logs and lineage)."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1@", url)


def connect_postgres(url: str):
    """A PostgreSQL connection in autocommit mode (the store opens its own transactions); a
    server that cannot be reached raises :class:`StateDatabaseError`."""
    import psycopg

    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=30)
    except psycopg.OperationalError as exc:
        raise StateDatabaseError(f"the state database at {redacted(url)} cannot be reached ({exc})") from exc


@contextmanager
def exclusive(key: str, lock_dir: Path) -> Iterator[None]:
    """Hold the lock named ``key`` across processes for the block: a PostgreSQL advisory lock
    when the state database is PostgreSQL (every pod of a cluster shares it), else a file lock
    under ``lock_dir`` (the processes of one host)."""
    url = database_url()
    if url:
        conn = connect_postgres(url)
        try:
            _run(conn, "SELECT pg_advisory_lock(hashtextextended(?, 0))", [key])
            yield
        finally:
            conn.close()  # ends the session, and with it the lock
        return
    from filelock import FileLock

    lock_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(lock_dir / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.lock"):
        yield


@contextmanager
def open_state(duckdb_file: str | Path, read_only: bool = False, log=None) -> Iterator:
    """The state database for the CLI and lineage: PostgreSQL when ``DSEL_DATABASE_URL`` is
    set, else the home's DuckDB file (see :func:`connect`). Closed when the block ends."""
    url = database_url()
    with connect_postgres(url) if url else connect(duckdb_file, read_only=read_only, log=log) as conn:
        yield conn


def ensure_schema(conn) -> None:
    """Bring the state database to the current schema (``dsel_assets.store.schema``)."""
    schema.migrate(conn, dialect_of(conn))


def one(conn, sql: str, params: list | None = None) -> tuple | None:
    """The first row (the result fully consumed, as DuckDB wants before the next statement)."""
    rows = _run(conn, sql, params)
    return rows[0] if rows else None


@dataclass(frozen=True)
class BatchManifest:
    """What a pool batch is: one ingested file and how to read it."""

    batch: str
    source: str
    task: str
    split: str
    fmt: str | None
    layout: str | None
    mapping: str | None
    original_path: str
    stored_path: str
    sha256: str
    size_bytes: int


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def batch_key(source: str, sha256: str, split: str = "pool") -> str:
    """Partition key of a file: its source name (sanitised), split and content hash prefix.
    Always a valid Lance / Dagster name: starts with a letter or digit, then ``[a-z0-9_-]``."""
    name = _KEY_CHARS.sub("_", source.lower()).strip("_-")[:40].strip("_-") or "batch"
    return f"{name}-{split}-{sha256[:12]}"


def store_raw_file(path: Path, raw: str | Path) -> tuple[str, str, int]:
    """Copy ``path`` into the content-addressed raw store ``raw`` (a local folder, or an
    object-store URI on a cluster) as ``<raw>/<sha256>/<name>``. Returns where it is stored,
    the sha256 of the bytes actually stored and their size. The bytes are hashed while they are
    copied, so the hash is that of the stored copy even if the source changes meanwhile."""
    if not artifacts.is_remote(str(raw)):
        stored, sha, size = _store_local_copy(path, Path(str(raw).removeprefix("file://")))
        return str(stored), sha, size
    with tempfile.TemporaryDirectory(prefix="dsel-raw-") as staging:
        local, sha, size = _store_local_copy(path, Path(staging))
        uri = artifacts.join(raw, sha, path.name)
        if not artifacts.exists(uri):  # one object per put: an existing one is whole
            artifacts.put_file(local, uri)
    return uri, sha, size


def _store_local_copy(path: Path, raw_dir: Path) -> tuple[Path, str, int]:
    """Stream ``path`` to a temporary file in ``raw_dir`` while hashing, fsync, then rename to
    ``raw_dir/<sha256>/<name>``. A file already stored under that hash is trusted only when it
    re-hashes to it (a partial copy left by a killed process is replaced)."""
    raw_dir.mkdir(parents=True, exist_ok=True)
    digest, size = hashlib.sha256(), 0
    _remove_orphan_copies(raw_dir)
    with tempfile.NamedTemporaryFile(dir=raw_dir, prefix=f".incoming-{os.getpid()}-", delete=False) as tmp:
        try:
            with path.open("rb") as src:
                for block in iter(lambda: src.read(1 << 22), b""):
                    digest.update(block)
                    tmp.write(block)
                    size += len(block)
            tmp.flush()
            os.fsync(tmp.fileno())
        except BaseException:
            Path(tmp.name).unlink(missing_ok=True)
            raise
    sha = digest.hexdigest()
    stored = raw_dir / sha / path.name
    if stored.is_file() and not stored.is_symlink() and file_sha256(stored) == sha:
        Path(tmp.name).unlink()
    else:
        stored.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp.name, stored)
        _fsync_dir(stored.parent)
    return stored, sha, size


def _remove_orphan_copies(raw_dir: Path) -> None:
    """Delete temporary copies left by processes that died mid-copy (their pid is gone)."""
    for leftover in raw_dir.glob(".incoming-*"):
        pid = leftover.name.split("-")[1]
        if pid.isdigit() and not psutil.pid_exists(int(pid)):
            leftover.unlink(missing_ok=True)


def _fsync_dir(folder: Path) -> None:
    """Make a rename inside ``folder`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def find_batch_by_sha(conn, sha256: str, split: str) -> str | None:
    ensure_schema(conn)
    row = one(conn, "SELECT batch FROM batches WHERE sha256 = ? AND split = ?", [sha256, split])
    return row[0] if row else None


def register_batch(
    conn,
    path: Path,
    raw: str | Path,
    *,
    source: str,
    task: str,
    split: str = "pool",
    fmt: str | None = None,
    layout: str | None = None,
    mapping: str | None = None,
    update: bool = False,
) -> tuple[BatchManifest, bool]:
    """Store ``path`` in the content-addressed raw store ``raw`` (a folder or an object-store
    URI) and record its manifest.
    Returns (manifest, created); the same file (same sha256, same split) is registered once.
    With ``update`` an existing batch takes the given source, task and reading options (a
    re-ingest with ``--force`` after fixing ``--layout`` or ``--mapping``)."""
    if split not in SPLITS:
        raise ValueError(f"split: {split!r} is not one of {SPLITS}")
    ensure_schema(conn)
    stored, sha, size = store_raw_file(path, raw)
    options = {"source": source, "task": task, "fmt": fmt, "layout": layout, "mapping": mapping}
    existing = find_batch_by_sha(conn, sha, split)
    if existing is not None:
        manifest = get_batch(conn, existing)
        changes = {**options, "stored_path": str(stored)} if update else {"stored_path": str(stored)}
        changes = {k: v for k, v in changes.items() if getattr(manifest, k) != v}
        if changes:
            assignments = ", ".join(f"{column} = ?" for column in changes)
            _run(conn, f"UPDATE batches SET {assignments} WHERE batch = ?", [*changes.values(), existing])
            manifest = replace(manifest, **changes)
        return manifest, False
    manifest = BatchManifest(
        batch=batch_key(source, sha, split),
        split=split,
        original_path=str(path.resolve()),
        stored_path=str(stored),
        sha256=sha,
        size_bytes=size,
        **options,
    )
    values = asdict(manifest)
    _run(
        conn,
        f"INSERT INTO batches ({', '.join(values)}, registered_at) VALUES ({', '.join('?' * len(values))}, ?)",
        [*values.values(), _now()],
    )
    return manifest, True


def get_batch(conn, batch: str) -> BatchManifest:
    ensure_schema(conn)
    names = list(BatchManifest.__dataclass_fields__)
    row = one(conn, f"SELECT {', '.join(names)} FROM batches WHERE batch = ?", [batch])
    if row is None:
        raise KeyError(f"batch: {batch!r} is not registered; run `dsel ingest PATH` first")
    return BatchManifest(**dict(zip(names, row, strict=True)))


def ids_before(conn, batch: str) -> dict[str, str]:
    """Ids stored by batches registered before ``batch`` -> "batch (split)": the rows a new
    batch must not repeat. Ids stay unique across the whole store, whatever the split."""
    rows = _run(
        conn,
        """SELECT e.pool_id, b.batch, b.split FROM examples e JOIN batches b ON b.batch = e.batch
           WHERE b.registered_at < (SELECT registered_at FROM batches WHERE batch = ?)""",
        [batch],
    )
    return {pool_id: f"batch {name} ({split})" for pool_id, name, split in rows}


_open_transactions: dict[int, int] = {}  # id(connection) -> nesting depth


@contextmanager
def transaction(conn) -> Iterator:
    """BEGIN ... COMMIT, or ROLLBACK when the body raises: readers never see half a write.
    A transaction opened inside another on the same connection joins it: one commit at the
    end of the outermost, and a failure anywhere rolls back all of it."""
    key = id(conn)
    if _open_transactions.get(key):
        _open_transactions[key] += 1
        try:
            yield conn
        finally:
            _open_transactions[key] -= 1
        return
    conn.execute("BEGIN TRANSACTION")
    _open_transactions[key] = 1
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    else:
        conn.execute("COMMIT")
    finally:
        del _open_transactions[key]


#: polars dtype -> PostgreSQL type of a column of a table replaced whole from a frame
_PG_TYPES = {
    pl.String: "TEXT",
    pl.Boolean: "BOOLEAN",
    pl.Int8: "INTEGER",
    pl.Int16: "INTEGER",
    pl.Int32: "INTEGER",
    pl.Int64: "BIGINT",
    pl.UInt32: "BIGINT",
    pl.Float32: "REAL",
    pl.Float64: "DOUBLE PRECISION",
    pl.Datetime: "TIMESTAMP",
}


def _pg_type(dtype: pl.DataType) -> str:
    if isinstance(dtype, pl.List) and dtype.inner in _PG_TYPES:
        return f"{_PG_TYPES[dtype.inner]}[]"
    if isinstance(dtype, (pl.List, pl.Struct)):
        return "JSONB"
    base = dtype.base_type() if hasattr(dtype, "base_type") else dtype
    if base not in _PG_TYPES:
        raise TypeError(f"column type {dtype} has no PostgreSQL counterpart here")
    return _PG_TYPES[base]


@contextmanager
def _registered(conn, name: str, rows: pl.DataFrame) -> Iterator[None]:
    """``rows`` visible to DuckDB SQL as view ``name`` for the duration of the block."""
    conn.register(name, rows.to_arrow())
    try:
        yield
    finally:
        conn.unregister(name)


def _insert(conn, table: str, rows: pl.DataFrame) -> None:
    """Append ``rows`` to ``table`` by column name: an Arrow scan on DuckDB, COPY on PostgreSQL
    (nested values - a conversation, a struct - as JSON)."""
    if rows.height == 0:
        return
    if dialect_of(conn) == "duckdb":
        with _registered(conn, "_dsel_rows", rows):
            conn.execute(f"INSERT INTO {table} BY NAME SELECT * FROM _dsel_rows")
        return
    from psycopg.types.json import Jsonb

    nested = [isinstance(d, pl.Struct) or (isinstance(d, pl.List) and _pg_type(d) == "JSONB") for d in rows.dtypes]
    with conn.cursor().copy(f"COPY {table} ({', '.join(rows.columns)}) FROM STDIN") as copy:
        for row in rows.iter_rows():
            copy.write_row([Jsonb(v) if n and v is not None else v for v, n in zip(row, nested, strict=True)])


def replace_table(conn, name: str, frame: pl.DataFrame) -> None:
    """Make table ``name`` (one of ours, a plain identifier) exactly ``frame``, in one
    transaction, with the frame's columns (a table an asset rewrites whole: reports, labels)."""
    if not _IDENTIFIER.match(name):
        raise ValueError(f"table: {name!r} is not a plain identifier")
    if dialect_of(conn) == "duckdb":  # one statement: atomic on its own
        with _registered(conn, "_dsel_new_rows", frame):
            conn.execute(f"CREATE OR REPLACE TABLE {name} AS SELECT * FROM _dsel_new_rows")
        return
    columns = ", ".join(f"{column} {_pg_type(dtype)}" for column, dtype in frame.schema.items())
    with transaction(conn):
        conn.execute(f"DROP TABLE IF EXISTS {name}")
        conn.execute(f"CREATE TABLE {name} ({columns})")
        _insert(conn, name, frame)


def _serialize(conn, *key: object) -> None:
    """Inside a transaction on PostgreSQL, wait for any other writer of the same ``key`` (e.g.
    one table's batch) to commit: two runs replacing the same rows at once would otherwise each
    delete before the other's insert is visible and leave both. DuckDB admits one writing
    process per file and fails the second of two conflicting transactions instead."""
    if dialect_of(conn) == "postgres":
        _run(conn, "SELECT pg_advisory_xact_lock(hashtextextended(?, 0))", [json.dumps(key, default=str)])


def upsert_by_id(conn, table: str, rows: pl.DataFrame, match: dict | None = None) -> None:
    """In one transaction, replace the rows of ``table`` with ``rows``'s pool ids (and the
    ``match`` column values) by ``rows``: a chunk written by a resumable asset lands whole or
    not at all."""
    match = match or {}
    for name in (table, *match):
        if not _IDENTIFIER.match(name):
            raise ValueError(f"table: {name!r} is not a plain identifier")
    where = "".join(f" AND {column} = ?" for column in match)
    with transaction(conn):
        _serialize(conn, table, match)
        _run(
            conn,
            f"DELETE FROM {table} WHERE {_in_list(conn).format('pool_id')}{where}",
            [rows["pool_id"].to_list(), *match.values()],
        )
        _insert(conn, table, rows)


def replace_batch(conn, manifest: BatchManifest, accepted: pl.DataFrame, quarantined: pl.DataFrame) -> None:
    """Atomically make the batch's examples and quarantine rows exactly these frames."""
    with transaction(conn):
        _serialize(conn, "batch", manifest.batch)
        _run(conn, "DELETE FROM examples WHERE batch = ?", [manifest.batch])
        _run(conn, "DELETE FROM quarantine WHERE batch = ?", [manifest.batch])
        _insert(conn, "examples", accepted)
        _insert(conn, "quarantine", quarantined)
        _run(conn, "UPDATE batches SET validated_at = ?, error = NULL WHERE batch = ?", [_now(), manifest.batch])


def mark_batch_failed(conn, batch: str, error: str) -> None:
    """Record why a batch's validation failed (``dsel status`` lists it; a rerun retries it)."""
    _run(conn, "UPDATE batches SET error = ? WHERE batch = ?", [error[:2000], batch])


def is_validated(conn, batch: str) -> bool:
    """Whether the batch's validation finished (its rows are in ``examples`` / ``quarantine``)."""
    row = one(conn, "SELECT validated_at IS NOT NULL FROM batches WHERE batch = ?", [batch])
    return bool(row and row[0])


def accepted_frame(manifest: BatchManifest, rows: list[dict]) -> pl.DataFrame:
    schema = {
        "pool_id": pl.String,
        "batch": pl.String,
        "split": pl.String,
        "source": pl.String,
        "task": pl.String,
        "messages": pl.List(pl.Struct({"role": pl.String, "content": pl.String})),
        "n_turns": pl.Int32,
        "n_tokens": pl.Int32,
        "file_path": pl.String,
        "file_sha256": pl.String,
        "position": pl.Int64,
        "raw": pl.String,
        "meta": pl.String,
    }
    records = [
        {
            **{k: row[k] for k in ("pool_id", "messages", "n_turns", "n_tokens", "position", "raw", "meta")},
            "batch": manifest.batch,
            "split": manifest.split,
            "source": manifest.source,
            "task": manifest.task if manifest.task != "auto" else (row["record_task"] or "general"),
            "file_path": manifest.stored_path,
            "file_sha256": manifest.sha256,
        }
        for row in rows
    ]
    return pl.DataFrame(records, schema=schema)


def quarantine_frame(manifest: BatchManifest, rows: list[dict]) -> pl.DataFrame:
    schema = {
        "batch": pl.String,
        "file_path": pl.String,
        "file_sha256": pl.String,
        "position": pl.Int64,
        "reason": pl.String,
        "detail": pl.String,
        "raw": pl.String,
    }
    records = [
        {**row, "batch": manifest.batch, "file_path": manifest.stored_path, "file_sha256": manifest.sha256}
        for row in rows
    ]
    return pl.DataFrame(records, schema=schema)


def pool_version(conn) -> tuple[str, list[str]]:
    """Hash of the manifests of every materialized pool batch, and those batch keys."""
    rows = _run(
        conn,
        """SELECT b.batch, b.sha256, b.source, b.task, b.layout, b.mapping FROM batches b
           WHERE b.split = 'pool' AND EXISTS (SELECT 1 FROM examples e WHERE e.batch = b.batch)
           ORDER BY b.batch""",
    )
    digest = hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]
    return digest, [r[0] for r in rows]


def write_selection(conn, method: str, budget: str, rows: pl.DataFrame) -> None:
    """Replace one (method, budget) selection atomically, every selection seed of it at once."""
    replace_rows(conn, "selections", {"method": method, "budget": budget}, rows)


def write_selection_replicate(
    conn, method: str, budget: str, selection_seed: int, rows: pl.DataFrame, replicates: list[int] | None = None
) -> None:
    """Replace one replicate (``selection_seed``) of a (method, budget) selection atomically,
    keeping the budget's other replicates - those of the same pool version as ``rows`` and, when
    ``replicates`` is given, among those selection seeds; the rest (another pool's draw, a seed
    this replicate family no longer has) are dropped with it."""
    seeds = rows["selection_seed"].unique().to_list()
    versions = rows["pool_version"].unique().to_list()
    if seeds != [selection_seed] or len(versions) != 1:
        raise ValueError(f"rows: one replicate (selection seed {selection_seed}) of one pool version, got {seeds}")
    stale = "selection_seed = ? OR pool_version <> ?"
    params: list[object] = [method, budget, selection_seed, versions[0]]
    if replicates is not None:
        stale += f" OR NOT ({_in_list(conn).format('selection_seed')})"
        params.append([int(s) for s in replicates])
    with transaction(conn):
        _serialize(conn, "selections", {"method": method, "budget": budget})  # as write_selection: one writer
        _run(conn, f"DELETE FROM selections WHERE method = ? AND budget = ? AND ({stale})", params)
        _insert(conn, "selections", rows)


def replace_rows(conn, table: str, match: dict[str, object], rows: pl.DataFrame) -> None:
    """Atomically replace the rows of ``table`` whose columns equal ``match`` by ``rows``."""
    for name in (table, *match):
        if not _IDENTIFIER.match(name):
            raise ValueError(f"table: {name!r} is not a plain identifier")
    where = " AND ".join(f"{column} = ?" for column in match)
    with transaction(conn):
        _serialize(conn, table, match)
        _run(conn, f"DELETE FROM {table} WHERE {where}", list(match.values()))
        _insert(conn, table, rows)
