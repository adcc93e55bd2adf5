"""The schema module on both backends: a fresh database gets every declared table and the
version; an older store is completed (columns added, batch states back-filled) without losing
a row; migrating again is a no-op; a newer database is refused; a failing migration leaves the
database as it was; concurrent migrators end with one record per version. PostgreSQL tests run
against a real server started here (tests/postgres.py) and skip when none can start."""

from __future__ import annotations

import threading
from datetime import datetime

import pytest

from dsel_assets.store import schema, sql


def test_fresh_database_gets_every_declared_table_and_the_version(backend):
    with backend.connect() as conn:
        assert schema.current_version(conn) == 0
        assert schema.migrate(conn) == schema.SCHEMA_VERSION == len(schema.MIGRATIONS)
        sql = schema._Sql(conn)
        for table in schema.TABLES:
            assert sql.columns(table.name) == [c.name for c in table.columns], table.name
        recorded = backend.rows(conn, "SELECT version FROM dsel_schema ORDER BY version")
        assert [r[0] for r in recorded] == [number for number, _, _ in schema.MIGRATIONS]


def test_migrating_again_is_a_no_op_and_keeps_rows(backend):
    with backend.connect() as conn:
        schema.migrate(conn)
        backend.rows(conn, "INSERT INTO warmups (warmup, path) VALUES (?, ?)", ["w1", "models/warmup/w1"])
        for _ in range(3):
            assert schema.migrate(conn) == schema.SCHEMA_VERSION
        assert backend.rows(conn, "SELECT count(*) FROM dsel_schema")[0][0] == len(schema.MIGRATIONS)
        assert backend.rows(conn, "SELECT warmup, path FROM warmups") == [("w1", "models/warmup/w1")]


#: the layout of a store from before schema versions and batch states (hand-written, as shipped then)
OLD_LAYOUT = {
    "duckdb": [
        "CREATE TABLE batches (batch VARCHAR PRIMARY KEY, source VARCHAR, task VARCHAR, split VARCHAR, "
        "fmt VARCHAR, layout VARCHAR, mapping VARCHAR, original_path VARCHAR, stored_path VARCHAR, "
        "sha256 VARCHAR, size_bytes BIGINT, registered_at TIMESTAMP)",
        "CREATE TABLE examples (pool_id VARCHAR, batch VARCHAR, split VARCHAR, source VARCHAR, task VARCHAR, "
        "messages STRUCT(role VARCHAR, content VARCHAR)[], n_turns INTEGER, n_tokens INTEGER, file_path VARCHAR, "
        "file_sha256 VARCHAR, position BIGINT, raw VARCHAR, meta VARCHAR)",
        "CREATE TABLE selections (method VARCHAR, budget VARCHAR, k INTEGER, eligible INTEGER, rank INTEGER, "
        "pool_id VARCHAR, score DOUBLE, pool_version VARCHAR, config VARCHAR, diagnostics VARCHAR, "
        "mlflow_run_id VARCHAR, created_at TIMESTAMP)",
        "CREATE TABLE golden_score (pool_id VARCHAR, golden_score DOUBLE, model VARCHAR)",
    ],
    "postgres": [
        "CREATE TABLE batches (batch TEXT PRIMARY KEY, source TEXT, task TEXT, split TEXT, fmt TEXT, layout TEXT, "
        "mapping TEXT, original_path TEXT, stored_path TEXT, sha256 TEXT, size_bytes BIGINT, registered_at TIMESTAMP)",
        "CREATE TABLE examples (pool_id TEXT, batch TEXT, split TEXT, source TEXT, task TEXT, messages JSONB, "
        "n_turns INTEGER, n_tokens INTEGER, file_path TEXT, file_sha256 TEXT, position BIGINT, raw TEXT, meta TEXT)",
        "CREATE TABLE selections (method TEXT, budget TEXT, k INTEGER, eligible INTEGER, rank INTEGER, "
        "pool_id TEXT, score DOUBLE PRECISION, pool_version TEXT, config TEXT, diagnostics TEXT, "
        "mlflow_run_id TEXT, created_at TIMESTAMP)",
        "CREATE TABLE golden_score (pool_id TEXT, golden_score DOUBLE PRECISION, model TEXT)",
    ],
}


def test_a_store_from_before_versions_is_completed_without_losing_a_row(backend):
    registered = datetime(2026, 1, 2, 3, 4, 5)
    with backend.connect() as conn:
        for statement in OLD_LAYOUT[backend.dialect]:
            backend.rows(conn, statement)
        for batch in ("with_rows", "empty"):
            backend.rows(conn, "INSERT INTO batches (batch, registered_at) VALUES (?, ?)", [batch, registered])
        backend.rows(conn, "INSERT INTO examples (pool_id, batch) VALUES ('p1', 'with_rows')")
        backend.rows(conn, "INSERT INTO selections (method, pool_id, rank) VALUES ('random', 'p1', 0)")
        backend.rows(conn, "INSERT INTO golden_score VALUES ('p1', 0.5, 'm')")

        assert schema.migrate(conn) == schema.SCHEMA_VERSION
        states = backend.rows(conn, "SELECT batch, validated_at, error FROM batches ORDER BY batch")
        # a batch that had rows was validated when registered; one without rows is still to validate
        assert states == [("empty", None, None), ("with_rows", registered, None)]
        assert backend.rows(conn, "SELECT pool_id, batch FROM examples") == [("p1", "with_rows")]
        assert backend.rows(conn, "SELECT method, pool_id, selection_seed FROM selections") == [("random", "p1", 0)]
        # golden scores without their anchor set cannot be told apart from new ones: recomputed
        assert backend.rows(conn, "SELECT count(*) FROM golden_score") == [(0,)]
        sql = schema._Sql(conn)
        for table in schema.TABLES:  # missing tables created, old ones completed to the declaration
            assert set(sql.columns(table.name)) == {c.name for c in table.columns}, table.name


def test_a_newer_database_is_refused(backend):
    with backend.connect() as conn:
        schema.migrate(conn)
        newer = schema.SCHEMA_VERSION + 1
        backend.rows(conn, "INSERT INTO dsel_schema VALUES (?, 'from the future', NULL)", [newer])
        with pytest.raises(schema.SchemaError, match=f"version {newer}, newer than this dsel"):
            schema.migrate(conn)


def test_a_failing_migration_leaves_the_database_as_it_was(backend, monkeypatch):
    def half_then_fail(sql):
        sql.run("CREATE TABLE half_done (x INTEGER)")
        raise RuntimeError("disk full")

    monkeypatch.setattr(schema, "MIGRATIONS", (*schema.MIGRATIONS, (schema.SCHEMA_VERSION + 1, "bad", half_then_fail)))
    monkeypatch.setattr(schema, "SCHEMA_VERSION", schema.SCHEMA_VERSION + 1)
    with backend.connect() as conn:
        with pytest.raises(RuntimeError, match="disk full"):
            schema.migrate(conn, attempts=2)
        assert schema.current_version(conn) == 0
        assert schema._Sql(conn).columns("half_done") == []
        assert schema._Sql(conn).columns("batches") == []


def test_concurrent_migrators_end_with_one_record_per_version(backend):
    """Six connections migrate a fresh database at once (threads; on DuckDB connections of one
    process, the only way DuckDB shares a file): all end at the current version, no error."""
    start, errors, versions = threading.Barrier(6), [], []

    def migrate():
        try:
            with backend.connect() as conn:
                start.wait()
                versions.append(schema.migrate(conn, attempts=20))
        except Exception as exc:  # collected: a thread's exception would not fail the test
            errors.append(exc)

    for _ in range(5):  # several rounds: a race that needs a lucky interleaving shows up
        backend.new_database()
        errors.clear()
        versions.clear()
        threads = [threading.Thread(target=migrate) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert errors == [] and versions == [schema.SCHEMA_VERSION] * 6
        with backend.connect() as conn:
            recorded = backend.rows(conn, "SELECT version FROM dsel_schema ORDER BY version")
            assert [r[0] for r in recorded] == [number for number, _, _ in schema.MIGRATIONS]


def test_score_tables_are_created_and_an_old_one_gets_its_template_column(backend):
    with backend.connect() as conn:
        schema.ensure_score_table(conn, "loss_scores")
        sql = schema._Sql(conn)
        assert sql.columns("loss_scores") == [c.name for c in schema.SCORE_COLUMNS]
        # a table from before the scoring template was stored: its rows were all chat
        backend.rows(conn, "CREATE TABLE greedy_scores (pool_id TEXT, batch TEXT)")
        backend.rows(conn, "INSERT INTO greedy_scores VALUES ('p1', 'b1')")
        extra = (schema.Column("adapter", "text"),)
        schema.ensure_score_table(conn, "greedy_scores", extra=extra)
        assert set(sql.columns("greedy_scores")) == {c.name for c in (*schema.SCORE_COLUMNS, *extra)}
        assert backend.rows(conn, "SELECT pool_id, prompt_template, adapter FROM greedy_scores") == [
            ("p1", "chat", None)
        ]
        with pytest.raises(ValueError, match="not a plain identifier"):
            schema.ensure_score_table(conn, "x; DROP TABLE batches")


def test_catalog_questions_answer_the_same_on_both_backends(backend):
    with backend.connect() as conn:
        assert not schema.table_exists(conn, "warmups")
        assert schema.columns(conn, "warmups") == []
        schema.migrate(conn)
        schema.ensure_score_table(conn, "loss_scores")
        assert schema.table_exists(conn, "warmups")
        assert schema.columns(conn, "warmups")[:2] == ["warmup", "path"]
        # by hand from the declarations: every declared table with a pool_id column, and the score table
        expected = sorted(
            {t.name for t in schema.TABLES if any(c.name == "pool_id" for c in t.columns)} | {"loss_scores"}
        )
        assert schema.tables_with_column(conn, "pool_id") == expected


def test_the_backend_is_read_from_the_connection(backend):
    """Assets call the schema helpers with their connection only (a PostgreSQL one in cluster
    mode): its class picks the backend, and anything else is refused by name."""
    with backend.connect() as conn:
        assert sql.dialect(conn) == backend.dialect
        schema.migrate(conn)
        schema.ensure_score_table(conn, "loss_scores")
        assert "prompt_template" in schema.columns(conn, "loss_scores")
        assert schema.table_exists(conn, "loss_scores") and "loss_scores" in schema.tables_with_column(conn, "pool_id")
        assert schema.current_version(conn) == schema.SCHEMA_VERSION


def test_a_connection_of_no_known_backend_is_refused(tmp_path):
    import sqlite3

    with pytest.raises(TypeError, match="Connection is neither a DuckDB nor a psycopg connection"):
        sql.run(sqlite3.connect(tmp_path / "x.db"), "SELECT 1")
