"""Shared fixtures: a state home under tmp_path, local resources on the tiny model, the
SmolLM2 tokenizer, and the shared real data (tests needing it skip when it is absent)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import pytest

from dsel_assets.store import schema
from dsel_assets.store.sql import run as sql_run
from dsel_assets.store.state import State
from tests import postgres, s3

# No test may reach a model hub: everything loads from installed packages.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "pool").is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tokenizer():
    from dsel_assets.core.models.loading import load_tokenizer, resolve

    return load_tokenizer(resolve("smollm2"))


@pytest.fixture()
def home(tmp_path, monkeypatch):
    from resources.home import DselHome

    home = DselHome(tmp_path / "home").ensure()
    monkeypatch.setenv("DSEL_HOME", str(home.root))
    return home


@pytest.fixture()
def local_resources(home):
    from resources import build_resources

    return build_resources(home, model="tiny", device="cpu")


@pytest.fixture(scope="module")
def s3_environ():
    """The environment of a real S3-compatible server (moto) with bucket ``dsel-test``, once per module."""
    reason = s3.available()
    if reason:
        pytest.skip(reason)
    with s3.server("dsel-test") as environ:
        yield environ


# Fresh state databases on both backends for the store tests: a DuckDB file, or a database on a
# real PostgreSQL server started once per module (tests/postgres.py); PostgreSQL cases skip when
# no server can start here.
@pytest.fixture(scope="module")
def pg_server():
    reason = postgres.available()
    if reason:
        pytest.skip(reason)
    with postgres.server() as dsn:
        yield dsn


class Backend:
    """Fresh databases of one dialect, and connections to them."""

    def __init__(self, dialect: str, tmp_path, dsn: str | None):
        self.dialect, self.tmp_path, self.dsn = dialect, tmp_path, dsn
        self.target = None

    def new_database(self) -> None:
        if self.dialect == "duckdb":
            self.target = str(self.tmp_path / f"{uuid.uuid4().hex}.duckdb")
            return
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        self.target = self.dsn.replace("dbname=dsel", f"dbname={name}")

    def connect(self):
        if self.dialect == "duckdb":
            return duckdb.connect(self.target)
        import psycopg

        return psycopg.connect(self.target, autocommit=True)

    @contextmanager
    def state(self) -> Iterator[State]:
        """The store's view of a connection to the current database."""
        with self.connect() as conn:
            yield State(conn)

    def rows(self, conn, sql: str, params=()):
        return sql_run(conn, sql, params)


@pytest.fixture(params=schema.DIALECTS)
def backend(request, tmp_path):
    dsn = request.getfixturevalue("pg_server") if request.param == "postgres" else None
    backend = Backend(request.param, tmp_path, dsn)
    backend.new_database()
    return backend
