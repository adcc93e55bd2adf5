"""Settings that define what a representation is, pinned in the state home.

Gradient features at d=1024 and at d=8192 are different representations; so are embeddings of
two models or two poolings. If the CLI, the UI, the daemon and the sensors each took these from
their own flags and environment, a batch computed by one entry point would be missing from the
representation another one reads, and a selection over it would silently cover only part of
the pool. So the first command that computes anything stores them in ``settings.json`` under
the state home, every entry point reads them from there, and changing one needs an explicit
``--change-settings`` (which then recomputes what depends on it for the whole pool).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Collection
from dataclasses import dataclass, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from filelock import FileLock

from dsel_assets.core.data.schema import SENTENCE_TEXTS
from dsel_assets.core.models.model_embeddings import POOLINGS

from .home import DselHome

#: Setting -> environment variable that may request it (first use, or with --change-settings).
ENVIRONMENT = {
    "model": "DSEL_MODEL",
    "grad_dim": "DSEL_GRAD_DIM",
    "projection": "DSEL_PROJECTION",
    "pooling": "DSEL_POOLING",
    "proxy_model": "DSEL_PROXY_MODEL",
    "dtype": "DSEL_DTYPE",
    "load_in": "DSEL_LOAD_IN",
    "embed_max_length": "DSEL_EMBED_MAX_LENGTH",
    "embed_bos": "DSEL_EMBED_BOS",
    "sentence_text": "DSEL_SENTENCE_TEXT",
}
#: Command-line flag that requests each setting.
FLAGS = {
    "model": "--model",
    "grad_dim": "--grad-dim",
    "projection": "--projection",
    "pooling": "--pooling",
    "proxy_model": "--proxy-model",
    "dtype": "--dtype",
    "load_in": "--load-in",
    "embed_max_length": "--embed-max-length",
    "embed_bos": "--embed-bos",
    "sentence_text": "--sentence-text",
}
#: How models run without changing what they compute: per command (a flag), else the environment.
RUNTIME_ENVIRONMENT = {
    "attention": "DSEL_ATTENTION",
    "max_batch_tokens": "DSEL_MAX_BATCH_TOKENS",
    "gradient_checkpointing": "DSEL_GRADIENT_CHECKPOINTING",
}


def runtime_options(explicit: dict[str, Any] | None = None, environ: dict[str, str] | None = None) -> dict[str, Any]:
    """The runtime options given (flags first, then ``DSEL_ATTENTION`` / ``DSEL_MAX_BATCH_TOKENS``
    / ``DSEL_GRADIENT_CHECKPOINTING=0|1``); options given nowhere are left out (resource defaults)."""
    environ = os.environ if environ is None else environ
    chosen = {k: v for k, v in (explicit or {}).items() if v is not None}
    for name, variable in RUNTIME_ENVIRONMENT.items():
        value = environ.get(variable)
        if name in chosen or not value:
            continue
        if name == "max_batch_tokens":
            if not value.isdigit() or int(value) < 1:
                raise ValueError(f"{variable}: {value!r} is not a positive number of tokens")
            chosen[name] = int(value)
        elif name == "gradient_checkpointing":
            if value not in ("0", "1"):
                raise ValueError(f"{variable}: {value!r} is not one of ['0', '1']")
            chosen[name] = value == "1"
        else:
            chosen[name] = value
    return chosen


#: The settings every model output depends on: pinned together by any command that runs a model.
MODEL_SETTINGS = ("model", "dtype", "load_in")


@dataclass(frozen=True)
class IdentitySettings:
    """The selection model, the gradient feature dimension and projection, the model-embedding
    pooling, the proxy model of Superfiltering / Small2Large ("" = the selection model; see
    dsel_assets.pipeline.assets.representations.scores), the weights' dtype and quantisation
    (a bf16 or 4-bit model scores, embeds and differentiates differently), and the model
    embeddings' length and BOS (RDS+'s reference: 2,048 tokens starting with BOS), and the text
    the sentence embeddings read (whole conversations, or the instructions only)."""

    model: str = "smollm2"
    grad_dim: int = 8192
    projection: str = "rademacher"
    pooling: str = "mean"
    proxy_model: str = ""
    dtype: str = "auto"
    load_in: str = "none"
    embed_max_length: int = 2048
    embed_bos: bool = True
    sentence_text: str = "conversation"


class SettingsConflict(ValueError):
    """A command asked for a setting other than the one the state home was computed with."""


def settings_path(home: DselHome) -> Path:
    return home.root / "settings.json"


def stored_settings(home: DselHome) -> dict[str, Any]:
    """The pinned settings (empty before the first computing command)."""
    path = settings_path(home)
    if not path.is_file():
        return {}
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise SettingsConflict(f"settings: {path} is not valid JSON ({exc}); fix or delete it") from exc
    return {f.name: stored[f.name] for f in fields(IdentitySettings) if f.name in stored}


#: The settings that take one of a few values: a request for another is refused before it is pinned.
CHOICES = {"pooling": tuple(POOLINGS), "sentence_text": SENTENCE_TEXTS}


def _requested(explicit: dict[str, Any], environ: dict[str, str]) -> dict[str, Any]:
    """What this process asks for: explicit values first, then the environment."""
    wanted = {k: v for k, v in explicit.items() if v is not None}
    for name, variable in ENVIRONMENT.items():
        if name not in wanted and environ.get(variable):
            wanted[name] = _parsed(name, variable, environ[variable])
    for name, choices in CHOICES.items():
        if name in wanted and wanted[name] not in choices:
            where = f"{FLAGS[name]} / {ENVIRONMENT[name]}"
            raise ValueError(f"{name}: {wanted[name]!r} is not one of {list(choices)} ({where})")
    return wanted


def _parsed(name: str, variable: str, value: str) -> Any:
    """An environment value as its setting's type: a positive integer, ``0`` / ``1``, or text."""
    kind = type(getattr(IdentitySettings(), name))
    if kind is bool:
        if value not in ("0", "1"):
            raise ValueError(f"{variable}: {value!r} is not one of ['0', '1']")
        return value == "1"
    if kind is int:
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"{variable}: {value!r} is not a positive integer")
        return int(value)
    return value


def resolve_settings(
    home: DselHome,
    explicit: dict[str, Any] | None = None,
    *,
    first_use: dict[str, Any] | None = None,
    change: bool = False,
    strict: bool = True,
    pin: bool | Collection[str] = True,
    environ: dict[str, str] | None = None,
) -> tuple[IdentitySettings, list[str]]:
    """The settings this process must use, and the names of those it changed.

    ``explicit`` holds command-line values (None: not given); the environment fills the rest.
    A requested value that differs from a pinned one raises :class:`SettingsConflict`
    (``strict``, the CLI) or is ignored with a warning on stderr (the UI and daemon, which must
    keep loading); with ``change`` it replaces the pinned one. ``first_use`` gives defaults for
    settings not pinned yet (``dsel run``'s short d=1024). ``pin`` names the settings this
    process computes with (True: all), which are stored if not stored yet.
    """
    environ = os.environ if environ is None else environ
    wanted = _requested(explicit or {}, environ)
    lock = FileLock(f"{settings_path(home)}.lock", timeout=60)
    with lock:
        stored = stored_settings(home)
        chosen, changed = {}, []
        for field in fields(IdentitySettings):
            name = field.name
            if name in stored:
                value = stored[name]
                if name in wanted and wanted[name] != value:
                    if change:
                        value = wanted[name]
                        changed.append(name)
                    elif strict:
                        raise SettingsConflict(
                            f"{name}: the state home {home.root} was computed with {name}={stored[name]!r}; "
                            f"this command asks for {wanted[name]!r}. Leave {FLAGS[name]} / {ENVIRONMENT[name]} "
                            "unset to use the stored value, or add --change-settings to switch (what depends on "
                            "it is then recomputed for the whole pool)"
                        )
                    else:
                        print(
                            f"[dsel] {name}={wanted[name]!r} requested but the state home uses {value!r}; "
                            "keeping the stored value (change it with the CLI's --change-settings)",
                            file=sys.stderr,
                        )
            else:
                value = wanted.get(name, (first_use or {}).get(name, field.default))
            chosen[name] = value
        pinned = set(chosen) if pin is True else set(pin or ())
        record = {**stored, **{name: chosen[name] for name in pinned | set(changed)}}
        if record != stored:
            _write(home, record)
    return replace(IdentitySettings(), **chosen), changed


def _write(home: DselHome, settings: dict[str, Any]) -> None:
    """Replace ``settings.json`` atomically (a killed process leaves the old one or the new one)."""
    path = settings_path(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {**settings, "updated_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
