"""``dsel lineage`` and ``dsel why`` on runs made with the tiny model: the chain comes from
Dagster's event log and MLflow and ends at the raw files with their sha256 and quarantine."""

import json

from mlflow.tracking import MlflowClient

from dsel_assets.app.cli import main
from dsel_assets.store import raw_files
from resources.store import open_state

from ..helpers import write_jsonl


def test_lineage_and_why(home, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DSEL_MODEL", "tiny")
    monkeypatch.setenv("DSEL_DEVICE", "cpu")
    lines = [json.dumps({"question": f"What is {i} minus 1?", "answer": f"{i - 1}"}) for i in range(10)]
    path = write_jsonl(tmp_path / "arith.jsonl", [*lines, "{cut"])
    assert main(["ingest", str(path), "--task", "math"]) == 0
    assert main(["select", "--method", "kmeans_random", "--budget", "4", "--param", "n_clusters=2"]) == 0
    assert main(["select", "--method", "cherry_ifd", "--budget", "3"]) == 0
    capsys.readouterr()

    assert main(["lineage", "selection_kmeans_random", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    chain = {node["asset"]: node for node in report["chain"]}
    assert set(chain) == {"selection_kmeans_random", "pool", "sentence_embeddings", "pool_batch"}
    assert chain["selection_kmeans_random"]["depth"] == 0 and chain["pool_batch"]["depth"] == 2
    (selection,) = chain["selection_kmeans_random"]["materializations"]
    assert selection["code_version"].startswith("kmeans_random-1+settings-") and selection["data_version"]
    assert selection["mlflow"]["params"]["budgets"] == "4" and selection["mlflow"]["params"]["n_clusters"] == "2"
    inputs = {d["name"]: d["digest"] for d in selection["mlflow"]["inputs"]}
    (embedding,) = chain["sentence_embeddings"]["materializations"]
    assert inputs["sentence_embeddings"] == str(embedding["metadata"]["lance_version"])
    assert inputs["pool"] == selection["metadata"]["pool_version"] == report["pool_versions"][0]
    assert MlflowClient(f"sqlite:///{home.mlflow_db}").get_run(selection["mlflow_run_id"]).info.status == "FINISHED"
    (raw,) = report["files"]
    assert raw["sha256"] == raw_files.file_sha256(path) and raw["path"] == str(path.resolve())
    assert (raw["accepted"], raw["quarantined"], raw["quarantine_reasons"]) == (10, 1, {"malformed_json": 1})

    # the text form, and the same chain from the run id
    assert main(["lineage", "selection_kmeans_random"]) == 0
    text = capsys.readouterr().out
    assert "selection_kmeans_random" in text and raw["sha256"] in text and "malformed_json=1" in text
    assert main(["lineage", selection["dagster_run_id"][:8], "--json"]) == 0
    by_run = json.loads(capsys.readouterr().out)
    assert {n["asset"] for n in by_run["chain"]} >= set(chain)

    with open_state(home.duckdb, read_only=True) as db:
        first = db.rows_matching("selections", ["pool_id"], {"method": "cherry_ifd", "rank": 0})
    chosen = first["pool_id"][0]
    assert main(["why", chosen, "--selection", "selection_cherry_ifd", "--json"]) == 0
    why = json.loads(capsys.readouterr().out)
    assert why["example"]["raw"].startswith('{"question"') and why["example"]["sha256"] == raw["sha256"]
    assert {"loss_scores"} <= set(why["scores"]) and why["ranks"][0]["rank"] == 0
    assert main(["why", chosen, "--selection", "kmeans_random"]) == 0
    assert "selection kmeans_random" in capsys.readouterr().out

    assert main(["lineage", "no_such_asset"]) == 2
    assert "neither an asset" in capsys.readouterr().err
