"""Reading and writing what representation assets store, for every asset and loader that needs
it: per-example vectors and pool x query matrices in Lance, score columns and query rows in the
state store, the latest warmup's manifest. Rows are always aligned to the pool ids asked for."""

import numpy as np
import polars as pl
import pyarrow as pa

from dsel_assets.core.models.warmup import read_manifest
from resources.lance_store import LanceStore
from resources.object_store import object_store
from resources.store import StateStore


def vector_table(pool_ids: list[str], batch: str, vectors, model: str) -> pa.Table:
    """Lance rows: ``pool_id``, ``batch``, a fixed-size float16 ``vector``, the ``model``."""
    dim = vectors.shape[1]
    flat = pa.array(vectors.astype("float16").reshape(-1), type=pa.float16())
    return pa.table(
        {
            "pool_id": pa.array(pool_ids, pa.string()),
            "batch": pa.array([batch] * len(pool_ids), pa.string()),
            "vector": pa.FixedSizeListArray.from_arrays(flat, dim),
            "model": pa.array([model] * len(pool_ids), pa.string()),
        }
    )


def vector_matrix(column) -> np.ndarray:
    """A fixed-size-list column (Lance / Arrow, any chunking) as a [rows, dim] numpy matrix."""
    flat = column.combine_chunks() if hasattr(column, "combine_chunks") else column
    return flat.flatten().to_numpy(zero_copy_only=False).reshape(len(flat), flat.type.list_size)


def fill_rows(column, out: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """Write a fixed-size-list column into ``out`` chunk by chunk, row i of the column into
    ``out[rows[i]]`` (``out[i]`` without ``rows``; rows[i] < 0 = skipped), converting to
    ``out``'s dtype on the way: no whole-column copy beside ``out`` (a 100k x 8192 float16
    column would otherwise be combined, then cast to float32 and aligned: 9.8 GB instead of 4.9)."""
    chunks = column.chunks if hasattr(column, "chunks") else [column]
    start = 0
    for chunk in chunks:
        values = chunk.flatten().to_numpy(zero_copy_only=False).reshape(len(chunk), chunk.type.list_size)
        if rows is None:
            out[start : start + len(chunk)] = values
        else:
            target = rows[start : start + len(chunk)]
            keep = target >= 0
            out[target[keep]] = values[keep]
        start += len(chunk)
    return out


def matrix_table(ids: list[str], scores: np.ndarray) -> pa.Table:
    """Lance rows of a pool x query matrix: ``pool_id`` and a fixed-size float32 ``scores`` row."""
    flat = pa.array(np.asarray(scores, dtype=np.float32).reshape(-1), pa.float32())
    return pa.table(
        {"pool_id": pa.array(ids, pa.string()), "scores": pa.FixedSizeListArray.from_arrays(flat, scores.shape[1])}
    )


def load_vectors(lance: LanceStore, name: str, pool_ids: list[str]) -> tuple[np.ndarray, int]:
    """Rows of Lance dataset ``name`` aligned to ``pool_ids`` (float32), and its version."""
    version = lance.version(name)
    if version is None:
        raise RuntimeError(f"{name}: no Lance dataset yet; materialize {name} first")
    table = lance.read(name, ["pool_id", "vector"], version=version)
    matrix = vector_matrix(table.column("vector"))
    row_of = {pid: i for i, pid in enumerate(table.column("pool_id").to_pylist())}
    missing = [pid for pid in pool_ids if pid not in row_of]
    if missing:
        raise RuntimeError(
            f"{name}: {len(missing)} pool ids have no row (e.g. {missing[0]}); materialize {name} for every pool batch"
        )
    return matrix[[row_of[pid] for pid in pool_ids]].astype(np.float32), version


def query_rows(db) -> pl.DataFrame:
    """The query examples in column order (task, then id), with subtask ('' = none) and messages."""
    rows = db.split_rows("query", ("pool_id", "task", "messages"), order=("task", "pool_id"))
    subtasks = db.query_subtasks()
    rows = rows.with_columns(
        pl.Series("subtask", [subtasks.get(q) or "" for q in rows["pool_id"]], dtype=pl.String)
    ).select("pool_id", "task", "subtask", "messages")
    if rows.height == 0:
        raise RuntimeError("queries: no query examples; ingest a query set (dsel ingest FILE --split query)")
    return rows


def latest_warmup_manifest(db) -> tuple[str, str, dict]:
    """(key, URI, manifest) of the most recent warmup; the manifest's checkpoint paths are local
    (a remote warmup is read through the artifact cache)."""
    db.ensure_schema()
    row = db.latest_warmup()
    if row is None:
        raise RuntimeError("warmup: none yet; materialize warmup_checkpoint first")
    return row[0], row[1], read_manifest(object_store().local_copy(row[1]))


def _aligned(rows: pl.DataFrame, pool_ids: list[str], column: str) -> np.ndarray:
    values = dict(zip(rows["pool_id"].to_list(), rows[column].to_list(), strict=True))
    return np.array([np.nan if values.get(p) is None else values[p] for p in pool_ids], dtype=np.float64)


def load_scalars(
    store: StateStore, table: str, columns: list[str], pool_ids: list[str], defined_only: bool = False
) -> dict[str, np.ndarray]:
    """Columns of a score table aligned to ``pool_ids`` (NaN where missing, or - with
    ``defined_only`` - where the row records why the score is undefined)."""
    with store.session() as db:
        if not db.table_exists(table):
            raise RuntimeError(f"{table}: not materialized yet")
        rows = db.score_columns(table, columns, defined_only)
    return {column: _aligned(rows, pool_ids, column) for column in columns}
