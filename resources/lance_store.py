"""Lance datasets for per-example representations: one dataset per asset under ``lance/``, or
under an object-store URI (``DSEL_LANCE_URI=s3://bucket/prefix``) on a cluster."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import dagster as dg
import pyarrow as pa
from pydantic import Field

from dsel_assets.store.locks import exclusive
from resources.object_store import storage_options

from .store import database_url

_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def _checked(kind: str, value: str) -> str:
    # Lance filters are SQL text with no bound parameters: only plain names get in.
    if not _SAFE_NAME.match(value):
        raise ValueError(f"{kind}: {value!r} must match {_SAFE_NAME.pattern}")
    return value


def _literal(value: str | int) -> str:
    """A filter literal: integers as they are, strings only when they are plain names."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(f"filter value: {value!r} must be an int or a plain string")
    return str(value) if isinstance(value, int) else f"'{_checked('value', value)}'"


def where(equal: dict[str, str | int] | None = None, not_in: tuple[str, list[str]] | None = None) -> str | None:
    """``col = v AND ...`` (and ``col NOT IN (...)``) from checked names and literals."""
    terms = [f"{_checked('column', k)} = {_literal(v)}" for k, v in (equal or {}).items()]
    if not_in is not None and not_in[1]:
        terms.append(f"{_checked('column', not_in[0])} NOT IN ({', '.join(_literal(v) for v in not_in[1])})")
    return " AND ".join(terms) or None


class LanceStore(dg.ConfigurableResource):
    """Dataset URI per asset; atomic per-partition replacement; versions for lineage."""

    root: str = Field(description="Directory (or object-store URI) holding the datasets.")

    def uri(self, name: str) -> str:
        return f"{self.root.rstrip('/')}/{_checked('dataset', name)}.lance"

    @property
    def options(self) -> dict[str, str]:
        return storage_options(self.root)

    def exists(self, name: str) -> bool:
        return Path(self.uri(name)).exists() if "://" not in self.root else self._open(name) is not None

    def _open(self, name: str):
        import lance

        try:
            return lance.dataset(self.uri(name), storage_options=self.options)
        except (FileNotFoundError, ValueError, OSError):
            return None

    def _open_or_create(self, name: str, schema: pa.Schema):
        """The dataset, created empty (once, under a cross-process lock) when missing. A
        ``create`` that loses a race on an object store is retried by Lance as an overwrite of
        the next version, wiping rows other writers just committed (seen on S3 with three
        writers of new partitions); rows themselves always arrive by merge commits, which the
        store makes atomic and Lance rebases onto each other."""
        import lance

        ds = self._open(name)
        if ds is None:
            lock_dir = (
                Path(self.root) / ".locks" if "://" not in self.root else Path(tempfile.gettempdir()) / "dsel-locks"
            )
            with exclusive(f"lance-create {self.uri(name)}", lock_dir, database_url()):
                ds = self._open(name)
                if ds is None:
                    lance.write_dataset(
                        schema.empty_table(), self.uri(name), mode="create", storage_options=self.options
                    )
                    ds = self._open(name)
        return ds

    def version(self, name: str) -> int | None:
        ds = self._open(name)
        return None if ds is None else ds.version

    def replace_partition(
        self,
        name: str,
        table: pa.Table,
        *,
        partition: str,
        key: str | list[str] = "pool_id",
        partition_column: str = "batch",
    ) -> int:
        """Make the rows of ``partition`` exactly ``table`` in one commit (insert new keys,
        update changed ones, delete the partition's rows absent from ``table``); returns the
        new Lance version. Other partitions are untouched."""

        _checked("partition", partition)
        if partition_column not in table.column_names:
            raise ValueError(f"table: missing the partition column {partition_column!r}")
        if table.num_rows and set(table.column(partition_column).to_pylist()) != {partition}:
            raise ValueError(f"table: rows must all belong to partition {partition!r}")
        ds = self._open_or_create(name, table.schema)
        (
            ds.merge_insert(key)
            .when_matched_update_all()
            .when_not_matched_insert_all()
            .when_not_matched_by_source_delete(f"{_checked('column', partition_column)} = '{partition}'")
            .execute(table)
        )
        return self._open(name).version

    def upsert(self, name: str, table: pa.Table, on: list[str]) -> int:
        """Insert rows, replacing those with the same key columns; one commit, idempotent."""
        ds = self._open_or_create(name, table.schema)
        ds.merge_insert(on).when_matched_update_all().when_not_matched_insert_all().execute(table)
        return self._open(name).version

    def overwrite(self, name: str, table: pa.Table) -> int:
        """Replace the whole dataset in one commit (older versions stay readable)."""
        import lance

        return lance.write_dataset(table, self.uri(name), mode="overwrite", storage_options=self.options).version

    def delete(self, name: str, equal: dict[str, str | int], not_in: tuple[str, list[str]] | None = None) -> int | None:
        """Delete rows matching ``equal`` (and whose ``not_in`` column is outside the list)."""
        ds = self._open(name)
        if ds is None:
            return None
        ds.delete(where(equal, not_in))
        return self._open(name).version

    def iter_batches(
        self, name: str, columns: list[str], equal: dict[str, str | int] | None = None, batch_size: int = 4096
    ):
        """Stream record batches (bounded memory) of the rows matching ``equal``."""
        ds = self._open(name)
        if ds is not None:
            yield from ds.to_batches(columns=columns, filter=where(equal), batch_size=batch_size)

    def read(
        self,
        name: str,
        columns: list[str] | None = None,
        *,
        partitions: list[str] | None = None,
        partition_column: str = "batch",
        version: int | None = None,
        equal: dict[str, str | int] | None = None,
    ) -> pa.Table:
        """Rows of ``name`` (optionally only some partitions or rows equal to ``equal``, at a
        pinned version)."""
        import lance

        ds = lance.dataset(self.uri(name), version=version, storage_options=self.options)
        flt = where(equal)
        if partitions is not None:
            if not partitions:
                return ds.schema.empty_table().select(columns) if columns else ds.schema.empty_table()
            quoted = ", ".join(f"'{_checked('partition', p)}'" for p in partitions)
            flt = " AND ".join(filter(None, [flt, f"{_checked('column', partition_column)} IN ({quoted})"]))
        return ds.to_table(columns=columns, filter=flt)

    def take(self, name: str, positions: list[int], columns: list[str], version: int) -> pa.Table:
        """Rows at ``positions`` (0-based, in the dataset's scan order at ``version``), in order."""
        import lance

        ds = lance.dataset(self.uri(name), version=version, storage_options=self.options)
        return ds.take(positions, columns=columns)
