"""How many CPUs this process may run on, which is what its torch thread count should follow.

``os.cpu_count()`` counts the machine's CPUs; a process confined to fewer (a container's cpuset, ``taskset``, a
scheduler that pins workers) that starts a thread per CPU it does not have gets an OpenMP team whose threads wait
on each other for a time slice at every parallel region. Measured on 2 cores (benchmarks/README.md, "the server on
a core of its own"): the server's aggregation took 4.4-8.4 s instead of 0.6-1.1 s, with two threads on one core.
"""

from __future__ import annotations

import os


def usable_cpus() -> int:
    """CPUs this process may be scheduled on (its affinity mask where the OS has one), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no affinity API (macOS, Windows)
        return max(1, os.cpu_count() or 1)
