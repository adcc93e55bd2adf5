"""Where steps run: the executor, and the placement of GPU steps.

Locally (default) the multiprocess executor runs up to ``DSEL_MAX_CONCURRENT`` steps at once
(spawned processes: Lance is not fork-safe). On a cluster (``DSEL_EXECUTOR=k8s``, with the
``deploy`` extra installed) dagster-k8s's ``k8s_job_executor`` runs each step as a Kubernetes
job; a GPU asset's ``dagster-k8s/config`` op tag asks for one GPU. Either way, every asset that
runs a model is in the ``gpu`` concurrency pool, so the instance's pool limit (``default_limit``
in ``dagster.yaml``, or ``dagster instance concurrency set gpu N``) caps how many hold a device.
"""

from __future__ import annotations

import os

import dagster as dg

#: Op tags of GPU assets: the k8s_job_executor reads ``dagster-k8s/config`` per step (ignored
#: locally); ``dsel/device`` lets a run or the UI filter GPU steps.
GPU_OP_TAGS: dict = {
    "dsel/device": "gpu",
    "dagster-k8s/config": {
        "container_config": {
            "resources": {
                "requests": {"nvidia.com/gpu": "1", "cpu": "4", "memory": "32Gi"},
                "limits": {"nvidia.com/gpu": "1", "memory": "48Gi"},
            }
        },
        "pod_spec_config": {"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]},
    },
}


def executor_from_env() -> dg.ExecutorDefinition:
    """``DSEL_EXECUTOR``: ``multiprocess`` (default; ``DSEL_MAX_CONCURRENT`` steps at once, default
    2) or ``k8s`` (dagster-k8s; its config - namespace, image, env - comes from the run config
    or the deployment's ``dagster.yaml``, see ``deploy/``)."""
    kind = os.environ.get("DSEL_EXECUTOR", "multiprocess")
    max_concurrent = int(os.environ.get("DSEL_MAX_CONCURRENT", "2"))
    if kind == "multiprocess":
        return dg.multiprocess_executor.configured({"max_concurrent": max_concurrent}, name="multiprocess")
    if kind == "k8s":
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor
    raise ValueError(f"DSEL_EXECUTOR: {kind!r} is not one of multiprocess, k8s")
