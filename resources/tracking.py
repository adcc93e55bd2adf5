"""MLflow tracking: exactly one MLflow run per asset materialization.

Built on ``MlflowClient`` with explicit run ids rather than MLflow's global active run:
``dagster-mlflow`` reuses the active run, so two materializations in one process land in
one MLflow run (we measured it).
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import dagster as dg
from filelock import FileLock
from pydantic import Field

from .home import DselHome

#: Query parameters whose values are secrets (tokens, keys, passwords) in a tracking URI.
#: What MLflow accepts in a metric key; anything else (a task label such as ``c++``) is replaced.
_METRIC_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_\-. :/]")


#: an MLflow tracking server (a cluster); unset: the state home's SQLite file
MLFLOW_URI = "DSEL_MLFLOW_URI"


def tracking_uri(home: DselHome) -> str:
    """Where runs are tracked: ``DSEL_MLFLOW_URI`` when set, else the home's SQLite file."""
    return os.environ.get(MLFLOW_URI) or home.mlflow_uri


def metric_key(name: str) -> str:
    """``name`` as a valid MLflow metric key: labels are data, so a character MLflow rejects
    becomes ``_``, and a short hash of the original keeps two such labels (``c++``, ``c--``) apart."""
    safe = _METRIC_KEY_UNSAFE.sub("_", name)
    if safe == name:
        return safe
    return f"{safe[:200]}-{hashlib.sha256(name.encode()).hexdigest()[:6]}"


_SECRET_PARAMS = ("token", "key", "secret", "password", "passwd", "credential", "signature", "auth")
_initialised: set[str] = set()
_initialising = threading.Lock()


def redact_uri(uri: str) -> str:
    """``uri`` without credentials (``user:password@`` and secret query values), for metadata
    and logs."""
    parts = urlsplit(uri)
    redacted = uri
    if "@" in parts.netloc:
        redacted = redacted.replace(parts.netloc, "***@" + parts.netloc.rsplit("@", 1)[1], 1)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    if any(s in k.lower() for k, _ in pairs for s in _SECRET_PARAMS):
        query = [(k, "***" if any(s in k.lower() for s in _SECRET_PARAMS) else v) for k, v in pairs]
        redacted = redacted.replace(parts.query, urlencode(query, safe="*/:"), 1)
    return redacted


def restore_credentials(recorded: str, configured: Iterable[str | None]) -> str:
    """The configured URI whose redacted form is ``recorded`` (so lineage can reconnect with
    the credentials of this deployment), else ``recorded`` as it is."""
    return next((uri for uri in configured if uri and redact_uri(uri) == recorded), recorded)


def _sqlite_path(uri: str) -> Path | None:
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def _uri_source(uri: str):
    """An MLflow dataset source that only records ``uri`` (under the ``uri`` key, as MLflow's
    file sources do, so lineage reads every source the same way)."""
    from mlflow.data.dataset_source import DatasetSource

    class UriSource(DatasetSource):
        @staticmethod
        def _get_source_type() -> str:
            return "uri"

        def load(self, **kwargs):
            raise NotImplementedError("a recorded location, not loadable through MLflow")

        @staticmethod
        def _can_resolve(raw_source) -> bool:
            return False

        @classmethod
        def _resolve(cls, raw_source):
            return cls()

        def to_dict(self) -> dict:
            return {"uri": uri}

        @classmethod
        def from_dict(cls, source_dict):
            return cls()

    return UriSource()


@dataclass(frozen=True)
class DatasetRef:
    """An input or output recorded in MLflow by reference: no data is loaded or copied."""

    name: str  # e.g. "sentence_embeddings" or "pool_batch/synthetic-1a2b"
    uri: str  # where it lives (Lance dataset directory, DuckDB file, raw file)
    digest: str  # its version: Lance version, content hash, ...
    context: str = "input"


class TrackedRun:
    """Handle on one MLflow run, open for the duration of a materialization."""

    def __init__(self, client: Any, run_id: str, experiment_id: str, tracking_uri: str):
        self.client, self.run_id, self.experiment_id = client, run_id, experiment_id
        self.tracking_uri = tracking_uri

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(str(k), str(v)[:6000]) for k, v in params.items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[start : start + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(metric_key(str(k)), float(v), now, step) for k, v in metrics.items()]
        for start in range(0, len(items), 500):
            self.client.log_batch(self.run_id, metrics=items[start : start + 500])

    def log_datasets(self, refs: list[DatasetRef]) -> None:
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag
        from mlflow.exceptions import MlflowException

        inputs = []
        for ref in refs:
            uri = ref.uri if "://" in ref.uri else Path(ref.uri).resolve().as_uri()
            with warnings.catch_warnings():  # MLflow registers two equivalent local sources
                warnings.simplefilter("ignore", UserWarning)
                try:
                    source = resolve_dataset_source(uri)
                except MlflowException:  # no resolver for it (a postgresql:// state database)
                    source = _uri_source(uri)
            dataset = MetaDataset(source, name=ref.name, digest=ref.digest[:36])
            tags = [InputTag("mlflow.data.context", ref.context)]
            inputs.append(DatasetInput(dataset._to_mlflow_entity(), tags))
        if inputs:
            self.client.log_inputs(self.run_id, datasets=inputs)

    def log_artifact(self, path: str) -> None:
        self.client.log_artifact(self.run_id, path)

    def child(
        self,
        name: str,
        params: Mapping[str, Any],
        metrics: Mapping[str, float],
        curve: Sequence[Mapping[str, float]] = (),
    ) -> str:
        """A finished nested run (one round of an iterative selector, one fine-tuned model):
        params, final metrics and a per-step ``curve`` (``{"step": s, name: value, ...}``);
        returns its id."""
        tags = {"mlflow.parentRunId": self.run_id, "mlflow.runName": name}
        created = self.client.create_run(self.experiment_id, tags=tags)
        child = TrackedRun(self.client, created.info.run_id, self.experiment_id, self.tracking_uri)
        child.log_params(params)
        child.log_metrics(metrics)
        for point in curve:
            child.log_metrics({k: v for k, v in point.items() if k != "step"}, step=int(point["step"]))
        self.client.set_terminated(child.run_id, status="FINISHED")
        return child.run_id

    def metadata(self) -> dict[str, Any]:
        """What goes into the Dagster materialization metadata."""
        return {
            "mlflow_run_id": self.run_id,
            "mlflow_experiment_id": self.experiment_id,
            "mlflow_tracking_uri": redact_uri(self.tracking_uri),
        }


class MlflowTracker(dg.ConfigurableResource):
    """Creates one tagged MLflow run per materialization (see :meth:`run`)."""

    tracking_uri: str = Field(description="MLflow tracking URI, e.g. sqlite:////abs/mlflow.db")
    experiment: str = Field(default="dsel", description="MLflow experiment name")
    artifact_location: str | None = Field(default=None, description="Artifact root for a new experiment")

    def _client(self):
        """A client whose store exists: the first use in a process creates (or migrates) a
        SQLite store under a file lock, so two processes on a fresh home do not race on its
        schema ("duplicate column name")."""
        from mlflow.tracking import MlflowClient

        database = _sqlite_path(self.tracking_uri)
        with _initialising:
            if database is None or self.tracking_uri in _initialised:
                return MlflowClient(tracking_uri=self.tracking_uri)
            database.parent.mkdir(parents=True, exist_ok=True)
            with FileLock(f"{database}.lock", timeout=300):  # the client builds its store on creation
                client = MlflowClient(tracking_uri=self.tracking_uri)
                client.search_experiments(max_results=1)
                client.search_registered_models(max_results=1)
            _initialised.add(self.tracking_uri)
            return client

    def fail_runs_of(self, dagster_run_id: str) -> int:
        """End as FAILED the MLflow runs still RUNNING of Dagster run ``dagster_run_id`` (its
        process was killed, so they never ended); returns how many."""
        if not re.fullmatch(r"[0-9a-f-]{8,64}", dagster_run_id):
            raise ValueError(f"dagster_run_id: not a run id: {dagster_run_id!r}")
        client = self._client()
        found = client.get_experiment_by_name(self.experiment)
        if found is None:
            return 0
        runs = client.search_runs(
            [found.experiment_id],
            filter_string=f"tags.`dagster.run_id` = '{dagster_run_id}' AND attributes.status = 'RUNNING'",
        )
        for run in runs:
            client.set_terminated(run.info.run_id, status="FAILED")
        return len(runs)

    def experiment_id(self) -> str:
        """The experiment's id, creating it once (call before parallel workers start)."""
        from mlflow.exceptions import MlflowException

        client = self._client()
        found = client.get_experiment_by_name(self.experiment)
        if found is not None:
            return found.experiment_id
        try:
            return client.create_experiment(self.experiment, artifact_location=self.artifact_location)
        except MlflowException:  # created meanwhile by another process
            return client.get_experiment_by_name(self.experiment).experiment_id

    @contextmanager
    def run(
        self,
        context: dg.AssetExecutionContext,
        params: Mapping[str, Any] | None = None,
        inputs: list[DatasetRef] | None = None,
    ) -> Iterator[TrackedRun]:
        """One MLflow run tagged with the Dagster run id, asset key, partition key and code
        version; params and input datasets logged up front; FAILED if the body raises."""
        client = self._client()
        experiment_id = self.experiment_id()
        asset_key = context.asset_key
        partition = context.partition_key if context.has_partition_key else ""
        code_version = context.assets_def.code_versions_by_key.get(asset_key) or ""
        tags = {
            "dagster.run_id": context.run_id,
            "dagster.asset_key": asset_key.to_user_string(),
            "dagster.partition_key": partition,
            "dagster.code_version": code_version,
            "mlflow.runName": f"{asset_key.to_user_string()}[{partition}]" if partition else asset_key.to_user_string(),
        }
        created = client.create_run(experiment_id, tags=tags)
        tracked = TrackedRun(client, created.info.run_id, experiment_id, self.tracking_uri)
        try:
            if params:
                tracked.log_params(params)
            if inputs:
                tracked.log_datasets(inputs)
            yield tracked
        except BaseException:
            client.set_terminated(tracked.run_id, status="FAILED")
            raise
        client.set_terminated(tracked.run_id, status="FINISHED")
