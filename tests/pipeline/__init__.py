"""Tests of the Dagster pipeline: assets, checks, sensors, freshness, the registry."""
