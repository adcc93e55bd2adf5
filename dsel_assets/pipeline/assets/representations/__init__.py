"""Representations of the pool: embeddings, scores, gradient features, similarities, labels."""
