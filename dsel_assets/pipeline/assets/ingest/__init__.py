"""Ingestion: the pool and its batches, the inbox of new files."""
