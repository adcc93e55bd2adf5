"""Jobs: select by asset group, never by listing assets one by one."""

from __future__ import annotations

import dagster as dg

from dsel_assets.evaluation import EVALUATION
from dsel_assets.gradients import MODELS, pool_grad_features
from dsel_assets.pool import POOL, pool_batch, pool_batches
from dsel_assets.reports import REPORTS
from dsel_assets.representations import REPRESENTATIONS, model_embeddings, sentence_embeddings
from dsel_assets.scores import greedy_scores, loss_scores, proxy_loss_scores
from dsel_assets.selections import SELECTIONS

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

#: One batch without re-curation: validate it, compute its per-example representations,
#: update the pool version (new arrivals, query and eval sets).
batch_job = dg.define_asset_job(
    "batch_job",
    selection=dg.AssetSelection.groups(POOL)
    | dg.AssetSelection.assets(
        sentence_embeddings, model_embeddings, pool_grad_features, loss_scores, proxy_loss_scores, greedy_scores
    ),
    partitions_def=pool_batches,
    description="Validate one batch, compute its per-example representations, update the pool.",
)

#: Every pool-wide (unpartitioned) asset: models, pool-level representations, all selections,
#: the report. ``dsel select`` runs its subsets; per-batch work goes through ``batch_job``.
curation_job = dg.define_asset_job(
    "curation_job",
    selection=dg.AssetSelection.all()
    - dg.AssetSelection.assets(
        pool_batch,
        sentence_embeddings,
        model_embeddings,
        pool_grad_features,
        loss_scores,
        proxy_loss_scores,
        greedy_scores,
    ),
    description="Pool-wide assets: warmup, pool-level representations, every selection, the report.",
)

jobs = [default_job, batch_job, curation_job]
