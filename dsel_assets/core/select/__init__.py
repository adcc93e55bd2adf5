"""Selection algorithms: one module per method, all behind :mod:`.registry`. Every module of
the package is imported here, so a method module registers itself: a new method is its module
and its test."""

import importlib
import pkgutil

from .base import Budget, Selection
from .registry import build_config, get, methods

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["Budget", "Selection", "build_config", "get", "methods"]
