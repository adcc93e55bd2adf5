"""dsel: orchestrated instruction-tuning data selection (Dagster code location + pure core)."""

__version__ = "0.1.0"
