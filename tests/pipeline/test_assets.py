"""The Dagster layer: pool assets materialized with an ephemeral instance, the whole
default job on the tiny model, and the definitions loading."""

import json
import subprocess
import sys
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from mlflow.tracking import MlflowClient

from dsel_assets.core.select import methods
from dsel_assets.pipeline.assets.ingest.pool import pool, pool_batch
from dsel_assets.pipeline.assets.training.finetune import DEFAULT_FINETUNED
from dsel_assets.pipeline.catalog import available
from dsel_assets.pipeline.code_location import build_definitions
from dsel_assets.pipeline.names import pool_batches
from resources.store import open_state

from ..helpers import write_jsonl

REPO = Path(__file__).resolve().parents[2]


def register(home, path, **labels):
    with open_state(home.duckdb) as db:
        manifest, _ = db.register_batch(path, home.raw, **labels)
    return manifest


def test_pool_assets_materialize_with_quarantine(home, local_resources, tmp_path):
    good = [json.dumps({"question": f"What is {i}+{i}?", "answer": f"{2 * i}"}) for i in range(6)]
    path = write_jsonl(
        tmp_path / "qa.jsonl", [*good[:3], "{broken", json.dumps({"question": "no answer"}), *good[3:], good[0]]
    )
    manifest = register(home, path, source="toy", task="math")
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(pool_batches.name, [manifest.batch])
    result = dg.materialize(
        [pool_batch, pool], partition_key=manifest.batch, resources=local_resources, instance=instance
    )
    assert result.success
    meta = result.asset_materializations_for_node("pool_batch")[0].metadata
    assert (meta["read"].value, meta["accepted"].value, meta["quarantined"].value) == (9, 6, 3)
    assert "malformed_json" in meta["quarantine_reasons"].value
    with open_state(home.duckdb, read_only=True) as db:
        examples = db.rows_matching("examples", ["task", "split"], {})
        assert (examples.height, examples["task"].min(), examples["split"].min()) == (6, "math", "pool")
        reasons = dict(db.quarantine_reasons().rows())
        assert reasons == {"malformed_json": 1, "missing_field": 1, "duplicate": 1}
        assert db.rows_matching("pool_versions", ["pool_version"], {}).height == 1
    # data version = file hash + validation config; MLflow run recorded with tags
    event = instance.get_latest_materialization_event(dg.AssetKey("pool_batch"))
    assert event.asset_materialization.tags["dagster/data_version"].startswith(manifest.sha256[:16])
    run = MlflowClient(local_resources["tracker"].tracking_uri).get_run(meta["mlflow_run_id"].value)
    assert run.data.tags["dagster.partition_key"] == manifest.batch
    assert run.data.metrics["accepted"] == 6 and run.data.metrics["quarantine.duplicate"] == 1

    # re-materializing the same batch replaces its rows, never duplicates them
    dg.materialize([pool_batch], partition_key=manifest.batch, resources=local_resources, instance=instance)
    with open_state(home.duckdb, read_only=True) as db:
        assert db.rows_matching("examples", ["pool_id"], {}).height == 6
        assert db.rows_matching("quarantine", ["batch"], {}).height == 3


def test_pool_rows_repeating_an_earlier_eval_batch_are_quarantined(home, local_resources, tmp_path):
    rows = [json.dumps({"question": f"Q{i}?", "answer": "A"}) for i in range(4)]
    first = register(home, write_jsonl(tmp_path / "one.jsonl", rows[:3]), source="one", task="t", split="eval")
    second = register(home, write_jsonl(tmp_path / "two.jsonl", rows[1:]), source="two", task="t")
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(pool_batches.name, [first.batch, second.batch])
    for batch in (first.batch, second.batch):
        dg.materialize([pool_batch], partition_key=batch, resources=local_resources, instance=instance)
    with open_state(home.duckdb, read_only=True) as db:
        examples = db.rows_matching("examples", ["pool_id", "split"], {})
        assert examples.height == 4
        quarantined = db.rows_matching("quarantine", ["batch", "reason", "detail"], {}).rows()
        assert [(b, r) for b, r, _ in quarantined] == [(second.batch, "duplicate")] * 2
        assert all(f"batch {first.batch} (eval)" in detail for _, _, detail in quarantined)
        assert examples.group_by("split").len().sort("split").rows() == [("eval", 3), ("pool", 1)]


def test_default_job_end_to_end_on_the_tiny_model(home, capsys):
    from dsel_assets.app.cli import main

    # -v: the full selection table (a default run prints its summary only)
    assert main(["run", "-v", "--model", "tiny", "--per-capability", "25", "--budgets", "10%", "20"]) == 0
    out = capsys.readouterr().out
    job_nodes = {node.name for node in build_definitions(home, model="tiny").resolve_job_def("default_job").graph.nodes}
    with_assets = [name for name, spec in methods().items() if available(spec) and f"selection_{name}" in job_nodes]
    assert {"random", "kmeans_centroids", "kmeans_random", "less", "bids", "facility_location"} <= set(with_assets)
    for method in with_assets:
        assert method in out
    with open_state(home.duckdb, read_only=True) as db:
        examples = db.rows_matching("examples", ["pool_id", "split", "task"], {})
        n_pool = examples.filter(pl.col("split") == "pool").height
        assert 140 <= n_pool <= 150  # 6 capabilities x 25, minus exact-duplicate noise
        assert dict(examples.group_by("split").len().rows())["query"] == 48
        columns = ["method", "budget", "pool_id", "k", "eligible", "diagnostics"]
        per_key = (
            db.rows_matching("selections", columns, {})
            .group_by(pl.concat_str("method", pl.lit("@"), "budget").alias("key"))
            .agg(
                pl.col("pool_id").drop_nulls().n_unique(),
                *(pl.col(c).drop_nulls().first() for c in ("k", "eligible", "diagnostics")),
            )
        )
        sizes = {key: (n, k, eligible, diag) for key, n, k, eligible, diag in per_key.rows()}
        assert set(sizes) == {f"{m}@{b}" for m in with_assets for b in ("10pct", "20")}
        for key, (n, k, eligible, diag) in sizes.items():
            assert k == (n_pool // 10 if key.endswith("10pct") else 20)
            # exactly min(k, eligible), less a reported under-fill (G2IS, DEITA)
            assert n == min(k, eligible) - json.loads(diag).get("under_fill", 0), key
        report = db.report("selection_report").select("method", "budget", "size", "noise_fraction").rows()
        assert len(report) == 2 * len(with_assets) and all(0 <= r[3] <= 1 for r in report)
        # the proxy defaults to the selection model: its rows are the loss rows, copied under its code version
        loss = db.rows_matching("loss_scores", ["pool_id", "ifd_ppl_ratio", "model_hash"], {})
        proxy = db.rows_matching(
            "proxy_loss_scores", ["pool_id", "ifd_ppl_ratio", "code_version", "model", "model_hash"], {}
        ).rename({"ifd_ppl_ratio": "proxy_ifd_ppl_ratio", "model_hash": "proxy_model_hash"})
        same = (
            loss.join(proxy, on="pool_id")
            .filter(
                pl.col("ifd_ppl_ratio").eq_missing(pl.col("proxy_ifd_ppl_ratio")),
                pl.col("code_version") == "proxy_loss_scores-1",
                pl.col("model") == "tiny",
                pl.col("proxy_model_hash") == pl.col("model_hash"),
            )
            .height
        )
        assert same == n_pool
        less_ids = db.selected_ids("less")
        less_tasks = set(examples.filter(pl.col("pool_id").is_in(less_ids))["task"])
        assert less_tasks  # targeted at arithmetic by default; the tiny model decides what it finds
    assert ((home.root / "reports") / "selection_report.md").exists()
    # the loop is closed: base model and the default methods' models evaluated, report printed
    assert "summary (loss):" in out and "(all tasks)" in out
    # the selection table comes out before any fine-tuning; the time of each stage at the end
    assert out.index("selections done in") < out.index("summary (loss):")
    assert out.index("\nfacility_location ") < out.index("selections done in")
    stage_table = out[out.index("\nstage ") :]
    for stage in ("representations", "selections", "fine-tuning", "evaluation", "reports"):
        assert f"\n{stage} " in stage_table
    with open_state(home.duckdb, read_only=True) as db:
        evaluated = db.rows_matching("eval_scores", ["method", "budget"], {})
        assert set(evaluated.select(pl.concat_str("method", pl.lit("@"), "budget"))[:, 0]) == {"base@0"} | {
            f"{m}@{b}" for m in DEFAULT_FINETUNED for b in ("10pct", "20")
        }
        comparison = db.report("comparison_report")
        assert comparison.filter(pl.col("task") != "(all tasks)")["task"].n_unique() == 6
    assert ((home.root / "reports") / "comparison_budget_curves.png").exists()
    # every asset materialization has its own MLflow run, and state persists in the home
    instance = dg.DagsterInstance.from_config(str(home.dagster))
    graph = build_definitions(home, model="tiny").resolve_asset_graph()
    records = [
        r for key in graph.get_all_asset_keys() for r in instance.fetch_materializations(key, limit=1000).records
    ]
    assert {r.asset_key.to_user_string() for r in records} >= {"pool_batch", "warmup_checkpoint", "influence"}
    run_ids = [r.asset_materialization.metadata["mlflow_run_id"].value for r in records]
    assert len(run_ids) == len(set(run_ids))
    client = MlflowClient(f"sqlite:///{home.mlflow_db}")
    runs = client.search_runs([client.get_experiment_by_name("dsel").experiment_id], max_results=1000)
    # nested runs (one per fine-tuned model / evaluated model) hang under their asset's run
    top = {run.info.run_id for run in runs if "mlflow.parentRunId" not in run.data.tags}
    assert top == set(run_ids)
    nested = [run for run in runs if "mlflow.parentRunId" in run.data.tags]
    assert {run.data.tags["mlflow.parentRunId"] for run in nested} <= top
    assert len(nested) >= 4 * len(DEFAULT_FINETUNED) + 1  # per method: 2 models + 2 evals; the base eval


def test_definitions_load_and_every_job_resolves(home):
    defs = build_definitions(home, model="tiny")
    for job in ("default_job", "batch_job", "curation_job"):
        assert defs.resolve_job_def(job) is not None
    groups = {n.group_name for n in defs.resolve_asset_graph().asset_nodes}
    assert groups == {"pool", "models", "representations", "selections", "evaluation", "reports", "exports"}


def test_dagster_definitions_validate(home):
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("dagster")), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "All code locations passed validation" in proc.stderr + proc.stdout


@pytest.mark.parametrize("bad_budget", ["0", "abc"])
def test_bad_budget_fails_the_selection_with_a_named_error(home, bad_budget):
    defs = build_definitions(home, model="tiny")
    job = defs.resolve_job_def("default_job")
    with pytest.raises(Exception, match="budget"):
        job.execute_in_process(
            instance=dg.DagsterInstance.ephemeral(),
            asset_selection=[dg.AssetKey("selection_random")],
            run_config={"ops": {"selection_random": {"config": {"budgets": [bad_budget]}}}},
        )
