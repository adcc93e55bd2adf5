-- Databases besides Dagster's own (POSTGRES_DB): MLflow's tracking store, and dsel's state
-- tables for the PostgreSQL store backend.
CREATE DATABASE mlflow;
CREATE DATABASE dsel;
