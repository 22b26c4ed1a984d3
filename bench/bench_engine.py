"""Engine benchmark (not a test): what micro-batching buys, and what a real-size model costs.

Prints, from one run:
1. seconds per image on the tiny model, 4 requests one by one vs the same 4 requests
   micro-batched into one pipeline call, measured interleaved so machine noise hits both;
2. seconds per 512x512 image on this machine for a full-size SD-Turbo architecture
   (SD 2.1 UNet, VAE and OpenCLIP-H text encoder, configs below) with random weights,
   1 step, guidance 0: compute time does not depend on the weights' values, so this is
   the real cost without downloading anything; plus the full-size safety checker's cost.

    python -m bench.bench_engine            # full: more repeats, includes the checker
    python -m bench.bench_engine --quick    # a minute or so on 2 CPU cores
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

# stabilityai/sd-turbo (= SD 2.1 base architecture) component configs.
SD_TURBO_UNET = {
    "act_fn": "silu",
    "attention_head_dim": [5, 10, 20, 20],
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 1024,
    "down_block_types": [
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ],
    "downsample_padding": 1,
    "dual_cross_attention": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": [
        "UpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
    ],
    "use_linear_projection": True,
    "upcast_attention": False,
}
SD_TURBO_VAE = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 768,
    "scaling_factor": 0.18215,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}
OPENCLIP_H_TEXT = {  # SD 2.x text encoder: OpenCLIP ViT-H/14's text tower, 23 layers used
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_attention_heads": 16,
    "num_hidden_layers": 23,
    "max_position_embeddings": 77,
    "vocab_size": 49408,
    "hidden_act": "gelu",
    "projection_dim": 512,
    "layer_norm_eps": 1e-05,
}
SD_TURBO_SCHEDULER = {
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "timestep_spacing": "trailing",
}
COMPVIS_CHECKER_VISION = {  # CLIP ViT-L/14, as in CompVis/stable-diffusion-safety-checker
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_attention_heads": 16,
    "num_hidden_layers": 24,
    "patch_size": 14,
    "image_size": 224,
}


def _quiet() -> None:
    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    dlog.disable_progress_bar()
    dlog.set_verbosity_error()
    tlog.set_verbosity_error()


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def bench_micro_batching(quick: bool, folder: Path) -> list[dict[str, Any]]:
    """4 requests one by one vs micro-batched, interleaved, on the tiny model."""
    from generator_host.engine import Engine
    from generator_host.generation import GenerationParams
    from generator_host.settings import ModelSettings, SafetySettings
    from generator_host.tiny_model import build_tiny_model

    build_tiny_model(folder)
    model = ModelSettings(model=str(folder), device="cpu", steps=2, guidance=0.0, max_batch=4)
    engine = Engine(model, SafetySettings(checker=str(folder)))
    engine.load()
    requests = [GenerationParams(f"prompt {i}", seed=i) for i in range(4)]
    single: list[float] = []
    batched: list[float] = []
    repeats = 5 if quick else 25
    for r in range(repeats + 1):
        t0 = time.perf_counter()
        for p in requests:
            engine.generate(p)
        t1 = time.perf_counter()
        engine._per_image.clear()  # measure the batched path even if it was slower before
        engine.generate_many(requests)
        t2 = time.perf_counter()
        if r:  # the first round warms both paths up
            single.append((t1 - t0) / 4)
            batched.append((t2 - t1) / 4)
    s, b = _median(single), _median(batched)
    return [
        {"name": "tiny 64x64, 2 steps: batch 1", "s_per_image": s, "repeats": repeats},
        {
            "name": "tiny 64x64, 2 steps: micro-batch of 4",
            "s_per_image": b,
            "repeats": repeats,
            "speedup_vs_batch_1": s / b if b else float("nan"),
        },
    ]


def build_full_size_turbo() -> Any:
    """SD-Turbo's architecture with random weights: no download, real compute."""
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from generator_host.tiny_model import _write_vocab

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        _write_vocab(Path(tmp))
        tokenizer = CLIPTokenizer.from_pretrained(tmp, model_max_length=77)
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL(**SD_TURBO_VAE),
        text_encoder=CLIPTextModel(CLIPTextConfig(**OPENCLIP_H_TEXT)),
        tokenizer=tokenizer,
        unet=UNet2DConditionModel(**SD_TURBO_UNET),
        scheduler=EulerDiscreteScheduler(**SD_TURBO_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def bench_full_size(quick: bool) -> list[dict[str, Any]]:
    """Seconds per 512x512 SD-Turbo image (1 step) on the CPU, and the checker's cost."""
    import torch

    t0 = time.perf_counter()
    pipe = build_full_size_turbo()
    build_s = time.perf_counter() - t0
    params = sum(p.numel() for p in pipe.unet.parameters())
    repeats = 1 if quick else 3
    warm_up = 0 if quick else 1  # quick: the one run is also the first run
    times: list[float] = []
    with torch.inference_mode():
        for r in range(repeats + warm_up):
            t = time.perf_counter()
            pipe(
                "a lighthouse at dusk",
                num_inference_steps=1,
                guidance_scale=0.0,
                width=512,
                height=512,
                generator=torch.Generator().manual_seed(r),
            )
            if r >= warm_up:
                times.append(time.perf_counter() - t)
    rows = [
        {
            "name": "SD-Turbo full size 512x512, 1 step, CPU fp32",
            "s_per_image": _median(times),
            "repeats": repeats,
            "unet_params_millions": round(params / 1e6),
            "build_s": build_s,
            "warm_up_runs": warm_up,
        }
    ]
    del pipe
    gc.collect()
    if not quick:
        rows.append(_bench_checker())
    return rows


def _bench_checker() -> dict[str, Any]:
    import torch
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from PIL import Image
    from transformers import CLIPConfig, CLIPImageProcessor

    from generator_host.safety import SafetyJudge

    config = CLIPConfig(vision_config=COMPVIS_CHECKER_VISION, projection_dim=768)
    checker = StableDiffusionSafetyChecker(config).eval()
    extractor = CLIPImageProcessor(
        crop_size={"height": 224, "width": 224}, size={"shortest_edge": 224}
    )
    judge = SafetyJudge(checker, extractor)
    images = [Image.new("RGB", (512, 512), (i * 40, 90, 160)) for i in range(4)]
    times = []
    with torch.inference_mode():
        for r in range(4):
            t = time.perf_counter()
            judge.scores(images)
            if r:
                times.append((time.perf_counter() - t) / len(images))
    name = "safety checker full size (ViT-L/14), per image"
    return {"name": name, "s_per_image": _median(times), "repeats": 3}


def run(quick: bool = False) -> list[dict[str, Any]]:
    """All engine benchmarks; returns one dict per row (for a combined bench command)."""
    _quiet()
    torch_threads = _torch_threads()
    with tempfile.TemporaryDirectory() as tmp:
        rows = bench_micro_batching(quick, Path(tmp) / "tiny-sd")
    rows += bench_full_size(quick)
    for row in rows:
        row["torch_threads"] = torch_threads
    return rows


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def print_rows(rows: list[dict[str, Any]]) -> None:
    width = max(len(r["name"]) for r in rows)
    print(f"{'benchmark':<{width}}  {'s/image (median)':>16}  {'repeats':>7}  notes")
    for r in rows:
        notes = ", ".join(
            f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}"
            for k, v in r.items()
            if k not in ("name", "s_per_image", "repeats")
        )
        print(f"{r['name']:<{width}}  {r['s_per_image']:>16.4f}  {r['repeats']:>7}  {notes}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, no checker row")
    args = parser.parse_args(argv)
    print_rows(run(args.quick))


if __name__ == "__main__":
    main()
