"""Execution config: the local multiprocess executor and GPU pool, and the cluster deployment
in deploy/ validated as far as possible without a cluster (config schemas, Definitions)."""

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._config import validate_config
from dagster._core.instance.config import dagster_instance_config

from dsel_assets.code_location import build_definitions
from resources import build_resources

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
CLUSTER_ENV = {
    "DSEL_EXECUTOR": "k8s",
    "DSEL_LANCE_URI": "s3://dsel-bucket/lance",
    "DSEL_MLFLOW_URI": "http://mlflow.dsel.svc:5000",
    "DSEL_MLFLOW_ARTIFACTS": "s3://dsel-bucket/mlflow",
}


def test_local_executor_and_gpu_pool(home, monkeypatch):
    monkeypatch.setenv("DSEL_MAX_CONCURRENT", "3")
    defs = build_definitions(home, model="tiny")
    job = defs.resolve_job_def("batch_job")
    assert job.executor_def.name == "multiprocess"
    assert dg.validate_run_config(job, {})["execution"]["multiprocess"]["max_concurrent"] == 3
    graph = defs.resolve_asset_graph()
    gpu = {n.key.to_user_string() for n in graph.asset_nodes if n.pools == {"gpu"}}
    assert {"warmup_checkpoint", "pool_grad_features", "query_grad_features", "loss_scores"} <= gpu
    assert "pool_batch" not in gpu and "selection_random" not in gpu
    tags = defs.get_assets_def(dg.AssetKey("loss_scores")).op.tags
    assert tags["dsel/device"] == "gpu" and "nvidia.com/gpu" in tags["dagster-k8s/config"]


def test_cluster_config_validates(home, monkeypatch):
    pytest.importorskip("dagster_k8s")
    pytest.importorskip("dagster_postgres")
    from dagster_k8s import K8sRunLauncher
    from dagster_postgres import DagsterPostgresStorage

    config, _ = dagster_instance_config(str(DEPLOY))
    assert validate_config(K8sRunLauncher.config_type(), config["run_launcher"]["config"]).success
    assert validate_config(DagsterPostgresStorage.config_type(), config["storage"]["postgres"]).success

    for key, value in CLUSTER_ENV.items():
        monkeypatch.setenv(key, value)
    defs = build_definitions(home, model="tiny")
    job = defs.resolve_job_def("curation_job")
    assert job.executor_def.name == "k8s"
    run_config = yaml.safe_load((DEPLOY / "run_config_k8s.yaml").read_text())
    executor_config = dg.validate_run_config(job, run_config)["execution"]["k8s"]
    assert executor_config["job_namespace"] == "dsel" and executor_config["step_k8s_config"]["container_config"]
    resources = build_resources(home, model="tiny")
    assert resources["lance"].root == CLUSTER_ENV["DSEL_LANCE_URI"]
    assert resources["tracker"].tracking_uri == CLUSTER_ENV["DSEL_MLFLOW_URI"]

    proc = subprocess.run(
        [str(Path(sys.executable).with_name("dagster")), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=REPO,
        env={**os.environ, **CLUSTER_ENV},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
