"""Pure library: data readers, models, selection algorithms. Imports no dagster, duckdb,
mlflow or lance, so it is usable (and testable) on its own."""
