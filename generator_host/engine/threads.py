"""torch's CPU threads: one per physical core this process may use.

Why: a second hardware thread on the same core shares its vector units, so threads beyond
the physical cores only add contention to a compute-bound UNet; fewer leave cores idle.
torch's own default can count logical CPUs or ignore the process's CPU affinity (a
container limited to some cores), so the host sets it.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        return os.cpu_count() or 1


def physical_cores() -> int:
    """Physical cores this process may use (psutil knows the topology; it comes with
    accelerate); the usable logical CPUs when psutil cannot tell."""
    usable = usable_cpus()
    try:
        import psutil

        physical = psutil.cpu_count(logical=False) or usable
        logical = psutil.cpu_count(logical=True) or usable
    except Exception:  # noqa: BLE001 - the fallback is still a sound number
        return usable
    # Affinity limits are in logical CPUs: scale them to cores by the SMT ratio.
    per_core = max(1, logical // max(1, physical))
    return max(1, min(physical, usable // per_core))


def set_cpu_threads(configured: int = 0) -> int:
    """Set torch's intra-op threads ([model] cpu_threads; 0: the physical cores)."""
    import torch

    n = configured if configured > 0 else physical_cores()
    if torch.get_num_threads() != n:
        why = "[model] cpu_threads" if configured > 0 else "physical cores"
        log.info("torch CPU threads: %d -> %d (%s)", torch.get_num_threads(), n, why)
        torch.set_num_threads(n)
    return n
