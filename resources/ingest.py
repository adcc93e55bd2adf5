"""Size caps applied when a file is validated, before anything is decoded or tokenized."""

from __future__ import annotations

import os

import dagster as dg
from pydantic import Field

from dsel_assets.core.data.readers import MAX_FILE_BYTES, MAX_RECORD_BYTES


def _env_bytes(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    if not value.strip().isdigit() or int(value) <= 0:
        raise ValueError(f"{name}: expected a positive number of bytes, got {value!r}")
    return int(value)


class IngestLimits(dg.ConfigurableResource):
    """The largest record (``DSEL_MAX_RECORD_BYTES``, default 1,000,000) and file
    (``DSEL_MAX_FILE_BYTES``, default 2 GiB) validation reads; larger ones are quarantined as
    ``record_too_large`` / ``file_too_large`` (the raw store keeps them whole)."""

    max_record_bytes: int = Field(default=MAX_RECORD_BYTES, gt=0, description="Larger records are quarantined")
    max_file_bytes: int = Field(default=MAX_FILE_BYTES, gt=0, description="Larger files are quarantined whole")

    @classmethod
    def from_env(cls) -> IngestLimits:
        return cls(
            max_record_bytes=_env_bytes("DSEL_MAX_RECORD_BYTES", MAX_RECORD_BYTES),
            max_file_bytes=_env_bytes("DSEL_MAX_FILE_BYTES", MAX_FILE_BYTES),
        )
