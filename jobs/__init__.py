"""Jobs: select by asset group, never by listing assets one by one."""

from __future__ import annotations

import dagster as dg

from dsel_assets.pipeline.names import (
    EVALUATION,
    MODELS,
    POOL,
    POOL_BATCH,
    REPORTS,
    REPRESENTATIONS,
    SELECTIONS,
    pool_batches,
)
from dsel_assets.pipeline.registry import per_batch_assets

#: Everything for one batch and the curation over the grown pool: ingestion -> warmup ->
#: representations (sentence embeddings, gradient features, influence) -> every selection at
#: every budget -> the results table.
#: Representations tagged ``dsel/cost: high`` (Nuggets golden score: N x |A| forwards; learning
#: percentage: training on the whole pool) and the selections that need them stay out of it,
#: so the default run stays short; ``curation_job``, ``dsel select`` and the UI run them.
EXPENSIVE = dg.AssetSelection.tag("dsel/cost", "high").downstream() - dg.AssetSelection.groups(REPORTS)
default_job = dg.define_asset_job(
    "default_job",
    selection=dg.AssetSelection.groups(POOL, MODELS, REPRESENTATIONS, SELECTIONS, EVALUATION, REPORTS) - EXPENSIVE,
    partitions_def=pool_batches,
    description="Ingest a batch, compute its representations, re-select over the pool, report.",
)

#: What is computed per pool batch: the batch itself and the representations declared per batch
#: (dsel_assets.pipeline.registry).
PER_BATCH = dg.AssetSelection.assets(POOL_BATCH, *per_batch_assets())

#: One batch without re-curation: validate it, compute its per-example representations,
#: update the pool version (new arrivals, query and eval sets).
batch_job = dg.define_asset_job(
    "batch_job",
    selection=dg.AssetSelection.groups(POOL) | PER_BATCH,
    partitions_def=pool_batches,
    description="Validate one batch, compute its per-example representations, update the pool.",
)

#: Every pool-wide (unpartitioned) asset: models, pool-level representations, all selections,
#: the report. ``dsel select`` runs its subsets; per-batch work goes through ``batch_job``.
curation_job = dg.define_asset_job(
    "curation_job",
    selection=dg.AssetSelection.all() - PER_BATCH,
    description="Pool-wide assets: warmup, pool-level representations, every selection, the report.",
)

jobs = [default_job, batch_job, curation_job]
