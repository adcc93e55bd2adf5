"""The state database as a resource, one class per backend: the state home's DuckDB file
(embedded, the default) or a PostgreSQL database (a cluster, when ``DSEL_DATABASE_URL`` is set).
Assets, checks and sensors open a :class:`~dsel_assets.store.state.State` here (``session``)
and ask it their questions, one method each; the CLI and lineage open the same database through
:func:`open_state`. This module, not the store, reads the environment."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import dagster as dg
from dagster_duckdb import DuckDBResource
from pydantic import Field

from dsel_assets.store import duckdb_backend, postgres_backend
from dsel_assets.store.state import State

DATABASE_URL = "DSEL_DATABASE_URL"
DB_WAIT = "DSEL_DB_WAIT_S"


def database_url() -> str | None:
    """The PostgreSQL URL of a cluster's state database (``DSEL_DATABASE_URL``), read at each
    use and never kept in configuration, or None for the embedded DuckDB file."""
    return os.environ.get(DATABASE_URL) or None


class StateStore(dg.ConfigurableResource):
    """What every state-database resource offers; assets annotate their ``store`` with it."""

    @property
    def location(self) -> str:
        """Where the tables are, for lineage (never with a password)."""
        raise NotImplementedError

    def get_connection(self) -> AbstractContextManager:
        """A raw connection for one unit of work of a run (the store's own layer uses it)."""
        raise NotImplementedError

    @contextmanager
    def session(self) -> Iterator[State]:
        """The state database for one unit of work of a run, closed when the block ends."""
        with self.get_connection() as conn:
            yield State(conn)

    def open(self, read_only: bool = False, log=None) -> AbstractContextManager[State]:
        """The state database for the CLI and lineage (``read_only`` where the backend has it;
        ``log`` hears about a wait)."""
        return self.session()


class DuckDBStateStore(StateStore):
    """The state home's DuckDB file."""

    database: str = Field(description="The state home's DuckDB file")
    wait_s: float = Field(default=120.0, description="Seconds the CLI waits for another process's write lock")

    @property
    def location(self) -> str:
        return self.database

    @contextmanager
    def get_connection(self) -> Iterator:
        """dagster-duckdb's connection (retried while another process holds the file's write lock)."""
        with DuckDBResource(database=self.database).get_connection() as conn:
            yield conn

    @contextmanager
    def open(self, read_only: bool = False, log=None) -> Iterator[State]:
        with duckdb_backend.connect(self.database, read_only=read_only, wait_s=self.wait_s, log=log) as conn:
            yield State(conn)


class PostgresStateStore(StateStore):
    """A PostgreSQL database. Its URL is read from ``DSEL_DATABASE_URL`` at each connection,
    never kept in config, so its password never shows in the UI."""

    @property
    def url(self) -> str:
        url = database_url()
        if url is None:
            raise RuntimeError(f"{DATABASE_URL}: not set; a PostgreSQL state store needs it")
        return url

    @property
    def location(self) -> str:
        return postgres_backend.redacted(self.url)

    @contextmanager
    def get_connection(self) -> Iterator:
        with postgres_backend.connect(self.url) as conn:
            yield conn


def state_store(database: str | Path) -> StateStore:
    """The store this process uses: PostgreSQL when ``DSEL_DATABASE_URL`` is set, else the DuckDB
    file ``database`` (the CLI waits ``DSEL_DB_WAIT_S`` seconds, default 120, for its lock)."""
    if database_url():
        return PostgresStateStore()
    return DuckDBStateStore(database=str(database), wait_s=float(os.environ.get(DB_WAIT, "120")))


@contextmanager
def open_state(database: str | Path, read_only: bool = False, log=None) -> Iterator[State]:
    """The state database for the CLI and lineage, closed when the block ends."""
    with state_store(database).open(read_only=read_only, log=log) as db:
        yield db
