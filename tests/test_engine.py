"""The engine on the real tiny pipeline: loading, defaults and caps, seeds, progress,
cancellation, out-of-memory, failures and micro-batching."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from generator_host.core.generation import GenerationParams, GenerationRequest, Requester
from generator_host.engine.pipeline import Cancelled, Engine, EngineError, OutOfMemory
from generator_host.engine.tiny_model import build_tiny_model, is_complete
from tests.fixtures_model import make_tiny_engine, tiny_settings

pytestmark = pytest.mark.model


def _pixels(img: Any) -> np.ndarray:
    return np.asarray(img.image)


def test_tiny_model_builds_once_and_loads_with_its_checker(tiny_model_dir: Path) -> None:
    from diffusers import AutoPipelineForText2Image

    assert is_complete(tiny_model_dir)
    stamp = (tiny_model_dir / "unet").stat().st_mtime_ns
    assert build_tiny_model(tiny_model_dir) == tiny_model_dir  # reused, not rebuilt
    assert (tiny_model_dir / "unet").stat().st_mtime_ns == stamp
    pipe = AutoPipelineForText2Image.from_pretrained(tiny_model_dir)
    assert type(pipe.safety_checker).__name__ == "StableDiffusionSafetyChecker"
    assert pipe.feature_extractor is not None
    assert not list(tiny_model_dir.parent.glob(".tiny-build-*")), "temp build folders left"


def test_family_defaults_and_streamer_overrides(tiny_model_dir: Path) -> None:
    sd = make_tiny_engine(tiny_model_dir, steps=0, guidance=-1.0)
    assert sd.family == "sd"
    assert sd.defaults() == {"steps": 25, "guidance": 7.0, "width": 64, "height": 64}
    turbo = make_tiny_engine(tiny_model_dir, steps=0, guidance=-1.0, family="turbo")
    assert turbo.defaults() == {"steps": 1, "guidance": 0.0, "width": 64, "height": 64}
    mine = make_tiny_engine(tiny_model_dir, steps=3, guidance=2.5, family="turbo")
    assert mine.defaults()["steps"] == 3 and mine.defaults()["guidance"] == 2.5
    # 0 / negative in a request means "the default".
    p = mine.clamp(GenerationParams("x", steps=0, guidance=-1, width=0, height=0))
    assert (p.steps, p.guidance, p.width, p.height) == (3, 2.5, 64, 64)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    steps=st.integers(-(10**6), 10**6),
    guidance=st.floats(allow_nan=True, allow_infinity=True),
    width=st.integers(-(10**6), 10**6),
    height=st.integers(-(10**6), 10**6),
    count=st.integers(-100, 100),
    seed=st.integers(-(2**70), 2**70),
)
def test_clamp_keeps_every_request_inside_the_caps(
    tiny_engine: Engine,
    steps,
    guidance,
    width,
    height,
    count,
    seed,  # noqa: ANN001
) -> None:
    caps = tiny_engine.model_settings
    p = tiny_engine.clamp(
        GenerationParams(
            "x", steps=steps, guidance=guidance, width=width, height=height, count=count, seed=seed
        )
    )
    assert 1 <= p.steps <= caps.max_steps
    assert 0.0 <= p.guidance <= caps.max_guidance
    assert 64 <= p.width <= caps.max_size and p.width % 8 == 0
    assert 64 <= p.height <= caps.max_size and p.height % 8 == 0
    assert 1 <= p.count <= caps.max_images
    assert 0 <= p.seed < 2**63


def test_a_grid_has_one_seed_per_image_and_same_seed_gives_same_bytes(tiny_engine: Engine) -> None:
    params = GenerationParams("a red fox", seed=41, count=4)
    first = tiny_engine.generate(params)
    assert [i.seed for i in first.images] == [41, 42, 43, 44]
    tiles = [_pixels(i) for i in first.images]
    assert all(not np.array_equal(tiles[0], t) for t in tiles[1:]), "tiles must differ"
    again = tiny_engine.generate(params)
    assert all(
        np.array_equal(_pixels(a), _pixels(b))
        for a, b in zip(first.images, again.images, strict=True)
    )
    other = tiny_engine.generate(GenerationParams("a red fox", seed=99, count=1))
    assert not np.array_equal(_pixels(other.images[0]), tiles[0])
    assert first.sampler == "PLMS" and first.model == "tiny-sd"
    assert first.used_params.steps == 2


def test_progress_counts_the_steps_the_viewer_asked_for(tiny_engine: Engine) -> None:
    """A 25-step request reads "25/25" at the end, never "26/26", though PNDM (the SD 1.x
    scheduler) runs one more UNet call than the steps asked for."""
    seen: list[tuple[int, int]] = []
    tiny_engine.generate(GenerationParams("x", steps=25), on_step=lambda s, n: seen.append((s, n)))
    assert len(tiny_engine.pipe.scheduler.timesteps) == 26
    assert {total for _, total in seen} == {25}
    steps = [step for step, _ in seen]
    assert steps[0] == 1 and steps[-1] == 25
    assert steps == sorted(steps) and set(steps) == set(range(1, 26))


def test_cancelling_mid_generation_stops_it_and_the_engine_stays_usable(
    tiny_engine: Engine,
) -> None:
    cancel = threading.Event()
    seen: list[int] = []

    def step(i: int, total: int) -> None:
        seen.append(i)
        if i == 2:
            cancel.set()  # as the show would from the loop thread

    with pytest.raises(Cancelled):
        tiny_engine.generate(GenerationParams("x", steps=20), on_step=step, cancelled=cancel)
    assert seen == [1, 2]
    assert len(tiny_engine.generate(GenerationParams("x", count=2)).images) == 2


def test_cancelling_from_another_thread_while_running(tiny_engine: Engine) -> None:
    cancel = threading.Event()
    started = threading.Event()
    outcome: list[BaseException | None] = []

    def work() -> None:
        try:
            tiny_engine.generate(
                GenerationParams("x", steps=200, width=128, height=128),
                on_step=lambda i, n: started.set(),
                cancelled=cancel,
            )
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001
            outcome.append(exc)

    tiny_engine.model_settings.max_steps = 200
    worker = threading.Thread(target=work)
    worker.start()
    assert started.wait(10)
    t0 = time.perf_counter()
    cancel.set()
    worker.join(10)
    assert isinstance(outcome[0], Cancelled)
    assert time.perf_counter() - t0 < 2.0


def test_a_request_cancelled_while_queued_never_runs(tiny_engine: Engine) -> None:
    cancel = threading.Event()
    cancel.set()
    seen: list[int] = []
    with pytest.raises(Cancelled):
        tiny_engine.generate(
            GenerationParams("x"), on_step=lambda i, n: seen.append(i), cancelled=cancel
        )
    assert seen == []


class _SmallGpu(Engine):
    """The real engine on a pretend device that runs out of memory above `fits` images."""

    fits = 2
    calls: list[int]

    def call_pipeline(self, **kwargs: Any) -> Any:
        self.calls.append(len(kwargs["prompt"]))
        if len(kwargs["prompt"]) > self.fits:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().call_pipeline(**kwargs)


def _small_gpu(folder: Path, fits: int) -> _SmallGpu:
    model, safety = tiny_settings(folder)
    engine = _SmallGpu(model, safety)
    engine.fits = fits
    engine.calls = []
    engine.load()
    return engine


def test_out_of_memory_retries_once_with_a_smaller_batch(tiny_model_dir: Path) -> None:
    engine = _small_gpu(tiny_model_dir, fits=2)
    result = engine.generate(GenerationParams("x", seed=5, count=4))
    assert engine.calls == [4, 2, 2]
    assert [i.seed for i in result.images] == [5, 6, 7, 8]


def test_out_of_memory_twice_fails_with_a_reason_and_the_engine_recovers(
    tiny_model_dir: Path,
) -> None:
    engine = _small_gpu(tiny_model_dir, fits=1)
    with pytest.raises(OutOfMemory, match="out of memory.*fewer images or a smaller size"):
        engine.generate(GenerationParams("x", count=4))
    assert engine.calls == [4, 2]
    assert len(engine.generate(GenerationParams("x", count=1)).images) == 1


class _Flaky(Engine):
    fail_next = True

    def call_pipeline(self, **kwargs: Any) -> Any:
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return super().call_pipeline(**kwargs)


def test_a_pipeline_exception_becomes_an_engine_error_and_the_engine_stays_up(
    tiny_model_dir: Path,
) -> None:
    model, safety = tiny_settings(tiny_model_dir)
    engine = _Flaky(model, safety)
    engine.load()
    with pytest.raises(EngineError, match="generation failed: CUDA error"):
        engine.generate(GenerationParams("x"))
    assert len(engine.generate(GenerationParams("x")).images) == 1


@pytest.mark.filterwarnings("ignore:The `local_dir_use_symlinks`:UserWarning")
def test_missing_and_corrupt_model_folders_fail_with_clear_reasons(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    def load(model: str) -> None:
        m, s = tiny_settings(tiny_model_dir)
        m.model = model
        Engine(m, s).load()

    with pytest.raises(EngineError, match="model folder not found"):
        load(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(EngineError, match="model_index.json is missing"):
        load(str(tmp_path / "empty"))
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    weights = next((broken / "unet").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(EngineError, match="cannot load folder"):
        load(str(broken))
    with pytest.raises(EngineError, match="nobody/not-downloaded is not downloaded yet"):
        load("nobody/not-downloaded")  # offline and not cached: fails at once


def test_generate_before_load_says_so(tiny_model_dir: Path) -> None:
    engine = Engine(*tiny_settings(tiny_model_dir))
    with pytest.raises(EngineError, match="not loaded"):
        engine.generate(GenerationParams("x"))


class _Counting(Engine):
    calls: list[list[str]]

    def call_pipeline(self, **kwargs: Any) -> Any:
        self.calls.append(list(kwargs["prompt"]))
        return super().call_pipeline(**kwargs)


def _counting(folder: Path, **overrides: Any) -> _Counting:
    engine = _Counting(*tiny_settings(folder, **overrides))
    engine.calls = []
    engine.load()
    return engine


def _request(i: int, params: GenerationParams) -> GenerationRequest:
    return GenerationRequest(
        id=f"r{i}", requester=Requester(f"viewer{i}"), params=params, created=0.0
    )


def test_micro_batching_shares_calls_but_keeps_each_request_apart(tiny_model_dir: Path) -> None:
    engine = _counting(tiny_model_dir, max_batch=2)
    params = [GenerationParams(f"prompt {i}", seed=10 * i, count=2) for i in range(3)]
    params.append(GenerationParams("bigger", seed=7, width=96, height=96))
    results = engine.generate_many(params, [_request(i, p) for i, p in enumerate(params)])
    # Same settings share calls of at most 2 requests; the other size runs alone.
    assert sorted(map(len, engine.calls)) == [1, 2, 4]
    for i, (p, r) in enumerate(zip(params, results, strict=True)):
        assert not isinstance(r, EngineError)
        assert r.request.id == f"r{i}"
        assert [img.seed for img in r.images] == p.seeds()
        assert r.images[0].image.size == (p.width, p.height)
    assert engine.calls[0][:2] == ["prompt 0", "prompt 0"]


def test_a_request_cancelled_inside_a_micro_batch_gets_cancelled(tiny_model_dir: Path) -> None:
    engine = _counting(tiny_model_dir, max_batch=4)
    stop = threading.Event()
    stop.set()
    params = [GenerationParams(f"p{i}", seed=i) for i in range(3)]
    out = engine.generate_many(params, cancelled=[None, stop, None])
    assert isinstance(out[1], Cancelled)
    assert [len(r.images) for r in (out[0], out[2])] == [1, 1]
    assert engine.calls == [["p0", "p2"]]


def test_micro_batching_falls_back_when_measured_slower(tiny_model_dir: Path) -> None:
    engine = _counting(tiny_model_dir, max_batch=4)
    key = (2, 0.0, 64, 64)
    engine._per_image = {(key, 1): 0.010, (key, 4): 0.050}  # batched measured 5x slower
    engine.generate_many([GenerationParams(f"p{i}") for i in range(3)])
    assert [len(c) for c in engine.calls] == [1, 1, 1]


def test_model_index_of_the_tiny_model_names_a_text_to_image_pipeline(tiny_model_dir: Path) -> None:
    index = json.loads((tiny_model_dir / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"


def test_cancelling_one_request_of_a_running_micro_batch_keeps_the_others(
    tiny_model_dir: Path,
) -> None:
    engine = _counting(tiny_model_dir, max_batch=4)
    stop = threading.Event()
    params = [GenerationParams(f"p{i}", seed=i) for i in range(3)]
    out = engine.generate_many(
        params, on_step=lambda i, n: stop.set(), cancelled=[None, stop, None]
    )
    assert len(engine.calls) == 1
    assert isinstance(out[1], Cancelled)
    assert [len(r.images) for r in (out[0], out[2])] == [1, 1]


class _OneBadPrompt(_Counting):
    """A pipeline that breaks on any call containing `bad` (as a bad input would)."""

    bad = "broken fox"
    oom = False

    def call_pipeline(self, **kwargs: Any) -> Any:
        self.calls.append(list(kwargs["prompt"]))
        if self.bad in kwargs["prompt"]:
            if self.oom:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            raise RuntimeError("expected 4 channels, got 3")
        return Engine.call_pipeline(self, **kwargs)


@pytest.mark.parametrize("oom", [False, True], ids=["raises", "out-of-memory"])
def test_one_failing_request_of_a_micro_batch_fails_alone(tiny_model_dir: Path, oom: bool) -> None:
    engine = _OneBadPrompt(*tiny_settings(tiny_model_dir, max_batch=4))
    engine.calls, engine.oom = [], oom
    engine.load()
    engine.calls.clear()
    params = [GenerationParams(p, seed=i) for i, p in enumerate(["fox", "broken fox", "owl"])]
    out = engine.generate_many(params, [_request(i, p) for i, p in enumerate(params)])
    assert [r.request.id for r in (out[0], out[2])] == ["r0", "r2"]  # served
    assert [len(r.images) for r in (out[0], out[2])] == [1, 1]
    assert [r.params.prompt for r in (out[0], out[2])] == ["fox", "owl"]
    assert isinstance(out[1], EngineError) and not isinstance(out[1], Cancelled)
    shared = [["fox", "broken fox", "owl"]]
    if oom:  # the shared call's halving retry first, then each alone (with its own retry)
        assert isinstance(out[1], OutOfMemory) and "out of memory" in str(out[1])
        assert engine.calls == [
            *shared, ["fox"], ["broken fox"], ["fox"], ["broken fox"], ["broken fox"], ["owl"],
        ]  # fmt: skip
    else:
        assert str(out[1]) == "generation failed: expected 4 channels, got 3"
        assert engine.calls == [*shared, ["fox"], ["broken fox"], ["owl"]]
