"""Sharded model passes: a JSON-lines file cut into 3 batches with ``--shard-rows``, its model
steps spread over 2 device slots (two fake devices: ``DSEL_DEVICES=cpu,cpu``) run two at a
time, each in its own slot, and give the same embeddings and quarantine as the file ingested
whole."""

from __future__ import annotations

import json

import dagster as dg
import lance
import numpy as np
import pytest

from dsel_assets.app.cli import main
from dsel_assets.core.data.shards import split_lines
from resources.home import DselHome
from resources.store import open_state
from tests.helpers import write_jsonl


def pool_lines(n: int) -> list[str]:
    lines = [json.dumps({"question": f"What is {i} times 7?", "answer": f"It is {7 * i}."}) for i in range(n)]
    lines[13] = "{not json"  # quarantined in its shard as in the whole file
    return lines


def test_split_lines_keeps_every_byte_in_order(tmp_path):
    source = tmp_path / "pool.jsonl"
    source.write_bytes(b'{"a": 1}\n\n{"a": 2}\r\n{broken\n{"a": 3}')  # no newline at the end
    shards = split_lines(source, 2, tmp_path / "shards")
    assert [s.name for s in shards] == [
        "pool.lines-000000001-000000002.jsonl",
        "pool.lines-000000003-000000004.jsonl",
        "pool.lines-000000005-000000005.jsonl",
    ]
    assert b"".join(s.read_bytes() for s in shards) == source.read_bytes()
    assert split_lines(source, 5, tmp_path / "whole") == [source]  # one shard: the file itself
    with pytest.raises(ValueError, match="shard_rows: .* is not a JSON-lines file"):
        split_lines(tmp_path / "pool.parquet", 2, tmp_path / "x")


def embeddings_by_id(home: DselHome) -> dict[str, np.ndarray]:
    table = lance.dataset(str(home.lance / "sentence_embeddings.lance")).to_table(columns=["pool_id", "vector"])
    return dict(zip(table["pool_id"].to_pylist(), np.array(table["vector"].to_pylist()), strict=True))


def ingest(root, source, monkeypatch, *flags) -> DselHome:
    monkeypatch.setenv("DSEL_HOME", str(root))
    home = DselHome.from_env().ensure()
    monkeypatch.setenv("DAGSTER_HOME", str(home.dagster))
    assert (
        main(["ingest", str(source), "--source", "pool", "--task", "math", "--model", "tiny", "--embed", *flags]) == 0
    )
    assert main(["score", "loss"]) == 0  # per batch through the asset closure: side by side when sharded
    return home


def losses_by_id(home: DselHome) -> dict[str, float]:
    with open_state(home.duckdb, read_only=True) as db:
        return dict(db.score_columns("loss_scores", ["loss_conditioned"]).iter_rows())


def test_three_shards_on_two_devices_run_two_at_a_time_and_match_one_batch(tmp_path, monkeypatch, capsys):
    source = write_jsonl(tmp_path / "pool.jsonl", pool_lines(30))
    for name in ("DSEL_MODEL", "DSEL_DEVICE", "DSEL_DEVICES"):
        monkeypatch.delenv(name, raising=False)
    whole = ingest(tmp_path / "whole", source, monkeypatch)
    monkeypatch.setenv("DSEL_DEVICES", "cpu,cpu")
    sharded = ingest(tmp_path / "sharded", source, monkeypatch, "--shard-rows", "10")
    summary = capsys.readouterr().out
    assert summary.count("pool.lines-") == 0  # batches are named by source, not shard file
    instance = dg.DagsterInstance.get()
    runs = [r for r in instance.get_run_records() if r.dagster_run.job_name == "batch_job"]
    assert len(runs) == 6 and all(r.dagster_run.is_success for r in runs)  # ingest and score, 3 shards each
    for selection in ("sentence_embeddings", "loss_scores"):
        spans = [(r.start_time, r.end_time) for r in runs if selection in str(r.dagster_run.asset_selection)]
        at_once = max(sum(start <= t < end for start, end in spans) for t, _ in spans)
        assert len(spans) == 3 and at_once == 2, f"{selection}: at most {at_once} shard runs at a time: {spans}"
    slots = set()
    for record in runs:
        for event in instance.all_logs(record.dagster_run.run_id):
            if event.user_message.startswith("device: slot"):
                slots.add(event.user_message.split(" (")[0])
    assert slots == {"device: slot 1 of 2", "device: slot 2 of 2"}
    for home in (whole, sharded):
        with open_state(home.duckdb, read_only=True) as db:
            assert db.rows_matching("quarantine", ["raw"], {})["raw"].to_list() == ["{not json"]
            batches = db.rows_matching("examples", ["batch"], {})["batch"]
            assert batches.n_unique() == (3 if home == sharded else 1)
    expected, found = embeddings_by_id(whole), embeddings_by_id(sharded)
    assert len(expected) == 29 and sorted(found) == sorted(expected)
    for pool_id, vector in expected.items():
        np.testing.assert_allclose(found[pool_id], vector, atol=1e-5)
    expected, found = losses_by_id(whole), losses_by_id(sharded)
    assert len(expected) == 29 and found == pytest.approx(expected, rel=1e-5)
