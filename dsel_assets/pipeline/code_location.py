"""How the Dagster code location is assembled for a state home (``definitions.defs`` is the one
the UI and daemon load; the CLI and tests build their own without importing that module)."""

from __future__ import annotations

import os
from collections.abc import Collection

import dagster as dg

from dsel_assets.pipeline import assets as asset_package
from dsel_assets.pipeline.checks import build_checks
from dsel_assets.pipeline.deployment import executor_from_env
from dsel_assets.pipeline.sensors import build_automation
from dsel_assets.pipeline.settings_versions import with_settings
from jobs import jobs
from resources import DselHome, build_resources
from resources.settings import resolve_settings, runtime_options


def build_definitions(
    home: DselHome | None = None,
    model: str | None = None,
    device: str | None = None,
    grad_dim: int | None = None,
    resources: dict | None = None,
    *,
    dtype: str | None = None,
    load_in: str | None = None,
    runtime: dict | None = None,
    pooling: str | None = None,
    proxy_model: str | None = None,
    projection: str | None = None,
    embed_max_length: int | None = None,
    embed_bos: bool | None = None,
    sentence_text: str | None = None,
    first_use: dict | None = None,
    change_settings: bool = False,
    strict: bool = False,
    pin: bool | Collection[str] = True,
) -> dg.Definitions:
    """Definitions for a state home. The settings that define representations (model,
    gradient dimension, pooling, proxy model) come from the home's ``settings.json`` once pinned
    (see :mod:`resources.settings`); ``model`` / ``grad_dim`` / ``projection`` / ``pooling`` /
    ``proxy_model`` or ``DSEL_MODEL`` / ``DSEL_GRAD_DIM`` / ``DSEL_PROJECTION`` / ``DSEL_POOLING`` /
    ``DSEL_PROXY_MODEL`` (default: the selection model) choose them on first use or with ``change_settings``
    (``strict``: a conflicting request raises instead of being ignored with a warning). The
    device defaults to ``DSEL_DEVICE`` (auto), the fine-tuned and evaluated model to
    ``DSEL_TARGET_MODEL`` (default: the selection model); ``resources`` replaces resources by
    key (another deployment, an instrumented embedder in a test). ``dtype`` / ``load_in`` and
    the model embeddings' ``embed_max_length`` / ``embed_bos`` and the sentence embeddings'
    ``sentence_text`` are pinned like the model;
    ``runtime`` holds the options that change no result (attention, max_batch_tokens,
    gradient_checkpointing: see :func:`resources.settings.runtime_options`)."""
    home = home or DselHome.from_env()
    settings, _ = resolve_settings(
        home,
        {
            "model": model,
            "grad_dim": grad_dim,
            "projection": projection,
            "pooling": pooling,
            "proxy_model": proxy_model,
            "dtype": dtype,
            "load_in": load_in,
            "embed_max_length": embed_max_length,
            "embed_bos": embed_bos,
            "sentence_text": sentence_text,
        },
        first_use=first_use,
        change=change_settings,
        strict=strict,
        pin=pin,
    )
    sensors, schedules = build_automation(
        int(os.environ.get("DSEL_INBOX_INTERVAL_S", "30")), os.environ.get("DSEL_RECURATE_CRON")
    )
    resources = build_resources(
        home,
        model=settings.model,
        device=device or os.environ.get("DSEL_DEVICE", "auto"),
        grad_dim=settings.grad_dim,
        projection=settings.projection,
        pooling=settings.pooling,
        proxy_model=settings.proxy_model or None,
        target_model=os.environ.get("DSEL_TARGET_MODEL"),
        model_options={"dtype": settings.dtype, "load_in": settings.load_in, **runtime_options(runtime)},
        embed_max_length=settings.embed_max_length,
        embed_bos=settings.embed_bos,
        sentence_text=settings.sentence_text,
    ) | (resources or {})
    assets = dg.load_assets_from_package_module(asset_package)  # every asset module of every domain
    return dg.Definitions(
        assets=with_settings(assets, resources),
        asset_checks=build_checks(),
        jobs=jobs,
        sensors=sensors,
        schedules=schedules,
        executor=executor_from_env(),
        resources=resources,
    )
