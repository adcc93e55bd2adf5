"""Selection algorithms: one module per method, all behind :mod:`.registry`."""

from . import _methods  # noqa: F401  (importing every method module registers it)
from .base import Budget, Selection
from .registry import build_config, get, methods

__all__ = ["Budget", "Selection", "build_config", "get", "methods"]
