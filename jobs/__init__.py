"""Jobs: select by asset group, never by listing assets one by one."""

from __future__ import annotations

import dagster as dg

from dsel_assets.gradients import MODELS, pool_grad_features
from dsel_assets.pool import POOL, pool_batches
from dsel_assets.reports import REPORTS
from dsel_assets.representations import REPRESENTATIONS, sentence_embeddings
from dsel_assets.scores import loss_scores, proxy_loss_scores
from dsel_assets.selections import SELECTIONS

#: Everything for one batch and the curation over the grown pool: ingestion -> warmup ->
#: representations (sentence embeddings, gradient features, influence) -> every selection at
#: every budget -> the results table.
default_job = dg.define_asset_job(
    "default_job",
    selection=dg.AssetSelection.groups(POOL, MODELS, REPRESENTATIONS, SELECTIONS, REPORTS),
    partitions_def=pool_batches,
    description="Ingest a batch, compute its representations, re-select over the pool, report.",
)

#: One batch without re-curation: validate it, compute its per-example representations,
#: update the pool version (new arrivals, query and eval sets).
batch_job = dg.define_asset_job(
    "batch_job",
    selection=dg.AssetSelection.groups(POOL)
    | dg.AssetSelection.assets(sentence_embeddings, pool_grad_features, loss_scores, proxy_loss_scores),
    partitions_def=pool_batches,
    description="Validate one batch, compute its per-example representations, update the pool.",
)

jobs = [default_job, batch_job]
