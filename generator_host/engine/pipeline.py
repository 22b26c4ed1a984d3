"""The generator engine: a diffusers text-to-image pipeline plus the safety judge.

Called on the worker thread only (the asyncio loop never waits on it). One request is one
batched pipeline call with one seed per image; every image is then judged on its own.
Failures become `EngineError` with a reason fit for chat, and the engine stays usable.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from generator_host.core.fairqueue import batch_key
from generator_host.core.generation import (
    GeneratedImage,
    GenerationParams,
    GenerationRequest,
    GenerationResult,
    Requester,
)
from generator_host.core.settings import FAMILIES, ModelSettings, SafetySettings
from generator_host.engine import hub, memory, openvino_backend, precision, threads
from generator_host.engine import vae as decoders
from generator_host.engine.categories import (
    CategoryError,
    PromptChecker,
    category_cache_dir,
    load_categories,
)
from generator_host.engine.safety import SafetyError, SafetyJudge, load_checker

log = logging.getLogger(__name__)

OnStep = Callable[[int, int], None]

# A1111's sampler names, so gallery metadata reads like the tools people know.
SAMPLER_NAMES = {
    "PNDMScheduler": "PLMS",
    "DDIMScheduler": "DDIM",
    "EulerDiscreteScheduler": "Euler",
    "EulerAncestralDiscreteScheduler": "Euler a",
    "DPMSolverMultistepScheduler": "DPM++ 2M",
    "DPMSolverSinglestepScheduler": "DPM++ SDE",
    "LMSDiscreteScheduler": "LMS",
    "HeunDiscreteScheduler": "Heun",
    "KDPM2DiscreteScheduler": "DPM2",
    "KDPM2AncestralDiscreteScheduler": "DPM2 a",
    "UniPCMultistepScheduler": "UniPC",
    "LCMScheduler": "LCM",
}


@dataclass(frozen=True)
class FamilyDefaults:
    steps: int
    guidance: float
    size: int | None  # None: the model's native size


FAMILY_DEFAULTS = {
    "turbo": FamilyDefaults(steps=1, guidance=0.0, size=512),
    "sdxl-turbo": FamilyDefaults(steps=1, guidance=0.0, size=512),
    "sd": FamilyDefaults(steps=25, guidance=7.0, size=None),
    "sdxl": FamilyDefaults(steps=25, guidance=6.0, size=None),
}


class EngineError(Exception):
    """A request or the model failed; str(error) is a reason the requester can be told."""


class Cancelled(EngineError):
    """The request was cancelled while queued or running."""

    def __init__(self, reason: str = "cancelled") -> None:
        super().__init__(reason)


class OutOfMemory(EngineError):
    """The device ran out of memory even after retrying with a smaller batch."""


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA raises OutOfMemoryError; MPS and some CPU paths raise RuntimeError with a message."""
    import torch

    oom_type = getattr(torch, "OutOfMemoryError", None) or getattr(
        torch.cuda, "OutOfMemoryError", None
    )
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    if isinstance(exc, MemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def pick_device(wanted: str) -> str:
    """`auto`: CUDA, then Apple's MPS, then the CPU."""
    import torch

    if wanted != "auto":
        if wanted == "cuda" and not torch.cuda.is_available():
            raise EngineError("[model] device = 'cuda' but no CUDA GPU is available to torch")
        mps = getattr(torch.backends, "mps", None)
        if wanted == "mps" and not (mps and mps.is_available()):
            raise EngineError("[model] device = 'mps' but MPS is not available on this machine")
        return wanted
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def free_mps_cache(device: str) -> None:
    """Give the memory MPS cached during a run back to macOS (OBS shares that memory on a
    Mac; CUDA's cache is the GPU's own and is kept for speed)."""
    if device != "mps":
        return
    import torch

    mps = getattr(torch, "mps", None)
    if mps is not None and hasattr(mps, "empty_cache"):
        mps.empty_cache()


def pick_dtype(device: str, wanted: str = "auto") -> Any:
    """fp16 on CUDA (half the memory, twice the speed), fp32 elsewhere unless configured.

    MPS stays fp32 by default: fp16 is not known to work for all these pipelines there
    (black or NaN images are reported for SD 1.x VAEs and SDXL with attention slicing in
    fp16, e.g. huggingface/diffusers#11229); `[model] dtype = "float16"` tries it.
    """
    import torch

    names = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
    if wanted in names:
        return names[wanted]
    return torch.float16 if device == "cuda" else torch.float32


def resolve_source(model: str) -> tuple[str, bool]:
    """(source, is_local_folder); a path that does not exist is an error, not a hub id."""
    text = model.strip()
    if not text:
        raise EngineError("no model configured: set [model] model to a hub id or a folder")
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise EngineError(f"model path {text!r} is a file; point it at the model's folder")
        return str(path), True
    if re.fullmatch(r"[A-Za-z0-9][\w.\-]*/[\w.\-]+", text) and not text.startswith("."):
        return text, False
    raise EngineError(f"model folder not found: {text!r}")


def family_of(model: str, pipe: Any, configured: str = "auto") -> str:
    """Model family for defaults: the setting, else the pipeline class and the name."""
    if configured != "auto":
        return configured
    xl = "XL" in type(pipe).__name__
    turbo = "turbo" in model.lower()
    if xl:
        return "sdxl-turbo" if turbo else "sdxl"
    return "turbo" if turbo else "sd"


def sampler_name(pipe: Any) -> str:
    name = type(pipe.scheduler).__name__
    return SAMPLER_NAMES.get(name, name.removesuffix("Scheduler"))


class Engine:
    """Loads the pipeline once, then turns GenerationParams into judged images."""

    def __init__(self, model: ModelSettings, safety: SafetySettings) -> None:
        self.model_settings = model
        self.safety_settings = safety
        self.safety = SafetyJudge(offset=safety.threshold_offset, enabled=safety.enabled)
        self.pipe: Any = None
        self.device = "cpu"
        self.dtype: Any = None
        self.family = "sd"
        self.model_name = ""
        self.native_size = 512
        self.sampler = ""
        self.decoder = decoders.FULL
        self.backend = "torch"  # or "openvino" (engine/openvino_backend.py)
        self.openvino: openvino_backend.Installed | None = None  # what it runs, how it came
        self.precision: precision.Plan | None = None
        self._precision_ids: tuple[str, str] | None = None  # (machine, model): to measure
        self._bf16 = False  # the CPU has bfloat16 kernels: the warm-up times bfloat16 too
        self._per_image: dict[tuple[Any, int], float] = {}  # (settings, batch) -> s/image
        self._calls = 0
        self.category_cache_dir = category_cache_dir()
        # Scores prompts against the categories that apply to prompts; None: no such
        # category (or the checker is off). The app calls it on its own thread.
        self.prompt_checker: PromptChecker | None = None

    # ----- loading -----------------------------------------------------------------
    @property
    def loaded(self) -> bool:
        return self.pipe is not None

    def load(self) -> None:
        """Load pipeline and checker, then warm up; raises EngineError with a clear reason."""
        settings = self.model_settings
        if settings.family not in FAMILIES:
            raise EngineError(f"[model] family must be one of {FAMILIES}, not {settings.family!r}")
        source, local = resolve_source(settings.model)
        hub.configure(
            hub.HubOptions(timeout=settings.hub_timeout, check_updates=settings.check_updates)
        )
        self.device = pick_device(settings.device)
        self.dtype = pick_dtype(self.device, settings.dtype)
        pipe = self._load_pipeline(source, local)
        self.model_name = Path(source).name if local else source
        self.family = family_of(settings.model, pipe, settings.family)
        self.sampler = sampler_name(pipe)
        vae_factor = getattr(pipe, "vae_scale_factor", 8)
        sample = getattr(getattr(pipe, "unet", None), "config", None)
        sample_size = getattr(sample, "sample_size", 64) if sample is not None else 64
        if isinstance(sample_size, (list, tuple)):
            sample_size = sample_size[0]
        self.native_size = int(sample_size) * int(vae_factor)

        checker = getattr(pipe, "safety_checker", None)
        extractor = getattr(pipe, "feature_extractor", None)
        if "safety_checker" in getattr(pipe, "components", {}):
            # The pipeline must never black out images itself: the judge decides.
            pipe.safety_checker = None
        if self.safety_settings.enabled:
            self._attach_checker(checker, extractor, source if local else None)
        else:
            log.warning(
                "SAFETY CHECKER OFF ([safety] enabled = false): every image goes on stream "
                "unchecked, and the safety categories are off too"
            )
            self.safety.checker = None
            self.safety.enabled = False

        try:
            self.decoder = decoders.choose(pipe, settings, self.family, self.device, self.dtype)
        except decoders.VaeError as exc:
            raise EngineError(str(exc)) from exc

        if settings.cpu_offload and self.device == "cuda":
            pipe.enable_model_cpu_offload()
        else:
            if settings.cpu_offload:
                log.warning("[model] cpu_offload needs a CUDA GPU; ignored on %s", self.device)
            pipe.to(self.device)
        if settings.attention_slicing or self.device == "mps":
            # MPS runs fp32 (below) and shares the Mac's memory with OBS: diffusers
            # recommends slicing there for any Mac under 64 GB.
            pipe.enable_attention_slicing()
        pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe
        if self.device == "cpu":
            threads.set_cpu_threads(settings.cpu_threads)
        if not self._use_openvino():
            self._plan_precision()
        assert self.precision is not None
        log.info(
            "model %s loaded (%s, %s on %s, %s %s, %s), defaults %s",
            self.model_name,
            type(pipe).__name__,
            self.family,
            self.device,
            "OpenVINO" if self.backend == "openvino" else "PyTorch",
            self.precision.describe(),
            self.decoder.describe(),
            self.defaults(),
        )
        if settings.warmup:
            self.warm_up()

    def _load_pipeline(self, source: str, local: bool) -> Any:
        import diffusers.utils.logging as diffusers_logging
        import torch
        import transformers.utils.logging as transformers_logging
        from diffusers import AutoPipelineForText2Image

        # "Loading pipeline components" bars say nothing to a streamer; downloads show
        # their own progress (engine/hub.py), which these switches do not turn off.
        diffusers_logging.disable_progress_bar()
        transformers_logging.disable_progress_bar()

        if local and not (Path(source) / "model_index.json").is_file():
            raise EngineError(
                f"{source!r} is not a diffusers model folder (model_index.json is missing)"
            )
        folder, variant = source, None
        if not local:  # download once (or find it complete in the cache), then load locally
            fetched = _fetch(source, fp16=self.dtype == torch.float16, label="model")
            folder, variant = str(fetched.folder), fetched.variant
        try:
            return AutoPipelineForText2Image.from_pretrained(
                folder, dtype=self.dtype, variant=variant
            )
        except Exception as exc:  # noqa: BLE001 - every loader failure becomes a reason
            where = "folder" if local else "model"
            raise EngineError(f"cannot load {where} {source!r}: {_reason(exc)}") from exc

    def _attach_checker(self, checker: Any, extractor: Any, folder: str | None) -> None:
        import torch

        checker_from = folder  # where the checker came from: categories may keep a text tower there
        # float32 off CUDA, whatever [model] dtype says: verdicts as stock diffusers'.
        dtype = self.dtype if self.device == "cuda" else torch.float32
        if checker is None or extractor is None:
            checker_from = self.safety_settings.checker
            source = self.safety_settings.checker
            log.info("the model has no safety checker; loading %s", source)
            if not Path(source).expanduser().exists():  # a hub id: download it once
                try:
                    source = str(_fetch(source, label="safety checker").folder)
                except EngineError as exc:
                    raise EngineError(
                        f"{exc}; [safety] checker may name a downloaded folder instead "
                        "([safety] enabled = false runs without a checker: not recommended)"
                    ) from exc
            try:
                checker, extractor = load_checker(source, self.device, dtype)
            except SafetyError as exc:
                raise EngineError(str(exc)) from exc
        else:
            log.info("using the model's own safety checker%s", f" from {folder}" if folder else "")
        checker.to(self.device, dtype)
        checker.eval()
        try:
            loaded = load_categories(
                self.safety_settings,
                int(checker.visual_projection.out_features),
                [checker_from],
                self.category_cache_dir,
            )
        except CategoryError as exc:
            raise EngineError(str(exc)) from exc
        self.safety.categories = loaded.images
        self.prompt_checker = loaded.prompts
        self.safety.checker = checker
        self.safety.feature_extractor = extractor
        self.safety.enabled = True

    def warm_up(self) -> None:
        """One 1-step image at the default size, so the first chat request is not the slow one."""
        started = time.perf_counter()
        d = self.defaults()
        params = GenerationParams(
            "warm-up",
            steps=1,
            guidance=d["guidance"],
            width=d["width"],
            height=d["height"],
            seed=0,
            count=1,
        )
        try:
            if self._precision_ids is None:
                self.generate(params)
            else:
                names = precision.variants(self._bf16)
                log.info("timing each part in %s (once on this machine) ...", ", ".join(names))
                self.precision = precision.measure(
                    self.pipe, lambda: self.generate(params), bf16=self._bf16
                )
                precision.remember(*self._precision_ids, self.precision)
                self._precision_ids = None
        except EngineError as exc:
            raise EngineError(f"the model loaded but could not generate: {exc}") from exc
        # The first call pays one-time costs (allocation, kernel choice): its time would
        # make batch 1 look slow and bias the micro-batching choice.
        self._per_image.clear()
        assert self.precision is not None
        log.info(
            "warm-up took %.2f s; %s (%s); %s",
            time.perf_counter() - started,
            self.precision.describe(),
            self.precision.source,
            memory.describe(self.device),
        )

    def _use_openvino(self) -> bool:
        """[model] backend: the parts on OpenVINO where it covers this pipeline on the CPU.
        With `auto`, a part that fails to convert leaves the whole model on PyTorch, with
        one warning; with `openvino` it stops the start."""
        import torch

        choice = self.model_settings.backend
        try:
            dtype = self.model_settings.dtype
            if not openvino_backend.wanted(choice, self.device, self.pipe, dtype):
                return False
            d = self.defaults()
            checker = self.safety.checker if self.safety.enabled else None
            done = openvino_backend.install(
                self.pipe,
                checker,
                (d["width"], d["height"]),
                torch.get_num_threads(),
                log.info,
                float32=dtype == "float32",
            )
        except openvino_backend.OpenVinoError as exc:
            if choice == "openvino":
                raise EngineError(str(exc)) from exc
            log.warning('%s; running on PyTorch instead ([model] backend = "torch")', exc)
            return False
        self.backend = "openvino"
        self.openvino = done
        self.precision = precision.Plan(
            {p: done.precision for p in done.parts if p != "checker"}, "OpenVINO"
        )
        log.info(
            "OpenVINO runs the %s (%s inside, the checker float32; %s in %.1f s)",
            ", ".join(openvino_backend.LABELS[p] for p in done.parts),
            done.precision,
            "converted " + ", ".join(done.converted) if done.converted else "compiled",
            done.seconds,
        )
        return True

    def _plan_precision(self) -> None:
        """[model] dtype = auto on the CPU: the number format and memory layout of each
        part measured earlier on this machine for this model, else float32 (contiguous)
        until the warm-up measures them; bfloat16 only where the CPU has its kernels."""
        self.precision = precision.uniform(self.pipe, self.dtype)
        self._precision_ids = None
        if not (self.device == "cpu" and self.model_settings.dtype == "auto"):
            return
        self._bf16 = precision.bf16_capable()
        if not self._bf16:
            log.info("this CPU has no bfloat16 kernels: float32 only")
        d = self.defaults()
        ids = (
            precision.machine_id(),
            precision.model_id(self.pipe, self.model_name, (d["width"], d["height"])),
        )
        plan = precision.cached(*ids, precision.parts_of(self.pipe))
        if plan is not None:
            precision.apply(self.pipe, plan)
            self.precision = plan
        elif self.model_settings.warmup:
            self._precision_ids = ids
        else:
            log.info(
                "float32, contiguous on the CPU: bfloat16 and channels-last are chosen by "
                "timing at warm-up (warmup = false)"
            )

    # ----- parameters ----------------------------------------------------------------
    def defaults(self) -> dict[str, Any]:
        """Steps, guidance, width and height for this model, the streamer's settings first."""
        s = self.model_settings
        fam = FAMILY_DEFAULTS.get(self.family, FAMILY_DEFAULTS["sd"])
        size = fam.size or self.native_size
        if self.family in ("turbo", "sdxl-turbo") and self.native_size < size:
            size = self.native_size
        steps = s.steps if s.steps > 0 else fam.steps
        guidance = s.guidance if s.guidance >= 0 else fam.guidance
        return {
            "steps": min(steps, s.max_steps),
            "guidance": guidance,
            "width": min(s.width or size, s.max_size),
            "height": min(s.height or size, s.max_size),
        }

    def clamp(self, params: GenerationParams) -> GenerationParams:
        """Fill unset values from the defaults and hold every value inside the streamer's caps.

        0 (or a negative guidance) means "the default". Sizes snap to multiples of 8.
        """
        s = self.model_settings
        d = self.defaults()
        steps = params.steps if params.steps > 0 else d["steps"]
        guidance = params.guidance if params.guidance >= 0 else d["guidance"]
        if not math.isfinite(guidance):
            guidance = d["guidance"]
        width = params.width if params.width > 0 else d["width"]
        height = params.height if params.height > 0 else d["height"]

        def size(v: int) -> int:
            return max(64, min(int(s.max_size) // 8 * 8, int(v) // 8 * 8))

        return replace(
            params,
            steps=max(1, min(int(steps), s.max_steps)),
            guidance=max(0.0, min(float(guidance), s.max_guidance)),
            width=size(width),
            height=size(height),
            count=max(1, min(int(params.count), s.max_images)),
            seed=int(params.seed) % (2**63),
        )

    # ----- generation ----------------------------------------------------------------
    def generate(
        self,
        params: GenerationParams,
        request: GenerationRequest | None = None,
        *,
        on_step: OnStep | None = None,
        cancelled: threading.Event | None = None,
    ) -> GenerationResult:
        """Generate params.count images in one call, one seed each, each judged alone."""
        result = self.generate_many([params], [request], on_step=on_step, cancelled=[cancelled])[0]
        if isinstance(result, EngineError):
            raise result
        return result

    def generate_many(
        self,
        params: Sequence[GenerationParams],
        requests: Sequence[GenerationRequest | None] | None = None,
        *,
        on_step: OnStep | None = None,
        cancelled: Sequence[threading.Event | None] | None = None,
    ) -> list[GenerationResult | EngineError]:
        """Several waiting requests, micro-batched into shared pipeline calls when faster.

        Requests with the same steps, guidance and size share a call (at most
        [model] max_batch requests per call). Returns one result or one EngineError per
        request, in order; a failure of one call does not stop the others. When a shared
        call fails (after its out-of-memory retry in halves), each of its requests is run
        again alone, so one bad request fails alone, with its own reason.
        """
        if not self.loaded:
            raise EngineError("the model is not loaded yet")
        n = len(params)
        reqs = list(requests) if requests is not None else [None] * n
        events = list(cancelled) if cancelled is not None else [None] * n
        if len(reqs) != n or len(events) != n:
            raise ValueError("params, requests and cancelled must have the same length")
        clamped = [self.clamp(p) for p in params]
        out: list[GenerationResult | EngineError | None] = [None] * n
        for group in self._plan(clamped):
            batch = [i for i in group if not (events[i] is not None and events[i].is_set())]
            for i in group:
                if i not in batch:
                    out[i] = Cancelled()
            if not batch:
                continue
            try:
                results = self._run_batch(
                    [clamped[i] for i in batch],
                    [reqs[i] for i in batch],
                    on_step,
                    [events[i] for i in batch],
                )
            except Cancelled:  # every request of the call was cancelled
                for i in batch:
                    out[i] = Cancelled()
                continue
            except EngineError as exc:
                if len(batch) == 1:
                    out[batch[0]] = exc
                    continue
                log.warning(
                    "a shared call of %d requests failed (%s); running each of them alone",
                    len(batch),
                    exc,
                )
                for i in batch:
                    out[i] = self._run_alone(clamped[i], reqs[i], on_step, events[i])
                continue
            for i, res in zip(batch, results, strict=True):
                out[i] = res
        return [r if r is not None else EngineError("not generated") for r in out]

    def _run_alone(
        self,
        p: GenerationParams,
        request: GenerationRequest | None,
        on_step: OnStep | None,
        cancelled: threading.Event | None,
    ) -> GenerationResult | EngineError:
        """One request in its own call (after a shared call failed); its error, not raised."""
        if cancelled is not None and cancelled.is_set():
            return Cancelled()
        try:
            return self._run_batch([p], [request], on_step, [cancelled])[0]
        except EngineError as exc:
            return exc

    def _plan(self, params: list[GenerationParams]) -> list[list[int]]:
        """Group request indexes into pipeline calls: same settings, up to max_batch each."""
        limit = max(1, self.model_settings.max_batch)
        groups: dict[tuple[Any, ...], list[int]] = {}
        for i, p in enumerate(params):
            groups.setdefault(batch_key(p), []).append(i)
        plan: list[list[int]] = []
        for key, idxs in groups.items():
            size = limit if self._batching_pays(key, limit) else 1
            plan += [idxs[j : j + size] for j in range(0, len(idxs), size)]
        return sorted(plan, key=lambda g: g[0])

    def _batching_pays(self, key: tuple[Any, ...], limit: int) -> bool:
        """Batch unless measurements show a batched call costs as much per image as single ones.

        Every 20th call re-tries batching so a changed machine state is noticed.
        """
        if limit <= 1:
            return False
        self._calls += 1
        single = self._per_image.get((key, 1))
        batched = [v for (k, b), v in self._per_image.items() if k == key and b > 1]
        if single is None or not batched or self._calls % 20 == 0:
            return True
        return min(batched) < single * 0.95

    def _run_batch(
        self,
        batch: list[GenerationParams],
        requests: list[GenerationRequest | None],
        on_step: OnStep | None,
        events: list[threading.Event | None],
    ) -> list[GenerationResult | EngineError]:
        """One pipeline call for all images of these requests; OOM retries once in halves.

        Returns one result per request, or Cancelled for one cancelled while batched.
        """
        prompts: list[str] = []
        negatives: list[str] = []
        seeds: list[int] = []
        for p in batch:
            prompts += [p.prompt] * p.count
            negatives += [p.negative_prompt] * p.count
            seeds += p.seeds()

        def is_cancelled() -> bool:
            return all(e is not None and e.is_set() for e in events)

        started = time.perf_counter()
        try:
            images = self._images(batch[0], prompts, negatives, seeds, on_step, is_cancelled)
        except Cancelled:
            raise
        except Exception as exc:  # noqa: BLE001
            if not is_out_of_memory(exc):
                log.exception("generation failed")
                raise EngineError(f"generation failed: {_short(exc)}") from exc
            images = self._retry_smaller(batch[0], prompts, negatives, seeds, on_step, is_cancelled)
        finally:
            free_mps_cache(self.device)
        seconds = time.perf_counter() - started
        key = (batch_key(batch[0]), len(batch))
        per_image = seconds / max(1, len(seeds))
        old = self._per_image.get(key)
        self._per_image[key] = per_image if old is None else 0.7 * old + 0.3 * per_image

        try:
            scores, flagged, offset = self.safety.judge(images)
        except Exception as exc:  # noqa: BLE001 - never show an image that was not judged
            log.exception("safety check failed")
            raise EngineError(f"the safety check failed: {_short(exc)}") from exc

        results: list[GenerationResult | EngineError] = []
        at = 0
        for p, req, ev in zip(batch, requests, events, strict=True):
            # The image's own verdict: a flagged prompt is the approval policy's business
            # (core/approval.py tile_flags), not the engine's.
            tiles = [
                GeneratedImage(
                    image=images[at + k],
                    seed=seeds[at + k],
                    scores=scores[at + k],
                    flagged=flagged[at + k],
                )
                for k in range(p.count)
            ]
            at += p.count
            if ev is not None and ev.is_set():
                results.append(Cancelled())  # cancelled while batched: its images are dropped
                continue
            results.append(
                GenerationResult(
                    request=req or _anonymous_request(p),
                    images=tiles,
                    params=p,
                    model=self.model_name,
                    sampler=self.sampler,
                    seconds=seconds,
                    extra={
                        "device": self.device,
                        "backend": self.backend,
                        "dtype": self.precision.describe() if self.precision else "",
                        "decoder": self.decoder.kind,
                        "decoder_source": self.decoder.source,
                        "batch_requests": len(batch),
                        "safety_offset": offset,
                        "safety_enabled": self.safety.enabled,
                        "family": self.family,
                    },
                )
            )
        return results

    def _retry_smaller(self, p, prompts, negatives, seeds, on_step, is_cancelled) -> list[Any]:  # noqa: ANN001
        """After an out-of-memory: free the cache and run the images in halves, once."""
        import torch

        log.warning("out of memory with %d images in one call; retrying in halves", len(seeds))
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        half = max(1, len(seeds) // 2)
        images: list[Any] = []
        try:
            for j in range(0, len(seeds), half):
                sl = slice(j, j + half)
                images += self._images(
                    p, prompts[sl], negatives[sl], seeds[sl], on_step, is_cancelled
                )
        except Cancelled:
            raise
        except Exception as exc:  # noqa: BLE001
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if is_out_of_memory(exc):
                raise OutOfMemory(
                    "out of memory on the GPU: try fewer images or a smaller size"
                ) from exc
            log.exception("generation failed on retry")
            raise EngineError(f"generation failed: {_short(exc)}") from exc
        return images

    def _images(
        self,
        p: GenerationParams,
        prompts: list[str],
        negatives: list[str],
        seeds: list[int],
        on_step: OnStep | None,
        is_cancelled: Callable[[], bool],
    ) -> list[Any]:
        """The pipeline call: per-image generators, progress per real timestep, cancellation."""
        import torch

        if is_cancelled():
            raise Cancelled()
        gen_device = "cpu" if self.device == "mps" else self.device
        generators = [torch.Generator(device=gen_device).manual_seed(s) for s in seeds]

        def callback(pipe_: Any, i: int, t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            if is_cancelled():
                pipe_._interrupt = True
                raise Cancelled()
            if on_step is not None:
                # Counted in the steps the viewer asked for: a scheduler may run more
                # timesteps than that (PNDM 26 for 25, Heun 49 for 25), so the pipeline's
                # timestep i maps proportionally onto steps 1..p.steps.
                runs = max(1, len(pipe_.scheduler.timesteps))
                step = max(1, min(p.steps, round((i + 1) * p.steps / runs)))
                try:
                    on_step(step, p.steps)
                except Exception:  # noqa: BLE001 - a progress listener must not kill a request
                    log.exception("progress callback failed")
            return kwargs

        kwargs: dict[str, Any] = {
            "prompt": prompts,
            "num_inference_steps": p.steps,
            "guidance_scale": p.guidance,
            "width": p.width,
            "height": p.height,
            "generator": generators,
            "callback_on_step_end": callback,
            "output_type": "pil",
        }
        if p.guidance > 1.0 and any(negatives):
            kwargs["negative_prompt"] = negatives
        with torch.inference_mode():
            out = self.call_pipeline(**kwargs)
        images = list(out.images)
        if len(images) != len(seeds):
            raise EngineError(f"the pipeline returned {len(images)} images for {len(seeds)}")
        return images

    def call_pipeline(self, **kwargs: Any) -> Any:
        """The one place the pipeline is called (a seam for fault-injection tests)."""
        return self.pipe(**kwargs)


def _anonymous_request(p: GenerationParams) -> GenerationRequest:
    return GenerationRequest(id="", requester=Requester(login=""), params=p, created=time.time())


def _fetch(repo: str, *, fp16: bool = False, label: str) -> hub.Fetched:
    """hub.fetch, its failures as EngineError (the same text: cause and next step)."""
    try:
        return hub.fetch(repo, fp16=fp16, label=label)
    except hub.HubError as exc:
        raise EngineError(str(exc)) from exc


def _reason(exc: BaseException) -> str:
    """The whole first line of a loader's error: which file is missing is in its tail."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]
