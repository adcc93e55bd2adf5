"""Lineage audits from the records that cannot drift: Dagster's event log and MLflow.

:func:`lineage` starts at an asset's latest materialization (or at every materialization of a
run) and walks upstream through the asset graph of the Definitions, so any asset added later
(fine-tuned models, evaluation scores) is covered without code here. For each parent it takes
the materialization the child actually read: Dagster tags every materialization with
``dagster/input_event_pointer/<parent>`` (the storage id of the input event); for a partitioned
parent, the latest materialization of each partition up to that event. It ends at the pool
version, the raw files (path and sha256 from the state database's ``batches``) and their quarantine counts.
"""

from __future__ import annotations

import json
import os
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from resources import store as state_db
from resources.tracking import restore_credentials

#: Materialization metadata worth showing in a lineage line, in this order.
KEY_METADATA = (
    "method",
    "config",
    "budgets",
    "pool_version",
    "pool_examples",
    "pool_size",
    "warmup",
    "lance_version",
    "lance_uri",
    "rows",
    "computed",
    "accepted",
    "quarantined",
    "sha256",
    "model",
    "model_hash",
)
POINTER_TAG = "dagster/input_event_pointer/"


@dataclass
class Node:
    """One asset in the chain with the materialization(s) the chain used."""

    asset: str
    depth: int
    records: list[Any] = field(default_factory=list)  # EventLogRecord, one per partition

    def to_dict(self, mlflow: dict[str, dict]) -> dict:
        items = []
        for record in self.records:
            mat = record.asset_materialization
            meta = {k: _plain(v.value) for k, v in mat.metadata.items()}
            run_id = meta.get("mlflow_run_id")
            items.append(
                {
                    "partition": mat.partition,
                    "dagster_run_id": record.run_id,
                    "storage_id": record.storage_id,
                    "timestamp": record.timestamp,
                    "data_version": mat.tags.get("dagster/data_version") if mat.tags else None,
                    "code_version": mat.tags.get("dagster/code_version") if mat.tags else None,
                    "metadata": {k: meta[k] for k in KEY_METADATA if k in meta},
                    "mlflow_run_id": run_id,
                    "mlflow": mlflow.get(run_id) if run_id else None,
                }
            )
        return {"asset": self.asset, "depth": self.depth, "materializations": items}


def _plain(value: Any) -> Any:
    """A metadata value as JSON (markdown tables and paths as their text)."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (dict, list)):
        return value
    return str(value)


def _records(instance: dg.DagsterInstance, key: dg.AssetKey, before: int | None, partitioned: bool) -> list:
    """The materialization(s) of ``key`` current at storage id ``before`` (None: now): one, or
    the latest of each partition."""
    found = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, before_storage_id=None if before is None else before + 1),
        limit=10_000 if partitioned else 1,
    ).records
    if not partitioned:
        return found[:1]
    latest: dict[str | None, Any] = {}
    for record in found:  # newest first
        latest.setdefault(record.asset_materialization.partition, record)
    return sorted(latest.values(), key=lambda r: r.asset_materialization.partition or "")


def start_records(instance: dg.DagsterInstance, asset_graph, target: str) -> list:
    """Materializations to start from: an asset's latest (all partitions' latest for a
    partitioned asset), or every asset materialized by a run (id or unique id prefix)."""
    key = dg.AssetKey.from_user_string(target)
    if asset_graph.has(key):
        records = _records(instance, key, None, asset_graph.get(key).is_partitioned)
        if not records:
            raise KeyError(f"asset: {target} has never been materialized")
        return records
    runs = [r for r in instance.get_run_records(limit=10_000) if r.dagster_run.run_id.startswith(target)]
    if len(runs) != 1:
        raise KeyError(f"target: {target!r} is neither an asset key nor one run id ({len(runs)} runs match)")
    run_id = runs[0].dagster_run.run_id
    return list(instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records)


def walk(instance: dg.DagsterInstance, asset_graph, starts: list) -> list[Node]:
    """Breadth-first upstream from ``starts``: each parent at the materialization its child read."""
    nodes: dict[dg.AssetKey, Node] = {}
    for record in starts:
        key = record.asset_key
        nodes.setdefault(key, Node(key.to_user_string(), 0)).records.append(record)
    queue = deque(nodes)
    while queue:
        key = queue.popleft()
        node = nodes[key]
        for parent in sorted(asset_graph.get(key).parent_keys, key=lambda k: k.to_user_string()):
            if parent in nodes or not asset_graph.has(parent):
                continue
            pointers = []
            for record in node.records:
                tags = record.asset_materialization.tags or {}
                pointer = tags.get(POINTER_TAG + parent.to_user_string())
                pointers.append(int(pointer) if pointer and pointer.isdigit() else record.storage_id)
            records = _records(instance, parent, max(pointers), asset_graph.get(parent).is_partitioned)
            if records:
                nodes[parent] = Node(parent.to_user_string(), node.depth + 1, records)
                queue.append(parent)
    return sorted(nodes.values(), key=lambda n: (n.depth, n.asset))


def mlflow_runs(nodes: list[Node]) -> dict[str, dict]:
    """MLflow run id -> its params, dsel/dagster tags and input datasets (name, digest, context)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    found: dict[str, dict] = {}
    clients: dict[str, Any] = {}
    for node in nodes:
        for record in node.records:
            meta = record.asset_materialization.metadata
            if "mlflow_run_id" not in meta or "mlflow_tracking_uri" not in meta:
                continue
            run_id, uri = meta["mlflow_run_id"].value, meta["mlflow_tracking_uri"].value
            uri = restore_credentials(uri, [os.environ.get("DSEL_MLFLOW_URI")])
            client = clients.setdefault(uri, MlflowClient(tracking_uri=uri))
            try:
                run = client.get_run(run_id)
            except MlflowException as exc:
                found[run_id] = {"error": str(exc)}
                continue
            inputs = [
                {
                    "name": d.dataset.name,
                    "digest": d.dataset.digest,
                    "source": json.loads(d.dataset.source or "{}").get("uri", d.dataset.source),
                    "context": next((t.value for t in d.tags if t.key == "mlflow.data.context"), ""),
                }
                for d in (run.inputs.dataset_inputs if run.inputs else [])
            ]
            found[run_id] = {
                "status": run.info.status,
                "params": dict(run.data.params),
                "tags": {k: v for k, v in run.data.tags.items() if k.startswith("dagster.")},
                "inputs": inputs,
            }
    return found


def data_origin(database: str, batches: list[str]) -> dict:
    """Raw files (path, sha256, split) of ``batches`` and their accepted / quarantined counts."""
    with state_db.open_state(database, read_only=True) as db:
        files = []
        for batch in batches:
            file = db.rows_matching("batches", ["split", "original_path", "stored_path", "sha256"], {"batch": batch})
            split, original, stored, sha256 = file.row(0)
            accepted, reason_counts, _ = db.batch_counts(batch)
            reasons = dict(reason_counts)
            files.append(
                {
                    "batch": batch,
                    "split": split,
                    "path": original,
                    "stored_path": stored,
                    "sha256": sha256,
                    "accepted": accepted,
                    "quarantined": sum(reasons.values()),
                    "quarantine_reasons": reasons,
                }
            )
    return {"files": files}


def lineage(instance: dg.DagsterInstance, asset_graph, database: str, target: str) -> dict:
    """The whole chain from ``target`` (asset key or run id) down to the raw files, as JSON."""
    nodes = walk(instance, asset_graph, start_records(instance, asset_graph, target))
    mlflow = mlflow_runs(nodes)
    pool_versions = sorted(
        {
            str(r.asset_materialization.metadata["pool_version"].value)
            for n in nodes
            for r in n.records
            if "pool_version" in r.asset_materialization.metadata
        }
    )
    batches = sorted(
        {r.asset_materialization.partition for n in nodes if n.asset == "pool_batch" for r in n.records} - {None}
    )
    return {
        "target": target,
        "chain": [n.to_dict(mlflow) for n in nodes],
        "pool_versions": pool_versions,
        **data_origin(database, batches),
    }


def _meta_text(meta: dict) -> str:
    parts = []
    for key, value in meta.items():
        text = json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else str(value)
        text = " ".join(text.split())  # markdown tables on one line
        parts.append(f"{key}={text[:117] + '...' if len(text) > 120 else text}")
    return ", ".join(parts)


def format_lineage(report: dict) -> str:
    """The chain as indented text: one block per asset, one line per partition."""
    out = [f"lineage of {report['target']}"]
    for node in report["chain"]:
        indent = "  " * node["depth"]
        mats = node["materializations"]
        partitions = [m["partition"] for m in mats if m["partition"]]
        out.append(f"{indent}{node['asset']}" + (f"  [{len(partitions)} partition(s)]" if partitions else ""))
        for m in mats:
            head = f"{indent}  {m['partition'] + ': ' if m['partition'] else ''}"
            out.append(
                f"{head}data_version={m['data_version']} code_version={m['code_version']} "
                f"run={m['dagster_run_id'][:8]} mlflow_run={m['mlflow_run_id'] or '-'}"
            )
            if m["metadata"]:
                out.append(f"{indent}    {_meta_text(m['metadata'])}")
            run = m["mlflow"] or {}
            if run.get("params") and not m["partition"]:
                out.append(f"{indent}    mlflow params: {_meta_text(run['params'])}")
            for dataset in run.get("inputs", []):
                if dataset["context"] == "input":
                    out.append(f"{indent}    mlflow input: {dataset['name']} @ {dataset['digest']}")
    out.append(f"pool version(s): {', '.join(report['pool_versions']) or '-'}")
    out.append("raw files:")
    for f in report["files"]:
        reasons = ", ".join(f"{r}={n}" for r, n in f["quarantine_reasons"].items()) or "-"
        out.append(
            f"  {f['batch']} ({f['split']}): {f['path']} sha256={f['sha256']} "
            f"accepted={f['accepted']} quarantined={f['quarantined']} ({reasons})"
        )
    return "\n".join(out)


def why(database: str, pool_id: str, selection: str) -> dict:
    """An example's raw record, its row in every state table keyed by ``pool_id`` (scores,
    labels), and its rank in each budget of selection ``selection`` (method or asset name)."""
    method = selection.removeprefix("selection_")
    with state_db.open_state(database, read_only=True) as db:
        example = db.example_origin(pool_id)
        if example is None:
            raise KeyError(f"pool_id: {pool_id} is not in the pool (see the quarantine with dsel status)")
        holders = [t for t in db.tables_with_column("pool_id") if t not in ("examples", "selections")]
        scores = {}
        for table in holders:  # names from the database's own catalog
            rows = db.rows_of_id(table, pool_id)
            if rows:
                scores[table] = [
                    {k: v for k, v in row.items() if k != "pool_id" and not isinstance(v, (list, bytes))}
                    for row in rows
                ]
        ranks = db.selection_ranks(method, pool_id)
    if ranks.height == 0:
        raise KeyError(f"selection: no stored selection for method {method!r}")
    return {"example": example, "scores": scores, "selection": method, "ranks": ranks.to_dicts()}


def format_why(report: dict) -> str:
    ex = report["example"]
    out = [
        f"{ex['pool_id']}: batch {ex['batch']} ({ex['split']}, source {ex['source']}, task {ex['task']})",
        f"  raw file {ex['original_path']} (sha256 {ex['sha256'][:16]}...) record {ex['position']}:",
        f"  {ex['raw']}",
        "representations:",
    ]
    for table, rows in report["scores"].items():
        for row in rows:
            out.append(f"  {table}: {_meta_text(row)}")
    out.append(f"selection {report['selection']}:")
    for r in report["ranks"]:
        where = f"rank {r['rank']} of {r['selected']}" if r["rank"] is not None else f"not selected ({r['selected']})"
        score = f", score {r['score']:.4g}" if r["score"] is not None else ""
        out.append(
            f"  budget {r['budget']} seed {r['selection_seed']} (k={r['k']}, pool {r['pool_version']}): {where}{score}"
        )
    return "\n".join(out)
