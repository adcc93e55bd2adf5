"""Canonical records, readers for every supported layout, validation and the synthetic pool."""
