"""Safety categories benchmark (not a test): the extra time per image they add to a verdict,
and what checking a prompt costs.

The categories reuse the checker's image embedding, so their whole extra cost is scoring
that embedding against every category direction (engine/categories.py CategoryIndex) and
the OR in the verdict. Measured at full size (CLIP ViT-L/14: 768-long vectors) with 10
categories x 10 phrases, on batches of 4 images like a 2x2 grid, on the CPU.

A prompt is embedded by CLIP ViT-L/14's text tower + projection (engine/categories.py
PromptChecker), on the CPU: built here at full size from its config with random weights
(compute time does not depend on the weights' values; no download), timed for a typical
prompt (20 tokens) and the longest (77), alone and while another thread keeps the CPU
busy with torch work as a CPU generation would; its memory is its parameters' bytes.

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


TEXT_CONFIG = {  # openai/clip-vit-large-patch14's text tower
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "projection_dim": 768,
    "vocab_size": 49408,
    "max_position_embeddings": 77,
}
PROMPT_TARGET_MS = 500.0  # a refusal in chat within half a second of the request


def _prompt_rows(quick: bool) -> list[dict[str, Any]]:
    """Per-prompt cost and memory of the full-size text tower, as PromptChecker runs it."""
    import threading

    import torch
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    torch.manual_seed(0)
    model = CLIPTextModelWithProjection(CLIPTextConfig(**TEXT_CONFIG)).eval()
    params = sum(p.numel() for p in model.parameters())
    megabytes = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    index = _index()
    repeats = 3 if quick else 10

    def one(tokens: int) -> float:
        ids = torch.randint(0, TEXT_CONFIG["vocab_size"], (1, tokens))
        t = time.perf_counter()
        with torch.inference_mode():
            out = model(input_ids=ids).text_embeds.float().numpy()
        index.scores(out)
        return time.perf_counter() - t

    def median_ms(tokens: int) -> float:
        return statistics.median(one(tokens) for _ in range(repeats)) * 1000

    for tokens in (20, 77, 20, 77):  # the first calls of a shape pay allocation and kernels
        one(tokens)
    runs: dict[int, list[float]] = {20: [], 77: []}
    for _ in range(repeats):  # interleaved, so a burst of load elsewhere hits both alike
        for tokens in runs:
            runs[tokens].append(one(tokens))
    typical, longest = (statistics.median(runs[t]) * 1000 for t in (20, 77))
    stop = threading.Event()

    def busy() -> None:  # a CPU generation's share of the machine: torch matmuls
        a = torch.randn(512, 512)
        while not stop.is_set():
            a = torch.tanh(a @ a)

    other = threading.Thread(target=busy, daemon=True)
    other.start()
    try:
        contended = median_ms(20)
    finally:
        stop.set()
        other.join()
    threads = torch.get_num_threads()
    how = f"CPU, {threads} torch threads, {repeats} repeats, random weights"
    torch.set_num_threads(1)  # torch's threads are one pool for the process: steadier alone
    try:
        one(20)
        single = median_ms(20)
    finally:
        torch.set_num_threads(threads)
    return [
        {
            "name": "prompt check, CLIP ViT-L/14 text tower, 20-token prompt (median)",
            "value": typical,
            "unit": "ms",
            "target": f"<= {PROMPT_TARGET_MS:g} ms",
            "ok": typical <= PROMPT_TARGET_MS,
            "how": how,
        },
        {
            "name": "prompt check, 77-token prompt (the longest CLIP reads)",
            "value": longest,
            "unit": "ms",
            "target": "",
            "ok": True,
            "how": how,
        },
        {
            "name": "prompt check, 20 tokens, while another thread keeps torch busy",
            "value": contended,
            "unit": "ms",
            "target": "",
            "ok": True,
            "how": how + "; its own thread: never queued behind a generation",
        },
        {
            "name": "prompt check, 20 tokens, 1 torch thread",
            "value": single,
            "unit": "ms",
            "target": "",
            "ok": True,
            "how": f"CPU, 1 torch thread, {repeats} repeats; on a loaded machine more threads "
            "wait for each other",
        },
        {
            "name": f"text tower memory ({params / 1e6:.0f} M parameters, float32, CPU)",
            "value": megabytes,
            "unit": "MB",
            "target": "",
            "ok": True,
            "how": "parameter bytes; loaded only when a category applies to prompts",
        },
    ]


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
    image_row = [
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
    return image_row + _prompt_rows(quick)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    args = parser.parse_args(argv)
    for row in run(args.quick):
        status = "pass" if row["ok"] else "FAIL"
        target = f"{row['target']}: {status}; " if row["target"] else ""
        print(f"{row['name']}: {row['value']:.3f} {row['unit']} ({target}{row['how']})")


if __name__ == "__main__":
    main()
