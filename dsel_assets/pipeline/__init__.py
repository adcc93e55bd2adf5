"""The Dagster pipeline: assets by domain, the representation registry, checks, sensors and
the code location that assembles them; it reads and writes through ``store`` and calls ``core``."""
