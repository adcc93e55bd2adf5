"""How this process reaches an object store, read from the environment at each use and never
kept in configuration, so credentials stay out of the Dagster UI, the tables and the logs:
the artifact root (``DSEL_ARTIFACTS_URI``), the S3 endpoint, region and credentials, and the
local cache of remote artifacts (``DSEL_ARTIFACT_CACHE``)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from dsel_assets.store.artifacts import ObjectStore

ARTIFACTS_URI = "DSEL_ARTIFACTS_URI"
ARTIFACT_CACHE = "DSEL_ARTIFACT_CACHE"

#: object-store option (Lance's names) -> environment variables read for it (first set wins)
S3_ENVIRONMENT = {
    "aws_endpoint": ("DSEL_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
    "aws_region": ("AWS_REGION", "AWS_DEFAULT_REGION"),
    "aws_access_key_id": ("AWS_ACCESS_KEY_ID",),
    "aws_secret_access_key": ("AWS_SECRET_ACCESS_KEY",),
    "aws_session_token": ("AWS_SESSION_TOKEN",),
}


def s3_options(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """S3 endpoint, region and credentials from ``environ`` (default: this process's), with
    plain-HTTP endpoints allowed (a local S3-compatible server)."""
    environ = os.environ if environ is None else environ
    options = {}
    for option, variables in S3_ENVIRONMENT.items():
        value = next((environ[v] for v in variables if environ.get(v)), None)
        if value:
            options[option] = value
    if options.get("aws_endpoint", "").startswith("http://"):
        options["allow_http"] = "true"
    return options


def storage_options(uri: str, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Object-store options for ``uri``: :func:`s3_options` for ``s3://``, nothing for local paths."""
    return s3_options(environ) if uri.startswith("s3://") else {}


def object_store() -> ObjectStore:
    """Artifact reads and writes with this process's object-store options and cache folder."""
    cache = os.environ.get(ARTIFACT_CACHE)
    return ObjectStore(options=s3_options(), cache=Path(cache) if cache else None)


def artifacts_root(home_root: Path) -> str:
    """Where artifacts live: ``DSEL_ARTIFACTS_URI`` when set, else the state home."""
    return os.environ.get(ARTIFACTS_URI) or str(home_root)
