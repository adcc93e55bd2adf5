"""Writes of the state database (batches and their rows, score chunks, selections, warmups,
tables replaced whole), on DuckDB or PostgreSQL alike: the :class:`Writes` half of
:class:`~dsel_assets.store.state.State`; the questions are in ``queries``.

Values are always bound (``?``); frames go in through the backend's bulk insert. Every write
that replaces a batch, a chunk or a selection runs in one transaction, so readers never see half
of one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

import polars as pl

from dsel_assets.store import schema
from dsel_assets.store.artifacts import ObjectStore
from dsel_assets.store.queries import BatchManifest
from dsel_assets.store.raw_files import store_raw_file
from dsel_assets.store.sql import backend, check_identifiers, in_list, insert, now, run, serialize, transaction

SPLITS = ("pool", "query", "eval")
_KEY_CHARS = re.compile(r"[^a-z0-9_-]+")


def batch_key(source: str, sha256: str, split: str = "pool") -> str:
    """Partition key of a file: its source name (sanitised), split and content hash prefix.
    Always a valid Lance / Dagster name: starts with a letter or digit, then ``[a-z0-9_-]``."""
    name = _KEY_CHARS.sub("_", source.lower()).strip("_-")[:40].strip("_-") or "batch"
    return f"{name}-{split}-{sha256[:12]}"


def accepted_frame(manifest: BatchManifest, rows: list[dict]) -> pl.DataFrame:
    schema = {
        "pool_id": pl.String,
        "batch": pl.String,
        "split": pl.String,
        "source": pl.String,
        "task": pl.String,
        "messages": pl.List(pl.Struct({"role": pl.String, "content": pl.String})),
        "n_turns": pl.Int32,
        "n_tokens": pl.Int32,
        "file_path": pl.String,
        "file_sha256": pl.String,
        "position": pl.Int64,
        "raw": pl.String,
        "meta": pl.String,
    }
    records = [
        {
            **{k: row[k] for k in ("pool_id", "messages", "n_turns", "n_tokens", "position", "raw", "meta")},
            "batch": manifest.batch,
            "split": manifest.split,
            "source": manifest.source,
            "task": manifest.task if manifest.task != "auto" else (row["record_task"] or "general"),
            "file_path": manifest.stored_path,
            "file_sha256": manifest.sha256,
        }
        for row in rows
    ]
    return pl.DataFrame(records, schema=schema)


def quarantine_frame(manifest: BatchManifest, rows: list[dict]) -> pl.DataFrame:
    schema = {
        "batch": pl.String,
        "file_path": pl.String,
        "file_sha256": pl.String,
        "position": pl.Int64,
        "reason": pl.String,
        "detail": pl.String,
        "raw": pl.String,
    }
    records = [
        {**row, "batch": manifest.batch, "file_path": manifest.stored_path, "file_sha256": manifest.sha256}
        for row in rows
    ]
    return pl.DataFrame(records, schema=schema)


class Writes:
    """The writes of :class:`~dsel_assets.store.state.State`."""

    conn: object

    def ensure_schema(self) -> None:
        """Bring the state database to the current schema (``dsel_assets.store.schema``)."""
        schema.migrate(self.conn)

    def register_batch(
        self,
        path: Path,
        raw: str | Path,
        *,
        source: str,
        task: str,
        split: str = "pool",
        fmt: str | None = None,
        layout: str | None = None,
        mapping: str | None = None,
        update: bool = False,
        objects: ObjectStore | None = None,
    ) -> tuple[BatchManifest, bool]:
        """Store ``path`` in the content-addressed raw store ``raw`` (a folder, or an object-store
        URI reached through ``objects``) and record its manifest.
        Returns (manifest, created); the same file (same sha256, same split) is registered once.
        With ``update`` an existing batch takes the given source, task and reading options (a
        re-ingest with ``--force`` after fixing ``--layout`` or ``--mapping``)."""
        if split not in SPLITS:
            raise ValueError(f"split: {split!r} is not one of {SPLITS}")
        self.ensure_schema()
        stored, sha, size = store_raw_file(path, raw, objects)
        options = {"source": source, "task": task, "fmt": fmt, "layout": layout, "mapping": mapping}
        existing = self.find_batch_by_sha(sha, split)
        if existing is not None:
            manifest = self.get_batch(existing)
            changes = {**options, "stored_path": str(stored)} if update else {"stored_path": str(stored)}
            changes = {k: v for k, v in changes.items() if getattr(manifest, k) != v}
            if changes:
                assignments = ", ".join(f"{column} = ?" for column in changes)
                run(self.conn, f"UPDATE batches SET {assignments} WHERE batch = ?", [*changes.values(), existing])
                manifest = replace(manifest, **changes)
            return manifest, False
        manifest = BatchManifest(
            batch=batch_key(source, sha, split),
            split=split,
            original_path=str(path.resolve()),
            stored_path=str(stored),
            sha256=sha,
            size_bytes=size,
            **options,
        )
        values = asdict(manifest)
        run(
            self.conn,
            f"INSERT INTO batches ({', '.join(values)}, registered_at) VALUES ({', '.join('?' * len(values))}, ?)",
            [*values.values(), now()],
        )
        return manifest, True

    def replace_table(self, name: str, rows: pl.DataFrame) -> None:
        """Make table ``name`` (one of ours, a plain identifier) exactly ``rows``, atomically, with
        the frame's columns (a table an asset rewrites whole: reports, labels)."""
        check_identifiers(name)
        with transaction(self.conn):
            backend(self.conn).replace_table(self.conn, name, rows)

    def upsert_by_id(self, table: str, rows: pl.DataFrame, match: dict | None = None) -> None:
        """In one transaction, replace the rows of ``table`` with ``rows``'s pool ids (and the
        ``match`` column values) by ``rows``: a chunk written by a resumable asset lands whole or
        not at all."""
        match = match or {}
        check_identifiers(table, *match)
        where = "".join(f" AND {column} = ?" for column in match)
        with transaction(self.conn):
            serialize(self.conn, table, match)
            run(
                self.conn,
                f"DELETE FROM {table} WHERE {in_list(self.conn).format('pool_id')}{where}",
                [rows["pool_id"].to_list(), *match.values()],
            )
            insert(self.conn, table, rows)

    def replace_batch(self, manifest: BatchManifest, accepted: pl.DataFrame, quarantined: pl.DataFrame) -> None:
        """Atomically make the batch's examples and quarantine rows exactly these frames."""
        with transaction(self.conn):
            serialize(self.conn, "batch", manifest.batch)
            run(self.conn, "DELETE FROM examples WHERE batch = ?", [manifest.batch])
            run(self.conn, "DELETE FROM quarantine WHERE batch = ?", [manifest.batch])
            insert(self.conn, "examples", accepted)
            insert(self.conn, "quarantine", quarantined)
            run(self.conn, "UPDATE batches SET validated_at = ?, error = NULL WHERE batch = ?", [now(), manifest.batch])

    def mark_batch_failed(self, batch: str, error: str) -> None:
        """Record why a batch's validation failed (``dsel status`` lists it; a rerun retries it)."""
        run(self.conn, "UPDATE batches SET error = ? WHERE batch = ?", [error[:2000], batch])

    def write_selection(self, method: str, budget: str, rows: pl.DataFrame) -> None:
        """Replace one (method, budget) selection atomically, every selection seed of it at once."""
        self.replace_rows("selections", {"method": method, "budget": budget}, rows)

    def write_selection_replicate(
        self, method: str, budget: str, selection_seed: int, rows: pl.DataFrame, replicates: list[int] | None = None
    ) -> None:
        """Replace one replicate (``selection_seed``) of a (method, budget) selection atomically,
        keeping the budget's other replicates - those of the same pool version as ``rows`` and, when
        ``replicates`` is given, among those selection seeds; the rest (another pool's draw, a seed
        this replicate family no longer has) are dropped with it."""
        seeds = rows["selection_seed"].unique().to_list()
        versions = rows["pool_version"].unique().to_list()
        if seeds != [selection_seed] or len(versions) != 1:
            raise ValueError(f"rows: one replicate (selection seed {selection_seed}) of one pool version, got {seeds}")
        stale = "selection_seed = ? OR pool_version <> ?"
        params: list[object] = [method, budget, selection_seed, versions[0]]
        if replicates is not None:
            stale += f" OR NOT ({in_list(self.conn).format('selection_seed')})"
            params.append([int(s) for s in replicates])
        with transaction(self.conn):
            serialize(self.conn, "selections", {"method": method, "budget": budget})  # as write_selection: one writer
            run(self.conn, f"DELETE FROM selections WHERE method = ? AND budget = ? AND ({stale})", params)
            insert(self.conn, "selections", rows)

    def replace_rows(self, table: str, match: dict[str, object], rows: pl.DataFrame) -> None:
        """Atomically replace the rows of ``table`` whose columns equal ``match`` by ``rows``."""
        check_identifiers(table, *match)
        where = " AND ".join(f"{column} = ?" for column in match)
        with transaction(self.conn):
            serialize(self.conn, table, match)
            run(self.conn, f"DELETE FROM {table} WHERE {where}", list(match.values()))
            insert(self.conn, table, rows)

    def record_pool_version(self, version: str, batches: Sequence[str], n_examples: int) -> None:
        """Append a pool version (its batches and size) to the history."""
        run(
            self.conn,
            "INSERT INTO pool_versions (pool_version, batches, n_examples, created_at) VALUES (?, ?, ?, ?)",
            [version, list(batches), n_examples, now()],
        )

    def record_warmup(self, key: str, path: str, pool_version: str, model: str, model_hash: str, config: dict) -> None:
        """Record (or re-record, as the latest) the warmup ``key``, in one transaction."""
        with transaction(self.conn):
            run(self.conn, "DELETE FROM warmups WHERE warmup = ?", [key])
            run(
                self.conn,
                "INSERT INTO warmups (warmup, path, pool_version, model, model_hash, config, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [key, path, pool_version, model, model_hash, json.dumps(config, sort_keys=True), now()],
            )

    def delete_stale(self, table: str, keep: dict[str, object], batch: str | None = None) -> None:
        """Delete the rows of a per-example table that another model / code version / setting made
        (any ``keep`` column differs) or whose example left the pool - within one ``batch`` when
        given (a per-batch asset), else across the table (a pool-wide one)."""
        check_identifiers(table, *keep)
        differs = [f"{c} <> ?" for c in keep]
        if batch is None:
            stale = " OR ".join([*differs, "pool_id NOT IN (SELECT pool_id FROM examples WHERE split = 'pool')"])
            sql, params = f"DELETE FROM {table} WHERE {stale}", list(keep.values())
        else:
            stale = " OR ".join([*differs, "pool_id NOT IN (SELECT pool_id FROM examples WHERE batch = ?)"])
            sql, params = f"DELETE FROM {table} WHERE batch = ? AND ({stale})", [batch, *keep.values(), batch]
        run(self.conn, sql, params)
