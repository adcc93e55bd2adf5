"""Dagster resources, one per external system, chosen per deployment by :func:`build_resources`."""

from __future__ import annotations

import os

from dsel_assets.core.models.loading import COMPUTE_DTYPES

from .gradient_settings import GradientSettings
from .home import DselHome, StateHome
from .inbox import InboxSettings
from .ingest import IngestLimits
from .lance_store import LanceStore
from .models import ModelEmbeddingSettings, SelectionModel, SentenceEmbedder, SentenceEmbeddingSettings
from .store import state_store
from .tracking import MLFLOW_URI, DatasetRef, MlflowTracker

__all__ = [
    "DatasetRef",
    "DselHome",
    "InboxSettings",
    "IngestLimits",
    "LanceStore",
    "MlflowTracker",
    "ModelEmbeddingSettings",
    "SelectionModel",
    "SentenceEmbedder",
    "SentenceEmbeddingSettings",
    "StateHome",
    "build_resources",
]


def build_resources(
    home: DselHome,
    model: str = "smollm2",
    device: str = "auto",
    grad_dim: int = 8192,
    projection: str = "rademacher",
    pooling: str | None = None,
    proxy_model: str | None = None,
    target_model: str | None = None,
    model_options: dict | None = None,
    embed_max_length: int = 2048,
    embed_bos: bool = True,
    sentence_text: str = "conversation",
) -> dict:
    """The local deployment: everything under ``home`` (DuckDB file, Lance, MLflow on SQLite,
    artifacts). On a cluster ``DSEL_DATABASE_URL`` (PostgreSQL), ``DSEL_LANCE_URI`` and
    ``DSEL_ARTIFACTS_URI`` (e.g. ``s3://bucket/dsel/...``), ``DSEL_MLFLOW_URI`` (an MLflow
    server; ``DSEL_MLFLOW_ARTIFACTS`` overrides where it keeps artifacts) and ``DSEL_DAGSTER_HOME``
    (the instance) move every piece of state off the home (deploy/). ``model_options`` (dtype,
    load_in, attention, max_batch_tokens, gradient_checkpointing) apply to every model resource."""
    home.ensure()
    compute_dtype = os.environ.get("DSEL_GRAD_COMPUTE_DTYPE", "auto")
    if compute_dtype not in COMPUTE_DTYPES:
        raise ValueError(f"DSEL_GRAD_COMPUTE_DTYPE: {compute_dtype!r} is not one of {list(COMPUTE_DTYPES)}")
    server = os.environ.get(MLFLOW_URI)
    options = model_options or {}
    return {
        "home": StateHome(root=str(home.root)),
        "store": state_store(home.duckdb),
        "lance": LanceStore(root=os.environ.get("DSEL_LANCE_URI") or str(home.lance)),
        "tracker": MlflowTracker(
            tracking_uri=server or home.mlflow_uri,
            # a tracking server stores artifacts where it is configured to unless told otherwise
            artifact_location=os.environ.get("DSEL_MLFLOW_ARTIFACTS")
            or (None if server else home.mlflow_artifacts.as_uri()),
        ),
        "selection_model": SelectionModel(model=model, device=device, **options),
        # the small model of Superfiltering(-D) and Small2Large (the selection model unless set)
        "proxy_model": SelectionModel(model=proxy_model or model, device=device, **options),
        # the model fine-tuned on each selection and evaluated (the selection model unless set)
        "target_model": SelectionModel(model=target_model or model, device=device, **options),
        "embedder": SentenceEmbedder(device=device),
        "sentence_embedding_settings": SentenceEmbeddingSettings(text=sentence_text),
        "model_embedding_settings": ModelEmbeddingSettings(
            pooling=pooling or os.environ.get("DSEL_POOLING", "mean"), max_length=embed_max_length, bos=embed_bos
        ),
        "grad_settings": GradientSettings(
            dim=grad_dim,
            projection=projection,
            compute_dtype=compute_dtype,
            # --max-batch-tokens bounds the backward passes too (memory, not what is computed)
            **{k: v for k, v in options.items() if k == "max_batch_tokens" and v},
        ),
        "inbox_settings": InboxSettings.from_env(home),
        "ingest_limits": IngestLimits.from_env(),
    }
