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
FASTER = 0.9  # bfloat16 must take at most 90% of float32's time: noise never flips to slower
CACHE_VERSION = 1
_HOOK = "_chat_diffusion_cast_hook"


@dataclass
class Plan:
    """The dtype of each part, and where the choice came from."""

    dtypes: dict[str, str]  # part -> "float32" | "bfloat16" | "float16"
    source: str  # "measured", "cached" or "configured"
    seconds: dict[str, dict[str, float]] = field(default_factory=dict)  # part -> dtype -> s

    def describe(self) -> str:
        """One line for the log and the picture's metadata, e.g. 'UNet bfloat16, ...'."""
        kinds = set(self.dtypes.values())
        if len(kinds) == 1:
            return next(iter(kinds))
        return ", ".join(f"{PARTS.get(p, p)} {d}" for p, d in self.dtypes.items())


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


def apply(pipe: Any, plan: Plan) -> None:
    import torch

    for part, name in plan.dtypes.items():
        if getattr(pipe, part, None) is not None:
            set_dtype(pipe, part, getattr(torch, name))


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


def choose(seconds: dict[str, dict[str, float]]) -> dict[str, str]:
    """bfloat16 for a part whose measured time is at most FASTER of float32's, else float32."""
    chosen: dict[str, str] = {}
    for part, by_dtype in seconds.items():
        fp32, bf16 = by_dtype.get("float32"), by_dtype.get("bfloat16")
        faster = fp32 is not None and bf16 is not None and bf16 <= fp32 * FASTER
        chosen[part] = "bfloat16" if faster else "float32"
    return chosen


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


def measure(pipe: Any, run: Callable[[], None]) -> Plan:
    """Time every part in float32, then in bfloat16, inside real pictures made by `run`;
    keep bfloat16 where it takes at most FASTER of float32's time. The pipeline must be in
    float32 when called. Four pictures: each format's first one pays one-time costs
    (kernel choice, allocation) and is not counted."""
    import torch

    parts = parts_of(pipe)
    timer = PartTimer(pipe, parts)
    seconds: dict[str, dict[str, float]] = {p: {} for p in parts}
    for dtype in (torch.float32, torch.bfloat16):
        for part in parts:
            set_dtype(pipe, part, dtype)
        try:
            run()
            with timer.recording() as spent:
                run()
        except Exception as exc:  # noqa: BLE001 - a model that fails in bf16 stays fp32
            if dtype == torch.float32:
                raise
            log.warning("the model fails in bfloat16 (%s); keeping float32", exc)
            spent = {part: math.inf for part in parts}
        for part in parts:
            seconds[part][_dtype_name(dtype)] = spent[part]
    plan = Plan(choose(seconds), "measured", seconds)
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
            configs[part] = config.to_dict() if hasattr(config, "to_dict") else dict(config)
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
    valid = {"float32", "bfloat16"}
    if not isinstance(dtypes, dict) or set(dtypes) != set(parts):
        return None
    if not all(v in valid for v in dtypes.values()):
        return None
    return Plan(dict(dtypes), "cached", entry.get("seconds") or {})


def remember(machine: str, model: str, plan: Plan, path: Path | None = None) -> None:
    """Store a measured plan (atomically; a cache that cannot be written only costs time)."""
    path = path or cache_file()
    entries = _read(path)
    entries[_key(machine, model)] = {
        "machine": machine,
        "model": model,
        "dtypes": plan.dtypes,
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
