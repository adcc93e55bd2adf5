"""The Dagster code location (``workspace.yaml`` loads ``defs``)."""

from __future__ import annotations

import os

import dagster as dg

from dsel_assets import (
    evaluation,
    finetune,
    gradients,
    labels,
    pool,
    pre_experience,
    reports,
    representations,
    scores,
    selections,
)
from dsel_assets.checks import build_checks
from dsel_assets.deployment import executor_from_env
from dsel_assets.sensors import build_automation
from jobs import jobs
from resources import DselHome, build_resources


def build_definitions(
    home: DselHome | None = None,
    model: str | None = None,
    device: str | None = None,
    progress: bool = False,
    grad_dim: int | None = None,
    resources: dict | None = None,
) -> dg.Definitions:
    """Definitions for a state home; model, device and gradient dimension default to
    ``DSEL_MODEL`` / ``DSEL_DEVICE`` / ``DSEL_GRAD_DIM`` (smollm2, auto, 8192), the fine-tuned
    and evaluated model to ``DSEL_TARGET_MODEL`` (default: the selection model); ``resources``
    replaces resources by key (another deployment, an instrumented embedder in a test)."""
    home = home or DselHome.from_env()
    sensors, schedules = build_automation()
    return dg.Definitions(
        assets=dg.load_assets_from_modules(
            [
                pool,
                representations,
                gradients,
                scores,
                pre_experience,
                labels,
                selections,
                finetune,
                evaluation,
                reports,
            ]
        ),
        asset_checks=build_checks(),
        jobs=jobs,
        sensors=sensors,
        schedules=schedules,
        executor=executor_from_env(),
        resources=build_resources(
            home,
            model=model or os.environ.get("DSEL_MODEL", "smollm2"),
            device=device or os.environ.get("DSEL_DEVICE", "auto"),
            progress=progress,
            grad_dim=grad_dim or int(os.environ.get("DSEL_GRAD_DIM", "8192")),
            target_model=os.environ.get("DSEL_TARGET_MODEL"),
        )
        | (resources or {}),
    )


defs = build_definitions()
