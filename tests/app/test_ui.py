"""The UI as a user meets it: the Dagster webserver on a state home, asked over GraphQL for the
asset graph, the sensors and a materialization's metadata."""

import json

from dsel_assets.app.cli import main
from dsel_assets.app.webserver import graphql, serve

from ..helpers import write_jsonl

GRAPH = """{ assetNodes { assetKey { path } groupName description dependencyKeys { path } } }"""
AUTOMATION = """{ repositoriesOrError { ... on RepositoryConnection {
    nodes { name sensors { name } schedules { name cronSchedule } } } } }"""
MATERIALIZATION = """query ($key: AssetKeyInput!) { assetOrError(assetKey: $key) { ... on Asset {
    assetMaterializations(limit: 1) { partition runId metadataEntries { label __typename
        ... on IntMetadataEntry { intValue } ... on TextMetadataEntry { text }
        ... on MarkdownMetadataEntry { mdStr } } } } } }"""


def test_webserver_serves_graph_and_metadata(home, tmp_path, monkeypatch):
    monkeypatch.setenv("DSEL_MODEL", "tiny")
    rows = [json.dumps({"question": f"Spell {w}.", "answer": " ".join(w)}) for w in ("cat", "dog", "owl")]
    assert main(["ingest", str(write_jsonl(tmp_path / "spell.jsonl", [*rows, "{oops"])), "--task", "spelling"]) == 0
    with serve(home, env={"DSEL_MODEL": "tiny"}) as url:
        nodes = {"/".join(n["assetKey"]["path"]): n for n in graphql(url, GRAPH)["assetNodes"]}
        repos = graphql(url, AUTOMATION)["repositoriesOrError"]["nodes"]
        answer = graphql(url, MATERIALIZATION, {"key": {"path": ["pool_batch"]}})
    assert {"pool_batch", "pool", "sentence_embeddings", "selection_random", "selection_report"} <= set(nodes)
    assert {n["groupName"] for n in nodes.values()} >= {"pool", "representations", "selections", "reports"}
    assert {"path": ["pool"]} in nodes["selection_random"]["dependencyKeys"]
    assert all(n["description"] for n in nodes.values())
    sensors = {s["name"] for r in repos for s in r["sensors"]}
    assert {"inbox_sensor", "recuration_sensor"} <= sensors
    assert any(s["name"] == "recuration_schedule" for r in repos for s in r["schedules"])
    (materialization,) = answer["assetOrError"]["assetMaterializations"]
    meta = {e["label"]: e for e in materialization["metadataEntries"]}
    assert (meta["read"]["intValue"], meta["accepted"]["intValue"], meta["quarantined"]["intValue"]) == (4, 3, 1)
    assert meta["quarantine_reasons"]["__typename"] == "MarkdownMetadataEntry"
    assert "malformed_json" in meta["quarantine_reasons"]["mdStr"]
    assert meta["mlflow_run_id"]["text"]
