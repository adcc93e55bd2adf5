"""One Dagster run of one asset, as a cluster pod runs it: the code location loaded from the
environment (``dsel_assets.definitions``), the Dagster instance the deployment names
(``DSEL_DAGSTER_HOME``), the multiprocess executor, and this process's own state home. The
caller starts it in a fresh, empty folder with ``DSEL_HOME`` inside it.

Usage: python -m tests.integration.cluster_step ASSET [--partition KEY] [--config JSON]
       python -m tests.integration.cluster_step --in-process PLAN.json   (embedded: one home, in-process)
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import dagster as dg

JOB = "DSEL_CLUSTER_STEP_JOB"


def code_location_job() -> dg.JobDefinition:
    """The job named by ``DSEL_CLUSTER_STEP_JOB`` in the code location; each step process of the
    multiprocess executor rebuilds it from its environment."""
    from dsel_assets.definitions import defs

    return defs.resolve_job_def(os.environ[JOB])


def job_name(partition: str | None) -> str:
    return "batch_job" if partition else "curation_job"


def run_in_step_processes(asset: str, partition: str | None, config: dict) -> bool:
    os.environ[JOB] = job_name(partition)
    result = dg.execute_job(
        dg.reconstructable(code_location_job),
        dg.DagsterInstance.get(),
        run_config=config,
        tags={"dagster/partition": partition} if partition else {},
        asset_selection=[dg.AssetKey(asset)],
    )
    return result.success


def run_plan_in_process(plan: list[dict]) -> bool:
    """The same steps in this process against its home (the embedded deployment)."""
    from dsel_assets.definitions import defs

    instance = dg.DagsterInstance.get()
    for step in plan:
        result = defs.resolve_job_def(job_name(step.get("partition"))).execute_in_process(
            instance=instance,
            partition_key=step.get("partition"),
            asset_selection=[dg.AssetKey(step["asset"])],
            run_config=step.get("config", {}),
            raise_on_error=False,
        )
        if not result.success:
            print(f"step {step} failed", file=sys.stderr)
            return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("asset", nargs="?")
    parser.add_argument("--partition")
    parser.add_argument("--config", default="{}")
    parser.add_argument("--in-process", metavar="PLAN")
    args = parser.parse_args(argv)
    from resources.home import DselHome

    DselHome.from_env().use_as_dagster_home()
    if args.in_process:
        with open(args.in_process, encoding="utf-8") as fh:
            ok = run_plan_in_process(json.load(fh))
    else:
        ok = run_in_step_processes(args.asset, args.partition, json.loads(args.config))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
