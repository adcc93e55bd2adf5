"""dsel: orchestrated instruction-tuning data selection (Dagster code location + pure core)."""

from dsel_assets.core.threads import prepare_openmp

__version__ = "0.1.0"

prepare_openmp()  # before anything loads torch's or faiss's OpenMP runtime (it reads them once)
