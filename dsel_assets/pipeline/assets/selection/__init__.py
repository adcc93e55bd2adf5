"""Selections: every registered method at every budget."""
