"""The Dagster code location (``workspace.yaml`` loads ``defs``): the state home of
``DSEL_HOME``, with the representation settings pinned there (see :mod:`resources.settings`)."""

from dsel_assets.pipeline.code_location import build_definitions

defs = build_definitions()
