"""The cluster backend: a PostgreSQL database reached by URL (psycopg, autocommit: the store
opens its own transactions). What differs from DuckDB is here; ``sql`` picks this module for a
psycopg connection."""

from __future__ import annotations

import re
from collections.abc import Sequence

import polars as pl

from .errors import StateDatabaseError

NAME = "postgres"
#: "value is in the bound list" (``{}`` = the value)
IN_LIST = "{} = ANY(?)"

#: polars dtype -> PostgreSQL type of a column of a table replaced whole from a frame
_TYPES = {
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


def redacted(url: str) -> str:
    """``url`` without its password (for logs and lineage)."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1@", url)


def connect(url: str):
    """A connection in autocommit mode; a server that cannot be reached raises
    :class:`StateDatabaseError` naming it without its password."""
    import psycopg

    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=30)
    except psycopg.OperationalError as exc:
        raise StateDatabaseError(f"the state database at {redacted(url)} cannot be reached ({exc})") from exc


def run(conn, sql: str, params: Sequence[object] = ()) -> list[tuple]:
    """All rows of one statement (``?`` placeholders, bound as ``%s``)."""
    cursor = conn.execute(sql.replace("?", "%s"), list(params))
    return cursor.fetchall() if cursor.description else []


def frame(conn, sql: str, params: Sequence[object] = ()) -> pl.DataFrame:
    """A query result as polars, built from the rows."""
    cursor = conn.execute(sql.replace("?", "%s"), list(params))
    names = [d.name for d in cursor.description]
    rows = cursor.fetchall()
    if not rows:
        return pl.DataFrame(schema={n: pl.Null for n in names})
    return pl.DataFrame([dict(zip(names, row, strict=True)) for row in rows])


def column_type(dtype: pl.DataType) -> str:
    """The PostgreSQL type of a frame column (a list of scalars as an array, nested values as JSONB)."""
    if isinstance(dtype, pl.List) and dtype.inner in _TYPES:
        return f"{_TYPES[dtype.inner]}[]"
    if isinstance(dtype, (pl.List, pl.Struct)):
        return "JSONB"
    base = dtype.base_type() if hasattr(dtype, "base_type") else dtype
    if base not in _TYPES:
        raise TypeError(f"column type {dtype} has no PostgreSQL counterpart here")
    return _TYPES[base]


def insert(conn, table: str, rows: pl.DataFrame) -> None:
    """Append ``rows`` to ``table`` by column name with COPY (nested values - a conversation, a
    struct - as JSON)."""
    from psycopg.types.json import Jsonb

    nested = [isinstance(d, pl.Struct) or (isinstance(d, pl.List) and column_type(d) == "JSONB") for d in rows.dtypes]
    with conn.cursor().copy(f"COPY {table} ({', '.join(rows.columns)}) FROM STDIN") as copy:
        for row in rows.iter_rows():
            copy.write_row([Jsonb(v) if n and v is not None else v for v, n in zip(row, nested, strict=True)])


def replace_table(conn, name: str, rows: pl.DataFrame) -> None:
    """Make table ``name`` exactly ``rows`` with their columns (the caller holds a transaction)."""
    columns = ", ".join(f"{column} {column_type(dtype)}" for column, dtype in rows.schema.items())
    conn.execute(f"DROP TABLE IF EXISTS {name}")
    conn.execute(f"CREATE TABLE {name} ({columns})")
    insert(conn, name, rows)


def serialize(conn, key: str) -> None:
    """Inside a transaction, wait for any other writer of the same ``key`` (e.g. one table's
    batch) to commit: two runs replacing the same rows at once would otherwise each delete
    before the other's insert is visible and leave both."""
    run(conn, "SELECT pg_advisory_xact_lock(hashtextextended(?, 0))", [key])
