"""Issue 16's speed options, on the tiny model: the tiny VAE decoder, the per-part number
format chosen by timing (and remembered), CPU threads, and the peak memory report.

Speed itself is measured in bench/, not here: these tests check what a user notices
(which decoder made the picture, same bytes for the same seed, what the log says).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from generator_host.core.generation import GenerationParams, GenerationRequest, Requester
from tests.fixtures_model import make_tiny_engine

pytestmark = pytest.mark.model


def _png(result: Any, tmp_path: Path) -> dict[str, Any]:
    from generator_host.edges.gallery import Gallery, read_png_metadata

    gallery = Gallery(tmp_path / "gallery")
    result = type(result)(
        request=GenerationRequest(
            id="r1", requester=Requester(login="viewer"), params=result.params, created=0.0
        ),
        images=result.images,
        params=result.params,
        model=result.model,
        sampler=result.sampler,
        seconds=result.seconds,
        extra=result.extra,
    )
    gallery.add(result, "blur")
    gallery.close()
    png = sorted((gallery.folder / "images").rglob("*.png"))[0]
    return read_png_metadata(png)["meta"]


def _bytes(result: Any) -> list[bytes]:
    return [img.image.tobytes() for img in result.images]


def test_tiny_decoder_makes_the_picture_the_checker_judges_and_the_png_names_it(
    tiny_model_dir: Path, tiny_vae_dir: Path, tmp_path: Path
) -> None:
    full = make_tiny_engine(tiny_model_dir, vae="full")
    tiny = make_tiny_engine(tiny_model_dir, vae="tiny", tiny_vae=str(tiny_vae_dir))
    assert type(tiny.pipe.vae).__name__ == "AutoencoderTiny"
    params = GenerationParams("a red fox", seed=7, count=2)
    a, b = full.generate(params), tiny.generate(params)
    assert _bytes(a) != _bytes(b), "the tiny decoder must make the picture"
    assert (a.extra["decoder"], b.extra["decoder"]) == ("full", "tiny")
    # The verdicts belong to the decoded pictures that go on stream (judged as one batch).
    assert tiny.safety.scores([img.image for img in b.images]) == [i.scores for i in b.images]
    meta = _png(b, tmp_path)
    assert meta["decoder"] == "tiny" and meta["decoder_source"] == tiny_vae_dir.name
    assert meta["precision"] == "float32"
    assert _png(a, tmp_path / "full")["decoder"] == "full"


def test_auto_decoder_is_tiny_on_cpu_and_mps_where_taesd_fits_full_elsewhere(
    tiny_model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from generator_host.engine.vae import VaeError, wants_tiny

    assert wants_tiny("auto", "cpu") and wants_tiny("auto", "mps")
    assert not wants_tiny("auto", "cuda")
    assert not wants_tiny("auto", "cpu", fits=False)
    assert wants_tiny("tiny", "cuda") and not wants_tiny("full", "cpu")
    with pytest.raises(VaeError):
        wants_tiny("small", "cpu")
    # The tiny model's latents are 2x, not TAESD's 8x: auto keeps its own decoder, and says so.
    with caplog.at_level(logging.INFO, logger="generator_host"):
        engine = make_tiny_engine(tiny_model_dir)
    assert engine.decoder.kind == "full"
    assert "tiny one does not decode this model's latents" in caplog.text


@pytest.mark.parametrize("source", ["no-such-folder/taesd-xyz", "madebyollin/not-downloaded"])
def test_a_tiny_decoder_that_cannot_load_stops_loading_with_the_fix(
    tiny_model_dir: Path, tmp_path: Path, source: str
) -> None:
    from generator_host.engine.pipeline import EngineError

    with pytest.raises(EngineError) as err:
        make_tiny_engine(tiny_model_dir, vae="tiny", tiny_vae=source)
    assert "tiny VAE decoder" in str(err.value) and 'vae = "full"' in str(err.value)


def test_a_tiny_decoder_of_another_scale_is_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    from diffusers import AutoencoderTiny

    from generator_host.engine.pipeline import EngineError

    folder = tmp_path / "taesd-8x"
    AutoencoderTiny(
        encoder_block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
        num_encoder_blocks=(1, 1, 1, 1),
        num_decoder_blocks=(1, 1, 1, 1),
    ).save_pretrained(folder)
    with pytest.raises(EngineError, match="does not fit this model"):
        make_tiny_engine(tiny_model_dir, vae="tiny", tiny_vae=str(folder))


def test_bf16_is_kept_only_where_clearly_faster() -> None:
    from generator_host.engine.precision import choose

    seconds = {
        "unet": {"float32": 5.6, "bfloat16": 2.8},
        "vae": {"float32": 1.0, "bfloat16": 0.95},  # 5% is noise, not a win
        "text_encoder": {"float32": 0.5, "bfloat16": 0.7},
    }
    assert choose(seconds) == {"unet": "bfloat16", "vae": "float32", "text_encoder": "float32"}


def test_mixed_precision_same_seed_same_bytes_and_the_checker_stays_float32(
    tiny_model_dir: Path, tiny_vae_dir: Path
) -> None:
    import torch

    from generator_host.engine import precision

    engine = make_tiny_engine(tiny_model_dir, vae="tiny", tiny_vae=str(tiny_vae_dir))
    plan = precision.Plan(
        {"text_encoder": "float32", "unet": "bfloat16", "vae": "bfloat16"}, "measured"
    )
    precision.apply(engine.pipe, plan)
    engine.precision = plan
    params = GenerationParams("a lighthouse", seed=3, count=2)
    first, again = engine.generate(params), engine.generate(params)
    assert _bytes(first) == _bytes(again)
    assert first.extra["dtype"] == "text encoder float32, UNet bfloat16, decoder bfloat16"
    assert engine.pipe.unet.dtype == torch.bfloat16
    assert engine.safety.checker.dtype == torch.float32

    whole = make_tiny_engine(tiny_model_dir, dtype="bfloat16")
    assert whole.pipe.unet.dtype == torch.bfloat16
    assert whole.safety.checker.dtype == torch.float32
    out = whole.generate(params)
    assert _bytes(out) == _bytes(whole.generate(params))
    for img in out.images:  # judged by the float32 checker
        assert img.scores is not None


@pytest.fixture
def fresh_precision(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    """engine/precision with a cache of this test's own, on a CPU taken to have no
    bfloat16 kernels (a test may say otherwise): the timing paths run alike anywhere."""
    from generator_host.engine import precision

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(precision, "bf16_capable", lambda: False)
    return precision


def test_precision_is_timed_at_the_first_warm_up_then_remembered(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fresh_precision: Any
) -> None:
    precision = fresh_precision
    # This CPU may lack bfloat16 kernels (then nothing is timed); the timing path is tested.
    monkeypatch.setattr(precision, "bf16_capable", lambda: True)
    calls: list[int] = []
    measure = precision.measure

    def counting(pipe: Any, run: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return measure(pipe, run, **kwargs)

    monkeypatch.setattr(precision, "measure", counting)
    first = make_tiny_engine(tiny_model_dir, warmup=True)
    assert first.precision is not None and first.precision.source == "measured"
    assert set(first.precision.seconds) == {"text_encoder", "unet", "vae"}
    timed = {"float32", "float32 channels-last", "bfloat16", "bfloat16 channels-last"}
    assert all(set(s) == timed for s in first.precision.seconds.values())
    cache = precision.cache_file()
    assert cache.is_file() and str(tmp_path) in str(cache)
    second = make_tiny_engine(tiny_model_dir, warmup=True)
    assert second.precision is not None and second.precision.source == "cached"
    assert second.precision.dtypes == first.precision.dtypes
    assert second.precision.describe() == first.precision.describe()  # layouts too
    assert len(calls) == 1
    cache.write_text("{not json")  # a broken cache costs one more timing, nothing else
    third = make_tiny_engine(tiny_model_dir, warmup=True)
    assert third.precision is not None and third.precision.source == "measured"


def test_without_bf16_kernels_only_float32_layouts_are_timed(
    tiny_model_dir: Path, tmp_path: Path, fresh_precision: Any
) -> None:
    precision = fresh_precision
    engine = make_tiny_engine(tiny_model_dir, warmup=True)
    plan = engine.precision
    assert plan is not None and plan.source == "measured"
    assert set(plan.dtypes.values()) == {"float32"}
    assert all(set(s) == {"float32", "float32 channels-last"} for s in plan.seconds.values())
    assert precision.cache_file().is_file()


def test_channels_last_is_kept_only_for_convolution_parts_where_clearly_faster() -> None:
    from generator_host.engine.precision import choose, plan_of

    seconds = {
        "text_encoder": {"float32": 1.0, "float32 channels-last": 0.5},  # no convolutions
        "unet": {"float32": 5.0, "float32 channels-last": 6.5},  # slower: kept contiguous
        "vae": {"float32": 1.0, "float32 channels-last": 0.6},
    }
    chosen = choose(seconds)
    assert chosen == {
        "text_encoder": "float32",
        "unet": "float32",
        "vae": "float32 channels-last",
    }
    assert plan_of(chosen, "measured", seconds).describe() == "float32, channels-last decoder"
    both = {
        "unet": {"float32": 5.0, "bfloat16": 2.8, "bfloat16 channels-last": 2.2},
        "vae": {"float32": 1.0, "float32 channels-last": 0.95, "bfloat16": 0.5},  # 5%: noise
    }
    plan = plan_of(choose(both), "measured", both)
    assert plan.describe() == "bfloat16, channels-last UNet"
    # measured here (bench, 2026-12-02): channels-last 1% faster than bfloat16 is noise
    here = {
        "unet": {
            "float32": 5.12,
            "float32 channels-last": 5.42,
            "bfloat16": 2.59,
            "bfloat16 channels-last": 2.56,
        },
        "vae": {
            "float32": 1.0,
            "float32 channels-last": 0.61,
            "bfloat16": 0.59,
            "bfloat16 channels-last": 0.32,
        },
    }
    assert choose(here) == {"unet": "bfloat16", "vae": "bfloat16 channels-last"}


def test_a_remembered_channels_last_plan_is_used_and_named_in_the_png(
    tiny_model_dir: Path, tmp_path: Path, fresh_precision: Any
) -> None:
    precision = fresh_precision
    first = make_tiny_engine(tiny_model_dir, warmup=True)
    assert first.precision is not None
    # Whatever this machine measured, a plan that puts both convolution parts in
    # channels-last is what the next start finds in the cache.
    chosen = {
        "text_encoder": "float32",
        "unet": "float32 channels-last",
        "vae": "float32 channels-last",
    }
    plan = precision.plan_of(chosen, "measured", first.precision.seconds)
    precision.remember(precision.machine_id(), _model_key(first), plan)
    second = make_tiny_engine(tiny_model_dir, warmup=True)
    assert second.precision is not None and second.precision.source == "cached"
    params = GenerationParams("a lighthouse", seed=3, count=2)
    out = second.generate(params)
    assert _bytes(out) == _bytes(second.generate(params))  # same seed, same bytes
    assert _png(out, tmp_path)["precision"] == "float32, channels-last UNet and decoder"


def test_the_cache_key_ignores_config_bookkeeping_that_changes_between_processes() -> None:
    from types import SimpleNamespace

    from generator_host.engine import precision

    def pipe(defaults: list[str], where: str) -> Any:
        config = {"in_channels": 4, "_use_default_values": defaults, "_name_or_path": where}
        return SimpleNamespace(unet=SimpleNamespace(config=config))

    # diffusers builds _use_default_values from a set: its order differs per process
    a = precision.model_id(pipe(["dropout", "mid_block_type"], "/a"), "m", (512, 512))
    b = precision.model_id(pipe(["mid_block_type", "dropout"], "/b"), "m", (512, 512))
    assert a == b
    wider = pipe([], "/a")
    wider.unet.config["in_channels"] = 8
    assert precision.model_id(wider, "m", (512, 512)) != a


def _model_key(engine: Any) -> str:
    from generator_host.engine import precision

    d = engine.defaults()
    return precision.model_id(engine.pipe, engine.model_name, (d["width"], d["height"]))


def test_warm_up_log_reports_peak_memory_and_cpu_threads_follow_the_setting(
    tiny_model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import torch

    from generator_host.engine import memory, threads

    with caplog.at_level(logging.INFO, logger="generator_host"):
        make_tiny_engine(tiny_model_dir, warmup=True, dtype="float32", cpu_threads=1)
    line = next(r.getMessage() for r in caplog.records if "warm-up took" in r.getMessage())
    assert "peak memory" in line and "GB RAM" in line and "float32" in line
    peak = memory.peak_rss_bytes()
    assert peak is not None and peak > 100 * 1024**2  # torch alone is more
    assert torch.get_num_threads() == 1
    assert 1 <= threads.physical_cores() <= (threads.usable_cpus())
