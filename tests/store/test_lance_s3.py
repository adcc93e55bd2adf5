"""Lance datasets on an S3-compatible store (a real moto server started here): the same
LanceStore calls the assets make, with the endpoint, region and credentials taken from the
environment and never from the resource's config; every byte lands in the bucket."""

from __future__ import annotations

import os

import boto3
import pyarrow as pa
import pytest

from resources.lance_store import LanceStore, storage_options


def rows(batch: str, ids: list[str], value: float) -> pa.Table:
    return pa.table({"pool_id": ids, "batch": [batch] * len(ids), "score": [value] * len(ids)})


def test_storage_options_come_from_the_environment_only_for_object_stores():
    environ = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_REGION": "eu-west-1", "AWS_ACCESS_KEY_ID": "k"}
    assert storage_options("/data/lance", environ) == {}
    assert storage_options("s3://b/lance", environ) == {
        "aws_endpoint": "http://127.0.0.1:9",
        "aws_region": "eu-west-1",
        "aws_access_key_id": "k",
        "allow_http": "true",  # plain HTTP only because the endpoint says so
    }
    assert "allow_http" not in storage_options("s3://b/lance", {"AWS_ENDPOINT_URL": "https://s3.example"})
    # dsel's own variable wins over the generic one
    assert storage_options("s3://b", {"DSEL_S3_ENDPOINT": "https://a", "AWS_ENDPOINT_URL": "https://b"}) == {
        "aws_endpoint": "https://a"
    }


def test_lance_store_round_trip_on_s3(s3_environ, monkeypatch, tmp_path):
    for name, value in s3_environ.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)  # nothing may land on the local disk
    store = LanceStore(root="s3://dsel-test/state/lance")
    assert "testing-secret" not in repr(store.model_dump())  # credentials are not config
    assert not store.exists("loss_scores")

    first = store.replace_partition("loss_scores", rows("b1", ["a", "b", "c"], 1.0), partition="b1")
    store.replace_partition("loss_scores", rows("b2", ["d"], 2.0), partition="b2")
    # b1 again, without "c": c is deleted, a/b updated, b2 untouched
    store.replace_partition("loss_scores", rows("b1", ["a", "b"], 3.0), partition="b1")
    table = store.read("loss_scores", ["pool_id", "score"]).sort_by("pool_id")
    assert table.to_pylist() == [
        {"pool_id": "a", "score": 3.0},
        {"pool_id": "b", "score": 3.0},
        {"pool_id": "d", "score": 2.0},
    ]
    assert store.exists("loss_scores") and store.version("loss_scores") > first
    # an older version stays readable (lineage pins versions)
    assert sorted(store.read("loss_scores", ["pool_id"], version=first)["pool_id"].to_pylist()) == ["a", "b", "c"]
    store.delete("loss_scores", {"batch": "b2"})
    streamed = [r for batch in store.iter_batches("loss_scores", ["pool_id"]) for r in batch.to_pylist()]
    assert sorted(r["pool_id"] for r in streamed) == ["a", "b"]

    client = boto3.client("s3", endpoint_url=s3_environ["AWS_ENDPOINT_URL"], region_name="us-east-1")
    keys = [o["Key"] for o in client.list_objects_v2(Bucket="dsel-test", Prefix="state/lance/")["Contents"]]
    assert any(k.startswith("state/lance/loss_scores.lance/") for k in keys)
    assert list(tmp_path.iterdir()) == []


def test_a_missing_bucket_is_an_error(s3_environ, monkeypatch):
    for name, value in s3_environ.items():
        monkeypatch.setenv(name, value)
    store = LanceStore(root="s3://no-such-bucket-here/lance")
    with pytest.raises(OSError):
        store.overwrite("x", rows("b1", ["a"], 1.0))


def _write_partition(root: str, name: str, batch: str, environ: dict[str, str]) -> None:
    os.environ.update(environ)
    ids = [f"{batch}-{i}" for i in range(200)]
    LanceStore(root=root).replace_partition(name, rows(batch, ids, 1.0), partition=batch)


def test_concurrent_writers_of_a_new_dataset_lose_no_rows(s3_environ, monkeypatch, tmp_path):
    """Three processes each write their own partition of a dataset that does not exist yet, at
    once. Creating it with their rows raced: Lance retried the loser's create as an overwrite
    and wiped the winner's rows (4 of 10 trials here before the creation lock, some silently).
    Now the empty dataset is created once, under a lock, and rows arrive by merge commits."""
    import multiprocessing

    for name, value in s3_environ.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the creation lock of an s3:// root is a local file
    spawn = multiprocessing.get_context("spawn")  # Lance is not fork-safe
    root = "s3://dsel-test/state/lance"
    for trial in range(4):
        name = f"race{trial}"
        writers = [
            spawn.Process(target=_write_partition, args=(root, name, f"b{w}", dict(os.environ))) for w in range(3)
        ]
        for writer in writers:
            writer.start()
        for writer in writers:
            writer.join(timeout=120)
        assert [w.exitcode for w in writers] == [0, 0, 0]
        batches = LanceStore(root=root).read(name, ["batch"]).column("batch").to_pylist()
        assert {b: batches.count(b) for b in set(batches)} == {"b0": 200, "b1": 200, "b2": 200}
