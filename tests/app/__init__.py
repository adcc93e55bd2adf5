"""Tests of what users run: the CLI, compare, export, lineage, runs and the UI."""
