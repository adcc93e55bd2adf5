"""Fine-tuned models, one per selection and seed."""
