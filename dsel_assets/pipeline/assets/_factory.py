"""What every asset that runs a model shares, declared once."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import dagster as dg

from dsel_assets.pipeline.deployment import GPU_OP_TAGS
from resources.devices import GPU_POOL


def model_asset(*, kinds: Iterable[str] = (), **asset_args) -> Callable[..., dg.AssetsDefinition]:
    """``dg.asset`` for a step that runs a model: in the ``gpu`` concurrency pool (as many at once
    as there are devices), with the GPU op tags (on Kubernetes the step asks for one GPU) and the
    ``pytorch`` kind besides ``kinds``."""
    return dg.asset(kinds={"pytorch", *kinds}, pool=GPU_POOL, op_tags=GPU_OP_TAGS, **asset_args)
