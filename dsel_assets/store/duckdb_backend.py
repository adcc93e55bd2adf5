"""The embedded backend: the state home's DuckDB file. What differs from PostgreSQL (opening the
file, binding a list, bulk inserts, replacing a table from a frame) is here; ``sql`` picks this
module for a DuckDB connection."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import duckdb
import polars as pl

from .errors import StateDatabaseError

NAME = "duckdb"
#: "value is in the bound list" (``{}`` = the value)
IN_LIST = "{} IN (SELECT unnest(?))"


def connect(path: str | Path, read_only: bool = False, wait_s: float = 120.0, log=None) -> duckdb.DuckDBPyConnection:
    """Open the DuckDB file, waiting up to ``wait_s`` while another process holds its write lock,
    with one message saying so; errors become :class:`StateDatabaseError` with what to do."""
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


def run(conn, sql: str, params: Sequence[object] = ()) -> list[tuple]:
    """All rows of one statement (``?`` placeholders)."""
    cursor = conn.execute(sql, list(params))
    return cursor.fetchall() if cursor.description else []


def frame(conn, sql: str, params: Sequence[object] = ()) -> pl.DataFrame:
    """A query result as polars, through Arrow."""
    return pl.from_arrow(conn.sql(sql, params=list(params) or None).to_arrow_table())


def _with_rows(conn, rows: pl.DataFrame, statement: str) -> None:
    """Run ``statement`` with ``rows`` visible to it as the view ``_dsel_rows`` (an Arrow scan)."""
    conn.register("_dsel_rows", rows.to_arrow())
    try:
        conn.execute(statement)
    finally:
        conn.unregister("_dsel_rows")


def insert(conn, table: str, rows: pl.DataFrame) -> None:
    """Append ``rows`` to ``table`` by column name."""
    _with_rows(conn, rows, f"INSERT INTO {table} BY NAME SELECT * FROM _dsel_rows")


def replace_table(conn, name: str, rows: pl.DataFrame) -> None:
    """Make table ``name`` exactly ``rows`` with their columns, in one (atomic) statement."""
    _with_rows(conn, rows, f"CREATE OR REPLACE TABLE {name} AS SELECT * FROM _dsel_rows")


def serialize(conn, key: str) -> None:
    """Nothing to do: DuckDB admits one writing process per file and fails the second of two
    conflicting transactions instead of interleaving them."""
