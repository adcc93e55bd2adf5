"""The artifact store (dsel_assets/store/artifacts.py): a local folder by default, an object
store (a real moto S3 server here) when ``DSEL_ARTIFACTS_URI`` is set. Folders arrive whole or
not at all, remote artifacts are read through a local cache, raw copies are content-addressed."""

from __future__ import annotations

import hashlib
import threading

import pytest

from dsel_assets.store import artifacts, raw_files
from dsel_assets.store.artifacts import ArtifactStore, ObjectStore
from resources import object_store as object_store_env
from tests.s3 import s3_client


@pytest.fixture()
def s3(s3_environ, monkeypatch, tmp_path):
    for name, value in s3_environ.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv(object_store_env.ARTIFACT_CACHE, str(tmp_path / "cache"))
    client = s3_client(s3_environ)
    prefix = f"run-{tmp_path.name}"  # one module-wide server: each test its own prefix
    return client, prefix, object_store_env.object_store()


def keys(client, prefix: str) -> set[str]:
    """Object keys under ``prefix`` (pyarrow's empty ``folder/`` marker objects left out)."""
    listed = client.list_objects_v2(Bucket="dsel-test", Prefix=prefix).get("Contents", [])
    return {o["Key"].removeprefix(prefix + "/") for o in listed if not o["Key"].endswith("/")}


def test_names_that_would_leave_the_root_are_refused(tmp_path):
    store = ArtifactStore(str(tmp_path))
    for key in ("../x", "models/../../x", "/abs", "a//b", "a/./b", "a\\b", "a/b\x00"):
        with pytest.raises(ValueError, match="artifact name"):
            store.uri(key)
    assert store.uri("models/finetuned/ab12") == str(tmp_path / "models" / "finetuned" / "ab12")
    assert ArtifactStore("s3://b/p/").uri("models/x") == "s3://b/p/models/x"


def test_the_root_comes_from_the_environment(tmp_path, monkeypatch):
    from resources.home import DselHome

    home = DselHome(tmp_path)
    monkeypatch.delenv(object_store_env.ARTIFACTS_URI, raising=False)
    assert home.artifacts.root == str(tmp_path)
    monkeypatch.setenv(object_store_env.ARTIFACTS_URI, "s3://bucket/team")
    remote = home.artifacts
    assert remote.remote and remote.uri("raw") == "s3://bucket/team/raw"


def test_local_artifacts_are_written_in_place_and_read_where_they_are(tmp_path):
    store = ArtifactStore(str(tmp_path))
    uri = store.uri("models/warmup/k1")
    with store.objects.writing(uri) as folder:
        (folder / "manifest.json").write_text("{}")
    assert folder == tmp_path / "models" / "warmup" / "k1"
    assert store.find("models/warmup/k1") == folder and store.find("models/warmup/none") is None
    source = tmp_path / "report.md"
    source.write_text("# report")
    target = store.objects.put_file(source, store.uri("reports/report.md"))
    assert store.objects.local_copy(target).read_text() == "# report"
    assert not list((tmp_path / "reports").glob(".incoming-*"))


def test_a_folder_reaches_the_object_store_whole_with_its_marker_last(s3, tmp_path):
    client, prefix, objects = s3
    store = ArtifactStore(f"s3://dsel-test/{prefix}", objects)
    uri = store.uri("models/finetuned/k1")
    with objects.writing(uri) as folder:
        (folder / "adapter").mkdir()
        (folder / "adapter" / "weights.safetensors").write_bytes(b"\x01" * 1000)
        (folder / "manifest.json").write_text('{"examples": 3}')
        assert keys(client, prefix) == set()  # nothing visible while the step still writes
    assert not folder.exists()  # the staging folder is gone
    assert keys(client, prefix) == {
        "models/finetuned/k1/adapter/weights.safetensors",
        "models/finetuned/k1/manifest.json",
        f"models/finetuned/k1/{artifacts.COMPLETE}",
    }
    local = store.find("models/finetuned/k1")
    assert local is not None and local.is_relative_to(tmp_path / "cache")
    assert (local / "manifest.json").read_text() == '{"examples": 3}'
    assert (local / "adapter" / "weights.safetensors").read_bytes() == b"\x01" * 1000
    # read once: the cached copy serves later reads without the server
    client.delete_object(Bucket="dsel-test", Key=f"{prefix}/models/finetuned/k1/manifest.json")
    assert objects.local_copy(uri) == local and (local / "manifest.json").exists()


def test_a_failed_step_uploads_nothing_and_a_folder_without_marker_is_not_trusted(s3):
    client, prefix, objects = s3
    store = ArtifactStore(f"s3://dsel-test/{prefix}", objects)
    with pytest.raises(RuntimeError, match="killed"), objects.writing(store.uri("models/warmup/k2")) as folder:
        (folder / "manifest.json").write_text("{}")
        raise RuntimeError("killed mid-training")
    assert keys(client, prefix) == set()
    # what an upload cut short leaves: files without the completion marker
    client.put_object(Bucket="dsel-test", Key=f"{prefix}/models/warmup/k3/manifest.json", Body=b"{}")
    assert store.find("models/warmup/k3") is None
    with pytest.raises(FileNotFoundError, match="nothing complete"):
        objects.local_copy(store.uri("models/warmup/k3"))


def test_concurrent_readers_share_one_complete_cached_copy(s3):
    _, prefix, objects = s3
    uri = ArtifactStore(f"s3://dsel-test/{prefix}", objects).uri("models/finetuned/k4")
    payload = bytes(range(256)) * 4096
    with objects.writing(uri) as folder:
        (folder / "blob.bin").write_bytes(payload)
    seen, errors = [], []

    def read() -> None:
        try:
            seen.append((objects.local_copy(uri) / "blob.bin").read_bytes())
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=read) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(seen) == 6 and all(b == payload for b in seen)


def test_raw_copies_are_content_addressed_in_the_object_store(s3, tmp_path):
    client, prefix, objects = s3
    source = tmp_path / "pool part.jsonl"
    source.write_bytes(b'{"instruction": "a", "output": "b"}\n')
    sha = hashlib.sha256(source.read_bytes()).hexdigest()
    raw = f"s3://dsel-test/{prefix}/raw"
    stored, stored_sha, size = raw_files.store_raw_file(source, raw, objects)
    assert stored == f"{raw}/{sha}/pool part.jsonl" and stored_sha == sha and size == source.stat().st_size
    first = client.head_object(Bucket="dsel-test", Key=f"{prefix}/raw/{sha}/pool part.jsonl")["ETag"]
    assert raw_files.store_raw_file(source, raw, objects)[0] == stored  # stored once
    assert client.head_object(Bucket="dsel-test", Key=f"{prefix}/raw/{sha}/pool part.jsonl")["ETag"] == first
    assert objects.local_copy(stored).read_bytes() == source.read_bytes()
    assert not list(tmp_path.glob("dsel-raw-*"))


def test_credentials_never_print_and_a_remote_raw_store_needs_its_object_store(tmp_path):
    objects = ObjectStore(options={"aws_secret_access_key": "s3cret"})
    assert "s3cret" not in repr(objects) and "s3cret" not in repr(ArtifactStore("s3://b/p", objects))
    source = tmp_path / "a.jsonl"
    source.write_text("{}\n")
    with pytest.raises(ValueError, match="object store that reaches it is missing"):
        raw_files.store_raw_file(source, "s3://b/p/raw")
