"""Settings in code versions, so that Dagster's own staleness sees a settings change.

An asset's Dagster code version is its code's version plus a digest of the fields that define
what it computes in the resources it uses (``VERSION_FIELDS``: the model, the gradient
dimension and projection, the pooling, ...). Switching a setting therefore makes exactly the
assets that use it stale (the UI's badge, ``dsel status``, every command's closure), and their
descendants through new data versions. Stored rows keep the code's own version: they carry the
model and settings themselves.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping

import dagster as dg

#: Between the code's version and the settings digest.
SEPARATOR = "+settings-"


def settings_digest(resources: Mapping[str, object], keys: Iterable[str]) -> str | None:
    """A short digest of the ``VERSION_FIELDS`` of the resources ``keys`` (None: none has any)."""
    fields = {
        key: {name: getattr(resources[key], name) for name in resources[key].VERSION_FIELDS}
        for key in sorted(keys)
        if key in resources and hasattr(resources[key], "VERSION_FIELDS")
    }
    if not fields:
        return None
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:12]


def with_settings(assets: Iterable[dg.AssetsDefinition], resources: Mapping[str, object]) -> list:
    """``assets`` with each code version extended by the digest of the settings it computes with."""
    versioned = []
    for asset in assets:
        digest = settings_digest(resources, asset.required_resource_keys)
        if digest is None:
            versioned.append(asset)
            continue
        (asset,) = dg.map_asset_specs(
            lambda spec, digest=digest: spec.replace_attributes(
                code_version=f"{spec.code_version or spec.key.to_user_string()}{SEPARATOR}{digest}"
            ),
            [asset],
        )
        versioned.append(asset)
    return versioned


def row_code_version(context: dg.AssetExecutionContext) -> str:
    """The running asset's code version without the settings digest (what stored rows record)."""
    return context.assets_def.code_versions_by_key[context.asset_key].split(SEPARATOR)[0]
