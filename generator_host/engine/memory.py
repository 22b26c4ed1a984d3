"""Peak memory of the host process: what a streamer must leave free for the model.

RAM: the operating system's own record of the largest resident set (no sampling, so no
peak is missed). CUDA: torch's record of the most memory its tensors held at once.
"""

from __future__ import annotations

import sys
from typing import Any


def peak_rss_bytes() -> int | None:
    """The process's largest resident set so far, or None where it cannot be read."""
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak) if sys.platform == "darwin" else int(peak) * 1024  # macOS: bytes
    except (ImportError, OSError, ValueError):  # Windows has no `resource`
        pass
    try:
        import psutil  # installed with accelerate; Windows reports peak_wset

        info = psutil.Process().memory_info()
        return int(getattr(info, "peak_wset", 0) or info.rss)
    except Exception:  # noqa: BLE001 - a missing figure must never stop the host
        return None


def peak_vram_bytes(device: str) -> int | None:
    """The most memory torch's CUDA tensors held at once, on CUDA; else None."""
    if device != "cuda":
        return None
    import torch

    return int(torch.cuda.max_memory_allocated())


def gib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 1024**3:.1f} GB"


def describe(device: str) -> str:
    """'peak memory 3.1 GB RAM' (+ ', 2.4 GB VRAM' on CUDA): for the log and moderators."""
    text = f"peak memory {gib(peak_rss_bytes())} RAM"
    vram = peak_vram_bytes(device)
    return text + (f", {gib(vram)} VRAM" if vram is not None else "")


def figures(device: str) -> dict[str, Any]:
    """The same figures as numbers (bytes), for metadata and benchmarks."""
    return {"peak_rss_bytes": peak_rss_bytes(), "peak_vram_bytes": peak_vram_bytes(device)}
