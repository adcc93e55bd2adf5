"""The state database as one resource: the state home's DuckDB file (embedded, the default) or,
when ``DSEL_DATABASE_URL`` is set, a PostgreSQL database (a cluster). Assets, checks and
sensors get their connection here and ask it through ``dsel_assets.store``; the CLI's own
reads still open the state home's DuckDB file."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg
from dagster_duckdb import DuckDBResource
from pydantic import Field

DATABASE_URL = "DSEL_DATABASE_URL"


class StateStore(dg.ConfigurableResource):
    """Connections to the state database. The PostgreSQL URL is read from the environment at
    each connection, never kept in config, so its password never shows in the UI."""

    database: str = Field(description="The state home's DuckDB file (used unless DSEL_DATABASE_URL is set)")

    @property
    def url(self) -> str | None:
        return os.environ.get(DATABASE_URL) or None

    @property
    def location(self) -> str:
        """Where the tables are, for lineage: the DuckDB file, or the URL without its password."""
        return self.database if self.url is None else re.sub(r"(://[^:/@]+):[^@]*@", r"\1@", self.url)

    @contextmanager
    def get_connection(self) -> Iterator:
        """A connection for one unit of work: dagster-duckdb's (retried while another process
        holds the file's write lock) or a PostgreSQL one in autocommit mode (the store opens its
        own transactions). A PostgreSQL server that cannot be reached raises ``StateDatabaseError``."""
        if self.url is None:
            with DuckDBResource(database=self.database).get_connection() as conn:
                yield conn
            return
        import psycopg

        from dsel_assets.store.tables import StateDatabaseError

        try:
            conn = psycopg.connect(self.url, autocommit=True, connect_timeout=30)
        except psycopg.OperationalError as exc:
            raise StateDatabaseError(f"the state database at {self.location} cannot be reached ({exc})") from exc
        with conn:
            yield conn
