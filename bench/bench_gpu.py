"""GPU benchmark for a lent CUDA GPU (issue 16): `python -m bench --gpu` (= `--only gpu`).

Full-size architectures with random weights in fp16 (compute does not depend on the
weights' values, so nothing is downloaded): SD-Turbo at 512, SDXL-Turbo at 512 and 1024,
1 step, guidance 0, through the real Engine, safety checker (CLIP ViT-L/14) included:

- seconds per image at batch 1 (`Engine.generate`) and in a micro-batch of 4
  (`Engine.generate_many`), with the model's full VAE and with the tiny decoder;
- `torch.compile` of the UNet on vs off (512 only: a new size compiles again), with the
  compile time reported apart from the steady time per image;
- peak VRAM per model (torch's max_memory_allocated);
- chat to screen with the real host on the GPU (`bench_chat_to_screen.session`: local
  Twitch server, the host CLI, OBS under Xvfb), on SD-Turbo saved to a temporary folder.

It runs in about 5 minutes on one recent GPU (budget: 8). `dry_run()` runs the very same
code on the CPU with tiny configs (a test does, so the script is known to run before a
GPU is ever seen); there `torch.compile` uses the "eager" backend (the flow, not
inductor's C++ build, is what the dry run checks) and chat to screen is left out (its own
part runs it on the CPU).

    python -m bench --gpu                 # GPU rows into docs/benchmarks.md
    python -m bench.bench_gpu --dry-run   # the CPU dry run, printed
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import bench_engine as be

# stabilityai/sdxl-turbo component configs (SDXL base architecture, 512 native).
SDXL_UNET = {
    "act_fn": "silu",
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280],
    "cross_attention_dim": 2048,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "in_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 4,
    "projection_class_embeddings_input_dim": 2816,
    "sample_size": 64,
    "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "use_linear_projection": True,
}
SDXL_VAE = {**be.SD_TURBO_VAE, "sample_size": 1024, "scaling_factor": 0.13025}
CLIP_L_TEXT = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_attention_heads": 12,
    "num_hidden_layers": 11,  # SDXL uses the penultimate layer's output
    "max_position_embeddings": 77,
    "vocab_size": 49408,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
}
OPENCLIP_BIGG_TEXT = {
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_attention_heads": 20,
    "num_hidden_layers": 32,
    "max_position_embeddings": 77,
    "vocab_size": 49408,
    "hidden_act": "gelu",
    "projection_dim": 1280,
}

# The dry run's tiny stand-ins (the sizes of diffusers' own pipeline tests).
TINY_SD_UNET = {
    "block_out_channels": (4, 8),
    "layers_per_block": 1,
    "sample_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
    "cross_attention_dim": 32,
    "norm_num_groups": 2,
}
TINY_SDXL_UNET = {  # SD's tiny UNet plus what SDXL adds (a second text encoder, time ids)
    **TINY_SD_UNET,
    "cross_attention_dim": 64,
    "attention_head_dim": (2, 4),
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 8,
    "transformer_layers_per_block": (1, 1),
    "projection_class_embeddings_input_dim": 80,  # 6 time ids x 8 + text_encoder_2's 32
}
TINY_VAE = {
    "block_out_channels": [4, 8, 8, 8],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "latent_channels": 4,
    "norm_num_groups": 2,
    "layers_per_block": 1,
}
TINY_TEXT = {
    "hidden_size": 32,
    "intermediate_size": 37,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "max_position_embeddings": 77,
    "vocab_size": 49408,
    "projection_dim": 32,
}
TINY_TAESD = {
    "encoder_block_out_channels": (8, 8, 8, 8),
    "decoder_block_out_channels": (8, 8, 8, 8),
    "num_encoder_blocks": (1, 1, 1, 1),
    "num_decoder_blocks": (1, 1, 1, 1),
}
TINY_CHECKER_VISION = {
    "hidden_size": 32,
    "intermediate_size": 37,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "image_size": 224,
    "patch_size": 32,
}


@dataclass(frozen=True)
class Run:
    """Where and how big: the GPU run, or the CPU dry run."""

    device: str
    dtype: str
    tiny: bool  # tiny configs (the dry run)
    rounds: int  # batch-1 pictures per decoder (after a warm-up)
    batch: int  # the micro-batch
    compile_backend: str
    sizes: dict[str, tuple[int, ...]]  # model -> sizes
    compiled: tuple[str, ...]  # models whose UNet is also timed with torch.compile
    cpu_threads: int = 0  # the dry run: 1 (tiny models gain nothing from more)


SIZES_GPU = {"SD-Turbo": (512,), "SDXL-Turbo": (512, 1024)}
SIZES_DRY = {"SD-Turbo": (64,), "SDXL-Turbo": (64, 128)}
GPU = Run("cuda", "float16", False, 5, 4, "inductor", SIZES_GPU, ("SD-Turbo", "SDXL-Turbo"))
DRY = Run("cpu", "float32", True, 1, 4, "eager", SIZES_DRY, ("SD-Turbo",), cpu_threads=1)


# ---- building -----------------------------------------------------------------------------
def _tokenizer() -> Any:
    from transformers import CLIPTokenizer

    from generator_host.engine.tiny_model import _write_vocab

    with tempfile.TemporaryDirectory() as tmp:
        _write_vocab(Path(tmp))
        return CLIPTokenizer.from_pretrained(tmp, model_max_length=77)


def build(model: str, run: Run) -> Any:
    """A full-size (or, in the dry run, tiny) pipeline with random weights, on the device
    in its dtype; built there directly (an SDXL UNet in fp32 on the CPU would take minutes)."""
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, run.dtype))
    try:
        with torch.device(run.device):
            tokenizer = _tokenizer()
            scheduler = EulerDiscreteScheduler(**be.SD_TURBO_SCHEDULER)
            if model == "SD-Turbo":
                pipe = StableDiffusionPipeline(
                    vae=AutoencoderKL(**(TINY_VAE if run.tiny else be.SD_TURBO_VAE)),
                    text_encoder=CLIPTextModel(
                        CLIPTextConfig(**(TINY_TEXT if run.tiny else be.OPENCLIP_H_TEXT))
                    ),
                    tokenizer=tokenizer,
                    unet=UNet2DConditionModel(**(TINY_SD_UNET if run.tiny else be.SD_TURBO_UNET)),
                    scheduler=scheduler,
                    safety_checker=None,
                    feature_extractor=None,
                    requires_safety_checker=False,
                )
            else:
                pipe = StableDiffusionXLPipeline(
                    vae=AutoencoderKL(**(TINY_VAE if run.tiny else SDXL_VAE)),
                    text_encoder=CLIPTextModel(
                        CLIPTextConfig(**(TINY_TEXT if run.tiny else CLIP_L_TEXT))
                    ),
                    text_encoder_2=CLIPTextModelWithProjection(
                        CLIPTextConfig(**(TINY_TEXT if run.tiny else OPENCLIP_BIGG_TEXT))
                    ),
                    tokenizer=tokenizer,
                    tokenizer_2=tokenizer,
                    unet=UNet2DConditionModel(**(TINY_SDXL_UNET if run.tiny else SDXL_UNET)),
                    scheduler=scheduler,
                )
    finally:
        torch.set_default_dtype(default)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def checker_for(run: Run) -> tuple[Any, Any]:
    """The checker (float32 off CUDA; the engine decides its dtype) and its processor."""
    if not run.tiny:
        return be.full_size_checker()
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    config = CLIPConfig(vision_config=TINY_CHECKER_VISION, projection_dim=32)
    extractor = CLIPImageProcessor(
        crop_size={"height": 224, "width": 224}, size={"shortest_edge": 224}
    )
    return StableDiffusionSafetyChecker(config).eval(), extractor


# ---- measuring ----------------------------------------------------------------------------
def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def _timed(fn: Callable[[], Any], device: str) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def _row(name: str, value: float | None, unit: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "value": value, "unit": unit, **extra}


def bench_model(model: str, run: Run, folder: Path) -> list[dict[str, Any]]:
    """One model: per size, batch 1 and micro-batch with each decoder, then compile on/off."""
    import torch

    from bench.bench_engine import Device, full_size_requests, prebuilt_engine, set_vae

    if run.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    pipe = build(model, run)
    full_vae = pipe.vae
    family = "turbo" if model == "SD-Turbo" else "sdxl-turbo"
    device = Device(run.device, run.dtype, run.device, run.batch, (1, 1), False, False)
    checker = checker_for(run)
    taesd = folder / "taesd"
    be.save_tiny_vae(taesd, TINY_TAESD if run.tiny else None)
    rows: list[dict[str, Any]] = []
    engines = {}
    for kind in ("full", "tiny"):
        set_vae(pipe, full_vae)
        engines[kind] = prebuilt_engine(
            pipe,
            device,
            run.batch,
            warm_up=False,
            folder=folder / model,
            family=family,
            checker=checker,
            vae=kind,
            tiny_vae=str(taesd),
            tiny_vae_xl=str(taesd),
            cpu_threads=run.cpu_threads,
            backend="torch",  # a GPU runs PyTorch; the CPU dry run follows the same path
        )
        engines[kind].decoder_module = pipe.vae
    for size in run.sizes[model]:
        label = f"{model} {size}x{size}, 1 step, {run.device} {run.dtype}"
        requests = full_size_requests(run.batch, size)
        per: dict[str, dict[str, float]] = {}
        for kind, engine in engines.items():
            set_vae(pipe, engine.decoder_module)
            engine.generate(requests[0])  # warm-up at this size
            one = lambda e=engine, r=requests: e.generate(r[0])  # noqa: E731
            many = lambda e=engine, r=requests: be._checked(e.generate_many(r))  # noqa: E731
            single = [_timed(one, run.device) for _ in range(run.rounds)]
            be._force_batching(engine)
            batched = _timed(many, run.device)
            per[kind] = {"single": _median(single), "batched": batched / run.batch}
            rows += [
                _row(f"{label}, {kind} VAE: batch 1", per[kind]["single"], "s", rounds=run.rounds),
                _row(
                    f"{label}, {kind} VAE: micro-batch of {run.batch}, per image",
                    per[kind]["batched"],
                    "s",
                ),
            ]
        rows.append(
            _row(
                f"{label}: tiny vs full VAE, images/s at batch 1",
                be._ratio(per["full"]["single"], per["tiny"]["single"]),
                "x",
            )
        )
    if model in run.compiled:
        rows += bench_compile(pipe, engines["tiny"], model, run)
    if run.device == "cuda":
        rows.append(_row(f"{model}: peak VRAM", torch.cuda.max_memory_allocated() / 1024**3, "GB"))
    del engines, pipe
    gc.collect()
    if run.device == "cuda":
        torch.cuda.empty_cache()
    return rows


def bench_compile(pipe: Any, engine: Any, model: str, run: Run) -> list[dict[str, Any]]:
    """torch.compile of the UNet at the first size: the first call's extra time is the
    compile time, reported apart; then steady batch-1 times, compiled vs not."""
    from bench.bench_engine import full_size_requests, set_vae

    size = run.sizes[model][0]
    request = full_size_requests(1, size)[0]
    set_vae(pipe, engine.decoder_module)
    eager = _median(
        [_timed(lambda: engine.generate(request), run.device) for _ in range(run.rounds)]
    )
    pipe.unet.compile(backend=run.compile_backend)
    first = _timed(lambda: engine.generate(request), run.device)
    compiled = _median(
        [_timed(lambda: engine.generate(request), run.device) for _ in range(run.rounds)]
    )
    label = f"{model} {size}x{size}, 1 step, {run.device} {run.dtype}, tiny VAE"
    return [
        _row(f"{label}: torch.compile off, batch 1", eager, "s"),
        _row(f"{label}: torch.compile on, batch 1", compiled, "s", backend=run.compile_backend),
        _row(f"{label}: torch.compile time (first call minus steady)", first - compiled, "s"),
        _row(f"{label}: torch.compile speed-up", be._ratio(eager, compiled), "x"),
    ]


def bench_chat_to_screen_gpu(folder: Path, run: Run) -> list[dict[str, Any]]:
    """Chat to screen with the real host on the GPU: SD-Turbo (fp16) saved to a folder."""
    from bench import bench_chat_to_screen as c2s

    pipe = build("SD-Turbo", run)
    pipe.safety_checker, pipe.feature_extractor = checker_for(run)
    model_dir = folder / "sd-turbo-fp16"
    pipe.save_pretrained(model_dir, safe_serialization=True)
    del pipe
    gc.collect()
    samples, version = c2s.session(
        folder / "c2s", requests=10, warmup=2, model_dir=model_dir, device=run.device, size=512
    )
    rows = c2s.summarize(samples, version)
    return [{**r, "name": f"GPU host, SD-Turbo 512: {r['name']}"} for r in rows]


def bench_gpu(run: Run = GPU, chat_to_screen: bool = True) -> list[dict[str, Any]]:
    be._quiet()
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        for model in run.sizes:
            rows += bench_model(model, run, Path(tmp) / model)
        if chat_to_screen:
            rows += bench_chat_to_screen_gpu(Path(tmp), run)
    rows.append(_row("GPU benchmark: total time", time.perf_counter() - started, "s"))
    return rows


def dry_run() -> list[dict[str, Any]]:
    """The GPU benchmark's code path on the CPU with tiny configs (no chat to screen)."""
    return bench_gpu(DRY, chat_to_screen=False)


def run(quick: bool = False) -> list[dict[str, Any]]:
    """`python -m bench --gpu`: needs a CUDA GPU; says so plainly without one."""
    import torch

    if not torch.cuda.is_available():
        raise SystemExit(
            "python -m bench --gpu needs a CUDA GPU that torch sees (torch.cuda.is_available() "
            "is False); python -m bench.bench_gpu --dry-run runs the same code on the CPU"
        )
    return bench_gpu(GPU)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny configs on the CPU")
    args = parser.parse_args(argv)
    rows = dry_run() if args.dry_run else run()
    for r in rows:
        value = "n/a" if r["value"] is None else f"{r['value']:.4g} {r['unit']}"
        print(f"{r['name']}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
