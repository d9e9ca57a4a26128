"""Resident-memory readings shared by the benchmarks (Linux ``/proc``; used as ``from memory import ...``
by scripts run as ``python benchmarks/<script>.py``)."""

from __future__ import annotations

import resource


def rss_mib(field: str) -> float:
    """Current (``VmRSS``) or peak (``VmHWM``) resident memory of this process in MiB; without
    ``/proc``, the peak from ``getrusage``."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (Linux); False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False
