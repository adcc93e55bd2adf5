"""The state home: one directory (``DSEL_HOME``, default ``./.dsel``) holding everything."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
from filelock import FileLock
from pydantic import Field

from dsel_assets.store.artifacts import ArtifactStore
from resources.object_store import artifacts_root, object_store

#: a deployment's Dagster instance folder (its dagster.yaml), used instead of the home's own
DAGSTER_INSTANCE = "DSEL_DAGSTER_HOME"


@dataclass(frozen=True)
class DselHome:
    """Paths under the state home; every path the code writes is one of these (artifacts: by URI)."""

    root: Path

    @classmethod
    def from_env(cls) -> DselHome:
        return cls(Path(os.environ.get("DSEL_HOME", ".dsel")).expanduser().resolve())

    @property
    def duckdb(self) -> Path:
        return self.root / "dsel.duckdb"

    @property
    def lance(self) -> Path:
        return self.root / "lance"

    @property
    def mlflow_db(self) -> Path:
        return self.root / "mlflow.db"

    @property
    def mlflow_uri(self) -> str:
        return f"sqlite:///{self.mlflow_db}"  # absolute path: four slashes in total

    @property
    def mlflow_artifacts(self) -> Path:
        return self.root / "mlflow-artifacts"

    @property
    def artifacts(self) -> ArtifactStore:
        """Adapters, checkpoints, reports and raw-file copies: under this home (``models/``,
        ``reports/``, ``raw/``), or under ``DSEL_ARTIFACTS_URI`` (an object store) when set."""
        return ArtifactStore(artifacts_root(self.root), object_store())

    @property
    def dagster(self) -> Path:
        return self.root / "dagster"

    @property
    def dagster_ready(self) -> Path:
        """Marker written once the Dagster instance's storages exist (see ``use_as_dagster_home``)."""
        return self.dagster / ".storage-ready"

    @property
    def raw(self) -> str:
        """Content-addressed copies of every ingested file (``raw/<sha256>/<name>``): a folder
        of this home, or a URI under ``DSEL_ARTIFACTS_URI``."""
        return self.artifacts.uri("raw")

    @property
    def inbox(self) -> Path:
        return self.root / "inbox"

    @property
    def shards(self) -> Path:
        """Shards of ingested files cut with ``dsel ingest --shard-rows``."""
        return self.root / "shards"

    @property
    def lm_eval_tasks(self) -> Path:
        """lm-evaluation-harness task YAMLs the user defines (local data, offline)."""
        return self.root / "lm_eval_tasks"

    def ensure(self) -> DselHome:
        for path in (self.root, self.lance, self.dagster, self.inbox):
            path.mkdir(parents=True, exist_ok=True)
        return self

    def confine(self, path: str | Path) -> Path:
        """``path`` resolved, refusing anything outside the home (no ``..`` escapes)."""
        resolved = (self.root / path).resolve()
        if not resolved.is_relative_to(self.root):
            raise ValueError(f"path: {path} is outside the state home {self.root}")
        return resolved

    def use_as_dagster_home(self) -> None:
        """Point ``DAGSTER_HOME`` at ``dagster/`` so runs and events persist across sessions, or
        at a deployment's own instance (``DSEL_DAGSTER_HOME``: a folder whose ``dagster.yaml``
        keeps runs and events in PostgreSQL, see ``deploy/``)."""
        self.ensure()
        deployed = os.environ.get(DAGSTER_INSTANCE)
        if deployed:
            if not (Path(deployed) / "dagster.yaml").is_file():
                raise ValueError(f"{DAGSTER_INSTANCE}: {deployed} holds no dagster.yaml")
            os.environ["DAGSTER_HOME"] = deployed
            return
        config = self.dagster / "dagster.yaml"
        # one process creates the instance's SQLite storages: two commands starting together on a
        # fresh home would otherwise both stamp their alembic version tables
        with FileLock(str(self.dagster / ".init.lock"), timeout=300):
            # one model-running step at a time: the "gpu" pool (dsel_assets/pipeline/deployment.py)
            if not config.exists():
                config.write_text(
                    "telemetry:\n  enabled: false\nconcurrency:\n  pools:\n    default_limit: 1\n", encoding="utf-8"
                )
            if not self.dagster_ready.exists():
                dg.DagsterInstance.from_config(str(self.dagster)).dispose()
                self.dagster_ready.touch()
        os.environ["DAGSTER_HOME"] = str(self.dagster)


class StateHome(dg.ConfigurableResource):
    """The state home as a Dagster resource (assets write reports and models under it)."""

    root: str = Field(description="The DSEL_HOME directory")

    @property
    def paths(self) -> DselHome:
        return DselHome(Path(self.root)).ensure()
