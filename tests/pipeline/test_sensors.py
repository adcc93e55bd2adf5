"""New data: the inbox sensor against a real (temp-dir) Dagster instance, the batch-only
representation runs it requests, and the re-curation over the grown pool."""

from __future__ import annotations

import json
import os
from pathlib import Path

import dagster as dg
import pytest

from dsel_assets.pipeline.assets.ingest import inbox
from dsel_assets.pipeline.code_location import build_definitions
from dsel_assets.pipeline.names import pool_batches
from resources import InboxSettings, SentenceEmbedder, build_resources
from resources.store import open_state

from ..helpers import qa_lines, write_jsonl

EMBEDDED: list[int] = []  # texts per call of the real sentence embedder


class CountingEmbedder(SentenceEmbedder):
    """The real MiniLM embedder, counting the texts it is asked to embed."""

    def encode(self, texts: list[str]):
        EMBEDDED.append(len(texts))
        return super().encode(texts)


@pytest.fixture()
def setup(home, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(home.dagster))
    embedder = CountingEmbedder(device="cpu")
    defs = build_definitions(home, model="tiny", device="cpu", resources={"embedder": embedder})
    resources = {**build_resources(home, model="tiny", device="cpu"), "embedder": embedder}
    with dg.instance_for_test(temp_dir=str(home.dagster)) as instance:
        yield defs, resources, instance


def tick(defs, resources, instance, cursor: str | None) -> dg.SensorResult:
    sensor = defs.resolve_sensor_def("inbox_sensor")
    # closed here, in order: an unclosed context's resources leave Dagster's process-wide
    # definitions-state storage pointing at a dead instance
    with dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs, resources=resources) as context:
        return sensor(context)


def run_requests(defs, resources, instance, result: dg.SensorResult) -> list[dg.ExecuteInProcessResult]:
    """What the daemon does with a sensor result: add the partitions, launch the runs."""
    for request in result.dynamic_partitions_requests:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    job = defs.resolve_job_def("batch_job")
    return [
        job.execute_in_process(
            instance=instance,
            partition_key=r.partition_key,
            asset_selection=r.asset_selection,
            tags=r.tags,
        )
        for r in result.run_requests
    ]


def latest_meta(instance, key: str, partition: str) -> dict:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(key), asset_partitions=[partition]), limit=1
    ).records
    return {k: v.value for k, v in records[0].asset_materialization.metadata.items()}


def test_inbox_new_batch_only_then_recuration(home, setup):
    defs, resources, instance = setup
    EMBEDDED.clear()
    write_jsonl(home.inbox / "first.jsonl", qa_lines(0, 6))
    first = tick(defs, resources, instance, None)
    assert not first.run_requests  # seen once: maybe still being written
    second = tick(defs, resources, instance, first.cursor)
    assert len(second.run_requests) == 1 and len(second.dynamic_partitions_requests) == 1
    batch1 = second.run_requests[0].partition_key
    assert second.run_requests[0].tags["dsel/sha256"]
    # no warmup yet: the gradient features wait; the rest of the batch work runs
    assets = {k.to_user_string() for k in second.run_requests[0].asset_selection}
    assert {"pool_batch", "pool", "sentence_embeddings", "loss_scores"} <= assets
    assert "pool_grad_features" not in assets
    assert all(r.success for r in run_requests(defs, resources, instance, second))
    assert not (home.inbox / "first.jsonl").exists()
    assert list((home.inbox / "ingested").glob("*-first.jsonl"))
    assert EMBEDDED == [6]

    # a first curation, with its own budgets: what re-curation must repeat
    curation = defs.resolve_job_def("curation_job")
    config = {"ops": {"selection_random": {"config": {"budgets": ["3"], "params": {"seed": 7}}}}}
    assert curation.execute_in_process(
        instance=instance, asset_selection=[dg.AssetKey("selection_random")], run_config=config
    ).success

    # the same bytes again, under another name: not a new batch, no run
    write_jsonl(home.inbox / "again.jsonl", qa_lines(0, 6))
    cursor = tick(defs, resources, instance, second.cursor).cursor
    repeat = tick(defs, resources, instance, cursor)
    assert not repeat.run_requests and not repeat.dynamic_partitions_requests
    assert not (home.inbox / "again.jsonl").exists()

    # a second batch (4 new rows, 2 repeating the first batch): only its rows are embedded and scored
    write_jsonl(home.inbox / "second.jsonl", qa_lines(4, 12))
    cursor = tick(defs, resources, instance, repeat.cursor).cursor
    new = tick(defs, resources, instance, cursor)
    batch2 = new.run_requests[0].partition_key
    assert batch2 != batch1
    (batch_run,) = run_requests(defs, resources, instance, new)
    assert EMBEDDED == [6, 6]  # 8 rows read, 2 quarantined as duplicates of batch 1, 6 embedded
    assert latest_meta(instance, "sentence_embeddings", batch2)["rows"] == 6
    assert latest_meta(instance, "loss_scores", batch2)["computed"] == 6
    assert latest_meta(instance, "loss_scores", batch1)["computed"] == 6  # batch 1 not touched again
    assert len(instance.fetch_materializations(dg.AssetKey("sentence_embeddings"), limit=10).records) == 2

    # re-curation after the batch run: the stale selection, with the budgets it was asked for
    sensor = defs.resolve_sensor_def("recuration_sensor")
    with dg.build_run_status_sensor_context(
        sensor_name="recuration_sensor",
        dagster_event=batch_run.get_run_success_event(),
        dagster_instance=instance,
        dagster_run=batch_run.dagster_run,
        repository_def=defs.get_repository_def(),
    ) as context:
        request = sensor(context)
    assert isinstance(request, dg.RunRequest), request
    keys = {k.to_user_string() for k in request.asset_selection}
    assert "selection_random" in keys and "warmup_checkpoint" not in keys
    assert request.run_config["ops"]["selection_random"] == config["ops"]["selection_random"]
    assert curation.execute_in_process(
        instance=instance, asset_selection=request.asset_selection, run_config=request.run_config
    ).success
    with open_state(home.duckdb, read_only=True) as db:
        n_pool = db.rows_matching("examples", ["pool_id"], {}).height
        selections = db.rows_matching("selections", ["pool_version"], {})
        versions = db.rows_matching("pool_versions", ["pool_version", "created_at"], {})
    selected, version = selections.height, selections["pool_version"].drop_nulls().first()
    current = versions.sort("created_at", descending=True, nulls_last=True)["pool_version"][0]  # the latest
    assert (n_pool, selected, version) == (12, 3, current)
    # nothing stale any more: the schedule skips
    schedule = defs.resolve_schedule_def("recuration_schedule")
    with dg.build_schedule_context(instance=instance, repository_def=defs.get_repository_def()) as context:
        assert isinstance(schedule(context), dg.SkipReason)
    assert instance.get_dynamic_partitions(pool_batches.name) == [batch1, batch2]


def test_half_written_files_wait_and_corrupt_ones_are_quarantined_not_lost(home, setup, monkeypatch):
    defs, resources, instance = setup
    half = home.inbox / "growing.json"
    half.write_text('[{"instruction": "Name a colour.", "input": "", "output": "Blue."}, {"instr')
    cursor = tick(defs, resources, instance, None).cursor
    waiting = tick(defs, resources, instance, cursor)  # stable size but unfinished: wait
    assert not waiting.run_requests and half.exists()
    half.write_text(
        json.dumps([{"instruction": "Name a colour.", "input": "", "output": "Blue."}] * 1)[:-1]
        + ', {"instruction": "Name a fruit.", "input": "", "output": "Pear."}]'
    )
    cursor = tick(defs, resources, instance, waiting.cursor).cursor  # changed: look again next tick
    done = tick(defs, resources, instance, cursor)
    assert len(done.run_requests) == 1 and not half.exists()

    # a file that stays broken past the grace period is ingested as it is: its text lands in the
    # quarantine with a reason, the file under inbox/quarantined/
    broken = home.inbox / "broken.json"
    broken.write_text('{"this is": not json')
    settings = InboxSettings(path=str(home.inbox), grace_seconds=0)
    quick = {**resources, "inbox_settings": settings}
    cursor = tick(defs, quick, instance, done.cursor).cursor
    taken = tick(defs, quick, instance, cursor)
    assert len(taken.run_requests) == 1
    assert all(r.success for r in run_requests(defs, resources, instance, taken))
    assert list((home.inbox / "quarantined").glob("*-broken.json"))
    with open_state(home.duckdb, read_only=True) as db:
        assert db.rows_matching("quarantine", ["reason", "raw"], {}).rows() == [
            ("unreadable_file", '{"this is": not json')
        ]


def test_scan_survives_vanishing_and_unreadable_files(tmp_path):
    root = tmp_path / "inbox"
    (root / "eval").mkdir(parents=True)
    write_jsonl(root / "eval" / "e.jsonl", qa_lines(0, 2))
    write_jsonl(root / "p.jsonl", qa_lines(0, 2))
    (root / ".partial.jsonl").write_text("{")  # a writer's hidden temporary: ignored
    ready, state, _ = inbox.scan(root, {}, 0.0, 600)
    assert not ready and set(state) == {"eval/e.jsonl", "p.jsonl"}
    (root / "p.jsonl").unlink()
    ready, state, _ = inbox.scan(root, state, 1.0, 600)
    assert [(r.name, r.split) for r in ready] == [("eval/e.jsonl", "eval")]
    if os.geteuid() != 0:
        unreadable = write_jsonl(root / "u.jsonl", qa_lines(0, 1))
        _, state, _ = inbox.scan(root, {}, 0.0, 600)
        unreadable.chmod(0)
        ready, _, log = inbox.scan(root, state, 1.0, 600)
        assert "u.jsonl" not in {r.name for r in ready} and any("u.jsonl" in line for line in log)
    assert Path(root).is_dir()
