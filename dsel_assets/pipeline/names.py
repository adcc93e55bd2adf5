"""Every asset, group, partition, table and Lance dataset name the pipeline shares, spelt once.

Asset modules refer to one another only through these names (``deps=[names.POOL]``), never by
importing a sibling, so each asset domain stands alone (an import-linter contract says so)."""

from __future__ import annotations

import dagster as dg

from dsel_assets.core.models.scoring import TEMPLATES
from dsel_assets.core.select.targeted import LESS

# --- asset groups ---
POOL = "pool"
REPRESENTATIONS = "representations"
MODELS = "models"
SELECTIONS = "selections"
EVALUATION = "evaluation"
REPORTS = "reports"
EXPORTS = "exports"

# --- assets that others depend on or read ---
POOL_BATCH = "pool_batch"
#: One partition per ingested file; the per-batch representations share it.
pool_batches = dg.DynamicPartitionsDefinition(name="pool_batches")
SENTENCE_EMBEDDINGS = "sentence_embeddings"
MODEL_EMBEDDINGS = "model_embeddings"
#: The asset whose seed fixes the LESS gradient features and everything computed from them.
WARMUP = "warmup_checkpoint"
POOL_GRAD_FEATURES = "pool_grad_features"
QUERY_GRAD_FEATURES = "query_grad_features"
INFLUENCE = "influence"
RDS_SIMILARITY = "rds_similarity"
EMBED_SIMILARITY = "embed_similarity"
LOSS_SCORES = "loss_scores"
PRE_EXPERIENCED_MODEL = "cherry_pre_experienced_model"
PRE_EXPERIENCED_SCORES = "cherry_pre_experienced_scores"
SELECTION_REPORT = "selection_report"
COMPARISON_REPORT = "comparison_report"

# --- comparison rows that are no selection ---
#: The fine-tune on the whole pool, and its budget label.
FULL_POOL = "full_pool"
FULL_BUDGET = "100pct"
#: The untouched target model (zero-shot baseline).
BASE = "base"


def selection_key(method: str, representation: str | None = None) -> str:
    """What a selection is stored, checked and reported under (the ``method`` column): the
    method's name on its own representation (LESS gradients for targeted methods), else
    ``<method>_<representation>``, e.g. ``round_robin_rds``."""
    return method if representation in (None, LESS) else f"{method}_{representation}"


def selection_asset_name(key: str) -> str:
    return f"selection_{key}"


def finetuned_asset_name(key: str) -> str:
    return f"finetuned_{key}"


def eval_asset_name(key: str) -> str:
    return f"eval_{key}"


def model_label(method: str, budget: str, selection_seed: int, seed: int) -> str:
    """How logs and MLflow runs name one model: method@budget[#sel<selection seed>]/seed<training seed>."""
    return f"{method}@{budget}" + (f"#sel{selection_seed}" if selection_seed else "") + f"/seed{seed}"


# --- tables and Lance datasets ---


def score_table(name: str, template: str) -> str:
    """The table of an asset's scores under ``template``: its own name for ``chat``, else suffixed,
    so rows of two templates never share a table (nor a reader that expects the other one)."""
    return name if template == "chat" else f"{name}_{template}"


def score_tables(name: str) -> list[str]:
    """The tables of an asset's scores, one per scoring template."""
    return [score_table(name, template) for template in TEMPLATES]


def columns_table(asset: str) -> str:
    """Table with the ``col, pool_id, task, subtask`` of each query column of matrix ``asset``."""
    return f"{asset}_columns"


def grad_features_dataset(kind: str, suffix: str) -> str:
    """Lance dataset of the ``pool`` or ``query`` gradient features of one dimension / projection."""
    return f"{kind}_grad_features_{suffix}"


def influence_dataset(suffix: str) -> str:
    """Lance dataset of the pool x query LESS influence matrix of one dimension / projection."""
    return f"{INFLUENCE}_{suffix}"


def rds_dataset(model_hash: str) -> str:
    """Lance dataset of the RDS+ matrix: the selection model's weights are its identity."""
    return f"{RDS_SIMILARITY}_{model_hash}"


def rds_queries_dataset(model_hash: str) -> str:
    """Lance dataset of the query rows' RDS+ embeddings (the model_embeddings asset embeds pool rows only)."""
    return f"rds_queries_{model_hash}"
