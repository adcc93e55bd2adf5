"""Evaluation, the comparison and selection reports, and exports for trainers."""
