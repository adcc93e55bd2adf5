"""One statement on either backend: the connection's class picks its backend module
(``duckdb_backend`` or ``postgres_backend``, which share these functions' names); everything
above speaks ``?``-placeholder SQL through here and never asks which backend it is on."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from types import ModuleType

import duckdb
import polars as pl

from . import duckdb_backend, postgres_backend

#: a table or column name that may be put into SQL text (every other value is bound)
IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]*$")


def backend(conn) -> ModuleType:
    """The backend module of ``conn``: a DuckDB connection or a psycopg one."""
    if isinstance(conn, duckdb.DuckDBPyConnection):
        return duckdb_backend
    try:
        import psycopg
    except ImportError:  # the deploy extra is not installed: no PostgreSQL connection can exist
        psycopg = None
    if psycopg is not None and isinstance(conn, psycopg.Connection):
        if not conn.autocommit:
            raise ValueError("postgres connection: open it with autocommit=True (the store runs its own transactions)")
        return postgres_backend
    raise TypeError(f"state database connection: {type(conn).__name__} is neither a DuckDB nor a psycopg connection")


def dialect(conn) -> str:
    """``duckdb`` or ``postgres``: the name of ``conn``'s backend."""
    return backend(conn).NAME


def check_identifiers(*names: str) -> None:
    """Refuse a name that is not a plain identifier before it reaches SQL text."""
    for name in names:
        if not IDENTIFIER.match(name):
            raise ValueError(f"table: {name!r} is not a plain identifier")


def run(conn, sql: str, params: Sequence[object] = ()) -> list[tuple]:
    """All rows of one statement."""
    return backend(conn).run(conn, sql, params)


def one(conn, sql: str, params: Sequence[object] = ()) -> tuple | None:
    """The first row (the result fully consumed, as DuckDB wants before the next statement)."""
    rows = run(conn, sql, params)
    return rows[0] if rows else None


def frame(conn, sql: str, params: Sequence[object] = ()) -> pl.DataFrame:
    """A query result as polars."""
    return backend(conn).frame(conn, sql, params)


def in_list(conn) -> str:
    """SQL for "value is in the bound list" in ``conn``'s dialect (``{}`` = the value)."""
    return backend(conn).IN_LIST


def insert(conn, table: str, rows: pl.DataFrame) -> None:
    """Append ``rows`` to ``table`` by column name."""
    if rows.height:
        backend(conn).insert(conn, table, rows)


def serialize(conn, *key: object) -> None:
    """Inside a transaction, make other writers of the same ``key`` wait for this one to commit
    (where the backend interleaves writers; see each backend's ``serialize``)."""
    backend(conn).serialize(conn, json.dumps(key, default=str))


def now() -> datetime:
    """The current UTC time without a zone (as both backends store TIMESTAMP)."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


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
