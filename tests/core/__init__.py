"""Tests of dsel_assets.core: pure functions against hand computations and references."""
