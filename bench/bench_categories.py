"""Safety categories benchmark (not a test): the extra time per image they add to a verdict.

The categories reuse the checker's image embedding, so their whole extra cost is scoring
that embedding against every category direction (engine/categories.py CategoryIndex) and
the OR in the verdict. Measured at full size (CLIP ViT-L/14: 768-long vectors) with 10
categories x 10 phrases, on batches of 4 images like a 2x2 grid, on the CPU:

    python -m bench.bench_categories            # full
    python -m bench.bench_categories --quick    # fewer repeats
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import numpy as np

DIM = 768  # CLIP ViT-L/14 projection, the Stable Diffusion checker's space
CATEGORIES = 10
PHRASES = 10
BATCH = 4
TARGET_MS = 2.0


def _index() -> Any:
    from generator_host.engine.categories import CategoryIndex

    rng = np.random.default_rng(0)
    matrix = rng.standard_normal((CATEGORIES * PHRASES, DIM)).astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    return CategoryIndex(
        names=[f"category_{i}" for i in range(CATEGORIES)],
        thresholds=np.full(CATEGORIES, 0.26, np.float32),
        matrix=matrix,
        starts=np.arange(0, CATEGORIES * PHRASES, PHRASES, dtype=np.intp),
    )


def run(quick: bool = False) -> list[dict[str, Any]]:
    import torch

    from generator_host.core.generation import SafetyScores

    index = _index()
    embeds = torch.randn(BATCH, DIM)  # what the checker's visual projection returns
    repeats = 200 if quick else 2000
    times = []
    for r in range(repeats + 20):
        t = time.perf_counter()
        cats = index.scores(embeds.cpu().float().numpy())
        scores = [SafetyScores([], [], c) for c in cats]
        _ = [bool(s.flagged_categories) for s in scores]
        if r >= 20:  # the first calls pay allocation
            times.append((time.perf_counter() - t) / BATCH)
    ms = statistics.median(times) * 1000
    p95 = sorted(times)[int(len(times) * 0.95)] * 1000
    return [
        {
            "name": f"safety categories, {CATEGORIES} x {PHRASES} phrases, extra per image "
            f"(median; p95 {p95:.3f} ms)",
            "value": ms,
            "unit": "ms",
            "target": f"<= {TARGET_MS:g} ms",
            "ok": ms <= TARGET_MS,
            "how": f"CPU, numpy, batches of {BATCH}, {repeats} repeats",
        }
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    args = parser.parse_args(argv)
    for row in run(args.quick):
        status = "pass" if row["ok"] else "FAIL"
        print(f"{row['name']}: {row['value']:.3f} ms ({row['target']}: {status}; {row['how']})")


if __name__ == "__main__":
    main()
