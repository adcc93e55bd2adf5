"""Imports every method module so that each registers itself."""

from . import (  # noqa: F401
    bids,
    deita,
    doubly_greedy,
    facility_location,
    kcenter_greedy,
    kmeans_centroids,
    kmeans_random,
    kmq,
    less,
    mig,
    novelselect,
    qdit,
    random_sampling,
    round_robin,
    uot,
)
