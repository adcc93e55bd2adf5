"""Imports every method module so that each registers itself."""

from . import kmeans_centroids, kmeans_random, random_sampling  # noqa: F401
