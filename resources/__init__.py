"""Dagster resources, one per external system, chosen per deployment by :func:`build_resources`."""

from __future__ import annotations

from dagster_duckdb import DuckDBResource

from .gradient_settings import GradientSettings
from .home import DselHome, StateHome
from .lance_store import LanceStore
from .models import SelectionModel, SentenceEmbedder
from .tracking import DatasetRef, MlflowTracker

__all__ = [
    "DatasetRef",
    "DselHome",
    "LanceStore",
    "MlflowTracker",
    "SelectionModel",
    "SentenceEmbedder",
    "StateHome",
    "build_resources",
]


def build_resources(
    home: DselHome,
    model: str = "smollm2",
    device: str = "auto",
    progress: bool = False,
    grad_dim: int = 8192,
    proxy_model: str | None = None,
) -> dict:
    """The local deployment: everything under ``home`` (DuckDB file, Lance, MLflow on SQLite)."""
    home.ensure()
    return {
        "home": StateHome(root=str(home.root)),
        "duckdb": DuckDBResource(database=str(home.duckdb)),
        "lance": LanceStore(root=str(home.lance)),
        "tracker": MlflowTracker(tracking_uri=home.mlflow_uri, artifact_location=home.mlflow_artifacts.as_uri()),
        "selection_model": SelectionModel(model=model, device=device),
        "proxy_model": SelectionModel(model=proxy_model or model, device=device),
        "embedder": SentenceEmbedder(device=device, progress=progress),
        "grad_settings": GradientSettings(dim=grad_dim, progress=progress),
    }
