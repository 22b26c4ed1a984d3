"""Downloads from a model hub (engine/hub.py) against a local hub over real sockets.

The fetch tests run in this process against tests/fake_hub.py; the start tests run
`generator-host run` as a streamer does, with HF_ENDPOINT pointed at the local hub and
HF_HOME in a temp folder: first start, cached starts while the hub is down, hangs or drops
packets, a model that does not exist, and Ctrl-C during the download.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from generator_host.engine import hub
from tests.fake_hub import (
    CHECKER,
    CLIP_TEXT,
    NO_FP16,
    SD_TURBO,
    BlackHole,
    FakeHub,
    HostRun,
    build_repos,
)
from tests.twitch_server import TwitchServer

TURBO_FILES = [
    "README.md",
    "model_index.json",
    "scheduler/scheduler_config.json",
    "sd_turbo.safetensors",
    "text_encoder/config.json",
    "text_encoder/model.fp16.safetensors",
    "text_encoder/model.safetensors",
    "tokenizer/merges.txt",
    "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.fp16.safetensors",
    "unet/diffusion_pytorch_model.safetensors",
    "unet/diffusion_pytorch_model.non_ema.bin",
    "vae/config.json",
    "vae/diffusion_pytorch_model.bin",
    "vae/diffusion_pytorch_model.fp16.safetensors",
    "vae/diffusion_pytorch_model.safetensors",
]


# ----- which files (pure) ---------------------------------------------------------------
def test_sd_turbo_on_cuda_takes_the_fp16_weights_and_nothing_it_does_not_load() -> None:
    sel = hub.select_files(TURBO_FILES, fp16=True)
    assert sel.variant == "fp16"
    assert sel.files == (
        "model_index.json",
        "scheduler/scheduler_config.json",
        "text_encoder/config.json",
        "text_encoder/model.fp16.safetensors",
        "tokenizer/merges.txt",
        "tokenizer/special_tokens_map.json",
        "tokenizer/tokenizer_config.json",
        "tokenizer/vocab.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "vae/config.json",
        "vae/diffusion_pytorch_model.fp16.safetensors",
    )


def test_without_fp16_files_or_on_cpu_the_full_precision_safetensors_are_taken() -> None:
    plain = [f for f in TURBO_FILES if ".fp16." not in f]
    for files, fp16 in ((plain, True), (TURBO_FILES, False)):
        sel = hub.select_files(files, fp16=fp16)
        assert sel.variant is None
        weights = [f for f in sel.files if f.endswith((".safetensors", ".bin"))]
        assert weights == [
            "text_encoder/model.safetensors",
            "unet/diffusion_pytorch_model.safetensors",
            "vae/diffusion_pytorch_model.safetensors",
        ]


def test_the_checker_repo_takes_its_configs_and_the_bin_it_has() -> None:
    files = [
        ".gitattributes",
        "README.md",
        "config.json",
        "flax_model.msgpack",
        "preprocessor_config.json",
        "pytorch_model.bin",
        "tf_model.h5",
    ]
    sel = hub.select_files(files)
    assert sel.files == ("config.json", "preprocessor_config.json", "pytorch_model.bin")


# ----- the local hub ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def repos(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_repos(tiny_model_dir, tmp_path_factory.mktemp("hub-repos"))


@pytest.fixture
def fake_hub(repos: dict[str, Path]) -> Iterator[FakeHub]:
    server = FakeHub(repos).start()
    yield server
    server.stop()


@pytest.fixture
def options(tmp_path: Path, fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> hub.HubOptions:
    """hub.configure'd for the local hub, a fresh cache; the test process is otherwise offline."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub.time, "sleep", lambda s: None)  # our retry pauses
    opts = hub.HubOptions(
        timeout=2.0,
        endpoint=fake_hub.url,
        cache=str(tmp_path / "hf"),
        records=str(tmp_path / "records"),
    )
    hub.configure(opts)
    yield opts
    hub.configure(hub.HubOptions())


def _weights(server: FakeHub, repo: str = SD_TURBO) -> list[str]:
    """The weight files of `repo` downloaded so far, in order."""
    return [
        r[1].split("/resolve/")[1].split("/", 1)[1]
        for r in server.gets(".safetensors")
        if r[1].startswith(f"/{repo}/")
    ]


@pytest.mark.model
def test_a_first_fetch_downloads_once_with_progress_then_never_asks_the_hub_again(
    options: hub.HubOptions, fake_hub: FakeHub, capfd: pytest.CaptureFixture[str]
) -> None:
    got = hub.fetch(SD_TURBO, fp16=True)
    assert got.variant == "fp16"
    assert (got.folder / "unet" / "diffusion_pytorch_model.fp16.safetensors").is_file()
    assert not (got.folder / "sd_turbo.safetensors").exists()
    err = capfd.readouterr().err
    line = next(x for x in err.splitlines() if "unet/diffusion_pytorch_model.fp16" in x)
    assert "B/s" in line and "left" in line and "(100%)" in line, line

    fake_hub.stop()
    before = len(fake_hub.requests)
    again = hub.fetch(SD_TURBO, fp16=True)
    assert again == got
    assert len(fake_hub.requests) == before  # not one call: the start never waits on the hub


@pytest.mark.model
def test_a_transient_server_error_on_the_fp16_path_is_retried_never_swapped_for_fp32(
    options: hub.HubOptions, fake_hub: FakeHub
) -> None:
    fake_hub.fail_next("unet/diffusion_pytorch_model.fp16.safetensors", 500, times=1)
    got = hub.fetch(SD_TURBO, fp16=True)
    assert got.variant == "fp16"
    weights = _weights(fake_hub)
    assert weights.count("unet/diffusion_pytorch_model.fp16.safetensors") == 2
    assert not [w for w in weights if ".fp16." not in w]  # no full-precision file fetched


@pytest.mark.model
def test_a_hub_that_keeps_failing_is_named_and_nothing_else_is_downloaded(
    options: hub.HubOptions, fake_hub: FakeHub
) -> None:
    fake_hub.fail_next("unet/diffusion_pytorch_model.fp16.safetensors", 500, times=50)
    with pytest.raises(hub.HubError) as caught:
        hub.fetch(SD_TURBO, fp16=True)
    text = str(caught.value)
    assert "server error (HTTP 500)" in text and "run again to continue" in text, text
    assert "model_index.json" not in text  # not "does not appear to have a file named ..."
    assert not [w for w in _weights(fake_hub) if ".fp16." not in w]


@pytest.mark.model
def test_a_repo_without_fp16_files_loads_full_precision_on_the_fp16_path(
    options: hub.HubOptions, fake_hub: FakeHub
) -> None:
    got = hub.fetch(NO_FP16, fp16=True)
    assert got.variant is None
    assert "unet/diffusion_pytorch_model.safetensors" in _weights(fake_hub, NO_FP16)


@pytest.mark.model
def test_a_file_cut_mid_way_resumes_from_where_it_stopped(
    options: hub.HubOptions, fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    # huggingface_hub writes in 10 MB chunks; the tiny files need small ones to show it.
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 4096)
    name = "unet/diffusion_pytorch_model.safetensors"
    fake_hub.cut_next(name, after=10_000)
    got = hub.fetch(SD_TURBO)
    ranges = [r[2] for r in fake_hub.gets(name)]
    assert ranges == ["", "bytes=8192-"]  # the second request continues, not restarts
    assert (got.folder / name).read_bytes() == (fake_hub.repos[SD_TURBO].folder / name).read_bytes()


@pytest.mark.model
def test_an_interrupted_download_continues_on_the_next_start_with_the_missing_files_only(
    options: hub.HubOptions, fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hub, "ATTEMPTS", 1)
    fake_hub.fail_next("vae/diffusion_pytorch_model.safetensors", 503, times=1)
    with pytest.raises(hub.HubError, match="run again to continue"):
        hub.fetch(SD_TURBO)
    assert hub.cached(SD_TURBO) is None  # not "found in the cache"
    done = _weights(fake_hub)
    assert "unet/diffusion_pytorch_model.safetensors" in done

    fake_hub.requests.clear()
    got = hub.fetch(SD_TURBO)
    assert _weights(fake_hub) == ["vae/diffusion_pytorch_model.safetensors"]
    assert hub.cached(SD_TURBO) == got


@pytest.mark.model
def test_a_model_that_does_not_exist_says_so_before_announcing_any_download(
    options: hub.HubOptions, fake_hub: FakeHub, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    with pytest.raises(hub.HubError) as caught:
        hub.fetch("nobody/no-such-model")
    assert "'nobody/no-such-model' does not exist on the hub" in str(caught.value)
    assert "downloading" not in caplog.text


def test_a_hub_that_accepts_and_never_answers_fails_within_the_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    hanging = FakeHub({}).start()
    hanging.mode = "hang"
    hole = BlackHole()
    try:
        for url, cause in ((hanging.url, "stopped answering"), (hole.url, "cannot be reached")):
            hub.configure(
                hub.HubOptions(
                    timeout=1.0, endpoint=url, cache=str(tmp_path), records=str(tmp_path)
                )
            )
            started = time.monotonic()
            with pytest.raises(hub.HubError) as caught:
                hub.fetch(SD_TURBO)
            assert time.monotonic() - started < 5
            assert cause in str(caught.value) and "run again" in str(caught.value)
    finally:
        hub.configure(hub.HubOptions())
        hanging.stop()
        hole.close()


# ----- generator-host run, as a streamer starts it ------------------------------------------
@pytest.fixture(scope="module")
def twitch() -> Iterator[TwitchServer]:
    server = TwitchServer("streamer").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def first_start(
    repos: dict[str, Path], twitch: TwitchServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Path, HostRun, FakeHub, list[str]]]:
    """One first start from an empty cache (shared: the cached starts reuse its cache)."""
    server = FakeHub(repos).start()
    home = tmp_path_factory.mktemp("streamer")
    host = HostRun(home, server.url, twitch)
    try:
        host.wait_ready()
        twitch.privmsg("streamer", "!generate a red fox", badges="broadcaster/1")
        gallery = home / "data" / "gallery"
        host.wait_for(lambda: any(gallery.rglob("*.png")), 60)
        pictures = sorted(str(p) for p in gallery.rglob("*.png"))
    finally:
        host.stop()
        server.stop()
    yield home, host, server, pictures


@pytest.mark.model
def test_first_start_shows_download_progress_then_is_ready_and_paints(
    first_start: tuple[Path, HostRun, FakeHub, list[str]],
) -> None:
    home, host, server, pictures = first_start
    text = host.text
    assert host.ready_after is not None, text
    assert pictures, text
    for what in (
        f"downloading model {SD_TURBO}",
        f"downloading safety checker {CHECKER}",
        f"downloading CLIP text model {CLIP_TEXT}",
    ):
        assert what in text, text
    progress = [x for x in host.err if "B/s" in x and " left" in x]
    assert any("unet/diffusion_pytorch_model.safetensors" in x for x in progress), text
    assert any(f"{CHECKER} [" in x and "pytorch_model.bin" in x for x in progress), text
    # Quiet otherwise: no request logs, no warnings from the libraries, no tracebacks.
    for noise in ("HTTP Request", "httpx", "Warning", "deprecat", "Traceback"):
        assert noise not in text, f"{noise!r} in:\n{text}"
    # No call the host did not announce: the two repos' file lists and the files it
    # named (not the checker's safetensors conversion, nor telemetry, nor skipped files).
    paths = [r[1] for r in server.requests]
    unannounced = [
        p
        for p in paths
        if p not in (f"/api/models/{r}" for r in (SD_TURBO, CHECKER, CLIP_TEXT))
        and "/resolve/" not in p
    ]
    assert unannounced == [], unannounced
    assert not [p for p in paths if p.endswith(("sd_turbo.safetensors", ".msgpack"))], paths


@pytest.mark.model
@pytest.mark.parametrize("network", ["down", "hanging", "dropping packets"])
def test_a_cached_start_is_ready_whatever_the_network_does(
    first_start: tuple[Path, HostRun, FakeHub, list[str]],
    twitch: TwitchServer,
    network: str,
) -> None:
    home = first_start[0]
    hanging = FakeHub({}).start() if network == "hanging" else None
    hole = BlackHole() if network == "dropping packets" else None
    endpoint = "http://127.0.0.1:9" if network == "down" else (hanging or hole).url  # type: ignore[union-attr]
    if hanging:
        hanging.mode = "hang"
    host = HostRun(home, endpoint, twitch)
    try:
        # How fast is measured in bench (docs/benchmarks.md); here: ready, and no hub call
        # to wait on (without the cache record, a hanging hub here hangs the start).
        host.wait_ready(180)
        assert "complete in the cache" in host.text and "no hub calls" in host.text
        if hanging:
            assert hanging.requests == []  # not even asked
    finally:
        host.stop()
        if hanging:
            hanging.stop()
        if hole:
            hole.close()


@pytest.mark.model
def test_with_update_checks_a_hanging_hub_costs_one_timeout_then_the_cache_is_used(
    first_start: tuple[Path, HostRun, FakeHub, list[str]], twitch: TwitchServer
) -> None:
    hanging = FakeHub({}).start()
    hanging.mode = "hang"
    host = HostRun(first_start[0], hanging.url, twitch, check_updates=True, hub_timeout=3.0)
    try:
        host.wait_ready(180)
        assert "stopped answering (3 s without data)" in host.text, host.text
        assert "starting from the cache" in host.text
        assert len(hanging.requests) == 1  # it asked once: the checker did not wait again
    finally:
        host.stop()
        hanging.stop()


@pytest.mark.model
def test_a_model_that_does_not_exist_ends_with_one_clear_line(
    repos: dict[str, Path], twitch: TwitchServer, tmp_path: Path
) -> None:
    server = FakeHub(repos).start()
    host = HostRun(tmp_path, server.url, twitch, model="nobody/no-such-model")
    try:
        assert host.wait_for(lambda: host.proc.poll() is not None, 90)
    finally:
        code = host.stop()
        server.stop()
    assert code == 4, host.text
    assert "does not exist on the hub" in "\n".join(host.err)
    assert "GB" not in host.text and "downloading" not in host.text
    assert "Traceback" not in host.text


@pytest.mark.model
def test_ctrl_c_during_the_download_exits_with_one_line(
    repos: dict[str, Path], twitch: TwitchServer, tmp_path: Path
) -> None:
    server = FakeHub(repos).start()
    server.stall("unet/diffusion_pytorch_model.safetensors")
    host = HostRun(tmp_path, server.url, twitch)
    try:
        assert host.wait_for(lambda: server.gets("unet/diffusion_pytorch_model.safetensors"), 90)
        time.sleep(0.5)
        host.proc.send_signal(signal.SIGINT)
        host.proc.wait(20)
    finally:
        code = host.stop()
        server.stop()
    assert code == 130, host.text
    assert "Traceback" not in host.text
    assert [x for x in host.err if "Interrupted" in x] == [
        "Interrupted while loading the model; run again to continue "
        "(files already downloaded are kept)."
    ]


@pytest.mark.model
def test_the_engine_on_the_fp16_path_loads_the_fp16_files_after_a_transient_error(
    fake_hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Engine's own dtype/variant choice (fp16 is what CUDA gets; forced here on CPU)."""
    from huggingface_hub import constants

    from generator_host.core.settings import ModelSettings, SafetySettings
    from generator_host.engine.pipeline import Engine

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", fake_hub.url)
    template = fake_hub.url + "/{repo_id}/resolve/{revision}/{filename}"
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(hub.time, "sleep", lambda s: None)
    fake_hub.fail_next("unet/diffusion_pytorch_model.fp16.safetensors", 500, times=1)
    engine = Engine(
        ModelSettings(model=SD_TURBO, device="cpu", dtype="float16", warmup=False),
        SafetySettings(checker=CHECKER),
    )
    try:
        engine.load()
    finally:
        hub.configure(hub.HubOptions())
    import torch

    assert engine.pipe.unet.dtype == torch.float16
    assert not [w for w in _weights(fake_hub) if ".fp16." not in w]
    assert engine.safety.ready


@pytest.mark.model
def test_a_copy_downloaded_before_the_host_kept_records_is_tried_when_the_hub_is_down(
    options: hub.HubOptions, fake_hub: FakeHub, caplog: pytest.LogCaptureFixture
) -> None:
    from huggingface_hub import snapshot_download

    folder = snapshot_download(SD_TURBO, cache_dir=options.cache, endpoint=fake_hub.url)
    fake_hub.stop()
    got = hub.fetch(SD_TURBO)
    assert got.folder == Path(folder)
    assert "cannot be reached" in caplog.text and "not known to be complete" in caplog.text
