"""The store's writes (dsel_assets/store/tables.py) on DuckDB and on a real PostgreSQL server:
a batch registered once per file and split, its rows replaced atomically, score chunks upserted
idempotently, selections replaced per (method, budget), tables replaced whole from a frame; a
failing write leaves nothing behind; the pool version is the hash of exactly the manifests a
hand computation gives."""

from __future__ import annotations

import hashlib
import json

import polars as pl
import pytest

from dsel_assets.store import queries, sql, tables

CHAT = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]


def accepted(manifest: queries.BatchManifest, ids: list[str]) -> pl.DataFrame:
    rows = [
        {"pool_id": i, "messages": CHAT, "n_turns": 2, "n_tokens": 5, "position": n, "raw": "{}", "meta": None}
        for n, i in enumerate(ids)
    ]
    return tables.accepted_frame(manifest, rows)


def quarantined(manifest: queries.BatchManifest, reasons: list[str]) -> pl.DataFrame:
    rows = [{"position": n, "reason": r, "detail": "", "raw": "x"} for n, r in enumerate(reasons)]
    return tables.quarantine_frame(manifest, rows)


@pytest.fixture
def db(backend):
    with backend.state() as db:
        db.ensure_schema()
        yield db


@pytest.fixture
def manifest(db, tmp_path):
    data = tmp_path / "pool.jsonl"
    data.write_text('{"instruction": "hi", "output": "hello"}\n', encoding="utf-8")
    made, created = db.register_batch(data, tmp_path / "raw", source="alpaca", task="general")
    assert created
    return made


def test_a_file_is_registered_once_per_split(db, manifest, tmp_path):
    again, created = db.register_batch(tmp_path / "pool.jsonl", tmp_path / "raw", source="alpaca", task="general")
    assert not created and again == manifest
    assert db.find_batch_by_sha(manifest.sha256, "pool") == manifest.batch
    assert db.get_batch(manifest.batch) == manifest
    # re-ingest with --force after fixing the task: the batch takes it
    fixed, _ = db.register_batch(tmp_path / "pool.jsonl", tmp_path / "raw", source="alpaca", task="math", update=True)
    assert fixed.task == "math" and db.get_batch(manifest.batch).task == "math"
    query, created = db.register_batch(
        tmp_path / "pool.jsonl", tmp_path / "raw", source="alpaca", task="math", split="query"
    )
    assert created and query.batch != manifest.batch


def test_batch_rows_are_replaced_atomically(db, manifest):
    assert not db.is_validated(manifest.batch)
    db.replace_batch(manifest, accepted(manifest, ["a", "b", "c"]), quarantined(manifest, ["bad_json"]))
    assert db.is_validated(manifest.batch)
    rows = db.split_rows("pool", ("pool_id", "messages", "source", "file_sha256"))
    assert rows["pool_id"].to_list() == ["a", "b", "c"]
    assert [list(map(dict, m)) for m in rows["messages"].to_list()] == [CHAT] * 3
    assert set(rows["file_sha256"]) == {manifest.sha256}
    assert db.batch_counts(manifest.batch) == (3, [("bad_json", 1)], None)

    db.replace_batch(manifest, accepted(manifest, ["b"]), quarantined(manifest, []))
    assert db.split_rows("pool", ("pool_id",))["pool_id"].to_list() == ["b"]
    assert db.batch_counts(manifest.batch) == (1, [], None)

    broken = accepted(manifest, ["x"]).with_columns(pl.lit("oops").alias("no_such_column"))
    with pytest.raises(Exception):  # noqa: B017 - each backend raises its own error type
        db.replace_batch(manifest, broken, quarantined(manifest, []))
    # the failed replacement rolled back: the previous rows are intact
    assert db.split_rows("pool", ("pool_id",))["pool_id"].to_list() == ["b"]

    db.mark_batch_failed(manifest.batch, "disk full")
    assert db.batch_counts(manifest.batch)[2] == "disk full"


def test_pool_version_hashes_the_manifests_of_batches_with_rows(db, manifest):
    assert db.pool_version() == (hashlib.sha256(b"[]").hexdigest()[:16], [])
    db.replace_batch(manifest, accepted(manifest, ["a"]), quarantined(manifest, []))
    expected_rows = [[manifest.batch, manifest.sha256, "alpaca", "general", None, None]]
    digest = hashlib.sha256(json.dumps(expected_rows).encode()).hexdigest()[:16]
    assert db.pool_version() == (digest, [manifest.batch])


def test_score_chunks_are_upserted_idempotently(db):
    db.ensure_score_table("loss_scores")

    def chunk(ids, value, batch="b1"):
        return pl.DataFrame(
            {"pool_id": ids, "batch": [batch] * len(ids), "ifd_loss_ratio": [value] * len(ids), "reason": ""}
        )

    db.upsert_by_id("loss_scores", chunk(["a", "b"], 1.0), {"batch": "b1"})
    db.upsert_by_id("loss_scores", chunk(["b", "c"], 2.0), {"batch": "b1"})  # b rewritten
    db.upsert_by_id("loss_scores", chunk(["b", "c"], 2.0), {"batch": "b1"})  # again: no duplicate
    db.upsert_by_id("loss_scores", chunk(["a"], 9.0, batch="b2"), {"batch": "b2"})  # other batch
    got = db.score_columns("loss_scores", ["batch", "ifd_loss_ratio"]).sort("batch", "pool_id").rows()
    assert got == [("a", "b1", 1.0), ("b", "b1", 2.0), ("c", "b1", 2.0), ("a", "b2", 9.0)]


def test_selections_are_replaced_per_method_and_budget(db):
    def selection(ids, budget):
        return pl.DataFrame(
            {"method": "less", "budget": budget, "rank": list(range(len(ids))), "pool_id": ids, "selection_seed": 0},
            schema_overrides={"rank": pl.Int32, "selection_seed": pl.Int32},
        )

    db.write_selection("less", "5pct", selection(["a", "b"], "5pct"))
    db.write_selection("less", "10pct", selection(["a", "b", "c"], "10pct"))
    db.write_selection("less", "5pct", selection(["c"], "5pct"))
    rows = db.method_selections("less", ("budget", "rank", "pool_id")).rows()
    assert rows == [("10pct", 0, "a"), ("10pct", 1, "b"), ("10pct", 2, "c"), ("5pct", 0, "c")]


def test_one_selection_replicate_is_replaced_beside_the_others(db):
    def replicate(ids, seed, version="v1", budget="5pct", diagnostics="{}"):
        return pl.DataFrame(
            {
                "method": "less",
                "budget": budget,
                "selection_seed": seed,
                "rank": list(range(len(ids))),
                "pool_id": ids,
                "pool_version": version,
                "diagnostics": diagnostics,
            },
            schema_overrides={"rank": pl.Int32, "selection_seed": pl.Int32},
        )

    def stored():
        rows = db.method_selections("less", ("budget", "selection_seed", "pool_id", "pool_version"))
        return rows.rows()

    db.write_selection("less", "5pct", pl.concat([replicate(["a"], 0), replicate(["b"], 2)]))
    db.write_selection("less", "10pct", replicate(["a", "b"], 0, budget="10pct"))
    db.write_selection_replicate("less", "5pct", 1, replicate(["c", "d"], 1, diagnostics='{"w": 1}'))
    db.write_selection_replicate("less", "5pct", 1, replicate(["e"], 1, diagnostics='{"w": 1}'))  # again
    assert stored() == [
        ("10pct", 0, "a", "v1"),
        ("10pct", 0, "b", "v1"),
        ("5pct", 0, "a", "v1"),
        ("5pct", 1, "e", "v1"),  # replaced, the other replicates of the budget kept
        ("5pct", 2, "b", "v1"),
    ]
    got = db.selection_replicates(["less", "random"])
    assert got.rows() == [
        ("less", "10pct", 0, "{}"),
        ("less", "5pct", 0, "{}"),
        ("less", "5pct", 1, '{"w": 1}'),
        ("less", "5pct", 2, "{}"),
    ]
    assert db.selection_replicates([]).height == 0
    # the replicate family is 0 and 1 now: seed 2 goes
    db.write_selection_replicate("less", "5pct", 0, replicate(["f"], 0), replicates=[0, 1])
    assert [r for r in stored() if r[0] == "5pct"] == [("5pct", 0, "f", "v1"), ("5pct", 1, "e", "v1")]
    # a replicate of another pool version: the others, drawn from the old pool, go
    db.write_selection_replicate("less", "5pct", 1, replicate(["g"], 1, version="v2"), replicates=[0, 1])
    assert [r for r in stored() if r[0] == "5pct"] == [("5pct", 1, "g", "v2")]
    with pytest.raises(ValueError, match="one replicate"):
        db.write_selection_replicate("less", "5pct", 0, replicate(["h"], 1))


def test_tables_replaced_whole_keep_the_frames_columns(db):
    first = pl.DataFrame(
        {
            "label": [0, 1],
            "name": ["cluster-0", "cluster-1"],
            "embedding": [[0.5, 1.5], [2.0, -1.0]],
            "how": ["derived", "derived"],
        }
    )
    db.replace_table("label_vocab", first)
    db.replace_table("label_vocab", first.head(1).with_columns(pl.lit("tags").alias("how")))
    vocab = sql.frame(db.conn, "SELECT label, name, embedding, how FROM label_vocab")
    assert vocab.rows() == [(0, "cluster-0", [0.5, 1.5], "tags")]
    with pytest.raises(ValueError, match="plain identifier"):
        db.replace_table("label_vocab; DROP TABLE examples", first)


def test_nested_transactions_join_the_outer_one(db):
    def selection(ids):
        return pl.DataFrame({"method": "less", "budget": "5pct", "rank": list(range(len(ids))), "pool_id": ids})

    with pytest.raises(RuntimeError, match="after the inner write"), db.transaction():
        db.write_selection("less", "5pct", selection(["a"]))  # its own transaction, nested
        raise RuntimeError("after the inner write")
    assert db.method_selections("less").height == 0  # the inner write went with the outer

    with db.transaction():
        db.write_selection("less", "5pct", selection(["a"]))
        db.write_selection("less", "10pct", selection(["b"]))
    assert db.selected_ids("less") == ["a", "b"]
    assert sql._open_transactions == {}
