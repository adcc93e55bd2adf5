"""Cluster mode, run for real on this machine: a PostgreSQL server (the machine's own
``initdb``/``pg_ctl``, tests/postgres.py) holding dsel's tables, Dagster's instance
(dagster-postgres) and MLflow's store; an S3-compatible server (moto) holding Lance datasets,
artifacts and MLflow's artifacts; an ``mlflow server``. Every step is its own Dagster run with
the multiprocess executor, started in its own fresh, empty folder (its own state home), so steps
share nothing but the servers; two steps write score chunks at the same time. The result must
equal the embedded deployment's (DuckDB file, local folders) on the same data, lose no row,
leave no state on local disk, and ``dsel lineage`` must walk from an eval score back to the raw
file's sha256 through the servers alone."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import polars as pl
import pytest

from dsel_assets.core.data.synthetic import generate
from resources.store import DATABASE_URL, DuckDBStateStore, PostgresStateStore
from tests import postgres, s3, servers

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
BUCKET = "dsel-test"
BUDGET = "20%"
TARGET = "arithmetic"
METHODS = ("random", "less", "bids", "facility_location")


def ops(**configs: dict) -> dict:
    return {"ops": {name: {"config": config} for name, config in configs.items()}}


def plan(pool_batches: list[str]) -> list[list[dict]]:
    """The chain as groups of steps; the steps of a group run at the same time on the cluster."""

    def per_batch(asset: str) -> list[dict]:
        return [{"asset": asset, "partition": batch} for batch in pool_batches]

    selection = {"budgets": [BUDGET]}
    return [
        per_batch("loss_scores"),  # two processes upserting score chunks into one table at once
        [
            {
                "asset": "warmup_checkpoint",
                "config": ops(warmup_checkpoint={"epochs": 2, "fraction": 0.25, "batch_size": 4, "max_length": 128}),
            }
        ],
        # writers of one new Lance dataset at once (the creation lock is a PostgreSQL advisory lock)
        per_batch("pool_grad_features"),
        per_batch("sentence_embeddings"),
        [{"asset": "query_grad_features"}],
        [{"asset": "influence"}],
        [
            {"asset": "selection_random", "config": ops(selection_random=selection)},
            {"asset": "selection_less", "config": ops(selection_less={**selection, "params": {"task": TARGET}})},
            {"asset": "selection_bids", "config": ops(selection_bids=selection)},
            {"asset": "selection_facility_location", "config": ops(selection_facility_location=selection)},
        ],
        [
            {
                "asset": "finetuned_less",
                "config": ops(finetuned_less={"budgets": [BUDGET], "epochs": 1, "batch_size": 4, "max_length": 128}),
            }
        ],
        [
            {
                "asset": "eval_less",
                "config": ops(eval_less={"max_per_task": 2, "max_new_tokens": 8, "max_length": 128}),
            }
        ],
    ]


def write_data(folder: Path) -> dict[str, Path]:
    """Synthetic query, eval and pool files; the pool in two files, so two batches."""
    data = generate(seed=11, per_capability=8, queries_per_capability=2, eval_per_capability=3)
    paths = data.write(folder)
    rows = paths["pool"].read_text(encoding="utf-8").splitlines(keepends=True)
    half = len(rows) // 2
    for name, part in (("pool_a", rows[:half]), ("pool_b", rows[half:])):
        paths[name] = folder / f"{name}.jsonl"
        paths[name].write_text("".join(part), encoding="utf-8")
    del paths["pool"]
    return paths


class Deployment:
    """Runs dsel commands and steps with one environment; a fresh folder per step (cluster) or
    one shared home (embedded)."""

    def __init__(self, root: Path, environ: dict[str, str], fresh_per_step: bool):
        self.root, self.environ, self.fresh = root, environ, fresh_per_step
        self.steps = 0
        self.log = root / "commands.log"
        root.mkdir(parents=True, exist_ok=True)

    def folder(self, name: str) -> Path:
        self.steps += 1
        folder = self.root / (f"step-{self.steps:02d}-{name}" if self.fresh else "shared")
        folder.mkdir(exist_ok=True)
        if self.fresh:
            assert not any(folder.iterdir())  # each step starts in an empty folder
        return folder

    def start(self, args: list[str], name: str) -> subprocess.Popen:
        folder = self.folder(name)
        env = {
            **self.environ,
            "DSEL_HOME": str(folder / "home"),
            "DSEL_ARTIFACT_CACHE": str(folder / "cache"),
            "PYTHONPATH": str(REPO),
        }
        with self.log.open("a") as log:
            log.write(f"\n$ {' '.join(args)}  (in {folder})\n")
        return subprocess.Popen(
            [sys.executable, *args], cwd=folder, env=env, stdout=self.log.open("a"), stderr=subprocess.STDOUT
        )

    def run(self, args: list[str], name: str) -> None:
        self.wait([self.start(args, name)])

    def wait(self, processes: list[subprocess.Popen]) -> None:
        codes = [p.wait(timeout=900) for p in processes]
        if any(codes):
            tail = self.log.read_text()[-6000:]
            pytest.fail(f"a step failed ({codes}); log tail:\n{tail}")

    def ingest(self, paths: dict[str, Path]) -> None:
        cli = ["-m", "dsel_assets.app.cli", "ingest", "--model", "tiny", "--task", "auto"]
        self.run([*cli, str(paths["queries"]), "--split", "query"], "ingest-query")
        self.run([*cli, str(paths["eval"]), "--split", "eval"], "ingest-eval")
        self.run([*cli, str(paths["pool_a"]), str(paths["pool_b"]), "--split", "pool"], "ingest-pool")

    def run_plan(self, groups: list[list[dict]]) -> None:
        if not self.fresh:  # embedded: every step in one process, against one home
            plan_file = self.root / "plan.json"
            plan_file.write_text(json.dumps([step for group in groups for step in group]))
            self.run(["-m", "tests.integration.cluster_step", "--in-process", str(plan_file)], "plan")
            return
        for group in groups:
            started = []
            for step in group:
                args = [
                    "-m",
                    "tests.integration.cluster_step",
                    step["asset"],
                    "--config",
                    json.dumps(step.get("config", {})),
                ]
                if step.get("partition"):
                    args += ["--partition", step["partition"]]
                started.append(self.start(args, step["asset"]))
            self.wait(started)


def selected(db) -> pl.DataFrame:
    columns = ["method", "budget", "selection_seed", "pool_id"]
    return db.rows_matching("selections", columns, {}).sort(columns)


#: the tables whose rows are counted, each with a column to read
COUNTED = {
    "examples": "pool_id",
    "quarantine": "batch",
    "loss_scores": "pool_id",
    "finetuned_models": "model_key",
    "eval_examples": "pool_id",
}


def counts(db) -> dict[str, int]:
    return {table: db.rows_matching(table, [column], {}).height for table, column in COUNTED.items()}


def embedded_state(embedded: Deployment):
    """The embedded deployment's state database (its home's DuckDB file), read only."""
    return DuckDBStateStore(database=str(embedded.root / "shared" / "home" / "dsel.duckdb")).open(read_only=True)


@contextmanager
def cluster_state(dsn: str) -> Iterator:
    """The cluster's state database as its steps open it (``DSEL_DATABASE_URL``: PostgreSQL)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(DATABASE_URL, dsn)
        with PostgresStateStore().session() as db:
            yield db


def test_cluster_mode_matches_embedded_shares_nothing_local_and_keeps_lineage(tmp_path):
    for reason in (postgres.available(), s3.available(), servers.mlflow_available()):
        if reason:
            pytest.skip(reason)
    paths = write_data(tmp_path / "data")
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("DSEL_", "DAGSTER_", "MLFLOW_", "AWS_"))} | {
        "DSEL_MODEL": "tiny",
        "DSEL_GRAD_DIM": "64",
        "DSEL_DEVICE": "cpu",
        "DSEL_MAX_CONCURRENT": "1",
    }

    # the embedded deployment: one home, DuckDB, local folders
    embedded = Deployment(tmp_path / "embedded", base_env, fresh_per_step=False)
    embedded.ingest(paths)
    with embedded_state(embedded) as db:
        pool_batches = db.rows_matching("batches", ["batch"], {"split": "pool"}).sort("batch")
        pool_batches = pool_batches["batch"].to_list()
    embedded.run_plan(plan(pool_batches))
    with embedded_state(embedded) as db:
        embedded_selected, embedded_counts = selected(db), counts(db)

    with postgres.server("dsel") as dsn, s3.server(BUCKET) as s3_env:
        import psycopg

        socket_dir = dict(part.split("=", 1) for part in dsn.split())["host"]
        with psycopg.connect(dsn, autocommit=True) as admin:
            for database in ("dagster", "mlflow"):
                admin.execute(f"CREATE DATABASE {database}")
        instance = tmp_path / "instance"  # the deployment's instance config (deploy/compose/dagster.yaml's role)
        instance.mkdir()
        (instance / "dagster.yaml").write_text(
            "storage:\n  postgres:\n    postgres_url:\n      env: DSEL_TEST_DAGSTER_PG_URL\n"
            "compute_logs:\n  module: dagster._core.storage.noop_compute_log_manager\n"
            "  class: NoOpComputeLogManager\n"
            "concurrency:\n  pools:\n    default_limit: 2\ntelemetry:\n  enabled: false\n"
        )
        mlflow_log = (tmp_path / "mlflow.log").open("w")
        with servers.mlflow_server(
            f"postgresql+psycopg://dsel@/mlflow?host={socket_dir}", f"s3://{BUCKET}/mlflow", s3_env, mlflow_log
        ) as mlflow_url:
            cluster_env = (
                base_env
                | s3_env
                | {
                    "DSEL_DATABASE_URL": f"postgresql://dsel@/dsel?host={socket_dir}",
                    "DSEL_TEST_DAGSTER_PG_URL": f"postgresql+psycopg2://dsel@/dagster?host={socket_dir}",
                    "DSEL_DAGSTER_HOME": str(instance),
                    "DSEL_ARTIFACTS_URI": f"s3://{BUCKET}/artifacts",
                    "DSEL_LANCE_URI": f"s3://{BUCKET}/lance",
                    "DSEL_MLFLOW_URI": mlflow_url,
                }
            )
            cluster = Deployment(tmp_path / "cluster", cluster_env, fresh_per_step=True)
            # a deployment sets its pool limits once (`dagster instance concurrency set`); left to
            # the first steps, two of them starting together race to insert the same row in
            # Dagster's PostgreSQL storage and one fails (UniqueViolation on the "gpu" key)
            set_limit = "import os, dagster as dg; dg.DagsterInstance.from_config(os.environ['DSEL_DAGSTER_HOME'])"
            cluster.run(["-c", f"{set_limit}.event_log_storage.set_concurrency_slots('gpu', 2)"], "gpu-pool")
            cluster.ingest(paths)
            with cluster_state(dsn) as db:
                cluster_batches = sorted(db.rows_matching("batches", ["batch"], {"split": "pool"})["batch"])
            assert cluster_batches == pool_batches  # content-addressed keys: the same batches
            cluster.run_plan(plan(pool_batches))

            with cluster_state(dsn) as db:
                cluster_selected, cluster_counts = selected(db), counts(db)
                stored = dict(db.rows_matching("batches", ["original_path", "stored_path"], {}).iter_rows())
                warmup_path = db.rows_matching("warmups", ["path"], {})["path"][0]
                model_path = db.rows_matching("finetuned_models", ["path"], {})["path"][0]
            # lineage from the eval score back to the raw file, in yet another empty folder
            lineage = cluster.folder("lineage")
            out = subprocess.run(
                [sys.executable, "-m", "dsel_assets.app.cli", "lineage", "eval_less"],
                cwd=lineage,
                env={**cluster_env, "DSEL_HOME": str(lineage / "home"), "PYTHONPATH": str(REPO)},
                capture_output=True,
                text=True,
                timeout=300,
            )
        mlflow_log.close()
        listed = s3.s3_client(s3_env).list_objects_v2(Bucket=BUCKET, MaxKeys=5000)
        objects = [o["Key"] for o in listed.get("Contents", [])]

    # the same selections, row for row; nothing lost or duplicated by concurrent writers
    assert set(cluster_selected["method"].unique()) == set(METHODS)
    assert cluster_selected.equals(embedded_selected)
    assert cluster_counts == embedded_counts
    pool_rows = sum(len(paths[p].read_text().splitlines()) for p in ("pool_a", "pool_b"))
    assert cluster_counts["loss_scores"] <= pool_rows and cluster_counts["loss_scores"] > 0
    assert cluster_counts["finetuned_models"] == 1 and cluster_counts["eval_examples"] > 0

    # artifacts and raw copies in the object store, recorded by URI
    sha = {name: hashlib.sha256(paths[name].read_bytes()).hexdigest() for name in paths}
    for name in paths:
        assert stored[str(paths[name].resolve())] == f"s3://{BUCKET}/artifacts/raw/{sha[name]}/{paths[name].name}"
    assert warmup_path.startswith(f"s3://{BUCKET}/artifacts/models/warmup/")
    assert model_path.startswith(f"s3://{BUCKET}/artifacts/models/finetuned/")
    assert any(k.startswith("lance/pool_grad_features_d64") for k in objects)
    assert any(k.startswith("mlflow/") for k in objects)

    # no state on any step's local disk: no database file, dataset, model, raw copy or report
    for step in (tmp_path / "cluster").glob("step-*"):
        home = step / "home"
        # the pinned settings, and the command's own log (Dagster's INFO lines): not state
        settings = ("settings.json", "settings.json.lock", "dsel.log")
        left = [p for p in home.rglob("*") if p.is_file() and p.name not in settings] if home.exists() else []
        assert left == [], f"{step.name} left state on local disk: {left}"

    assert out.returncode == 0, out.stderr[-3000:]
    assert sha["pool_a"] in out.stdout or sha["pool_b"] in out.stdout, out.stdout[-3000:]
    assert "finetuned_less" in out.stdout and "selection_less" in out.stdout
