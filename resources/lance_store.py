"""Lance datasets for per-example representations: one dataset per asset under ``lance/``."""

from __future__ import annotations

import re
from pathlib import Path

import dagster as dg
import pyarrow as pa
from pydantic import Field

_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def _checked(kind: str, value: str) -> str:
    # Lance filters are SQL text with no bound parameters: only plain names get in.
    if not _SAFE_NAME.match(value):
        raise ValueError(f"{kind}: {value!r} must match {_SAFE_NAME.pattern}")
    return value


class LanceStore(dg.ConfigurableResource):
    """Dataset URI per asset; atomic per-partition replacement; versions for lineage."""

    root: str = Field(description="Directory (or object-store URI) holding the datasets.")

    def uri(self, name: str) -> str:
        return f"{self.root.rstrip('/')}/{_checked('dataset', name)}.lance"

    def exists(self, name: str) -> bool:
        return Path(self.uri(name)).exists() if "://" not in self.root else self._open(name) is not None

    def _open(self, name: str):
        import lance

        try:
            return lance.dataset(self.uri(name))
        except (FileNotFoundError, ValueError, OSError):
            return None

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
        import lance

        _checked("partition", partition)
        if partition_column not in table.column_names:
            raise ValueError(f"table: missing the partition column {partition_column!r}")
        if table.num_rows and set(table.column(partition_column).to_pylist()) != {partition}:
            raise ValueError(f"table: rows must all belong to partition {partition!r}")
        ds = self._open(name)
        if ds is None:
            return lance.write_dataset(table, self.uri(name), mode="create").version
        (
            ds.merge_insert(key)
            .when_matched_update_all()
            .when_not_matched_insert_all()
            .when_not_matched_by_source_delete(f"{_checked('column', partition_column)} = '{partition}'")
            .execute(table)
        )
        return self._open(name).version

    def read(
        self,
        name: str,
        columns: list[str] | None = None,
        *,
        partitions: list[str] | None = None,
        partition_column: str = "batch",
        version: int | None = None,
    ) -> pa.Table:
        """Rows of ``name`` (optionally only some partitions, at a pinned version)."""
        import lance

        ds = lance.dataset(self.uri(name), version=version)
        flt = None
        if partitions is not None:
            if not partitions:
                return ds.schema.empty_table().select(columns) if columns else ds.schema.empty_table()
            quoted = ", ".join(f"'{_checked('partition', p)}'" for p in partitions)
            flt = f"{_checked('column', partition_column)} IN ({quoted})"
        return ds.to_table(columns=columns, filter=flt)
