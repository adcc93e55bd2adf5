"""The state database as one resource: the state home's DuckDB file (embedded, the default) or,
when ``DSEL_DATABASE_URL`` is set, a PostgreSQL database (a cluster). Assets, checks and
sensors get their connection here and ask it through ``dsel_assets.store``; the CLI and
lineage open the same database through ``tables.open_state``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg
from dagster_duckdb import DuckDBResource
from pydantic import Field

from dsel_assets.store import tables


class StateStore(dg.ConfigurableResource):
    """Connections to the state database. The PostgreSQL URL is read from the environment at
    each connection, never kept in config, so its password never shows in the UI."""

    database: str = Field(description="The state home's DuckDB file (used unless DSEL_DATABASE_URL is set)")

    @property
    def url(self) -> str | None:
        return tables.database_url()

    @property
    def location(self) -> str:
        """Where the tables are, for lineage: the DuckDB file, or the URL without its password."""
        return self.database if self.url is None else tables.redacted(self.url)

    @contextmanager
    def get_connection(self) -> Iterator:
        """A connection for one unit of work: dagster-duckdb's (retried while another process
        holds the file's write lock) or a PostgreSQL one (``tables.connect_postgres``)."""
        url = self.url
        if url is None:
            with DuckDBResource(database=self.database).get_connection() as conn:
                yield conn
            return
        with tables.connect_postgres(url) as conn:
            yield conn
