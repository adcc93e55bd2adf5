"""Resources against the real components: Lance on disk, MLflow on SQLite, DuckDB."""

import os

import dagster as dg
import duckdb
import pyarrow as pa
import pytest
from mlflow.tracking import MlflowClient

from dsel_assets.store.state import State
from resources.lance_store import LanceStore
from resources.tracking import DatasetRef, MlflowTracker


def rows(batch, ids, value):
    return pa.table({"pool_id": ids, "batch": [batch] * len(ids), "x": [value] * len(ids)})


def test_lance_partition_replacement_is_one_commit_and_leaves_other_batches(tmp_path):
    store = LanceStore(root=str(tmp_path / "lance"))
    v1 = store.replace_partition("feat", rows("a", ["a1", "a2", "a3"], 1.0), partition="a")
    v2 = store.replace_partition("feat", rows("b", ["b1", "b2"], 2.0), partition="b")
    # replace batch a: a1 updated, a2 kept (updated), a3 gone, a4 new - in one commit
    v3 = store.replace_partition("feat", rows("a", ["a1", "a2", "a4"], 3.0), partition="a")
    # version 1 is the empty dataset (created once, under a lock); then one commit per replacement
    assert (v1, v2, v3) == (2, 3, 4) and store.version("feat") == 4
    assert store.read("feat", version=1).num_rows == 0
    table = store.read("feat").sort_by("pool_id")
    assert table.column("pool_id").to_pylist() == ["a1", "a2", "a4", "b1", "b2"]
    assert table.column("x").to_pylist() == [3.0, 3.0, 3.0, 2.0, 2.0]
    assert store.read("feat", partitions=["b"]).num_rows == 2
    assert store.read("feat", version=3).num_rows == 5  # time travel to before the replacement
    # replacing with an empty table empties that partition only
    store.replace_partition("feat", rows("a", [], 0.0), partition="a")
    assert sorted(store.read("feat").column("pool_id").to_pylist()) == ["b1", "b2"]


def test_lance_refuses_rows_of_another_partition_and_unsafe_names(tmp_path):
    store = LanceStore(root=str(tmp_path / "lance"))
    with pytest.raises(ValueError, match="partition"):
        store.replace_partition("feat", rows("b", ["b1"], 1.0), partition="a")
    with pytest.raises(ValueError, match="partition"):
        store.replace_partition("feat", rows("x' OR 1=1 --", ["b1"], 1.0), partition="x' OR 1=1 --")
    with pytest.raises(ValueError, match="dataset"):
        store.uri("../escape")


def test_two_materializations_in_one_process_make_two_mlflow_runs(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = MlflowTracker(tracking_uri=uri, artifact_location=(tmp_path / "art").as_uri())
    parts = dg.StaticPartitionsDefinition(["p1", "p2"])

    @dg.asset(partitions_def=parts, code_version="v7")
    def scored(context: dg.AssetExecutionContext, tracker: MlflowTracker) -> dg.MaterializeResult:
        inputs = [DatasetRef("upstream", str(tmp_path), f"digest-{context.partition_key}")]
        with tracker.run(context, params={"k": context.partition_key}, inputs=inputs) as run:
            run.log_metrics({"score": 1.0 if context.partition_key == "p1" else 2.0})
        return dg.MaterializeResult(metadata=run.metadata())

    instance = dg.DagsterInstance.ephemeral()
    results = [
        dg.materialize([scored], partition_key=p, resources={"tracker": tracker}, instance=instance)
        for p in ("p1", "p2")
    ]
    run_ids = [r.asset_materializations_for_node("scored")[0].metadata["mlflow_run_id"].value for r in results]
    assert len(set(run_ids)) == 2
    client = MlflowClient(uri)
    for run_id, result, partition, score in zip(run_ids, results, ("p1", "p2"), (1.0, 2.0), strict=True):
        run = client.get_run(run_id)
        assert run.data.tags["dagster.run_id"] == result.run_id
        assert run.data.tags["dagster.asset_key"] == "scored"
        assert run.data.tags["dagster.partition_key"] == partition
        assert run.data.tags["dagster.code_version"] == "v7"
        assert run.data.params == {"k": partition}
        assert run.data.metrics == {"score": score}
        assert run.info.status == "FINISHED"
        (dataset_input,) = run.inputs.dataset_inputs
        assert dataset_input.dataset.name == "upstream"
        assert dataset_input.dataset.digest == f"digest-{partition}"


def test_a_failing_materialization_marks_its_mlflow_run_failed(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = MlflowTracker(tracking_uri=uri)

    @dg.asset
    def broken(context: dg.AssetExecutionContext, tracker: MlflowTracker) -> None:
        with tracker.run(context):
            raise RuntimeError("boom")

    result = dg.materialize([broken], resources={"tracker": tracker}, raise_on_error=False)
    assert not result.success
    (run,) = MlflowClient(uri).search_runs([tracker.experiment_id()])
    assert run.info.status == "FAILED"


def test_batch_registration_is_content_addressed(tmp_path):
    src = tmp_path / "data.jsonl"
    src.write_text('{"question": "1+1?", "answer": "2"}\n')
    with duckdb.connect(str(tmp_path / "db.duckdb")) as conn:
        db = State(conn)
        first, created = db.register_batch(src, tmp_path / "raw", source="My Source!", task="math")
        again, created_again = db.register_batch(src, tmp_path / "raw", source="other", task="math")
        assert created and not created_again and again == first
        assert first.batch == f"my_source-pool-{first.sha256[:12]}"
        assert first.stored_path.startswith(str(tmp_path / "raw" / first.sha256))
        with pytest.raises(ValueError, match="split"):
            db.register_batch(src, tmp_path / "raw", source="s", task="t", split="train")
        with pytest.raises(KeyError, match="dsel ingest"):
            db.get_batch("unknown-batch")


def test_a_deployed_dagster_instance_is_used_instead_of_the_homes_own(tmp_path, monkeypatch):
    from resources import DselHome, build_resources
    from resources.home import DAGSTER_INSTANCE

    home = DselHome(tmp_path / "home")
    deployed = tmp_path / "instance"
    deployed.mkdir()
    monkeypatch.setenv(DAGSTER_INSTANCE, str(deployed))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "elsewhere"))
    with pytest.raises(ValueError, match=f"{DAGSTER_INSTANCE}: .* holds no dagster.yaml"):
        home.use_as_dagster_home()
    (deployed / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    home.use_as_dagster_home()
    assert os.environ["DAGSTER_HOME"] == str(deployed)
    assert not (home.dagster / "dagster.yaml").exists()  # the home writes no instance of its own
    # with a tracking server, the server decides where artifacts go unless told otherwise
    monkeypatch.setenv("DSEL_MLFLOW_URI", "http://127.0.0.1:5000")
    assert build_resources(home, model="tiny")["tracker"].artifact_location is None
    monkeypatch.setenv("DSEL_MLFLOW_ARTIFACTS", "s3://b/mlflow")
    assert build_resources(home, model="tiny")["tracker"].artifact_location == "s3://b/mlflow"
    monkeypatch.delenv("DSEL_MLFLOW_URI")
    monkeypatch.delenv("DSEL_MLFLOW_ARTIFACTS")
    assert build_resources(home, model="tiny")["tracker"].artifact_location == home.mlflow_artifacts.as_uri()


def test_inputs_mlflow_cannot_resolve_are_recorded_by_uri(tmp_path):
    """A PostgreSQL state database has no MLflow dataset-source resolver; it is recorded as is."""
    import json

    from resources.tracking import TrackedRun

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("x")
    run = client.create_run(experiment)
    tracked = TrackedRun(client, run.info.run_id, experiment, "x")
    refs = [DatasetRef("pool", "postgresql://dsel@db/dsel", "v1"), DatasetRef("lance", "s3://b/lance/x.lance", "3")]
    tracked.log_datasets(refs)
    inputs = client.get_run(run.info.run_id).inputs.dataset_inputs
    assert sorted(json.loads(i.dataset.source)["uri"] for i in inputs) == [
        "postgresql://dsel@db/dsel",
        "s3://b/lance/x.lance",
    ]
