"""The number format of each model part on the CPU, chosen by timing it: bfloat16 or float32.

Why measure: bfloat16 halves the memory each weight takes and, on CPUs with AVX-512 BF16 or
AMX, about halves the UNet's and the decoder's time. CPUs without those instructions convert
every value and can run bfloat16 slower than float32. Which side a CPU is on, part by part,
is only known by timing it, so the first warm-up on a machine times the text encoder(s),
the UNet and the VAE decoder in both formats inside real pictures, keeps bfloat16 only for
the parts it makes clearly faster (never slower than float32: the same rule as
micro-batching), and remembers the choice per machine and model in the host's cache folder.
The safety checker is never converted: its verdicts stay those of stock diffusers.

Parts in different formats meet at their inputs: diffusers pipelines expect one dtype
throughout, so each part gets a forward pre-hook that casts its floating inputs to its own
dtype (hand-written: diffusers and transformers have no per-part mixed precision for
inference; `enable_layerwise_casting` only stores weights in a smaller type).

The memory layout of the convolution parts (UNet, decoder) is chosen the same way: oneDNN
runs some convolutions faster on channels-last tensors and others slower, by CPU and by
layer shapes (on a 2-core Zen 5 EPYC at 512x512: the tiny decoder 1.8x faster, SD-Turbo's
UNet no faster; see docs/benchmarks.md),
so each layout is timed in the same warm-up pictures and kept only where it is clearly
faster. Converting a part's weights is enough: a convolution with channels-last weights
makes channels-last outputs, which the next layers keep.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import platform
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from generator_host.core import settings as settings_mod

log = logging.getLogger(__name__)

# pipeline attribute -> what the log calls it
PARTS = {
    "text_encoder": "text encoder",
    "text_encoder_2": "text encoder 2",
    "unet": "UNet",
    "vae": "decoder",
}
FASTER = 0.9  # a variant must take at most 90% of the time of the one it replaces: noise
# never flips a part to slower
CACHE_VERSION = 2  # 2: with memory layouts
_HOOK = "_chat_diffusion_cast_hook"
LAYOUT_PARTS = ("unet", "vae")  # the parts built of convolutions: only there layout matters
CHANNELS_LAST = "channels-last"
BASE = "float32"  # the variant every other one must beat


@dataclass
class Plan:
    """The dtype of each part, and where the choice came from."""

    dtypes: dict[str, str]  # part -> "float32" | "bfloat16" | "float16"
    source: str  # "measured", "cached" or "configured"
    seconds: dict[str, dict[str, float]] = field(default_factory=dict)  # part -> variant -> s
    channels_last: list[str] = field(default_factory=list)  # parts in channels-last layout

    def describe(self) -> str:
        """One line for the log and the picture's metadata, e.g. 'UNet bfloat16, ...' or
        'float32, channels-last decoder'."""
        kinds = set(self.dtypes.values())
        if len(kinds) == 1:
            text = next(iter(kinds))
        else:
            text = ", ".join(f"{PARTS.get(p, p)} {d}" for p, d in self.dtypes.items())
        if self.channels_last:
            text += f", {CHANNELS_LAST} " + " and ".join(PARTS[p] for p in self.channels_last)
        return text


def parts_of(pipe: Any) -> list[str]:
    """The convertible parts this pipeline has, in PARTS order."""
    return [p for p in PARTS if getattr(pipe, p, None) is not None]


def _dtype_name(dtype: Any) -> str:
    return str(dtype).removeprefix("torch.")


def uniform(pipe: Any, dtype: Any) -> Plan:
    """Every part in the dtype the pipeline was loaded in (`[model] dtype` set, or not CPU)."""
    return Plan({p: _dtype_name(dtype) for p in parts_of(pipe)}, "configured")


# ---- running parts in different dtypes ---------------------------------------------------
def _modules(pipe: Any, part: str) -> list[Any]:
    """The modules a part's work runs through: the VAE's decode path, not its encoder."""
    module = getattr(pipe, part)
    if part == "vae":
        return [m for m in (getattr(module, "post_quant_conv", None), module.decoder) if m]
    return [module]


def _cast(value: Any, dtype: Any) -> Any:
    """Floating tensors of 2 or more dimensions to `dtype`, inside tuples, lists and dicts.

    0-d and 1-d tensors (timesteps) stay: 999 in bfloat16 is 1000, a different step.
    """
    import torch

    if isinstance(value, torch.Tensor):
        if value.is_floating_point() and value.dim() >= 2 and value.dtype != dtype:
            return value.to(dtype)
        return value
    if isinstance(value, dict):
        return {k: _cast(v, dtype) for k, v in value.items()}
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return type(value)(_cast(v, dtype) for v in value)
    return value


def _cast_inputs(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    dtype = next(module.parameters()).dtype
    return _cast(args, dtype), _cast(kwargs, dtype)


def set_dtype(pipe: Any, part: str, dtype: Any) -> None:
    """Convert one part, and make it accept inputs made by parts in another dtype."""
    getattr(pipe, part).to(dtype=dtype)
    for module in _modules(pipe, part):
        if getattr(module, _HOOK, None) is None:
            handle = module.register_forward_pre_hook(_cast_inputs, with_kwargs=True)
            setattr(module, _HOOK, handle)


def set_layout(pipe: Any, part: str, channels_last: bool) -> None:
    """Channels-last (or the default contiguous) weights for one part; a part without
    convolutions is left alone (the layout only applies to 4-d weights)."""
    import torch

    if part in LAYOUT_PARTS:
        layout = torch.channels_last if channels_last else torch.contiguous_format
        getattr(pipe, part).to(memory_format=layout)


def apply(pipe: Any, plan: Plan) -> None:
    import torch

    for part, name in plan.dtypes.items():
        if getattr(pipe, part, None) is not None:
            set_dtype(pipe, part, getattr(torch, name))
            set_layout(pipe, part, part in plan.channels_last)


# ---- measuring ---------------------------------------------------------------------------
def bf16_capable() -> bool:
    """Whether oneDNN has bfloat16 kernels for this CPU (AVX-512 or newer; Arm with BF16).

    Without them bfloat16 runs several times slower than float32 (measured: 3x on an AVX2
    EPYC), so timing a whole model in it would only cost the first start minutes.
    """
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def variants(bf16: bool) -> list[str]:
    """What the warm-up times: float32 (the base), its channels-last layout, and the same
    in bfloat16 where the CPU has bfloat16 kernels."""
    dtypes = [BASE, "bfloat16"] if bf16 else [BASE]
    return [f"{d}{suffix}" for d in dtypes for suffix in ("", f" {CHANNELS_LAST}")]


def choose(seconds: dict[str, dict[str, float]]) -> dict[str, str]:
    """Each part's variant: float32 unless another takes at most FASTER of the time of
    the one it would replace, tried in the order of `variants` (channels-last only for the
    convolution parts). So bfloat16 channels-last must beat bfloat16 clearly too: a 1%
    gap is noise, not a reason to change the layout."""
    order = variants(bf16=True)
    chosen: dict[str, str] = {}
    for part, by_variant in seconds.items():
        best = BASE
        if BASE not in by_variant:
            chosen[part] = best
            continue
        for variant in sorted(by_variant, key=lambda v: order.index(v) if v in order else 99):
            if CHANNELS_LAST in variant and part not in LAYOUT_PARTS:
                continue
            if by_variant[variant] <= by_variant[best] * FASTER:
                best = variant
        chosen[part] = best
    return chosen


def plan_of(chosen: dict[str, str], source: str, seconds: dict[str, dict[str, float]]) -> Plan:
    """A Plan from each part's chosen variant ("bfloat16 channels-last" -> dtype, layout)."""
    dtypes = {part: variant.split()[0] for part, variant in chosen.items()}
    layout = [part for part, variant in chosen.items() if variant.endswith(CHANNELS_LAST)]
    return Plan(dtypes, source, seconds, layout)


class PartTimer:
    """Seconds spent in each part during one picture, from forward hooks (CPU: no sync)."""

    def __init__(self, pipe: Any, parts: list[str]) -> None:
        self.pipe = pipe
        self.parts = parts
        self.seconds: dict[str, float] = {}

    @contextmanager
    def recording(self) -> Iterator[dict[str, float]]:
        self.seconds = {p: 0.0 for p in self.parts}
        handles = []
        for part in self.parts:
            started: list[float] = []
            for module in _modules(self.pipe, part):

                def before(_m: Any, _a: Any, started: list[float] = started) -> None:
                    started.append(time.perf_counter())

                def after(_m: Any, _a: Any, _o: Any, part: str = part, started=started) -> None:  # noqa: ANN001
                    self.seconds[part] += time.perf_counter() - started.pop()

                handles.append(module.register_forward_pre_hook(before))
                handles.append(module.register_forward_hook(after))
        try:
            yield self.seconds
        finally:
            for handle in handles:
                handle.remove()


def measure(pipe: Any, run: Callable[[], None], bf16: bool = True) -> Plan:
    """Time every part in each variant (float32, channels-last, and bfloat16 of both when
    `bf16`) inside real pictures made by `run`; keep a variant for a part only where it
    is clearly faster (`choose`). The pipeline must be in float32 (contiguous)
    when called. Each variant's first picture pays one-time costs (kernel choice,
    allocation) and is not counted; then two timed rounds, the second in reverse order
    (a machine that speeds up or slows down meets every variant alike); the faster of a
    part's two times counts."""
    import torch

    parts = parts_of(pipe)
    timer = PartTimer(pipe, parts)
    names = variants(bf16)
    seconds: dict[str, dict[str, float]] = {p: {} for p in parts}
    failed: set[str] = set()

    def set_variant(variant: str) -> None:
        dtype = getattr(torch, variant.split()[0])
        for part in parts:
            set_dtype(pipe, part, dtype)
            set_layout(pipe, part, variant.endswith(CHANNELS_LAST))

    warmed: set[str] = set()
    for variant in names + names[::-1]:
        if variant in failed:
            continue
        set_variant(variant)
        try:
            if variant not in warmed:
                run()
                warmed.add(variant)
            with timer.recording() as spent:
                run()
        except Exception as exc:  # noqa: BLE001 - a model that fails in a variant skips it
            if variant == BASE:
                raise
            log.warning("the model fails in %s (%s); not using it", variant, exc)
            failed.add(variant)
            spent = {part: math.inf for part in parts}
        for part in parts:
            old = seconds[part].get(variant, math.inf)
            seconds[part][variant] = min(old, spent[part])
    plan = plan_of(choose(seconds), "measured", seconds)
    apply(pipe, plan)
    return plan


# ---- remembering ---------------------------------------------------------------------------
def cache_file() -> Path:
    return settings_mod.cache_dir() / "precision.json"


def machine_id() -> str:
    """What makes timings differ between machines: CPU model, cores, threads, torch."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cpu}; {os.cpu_count()} cores; {torch.get_num_threads()} threads; "
        f"torch {torch.__version__}"
    )


def model_id(pipe: Any, name: str, size: tuple[int, int]) -> str:
    """The model (its parts' configs: two folders of one model are one), and the size."""
    configs: dict[str, Any] = {}
    for part in parts_of(pipe):
        config = getattr(getattr(pipe, part), "config", None)
        if config is not None:  # diffusers: a dict; transformers: to_dict()
            values = config.to_dict() if hasattr(config, "to_dict") else dict(config)
            # "_" keys are bookkeeping, not architecture: diffusers' _use_default_values
            # is a list made from a set, in another order in every process (the cache
            # then never matched and every start timed the model again).
            configs[part] = {k: v for k, v in values.items() if not str(k).startswith("_")}
    text = json.dumps(configs, sort_keys=True, default=str)
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
    return f"{name}; {size[0]}x{size[1]}; {digest}"


def _key(machine: str, model: str) -> str:
    return hashlib.sha256(f"{machine}\n{model}".encode()).hexdigest()[:24]


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("ignoring the unreadable precision cache %s (%s); measuring again", path, exc)
        return {}
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
        return {}
    entries = data.get("entries")
    return entries if isinstance(entries, dict) else {}


def cached(machine: str, model: str, parts: list[str], path: Path | None = None) -> Plan | None:
    """The plan measured earlier on this machine for this model, or None."""
    entry = _read(path or cache_file()).get(_key(machine, model))
    if not isinstance(entry, dict):
        return None
    dtypes = entry.get("dtypes")
    layout = entry.get("channels_last", [])
    valid = {"float32", "bfloat16"}
    if not isinstance(dtypes, dict) or set(dtypes) != set(parts):
        return None
    if not all(v in valid for v in dtypes.values()):
        return None
    if not isinstance(layout, list) or not all(isinstance(p, str) for p in layout):
        return None
    if not set(layout) <= set(LAYOUT_PARTS) & set(parts):
        return None
    return Plan(dict(dtypes), "cached", entry.get("seconds") or {}, list(layout))


def remember(machine: str, model: str, plan: Plan, path: Path | None = None) -> None:
    """Store a measured plan (atomically; a cache that cannot be written only costs time)."""
    path = path or cache_file()
    entries = _read(path)
    entries[_key(machine, model)] = {
        "machine": machine,
        "model": model,
        "dtypes": plan.dtypes,
        "channels_last": plan.channels_last,
        "seconds": plan.seconds,
        "measured": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"version": CACHE_VERSION, "entries": entries}, indent=1))
        os.replace(tmp, path)
    except OSError as exc:
        log.warning(
            "cannot write the precision cache %s (%s); measuring again next start", path, exc
        )
