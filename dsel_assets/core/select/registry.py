"""The method registry: one entry per selection algorithm, used by the CLI, the Dagster
assets, the docs table and the tests alike (tests are parameterised from it)."""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from .base import method_target

FAMILIES = ("targeted", "diversity", "quality", "hybrid", "iterative")


@dataclass(frozen=True)
class MethodSpec:
    """A registered selection method."""

    name: str
    family: str
    needs: tuple[str, ...]  # representation names, e.g. ("sentence_embeddings",)
    config_cls: type
    select: Callable[..., Any]
    description: str
    reference: str

    def parameters(self) -> list[tuple[str, str, Any, str]]:
        """(name, type, default, help) for each configuration field."""
        hints = typing.get_type_hints(self.config_cls)
        return [
            (f.name, _type_name(hints[f.name]), f.default, f.metadata.get("help", ""))
            for f in dataclasses.fields(self.config_cls)
        ]


_REGISTRY: dict[str, MethodSpec] = {}


def register(
    name: str,
    *,
    family: str,
    config: type,
    needs: tuple[str, ...] = (),
    description: str,
    reference: str,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator registering ``select(ids, k, config, **representations) -> Selection``; a
    required target (a ``task`` declared by ``target_field``) is refused when empty, here, for
    every such method."""
    if family not in FAMILIES:
        raise ValueError(f"family: {family!r} is not one of {FAMILIES}")
    if not dataclasses.is_dataclass(config):
        raise TypeError(f"config: {config!r} must be a dataclass")
    target = method_target(config)

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in _REGISTRY:
            raise ValueError(f"method: {name!r} is already registered")
        select = fn
        if target is not None and target.required:

            @functools.wraps(fn)
            def select(ids, k, method_config, **representations):
                if not method_config.task:
                    raise ValueError(f"{name}.task: required (a task label of {target.where})")
                return fn(ids, k, method_config, **representations)

        _REGISTRY[name] = MethodSpec(name, family, needs, config, select, description, reference)
        return fn

    return decorate


def methods() -> dict[str, MethodSpec]:
    """All registered methods, by name (the package imports every method module, which registers it)."""
    return dict(sorted(_REGISTRY.items()))


def get(name: str) -> MethodSpec:
    available = methods()
    if name not in available:
        raise KeyError(f"method: {name!r} is not one of {sorted(available)}")
    return available[name]


def target_problem(name: str, task: str, labels: Collection[str]) -> str | None:
    """Why ``task`` cannot be method ``name``'s target, given the task labels its declared split
    holds, or None when it can: '' where a target is required, or a label the split lacks."""
    target = method_target(get(name).config_cls)
    if target is None or not (task or target.required):
        return None
    where = target.where
    stored = f"tasks of {where}: {', '.join(sorted(labels))}" if labels else f"{where} holds no examples yet"
    if not task:
        return f"a target task is required; {stored}"
    return None if task in labels else f"{task!r} is not a task of {where}; {stored}"


def has_seed(spec: MethodSpec) -> bool:
    """Whether the method takes a ``seed`` parameter (its selection can be replicated by seed)."""
    return any(f.name == "seed" for f in dataclasses.fields(spec.config_cls))


def seed_in_use(config: Any) -> bool:
    """Whether a method's config draws on its ``seed``: it has one, and no ``uses_seed()`` of the
    config says its other settings leave the seed unused (facility location's lazy greedy)."""
    if not hasattr(config, "seed"):
        return False
    uses_seed = getattr(config, "uses_seed", None)
    return True if uses_seed is None else bool(uses_seed())


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is typing.Literal:
        return "one of " + "|".join(map(str, typing.get_args(tp)))
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(field_name: str, tp: Any, value: Any) -> Any:
    """Coerce a CLI/Dagster string to the field's type, or raise naming the field."""
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ValueError(f"{field_name}: {value!r} is not one of {list(allowed)}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() == "none"):
            return None
        return _coerce(field_name, args[0], value)
    if not isinstance(value, str) or tp is str:
        if tp in (int, float) and isinstance(value, bool):
            raise ValueError(f"{field_name}: expected {tp.__name__}, got {value!r}")
        if tp is float and isinstance(value, int):
            return float(value)
        if tp in (int, float, str, bool) and not isinstance(value, tp):
            raise ValueError(f"{field_name}: expected {tp.__name__}, got {value!r}")
        return value
    try:
        if tp is bool:
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return value.lower() in ("true", "1", "yes")
        return tp(value)
    except ValueError:
        raise ValueError(f"{field_name}: expected {_type_name(tp)}, got {value!r}") from None


def build_config(name: str, params: dict[str, Any] | None = None) -> Any:
    """A validated config for method ``name``; unknown or ill-typed fields are named."""
    spec = get(name)
    params = dict(params or {})
    fields = {f.name: f for f in dataclasses.fields(spec.config_cls)}
    unknown = sorted(set(params) - set(fields))
    if unknown:
        allowed = ", ".join(f"{n} ({t}, default {d!r})" for n, t, d, _ in spec.parameters())
        given = ", ".join(f"{key}={params[key]!r}" for key in unknown)
        raise ValueError(f"{name}: unknown parameter(s) {given}; valid: {allowed}")
    hints = typing.get_type_hints(spec.config_cls)
    values = {key: _coerce(f"{name}.{key}", hints[key], value) for key, value in params.items()}
    return spec.config_cls(**values)
