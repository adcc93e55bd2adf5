"""Tests of dsel_assets.store and the resources over it (DuckDB, PostgreSQL, Lance, S3)."""
