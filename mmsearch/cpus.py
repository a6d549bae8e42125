"""How many CPUs this process may use, without importing torch (the query path of a process that has none)."""

from __future__ import annotations

import os


def available_cpus() -> int:
    """CPUs this process may run on (the affinity mask, which containers and ``taskset`` narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        return os.cpu_count() or 1
