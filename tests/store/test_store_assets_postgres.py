"""The pipeline's own assets on the PostgreSQL store (``DSEL_DATABASE_URL``) against a real
server: ingestion with quarantine, the pool version and a seeded random selection give exactly
what the embedded DuckDB store gives on the same file."""

from __future__ import annotations

import json

import dagster as dg
import psycopg
import pytest

from dsel_assets.pipeline.assets.ingest.pool import pool, pool_batch
from dsel_assets.pipeline.assets.selection.selections import selection_assets
from dsel_assets.pipeline.names import pool_batches
from dsel_assets.store.errors import StateDatabaseError
from resources import build_resources
from resources.home import DselHome

from ..helpers import write_jsonl

RANDOM = next(a for a in selection_assets if a.key.path[-1] == "selection_random")


def run_chain(home: DselHome, data) -> dict:
    """Ingest ``data``, validate it, version the pool and select 3 of it with two seeds."""
    resources = build_resources(home, model="tiny", device="cpu")
    with resources["store"].session() as db:
        manifest, _ = db.register_batch(data, home.raw, source="toy", task="math")
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(pool_batches.name, [manifest.batch])
    assert dg.materialize(
        [pool_batch, pool], partition_key=manifest.batch, resources=resources, instance=instance
    ).success
    config = {"ops": {"selection_random": {"config": {"budgets": ["3"], "seeds": [0, 1]}}}}
    assert dg.materialize([RANDOM], resources=resources, instance=instance, run_config=config).success
    with resources["store"].session() as db:
        return {
            "dialect": db.dialect,
            "pool_version": db.pool_version()[0],
            "counts": db.batch_counts(manifest.batch),
            "selected": db.method_selections("random", ("selection_seed", "rank", "pool_id")).rows(),
            "location": resources["store"].location,
        }


def test_postgres_store_gives_what_duckdb_gives(tmp_path, pg_server, monkeypatch):
    good = [json.dumps({"question": f"What is {i}+{i}?", "answer": f"{2 * i}"}) for i in range(8)]
    data = write_jsonl(tmp_path / "qa.jsonl", [*good, "{broken", good[0]])
    monkeypatch.delenv("DSEL_DATABASE_URL", raising=False)
    embedded = run_chain(DselHome(tmp_path / "embedded").ensure(), data)

    with psycopg.connect(pg_server, autocommit=True) as admin:
        admin.execute("CREATE DATABASE dsel_assets_test")
    url = pg_server.replace("dbname=dsel", "dbname=dsel_assets_test")
    monkeypatch.setenv("DSEL_DATABASE_URL", url)
    on_postgres = run_chain(DselHome(tmp_path / "cluster").ensure(), data)

    assert (embedded["dialect"], on_postgres["dialect"]) == ("duckdb", "postgres")
    assert on_postgres["counts"] == embedded["counts"] == (8, [("duplicate", 1), ("malformed_json", 1)], None)
    assert on_postgres["pool_version"] == embedded["pool_version"]
    assert on_postgres["selected"] == embedded["selected"] and len(embedded["selected"]) == 6
    assert not (tmp_path / "cluster" / "dsel.duckdb").exists()  # nothing went to the local file


def test_unreachable_postgres_is_a_named_error(monkeypatch, tmp_path):
    monkeypatch.setenv("DSEL_DATABASE_URL", f"host={tmp_path} dbname=nothing user=nobody")
    store = build_resources(DselHome(tmp_path / "h").ensure(), model="tiny", device="cpu")["store"]
    with pytest.raises(StateDatabaseError, match="cannot be reached"), store.session():
        pass
