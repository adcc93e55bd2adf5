"""The Dagster code location (``workspace.yaml`` loads ``defs``)."""

from __future__ import annotations

import os

import dagster as dg

from dsel_assets import gradients, labels, pool, reports, representations, scores, selections
from jobs import jobs
from resources import DselHome, build_resources


def build_definitions(
    home: DselHome | None = None,
    model: str | None = None,
    device: str | None = None,
    progress: bool = False,
    grad_dim: int | None = None,
) -> dg.Definitions:
    """Definitions for a state home; model, device and gradient dimension default to
    ``DSEL_MODEL`` / ``DSEL_DEVICE`` / ``DSEL_GRAD_DIM`` (smollm2, auto, 8192)."""
    home = home or DselHome.from_env()
    return dg.Definitions(
        assets=dg.load_assets_from_modules([pool, representations, gradients, scores, labels, selections, reports]),
        jobs=jobs,
        resources=build_resources(
            home,
            model=model or os.environ.get("DSEL_MODEL", "smollm2"),
            device=device or os.environ.get("DSEL_DEVICE", "auto"),
            progress=progress,
            grad_dim=grad_dim or int(os.environ.get("DSEL_GRAD_DIM", "8192")),
        ),
    )


defs = build_definitions()
