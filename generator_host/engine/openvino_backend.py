"""The model's parts run by OpenVINO on the CPU: text encoder, UNet, VAE decoder, checker.

Why: on a CPU, OpenVINO runs the same SD-Turbo picture 1.6-2.7x faster than PyTorch with
the engine's best PyTorch settings, and much steadier when other programs (OBS encoding)
share the cores; its float32 safety checker takes 0.45 s where PyTorch's (MKL) takes
1.0 s on the same 2 cores (docs/benchmarks.md). So `[model] backend = "auto"` uses it on
the CPU for the pipelines it covers.

How: each part is converted once per model with `openvino.convert_model` from the torch
module the engine already loaded (so a local folder, a hub model and the tests' tiny model
all take one path), saved in the host's cache folder under a fingerprint of its weights,
compiled at each start, and put back into the same diffusers pipeline behind a small
`torch.nn.Module` that keeps the part's config. The scheduler, seeds, progress callbacks,
cancellation, micro-batching and the choice of decoder stay diffusers' and the engine's.
Not optimum-intel: its PyPI release does not run with OpenVINO 2026 and transformers 5
(it imports `openvino.runtime`, which OpenVINO 2026 removed; docs/benchmarks.md).

Number formats: OpenVINO itself runs the diffusion parts in bfloat16 on CPUs with
bfloat16 instructions and float32 elsewhere. The safety checker is always float32, with
float32 weights: its verdicts stay those of stock diffusers (tested at offset 0).
"""

from __future__ import annotations

import gc
import hashlib
import logging
import os
import shutil
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from generator_host.core import settings as settings_mod

log = logging.getLogger(__name__)

FORMAT = 1  # bump when a conversion changes: older converted parts are then redone
PIPELINES = ("StableDiffusionPipeline",)  # SD 1.x/2.x, SD-Turbo; SDXL stays on PyTorch
LABELS = {
    "text_encoder": "text encoder",
    "unet": "UNet",
    "vae": "decoder",
    "checker": "safety checker",
}

Progress = Callable[[str], None]


class OpenVinoError(Exception):
    """A part cannot be converted or compiled; says what to do."""


def _ov() -> Any:
    """`import openvino`, without its usage reports: OpenVINO's converter sends usage
    statistics to Google Analytics unless the user opted out (its `openvino_telemetry`
    package). A streamer's host sends nothing anywhere it was not asked to, so the
    converter is made to take the stub it ships for when that package is missing. This
    must happen before openvino's first import in the process."""
    if "openvino" not in sys.modules:
        sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]
    import openvino

    return openvino


def available() -> bool:
    try:
        _ov()
    except ImportError:
        return False
    return True


def unsupported(pipe: Any) -> str:
    """Why this pipeline cannot run on OpenVINO here ('' when it can)."""
    name = type(pipe).__name__
    if name not in PIPELINES:
        return f"{name} runs on PyTorch (OpenVINO covers SD 1.x/2.x and SD-Turbo here)"
    unet = getattr(pipe, "unet", None)
    config = getattr(unet, "config", None)
    if config is None:
        return "the pipeline has no UNet"
    if getattr(config, "time_cond_proj_dim", None) is not None:
        return "an LCM-style UNet (time_cond_proj_dim) runs on PyTorch"
    if getattr(config, "addition_embed_type", None) is not None:
        return "a UNet with extra conditioning runs on PyTorch"
    return ""


def wanted(choice: str, device: str, pipe: Any, dtype: str = "auto") -> bool:
    """`auto`: OpenVINO on the CPU for the pipelines it covers, when it is installed and
    `[model] dtype` is `auto` (a set dtype asks for PyTorch's number format); `openvino`
    asks for it (an error where it cannot run); `torch` never."""
    if choice not in settings_mod.BACKENDS:
        raise OpenVinoError(f"[model] backend must be one of {settings_mod.BACKENDS}")
    if choice == "torch":
        return False
    why = unsupported(pipe)
    if choice == "openvino":
        if device != "cpu":
            raise OpenVinoError(f'[model] backend = "openvino" runs on the CPU, not {device}')
        if not available():
            raise OpenVinoError(
                '[model] backend = "openvino" but OpenVINO is not installed: run '
                'python install/install.py again, or set [model] backend = "torch"'
            )
        if why:
            raise OpenVinoError(f'[model] backend = "openvino": {why}; set backend = "torch"')
        if dtype not in ("auto", "float32"):
            raise OpenVinoError(
                f'[model] backend = "openvino" runs dtype "auto" (bfloat16 where the CPU has '
                f'it) or "float32", not {dtype!r}'
            )
        return True
    if device != "cpu" or not available():
        return False
    if why or dtype != "auto":
        log.info("PyTorch backend: %s", why or f"[model] dtype = {dtype!r} is PyTorch's")
        return False
    return True


# ---- shims: an OpenVINO model where diffusers expects a torch module --------------------
class _Compiled:
    """One compiled model, its inputs given as torch tensors, its outputs as torch tensors."""

    def __init__(self, compiled: Any) -> None:
        self.compiled = compiled
        self.request = compiled.create_infer_request()
        self.lock = threading.Lock()  # one request object: one call at a time

    def __call__(self, *inputs: Any) -> list[Any]:
        import torch

        arrays = [x.detach().contiguous().numpy() for x in inputs]
        with self.lock:
            outputs = self.request.infer(arrays, share_inputs=True)
            # Copies: the request reuses its output buffers on the next call.
            return [torch.from_numpy(outputs[k].copy()) for k in range(len(outputs))]


def _shim_base() -> type:
    import torch

    class Shim(torch.nn.Module):
        """What the pipeline reads of a part: its config, dtype and device."""

        def __init__(self, compiled: Any, config: Any) -> None:
            super().__init__()
            self.run = _Compiled(compiled)
            self.config = config

        @property
        def dtype(self) -> Any:
            return torch.float32  # what goes in and comes out; inside, OpenVINO decides

        @property
        def device(self) -> Any:
            return torch.device("cpu")

    return Shim


def _shims() -> dict[str, type]:
    import torch

    Shim = _shim_base()

    class TextEncoder(Shim):
        def forward(
            self,
            input_ids: Any,
            attention_mask: Any = None,
            output_hidden_states: bool | None = None,
            **_: Any,
        ) -> tuple[Any, Any]:
            if output_hidden_states:
                raise OpenVinoError("clip skip (hidden states) is not converted")
            hidden, pooled = self.run(input_ids.to(torch.int64))
            return hidden, pooled

    class UNet(Shim):
        def forward(
            self,
            sample: Any,
            timestep: Any,
            encoder_hidden_states: Any,
            timestep_cond: Any = None,
            cross_attention_kwargs: Any = None,
            added_cond_kwargs: Any = None,
            return_dict: bool = True,
            **_: Any,
        ) -> tuple[Any]:
            if timestep_cond is not None or added_cond_kwargs:
                raise OpenVinoError("this UNet's extra conditioning is not converted")
            t = torch.as_tensor(timestep, dtype=torch.float32).reshape(-1)
            t = t.expand(sample.shape[0]).contiguous()
            return (self.run(sample.float(), t, encoder_hidden_states.float())[0],)

    class Decoder(Shim):
        def decode(self, z: Any, return_dict: bool = True, generator: Any = None) -> tuple[Any]:
            return (self.run(z.float())[0],)

        def forward(self, z: Any, **_: Any) -> tuple[Any]:
            return self.decode(z)

    class Vision(Shim):
        """The checker's CLIP vision tower: `[1]` is the pooled output, as transformers'."""

        def forward(self, pixel_values: Any, **_: Any) -> tuple[None, Any]:
            return None, self.run(pixel_values.float())[0]

    return {"text_encoder": TextEncoder, "unet": UNet, "vae": Decoder, "checker": Vision}


# ---- converting ----------------------------------------------------------------------------
@dataclass(frozen=True)
class PartSpec:
    """What to convert for one part: a traceable torch module, example inputs, and which
    input dimensions stay free (batch everywhere; height and width of latents)."""

    module: Any
    example: tuple[Any, ...]
    dynamic: tuple[tuple[int, ...], ...]  # per input, the free dimensions
    float32: bool = False  # keep float32 weights and float32 inference (the checker)


def _wrappers() -> dict[str, type]:
    import torch

    class Traced(torch.nn.Module):
        """A part's call with plain tensors in and out, the way the shim will call it."""

        def __init__(self, m: Any) -> None:
            super().__init__()
            self.m = m

    class Text(Traced):
        def forward(self, ids: Any) -> tuple[Any, Any]:
            out = self.m(ids, return_dict=False)
            return out[0], out[1]

    class UNet(Traced):
        def forward(self, sample: Any, t: Any, hidden: Any) -> Any:
            return self.m(sample, t, encoder_hidden_states=hidden, return_dict=False)[0]

    class Decode(Traced):
        def forward(self, z: Any) -> Any:
            return self.m.decode(z, return_dict=False)[0]

    class Vision(Traced):
        def forward(self, pixels: Any) -> Any:
            return self.m(pixels, return_dict=False)[1]

    return {"text_encoder": Text, "unet": UNet, "vae": Decode, "checker": Vision}


def specs(pipe: Any, checker: Any, size: tuple[int, int]) -> dict[str, PartSpec]:
    """The parts to convert for this pipeline (and checker), at example size `size`."""
    import torch

    wrap = _wrappers()
    factor = int(getattr(pipe, "vae_scale_factor", 8))
    h, w = max(1, size[1] // factor), max(1, size[0] // factor)
    unet = pipe.unet
    channels = int(unet.config.in_channels)
    tokens = int(getattr(pipe.tokenizer, "model_max_length", 77))
    if tokens > 4096:  # a tokenizer without a real limit
        tokens = 77
    hidden = int(pipe.text_encoder.config.hidden_size)
    latent_channels = int(getattr(pipe.vae.config, "latent_channels", channels))
    out = {
        "text_encoder": PartSpec(
            wrap["text_encoder"](pipe.text_encoder),
            (torch.zeros(1, tokens, dtype=torch.int64),),
            ((0,),),
        ),
        "unet": PartSpec(
            wrap["unet"](unet),
            (
                # Odd sides: the UNet then takes the path that passes each upsampler its
                # output size, which fits every size; traced at sides its blocks divide, it
                # would bake in "twice the input" and fail at 520 x 520 (65 latents).
                torch.randn(1, channels, h | 1, w | 1),
                torch.tensor([999.0]),
                torch.randn(1, tokens, hidden),
            ),
            ((0, 2, 3), (0,), (0,)),
        ),
        "vae": PartSpec(
            wrap["vae"](pipe.vae), (torch.randn(1, latent_channels, h, w),), ((0, 2, 3),)
        ),
    }
    if checker is not None:
        side = int(checker.config.vision_config.image_size)
        out["checker"] = PartSpec(
            wrap["checker"](checker.vision_model),
            (torch.randn(1, 3, side, side),),
            ((0,),),
            float32=True,
        )
    return out


def fingerprint(module: Any) -> str:
    """A short digest of a module's class, config and weights: a fine-tune with the same
    config as its base model gets its own conversion. Samples each tensor (its shape and
    up to 256 values at the start and the end) rather than hashing gigabytes."""
    import torch

    digest = hashlib.blake2b(digest_size=12)
    digest.update(type(module).__name__.encode())
    config = getattr(module, "config", None)
    if config is not None:
        items = dict(config) if hasattr(config, "items") else vars(config)
        text = repr(sorted((k, repr(v)) for k, v in items.items() if not str(k).startswith("_")))
        digest.update(text.encode())
    for name, tensor in module.state_dict().items():
        flat = tensor.detach().reshape(-1)
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        sample = torch.cat([flat[:256], flat[-256:]]).to(torch.float32)
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()


def cache_root() -> Path:
    return settings_mod.cache_dir() / "openvino"


def _version() -> str:
    return str(_ov().get_version()).split("-")[0]


def part_folder(root: Path, part: str, module: Any, float32: bool) -> Path:
    """Where a part's conversion lives: one per OpenVINO version, part, weights, and
    whether its weights were kept in float32."""
    text = f"{FORMAT}|{_version()}|{part}|{fingerprint(module)}|{'f32' if float32 else 'f16'}"
    key = hashlib.blake2b(text.encode(), digest_size=8).hexdigest()
    return root / f"{part}-{key}"


@contextmanager
def _root_logger_kept() -> Iterator[None]:
    """OpenVINO's converter sets the root logger to ERROR with a filter of its own and
    puts it back only when it succeeds: a failed conversion would silence the host's
    warnings, the one saying that the model runs on PyTorch instead among them."""
    root = logging.getLogger()
    level, filters, handlers = root.level, list(root.filters), list(root.handlers)
    try:
        yield
    finally:
        root.setLevel(level)
        root.filters = filters
        root.handlers = handlers


def convert(spec: PartSpec, folder: Path) -> None:
    """Convert one part and save it in `folder`, all or nothing (a crash or a full disk
    mid-save leaves no half model to load at the next start)."""
    import torch

    ov = _ov()

    with torch.no_grad(), warnings.catch_warnings(), _root_logger_kept():
        # Tracing warns about every shape test in diffusers' code ("converting a tensor to
        # a Python boolean"): the free dimensions are set below, the rest is fixed anyway.
        warnings.simplefilter("ignore")
        model = ov.convert_model(spec.module, example_input=spec.example)
    model.reshape(
        {
            model.inputs[index]: ov.PartialShape(
                [ov.Dimension() if d in free else n for d, n in enumerate(example.shape)]
            )
            for index, (example, free) in enumerate(zip(spec.example, spec.dynamic, strict=True))
        }
    )
    tmp = folder.with_name(f"{folder.name}.part-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        # float16 weights on disk halve the file (OpenVINO's default); the checker keeps
        # float32 weights so its verdicts stay stock.
        ov.save_model(model, tmp / "model.xml", compress_to_fp16=not spec.float32)
        del model
        try:
            os.replace(tmp, folder)
        except OSError:
            if not (folder / "model.xml").is_file():
                raise
            # Another host process (or test) converted the same part meanwhile: use its.
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def compile_part(folder: Path, float32: bool, threads: int) -> Any:
    config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
    if threads > 0:
        config["INFERENCE_NUM_THREADS"] = threads
    if float32:
        config["INFERENCE_PRECISION_HINT"] = "f32"
    return _ov().Core().compile_model(str(folder / "model.xml"), "CPU", config)


def _first(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def _ready(
    part: str,
    spec: PartSpec,
    folder: Path,
    threads: int,
    progress: Progress,
    converted: list[str],
) -> Any:
    """The part compiled from the cache, converted first when it is not there (or cannot
    be read: a damaged cache is converted again, once)."""
    if (folder / "model.xml").is_file():
        try:
            return compile_part(folder, spec.float32, threads)
        except Exception as exc:  # noqa: BLE001 - whatever is wrong with the file
            log.warning(
                "the converted %s in %s cannot be read (%s); converting it again",
                LABELS[part],
                folder,
                _first(exc),
            )
            shutil.rmtree(folder, ignore_errors=True)
    progress(
        f"converting the {LABELS[part]} for OpenVINO, once for this model (a full-size "
        "UNet takes minutes) ..."
    )
    started = time.perf_counter()
    with _still_working(f"converting the {LABELS[part]}"):
        convert(spec, folder)
    converted.append(part)
    log.info("converted the %s in %.1f s", LABELS[part], time.perf_counter() - started)
    gc.collect()
    return compile_part(folder, spec.float32, threads)


@contextmanager
def _still_working(doing: str, every: float = 30.0) -> Iterator[None]:
    """A log line every `every` seconds while a long step runs, so a first start that
    converts for minutes never looks hung."""
    done = threading.Event()
    started = time.monotonic()

    def tick() -> None:
        while not done.wait(every):
            log.info("still %s (%d s) ...", doing, time.monotonic() - started)

    ticker = threading.Thread(target=tick, name="openvino-progress", daemon=True)
    ticker.start()
    try:
        yield
    finally:
        done.set()
        ticker.join()


@dataclass
class Installed:
    """What runs on OpenVINO after `install`, for the log and each picture's metadata."""

    parts: list[str]
    precision: str  # the diffusion parts' inference precision: "bfloat16" or "float32"
    converted: list[str]  # parts converted at this start (the others came from the cache)
    seconds: float  # converting and compiling, this start


def install(
    pipe: Any,
    checker: Any,
    size: tuple[int, int],
    threads: int,
    progress: Progress,
    root: Path | None = None,
    float32: bool = False,
) -> Installed:
    """Convert (once) and compile the pipeline's parts and the checker's vision tower, then
    put them in place of the torch modules, which are freed. Nothing is swapped until every
    part compiled: on an error the pipeline is left as it was (the caller falls back).
    `float32`: every part computes in float32 ([model] dtype = "float32")."""
    started = time.perf_counter()
    root = root or cache_root()
    compiled: dict[str, Any] = {}
    converted: list[str] = []
    try:
        for part, spec in specs(pipe, checker, size).items():
            source = checker.vision_model if part == "checker" else getattr(pipe, part)
            if float32:
                spec = replace(spec, float32=True)
            folder = part_folder(root, part, source, spec.float32)
            compiled[part] = _ready(part, spec, folder, threads, progress, converted)
    except OpenVinoError:
        raise
    except MemoryError as exc:
        raise OpenVinoError("out of memory converting the model for OpenVINO") from exc
    except Exception as exc:  # noqa: BLE001 - any converter failure is one reason
        why = _first(exc)
        raise OpenVinoError(f"OpenVINO could not convert or compile the model: {why}") from exc
    shims = _shims()
    for part, model in compiled.items():
        if part == "checker":
            checker.vision_model = shims[part](model, checker.vision_model.config)
        else:
            setattr(pipe, part, shims[part](model, getattr(pipe, part).config))
    gc.collect()  # the torch weights of the swapped parts
    precision = compiled["unet"].get_property("INFERENCE_PRECISION_HINT").get_type_name()
    return Installed(
        parts=list(compiled),
        precision={"bf16": "bfloat16", "f32": "float32", "f16": "float16"}.get(
            precision, precision
        ),
        converted=converted,
        seconds=time.perf_counter() - started,
    )
