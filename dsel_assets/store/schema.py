"""The whole schema of dsel's state database, declared once, for DuckDB (the embedded default)
and PostgreSQL (the cluster backend).

Every table is a :class:`Table` of logical column types rendered per dialect. ``migrate``
brings a database to :data:`SCHEMA_VERSION` and records each step in ``dsel_schema``: a fresh
database gets the current tables and is stamped at once; an older one runs the forward
migrations it lacks, in order, in one transaction (under an advisory lock on PostgreSQL, where
several step processes may start together). A database newer than the code is refused rather
than written to. Score tables are one per representation and template (their names come from
the representation registry), so they are declared as a column set and completed on first use
by :func:`ensure_score_table`.

To change the schema: edit the declaration (what a fresh database gets) and append a migration
that takes an existing database there; never edit a migration that has shipped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from .sql import IDENTIFIER, dialect, run

DIALECTS = ("duckdb", "postgres")
#: logical type -> (DuckDB, PostgreSQL)
TYPES = {
    "text": ("VARCHAR", "TEXT"),
    "int": ("INTEGER", "INTEGER"),
    "bigint": ("BIGINT", "BIGINT"),
    "double": ("DOUBLE", "DOUBLE PRECISION"),
    "timestamp": ("TIMESTAMP", "TIMESTAMP"),
    "text[]": ("VARCHAR[]", "TEXT[]"),
    # a conversation: DuckDB keeps the typed list; PostgreSQL a JSON array of {role, content}
    "messages": ("STRUCT(role VARCHAR, content VARCHAR)[]", "JSONB"),
}
VERSION_TABLE = "dsel_schema"
_ADVISORY_LOCK = 0x64_73_65_6C  # "dsel": one migrator at a time per PostgreSQL database


class SchemaError(RuntimeError):
    """The database cannot be brought to this code's schema (e.g. it is newer than the code)."""


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    default: str | None = None  # a SQL literal valid in both dialects

    def sql(self, dialect: str) -> str:
        rendered = f"{self.name} {TYPES[self.type][DIALECTS.index(dialect)]}"
        return rendered if self.default is None else f"{rendered} DEFAULT {self.default}"


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    primary_key: str | None = None

    def create_sql(self, dialect: str) -> str:
        parts = [c.sql(dialect) for c in self.columns]
        if self.primary_key:
            parts.append(f"PRIMARY KEY ({self.primary_key})")
        return f"CREATE TABLE IF NOT EXISTS {self.name} ({', '.join(parts)})"

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)


def _columns(spec: str) -> tuple[Column, ...]:
    """``"name type, name type = default"`` -> columns (a compact, greppable declaration)."""
    columns = []
    for item in spec.split(","):
        declaration, _, default = item.partition("=")
        name, kind = declaration.split()
        columns.append(Column(name, kind, default.strip() or None))
    return tuple(columns)


TABLES: tuple[Table, ...] = (
    Table(
        "batches",
        _columns(
            "batch text, source text, task text, split text, fmt text, layout text, mapping text, "
            "original_path text, stored_path text, sha256 text, size_bytes bigint, registered_at timestamp, "
            "validated_at timestamp, error text"
        ),
        primary_key="batch",
    ),
    Table(
        "examples",
        _columns(
            "pool_id text, batch text, split text, source text, task text, messages messages, n_turns int, "
            "n_tokens int, file_path text, file_sha256 text, position bigint, raw text, meta text"
        ),
    ),
    Table(
        "quarantine",
        _columns("batch text, file_path text, file_sha256 text, position bigint, reason text, detail text, raw text"),
    ),
    Table("pool_versions", _columns("pool_version text, batches text[], n_examples bigint, created_at timestamp")),
    Table(
        "selections",
        _columns(
            "method text, budget text, k int, eligible int, rank int, pool_id text, score double, "
            "pool_version text, config text, diagnostics text, mlflow_run_id text, created_at timestamp, "
            "selection_seed int = 0, settings text"
        ),
    ),
    Table(
        "warmups",
        _columns(
            "warmup text, path text, pool_version text, model text, model_hash text, config text, created_at timestamp"
        ),
        primary_key="warmup",
    ),
    Table(
        "finetuned_models",
        _columns(
            "model_key text, method text, budget text, selection_version text, pool_version text, path text, "
            "base_model text, base_model_hash text, config text, examples int, final_loss double, "
            "mlflow_run_id text, created_at timestamp, selection_seed int = 0, seed int = 0"
        ),
    ),
    Table(
        "eval_scores",
        _columns(
            "eval_key text, model_key text, method text, budget text, train_size int, task text, metric text, "
            "n int, score double, loss double, eval_version text, mlflow_run_id text, created_at timestamp"
        ),
    ),
    Table(
        "eval_examples",
        _columns(
            "eval_key text, model_key text, method text, budget text, pool_id text, task text, metric text, "
            "score double, loss double, prediction text, reason text"
        ),
    ),
    Table(
        "golden_score",
        _columns(
            "pool_id text, golden_score double, reason text, anchors int, anchor_set text, model text, "
            "model_hash text, template text, code_version text"
        ),
    ),
)
#: columns of every per-example score table (``loss_scores``, ``greedy_scores``, ...)
SCORE_COLUMNS = _columns(
    "pool_id text, batch text, model text, model_hash text, template text, code_version text, "
    "loss_conditioned double, loss_unconditioned double, ppl_conditioned double, ifd_loss_ratio double, "
    "ifd_ppl_ratio double, mean_entropy double, least_confidence double, mean_margin double, min_margin double, "
    "response_tokens int, reason text, prompt_template text = 'chat'"
)


class _Sql:
    """The few calls migrations need, on the connection's backend (``?`` placeholders)."""

    def __init__(self, conn):
        self.conn, self.dialect = conn, dialect(conn)

    def run(self, statement: str, params: Sequence[Any] = ()) -> list[tuple]:
        return run(self.conn, statement, params)

    def columns(self, table: str) -> list[str]:
        rows = self.run(
            """SELECT column_name FROM information_schema.columns
               WHERE table_schema = current_schema() AND table_name = ? ORDER BY ordinal_position""",
            [table],
        )
        return [r[0] for r in rows]

    def complete(self, table: Table) -> list[str]:
        """Create ``table`` if missing and add the declared columns it lacks; returns those added."""
        existing = self.columns(table.name)
        if not existing:
            self.run(table.create_sql(self.dialect))
            return []
        missing = [c for c in table.columns if c.name not in existing]
        for column in missing:
            self.run(f"ALTER TABLE {table.name} ADD COLUMN IF NOT EXISTS {column.sql(self.dialect)}")
        return [c.name for c in missing]


def columns(conn, table: str) -> list[str]:
    """The columns of ``table`` in order; empty when there is no such table."""
    return _Sql(conn).columns(table)


def table_exists(conn, table: str) -> bool:
    return bool(columns(conn, table))


def tables_with_column(conn, column: str) -> list[str]:
    """The tables (of the current schema) that have ``column``, by name."""
    rows = _Sql(conn).run(
        """SELECT DISTINCT table_name FROM information_schema.columns
           WHERE table_schema = current_schema() AND column_name = ? ORDER BY table_name""",
        [column],
    )
    return [r[0] for r in rows]


def _baseline(sql: _Sql) -> None:
    """Version 1: every table and column of the first versioned schema, on a store of any older
    layout (tables missing, or missing the columns added since); a batch of a store from before
    batch states (no ``validated_at``) that has rows was validated when it was registered;
    golden scores from before their anchor set was recorded cannot be reused and are dropped."""
    golden = sql.columns("golden_score")
    if golden and "anchor_set" not in golden:
        sql.run("DROP TABLE golden_score")
    added = {table.name: sql.complete(table) for table in TABLES}
    if "validated_at" in added["batches"]:
        sql.run(
            """UPDATE batches SET validated_at = registered_at WHERE batch IN
               (SELECT batch FROM examples UNION SELECT batch FROM quarantine)"""
        )


#: (version, what it does, step); append only.
MIGRATIONS: tuple[tuple[int, str, Callable[[_Sql], None]], ...] = (
    (1, "baseline: every table of the first versioned schema; older stores completed", _baseline),
)
SCHEMA_VERSION = MIGRATIONS[-1][0]


def current_version(conn) -> int:
    """The recorded schema version; 0 for a database that has none yet (fresh, or older than
    schema versions)."""
    sql = _Sql(conn)
    if not sql.columns(VERSION_TABLE):
        return 0
    return int(sql.run(f"SELECT coalesce(max(version), 0) FROM {VERSION_TABLE}")[0][0])


def migrate(conn, attempts: int = 5) -> int:
    """Bring the database to :data:`SCHEMA_VERSION` (a no-op when it is there); returns the
    version. Each attempt is one transaction, so a failed migration leaves the database as it
    was; a conflict with a concurrent migrator is retried, and ends well once the other one
    has committed."""
    for attempt in range(attempts):
        version = current_version(conn)
        if version == SCHEMA_VERSION:
            return version
        if version > SCHEMA_VERSION:
            raise SchemaError(
                f"the state database is at schema version {version}, newer than this dsel's {SCHEMA_VERSION}; "
                "upgrade dsel (or point it at another state home)"
            )
        try:
            _apply(_Sql(conn))
            return SCHEMA_VERSION
        except Exception:
            if attempt == attempts - 1:
                raise
            time.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")


def _apply(sql: _Sql) -> None:
    """The missing migrations in one transaction (re-reading the version under the lock)."""
    text = TYPES["text"][DIALECTS.index(sql.dialect)]
    sql.run("BEGIN")
    try:
        if sql.dialect == "postgres":
            sql.run("SELECT pg_advisory_xact_lock(?)", [_ADVISORY_LOCK])
        sql.run(
            f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} "
            f"(version INTEGER PRIMARY KEY, description {text}, applied_at TIMESTAMP)"
        )
        version = int(sql.run(f"SELECT coalesce(max(version), 0) FROM {VERSION_TABLE}")[0][0])
        for number, description, step in MIGRATIONS:
            if number > version:
                step(sql)
                sql.run(
                    f"INSERT INTO {VERSION_TABLE} VALUES (?, ?, ?)",
                    [number, description, datetime.now(timezone.utc).replace(tzinfo=None)],
                )
        sql.run("COMMIT")
    except BaseException:
        sql.run("ROLLBACK")
        raise


def ensure_score_table(conn, name: str, extra: Sequence[Column] = ()) -> None:
    """Create score table ``name`` (a plain identifier from the representation registry) with
    :data:`SCORE_COLUMNS` plus ``extra``, or add the columns an older one lacks."""
    if not IDENTIFIER.match(name):
        raise ValueError(f"table: {name!r} is not a plain identifier")
    _Sql(conn).complete(Table(name, (*SCORE_COLUMNS, *extra)))
