"""Model loading, chat templates and embeddings (torch/transformers imported where used)."""
