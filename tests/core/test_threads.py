"""A step's thread count: its share of the cores it may use, DSEL_THREADS over everything."""

from __future__ import annotations

import os

import pytest

from dsel_assets.core import threads


def test_a_configured_count_overrides_the_share_and_a_bad_value_names_the_variable(monkeypatch):
    from resources.models import configured_threads

    monkeypatch.setenv("DSEL_THREADS", "3")
    assert threads.thread_share(4, configured_threads()) == (3, "configured")
    for bad in ("0", "-1", "two", "1.5"):
        monkeypatch.setenv("DSEL_THREADS", bad)
        with pytest.raises(ValueError, match="DSEL_THREADS: must be a positive integer"):
            configured_threads()
    monkeypatch.delenv("DSEL_THREADS")
    assert configured_threads() is None


@pytest.mark.parametrize(("cores", "steps", "expected"), [(2, 1, 2), (2, 2, 1), (2, 3, 1), (16, 3, 5), (1, 1, 1)])
def test_the_share_is_the_usable_cores_over_the_concurrent_model_steps(monkeypatch, cores, steps, expected):
    monkeypatch.setattr(threads, "usable_cores", lambda: cores)
    assert threads.thread_share(steps)[0] == expected


@pytest.mark.parametrize(("cpu_max", "expected"), [("max 100000", 64), ("150000 100000", 2), ("50000 100000", 1)])
def test_a_cgroup_cpu_quota_caps_the_usable_cores(monkeypatch, tmp_path, cpu_max, expected):
    """A pod limited to 1.5 CPUs may use 2 threads (rounded up), not the node's 64 cores."""
    (tmp_path / "cpu.max").write_text(cpu_max + "\n")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    assert threads.usable_cores(tmp_path / "cpu.max") == expected
    assert threads.usable_cores(tmp_path / "absent") == 64


def test_limit_threads_reaches_torch_blas_and_runtimes_loaded_later(monkeypatch):
    import numpy  # noqa: F401  (its BLAS is loaded, so threadpoolctl must see the limit)
    import torch
    from threadpoolctl import threadpool_info

    before = torch.get_num_threads()
    for key in threads.THREAD_VARIABLES:
        monkeypatch.setenv(key, "")  # restored by monkeypatch; limit_threads overwrites them
    try:
        threads.limit_threads(1)
        assert torch.get_num_threads() == 1
        assert all(pool["num_threads"] == 1 for pool in threadpool_info())
        assert all(os.environ[key] == "1" for key in threads.THREAD_VARIABLES)
    finally:
        threads.limit_threads(before)
    assert torch.get_num_threads() == before


def test_the_gpu_pool_limit_is_the_number_of_concurrent_model_steps():
    import dagster as dg

    from resources.devices import concurrent_model_steps

    assert concurrent_model_steps(None) == 1
    with dg.instance_for_test() as instance:
        assert concurrent_model_steps(instance) == 1
    with dg.instance_for_test(overrides={"concurrency": {"pools": {"default_limit": 3}}}) as instance:
        assert concurrent_model_steps(instance) == 3
