"""Threads for a step's numeric libraries, sized to the cores the step really has.

torch's intra-op pool, the BLAS under numpy / scikit-learn and faiss's OpenMP each start one
thread per core the machine reports, whatever else runs. When a step shares the cores with
another busy process (a second step of the multiprocess executor, a second dsel process, the
user's own job), more threads than cores run; a parallel region then waits at its barrier for a
thread the kernel has not scheduled, and the step slows far more than its share of the cores
would explain. Each step therefore takes ``usable cores / concurrent model steps`` threads
(``DSEL_THREADS`` overrides), and the OpenMP runtime is told not to spin at barriers (a spinning
thread burns the very core the preempted one is waiting for).
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

#: OpenMP settings applied before torch / faiss load their runtime (read once, at load).
OPENMP_DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE"}


def prepare_openmp() -> None:
    """Set the OpenMP defaults in this process's environment unless the user set them; only
    effective before the first OpenMP runtime loads (torch or faiss import)."""
    for key, value in OPENMP_DEFAULTS.items():
        os.environ.setdefault(key, value)


CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def usable_cores(cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup v2 CPU quota (a
    container's limit, rounded up)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cores


def thread_share(concurrent_steps: int = 1, configured: int | None = None) -> tuple[int, str]:
    """(threads, why): the ``configured`` count when given, else this step's share of the
    usable cores."""
    if configured is not None:
        return configured, "configured"
    cores, steps = usable_cores(), max(1, concurrent_steps)
    return max(1, cores // steps), f"{cores} usable cores / {steps} concurrent model step{'s' * (steps > 1)}"


#: Read by BLAS / OpenMP runtimes that load later (faiss is imported only by the steps using it).
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def limit_threads(threads: int) -> None:
    """Cap torch's intra-op pool and every BLAS / OpenMP runtime, loaded now or later."""
    from threadpoolctl import threadpool_limits

    for key in THREAD_VARIABLES:
        os.environ[key] = str(threads)
    if "torch" in sys.modules:
        import torch

        torch.set_num_threads(threads)
    if "faiss" in sys.modules:
        import faiss

        faiss.omp_set_num_threads(threads)
    threadpool_limits(threads)


def size_threads(concurrent_steps: int = 1, configured: int | None = None) -> str:
    """Apply this step's share (or the ``configured`` count); returns the line a step logs about it."""
    threads, why = thread_share(concurrent_steps, configured)
    limit_threads(threads)
    return f"using {threads} thread{'s' * (threads > 1)} ({why})"
