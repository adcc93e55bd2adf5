"""The state database as one object: every question (``queries.Questions``), every write
(``tables.Writes``) and the schema operations callers need, each a method, over one open
DuckDB or PostgreSQL (psycopg, autocommit) connection. The resource that opens it per backend
is ``resources.store.StateStore``; nothing above the store passes a raw connection around."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from dsel_assets.store import schema, sql
from dsel_assets.store.queries import Questions
from dsel_assets.store.tables import Writes


class State(Questions, Writes):
    """The state database behind ``conn`` (checked once to be a DuckDB or an autocommit psycopg
    connection)."""

    def __init__(self, conn) -> None:
        sql.backend(conn)
        self.conn = conn

    @property
    def dialect(self) -> str:
        """``duckdb`` or ``postgres``."""
        return sql.dialect(self.conn)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One transaction: every write inside it lands together or not at all."""
        with sql.transaction(self.conn):
            yield

    def migrate(self) -> int:
        """Bring the database to the current schema version; returns it."""
        return schema.migrate(self.conn)

    def schema_version(self) -> int:
        """The recorded schema version (0 for a database that has none yet)."""
        return schema.current_version(self.conn)

    def columns(self, table: str) -> list[str]:
        """The columns of ``table`` in order; empty when there is no such table."""
        return schema.columns(self.conn, table)

    def table_exists(self, table: str) -> bool:
        return schema.table_exists(self.conn, table)

    def tables_with_column(self, column: str) -> list[str]:
        """The tables that have ``column``, by name."""
        return schema.tables_with_column(self.conn, column)

    def ensure_score_table(self, name: str, extra: Sequence[schema.Column] = ()) -> None:
        """Create score table ``name`` with the score columns plus ``extra``, or complete an older one."""
        schema.ensure_score_table(self.conn, name, extra)
