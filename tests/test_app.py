"""The host in-process, as the stream sees it: chat in, pictures out to OBS.

Real parts: the tiny diffusion engine, a Gallery in a temp folder, the link server and
the host's own ticker. Chat is a small stand-in (chat is not under test here); what OBS
would receive is recorded where the host hands it to the link.
"""

from __future__ import annotations

import asyncio
import io
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from generator_host.app import Host
from generator_host.core.message import ChatMessage, Role, Viewer
from generator_host.core.settings import Settings
from generator_host.edges.gallery import Gallery
from generator_host.engine.grid import placeholder
from generator_host.ports import ChatAdapter
from obs_script import chat_diffusion_protocol as protocol
from tests.fixtures_model import make_tiny_engine, tiny_settings

pytestmark = pytest.mark.model


class StandInChat:
    """Chat that only remembers what the bot said; the test speaks through Host.on_chat."""

    def __init__(self) -> None:
        self.said: list[str] = []
        self._closed = asyncio.Event()

    async def run(self, on_event: Callable[[Any], None]) -> None:
        await self._closed.wait()

    async def say(self, text: str, reply_to: str = "") -> None:
        self.said.append(text)

    async def close(self) -> None:
        self._closed.set()


class RecordingHost(Host):
    """The real Host; every frame it sends to OBS is kept with the time it left."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.frames: list[tuple[float, dict[str, Any]]] = []

    async def _broadcast(self, frame: dict[str, Any]) -> None:
        self.frames.append((time.monotonic(), frame))
        await super()._broadcast(frame)

    def shown(self) -> list[tuple[float, str]]:
        """(time, prompt) of each picture put on screen, in order."""
        return [(t, f["prompt"]) for t, f in self.frames if f["type"] == "show"]


class PipelineCalls:
    """Counts the engine's pipeline calls (images per call, start and end times)."""

    def __init__(self, engine: Any, gate: threading.Event | None = None) -> None:
        self.calls: list[tuple[int, float, float]] = []
        self.entered_batch = threading.Event()
        original = engine.call_pipeline

        def call(**kwargs: Any) -> Any:
            started = time.monotonic()
            if gate is not None and len(kwargs["prompt"]) > 1:
                self.entered_batch.set()
                gate.wait(20)
            out = original(**kwargs)
            self.calls.append((len(kwargs["prompt"]), started, time.monotonic()))
            return out

        engine.call_pipeline = call

    @property
    def sizes(self) -> list[int]:
        return [n for n, _, _ in self.calls]


@pytest.fixture
def make_host(tmp_path: Path, tiny_model_dir: Path) -> Any:
    """A factory for RecordingHost on the tiny engine; galleries are closed afterwards."""
    hosts: list[RecordingHost] = []

    def make(max_batch: int, min_display: float) -> RecordingHost:
        hosts.append(_host(tmp_path, tiny_model_dir, max_batch, min_display))
        return hosts[-1]

    yield make
    for host in hosts:
        host.gallery.close()


def _host(tmp_path: Path, model_dir: Path, max_batch: int, min_display: float) -> RecordingHost:
    engine = make_tiny_engine(model_dir, max_batch=max_batch)
    settings = Settings()
    settings.model, settings.safety = tiny_settings(model_dir, max_batch=max_batch)
    settings.show.min_display_seconds = min_display
    settings.moderation.user_cooldown_seconds = 0.0
    settings.link.port = 0
    gallery = Gallery(tmp_path / "gallery")
    chat: ChatAdapter = StandInChat()  # the shape the app wires (ports.ChatAdapter)
    return RecordingHost(settings, tmp_path, chat, engine, gallery, "t" * 32)


def say(host: Host, login: str, text: str, role: Role = Role.EVERYONE) -> None:
    """A viewer's chat line, handed to the host as the chat adapter would."""
    viewer = Viewer(login, login.capitalize(), role=role)
    host.on_chat(ChatMessage(viewer, text, f"{login}-{text}", time.monotonic()))


async def until(check: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def run_scenario(host: RecordingHost, scenario: Callable[[], Any]) -> None:
    async def main() -> None:
        ready = asyncio.Event()
        task = asyncio.ensure_future(host.run(on_ready=lambda h: ready.set()))
        await asyncio.wait_for(ready.wait(), 30)
        try:
            await scenario()
        finally:
            host.stopped.set()
            await asyncio.wait_for(task, 30)

    asyncio.run(main())


def test_waiting_requests_with_the_same_settings_share_one_pipeline_call(
    make_host: Any,
) -> None:
    host = make_host(max_batch=4, min_display=0.0)
    pipeline = PipelineCalls(host.engine)

    async def scenario() -> None:
        for login, text in [
            ("ann", "a fox"),  # starts at once, alone
            ("bob", "a cat"),
            ("cy", "a dog"),
            ("dee", "steps=1 a cow"),  # other settings: its own call
            ("eve", "an owl"),
        ]:
            say(host, login, f"!generate {text}")
        await until(lambda: len(host.shown()) == 5 and not host.show.running)

    run_scenario(host, scenario)
    assert pipeline.sizes == [1, 3, 1]  # five pictures, three pipeline calls
    order = ["a fox", "a cat", "a dog", "an owl", "a cow"]
    assert [e.prompt for e in host.show.history] == order  # what !prev/!next walk
    assert [e.prompt for e in reversed(host.gallery.recent(10))] == order
    # every picture went to OBS, in the show's order, even when a batch's displays come
    # one right after another (each awaits the disk; none may overtake another)
    assert [p for _, p in host.shown()] == order


def test_pictures_stay_up_the_minimum_time_and_generation_stays_one_batch_ahead(
    make_host: Any,
) -> None:
    hold = 0.5
    host = make_host(max_batch=2, min_display=hold)
    pipeline = PipelineCalls(host.engine)
    most_on_deck = 0

    async def scenario() -> None:
        nonlocal most_on_deck
        for login in ("ann", "bob", "cy", "dee", "eve"):
            say(host, login, f"!generate a picture for {login}")

        def done() -> bool:
            nonlocal most_on_deck
            most_on_deck = max(most_on_deck, len(host.show.on_deck))
            return len(host.shown()) == 5

        await until(done)

    run_scenario(host, scenario)
    shown = host.shown()
    assert [p.split()[-1] for _, p in shown] == ["ann", "bob", "cy", "dee", "eve"]
    gaps = [b[0] - a[0] for a, b in zip(shown, shown[1:], strict=False)]
    assert min(gaps) >= hold - 0.1, gaps  # nobody's picture was replaced too soon
    # the first batch shares a call; the engine may run later ones singly when it
    # measured batching as no faster (the tiny model on a CPU often is not)
    assert pipeline.sizes[:2] == [1, 2] and sum(pipeline.sizes) == 5
    assert 0 < most_on_deck <= 2  # pictures did wait, never more than one batch
    third_call_start = pipeline.calls[2][1]
    cy_up = shown[2][0]
    assert third_call_start >= cy_up - 0.2  # not started while bob and cy still waited


def test_cancel_inside_a_running_batch_drops_only_that_picture(
    make_host: Any,
) -> None:
    host = make_host(max_batch=3, min_display=0.0)
    gate = threading.Event()
    pipeline = PipelineCalls(host.engine, gate)

    async def scenario() -> None:
        for login in ("ann", "bob", "cy", "dee"):
            say(host, login, f"!generate a picture for {login}")
        await until(pipeline.entered_batch.is_set)  # bob, cy and dee are in one call
        say(host, "cy", "!cancel")
        gate.set()
        await until(lambda: len(host.shown()) == 3 and not host.show.running)
        await asyncio.sleep(0.2)

    try:
        run_scenario(host, scenario)
    finally:
        gate.set()
    assert pipeline.sizes == [1, 3]
    assert sorted(p.split()[-1] for _, p in host.shown()) == ["ann", "bob", "dee"]
    assert [e.requester.lower() for e in host.show.history] == ["ann", "bob", "dee"]
    assert sorted(e.requester.lower() for e in host.gallery.recent(10)) == ["ann", "bob", "dee"]
    assert any("cancelled" in line for line in host.chat.said)


def test_approve_puts_the_held_picture_on_screen_unfiltered(make_host: Any) -> None:
    """!approve through the real host, gallery and engine: OBS first gets the placeholder,
    then the very pixels the engine made (the gallery's saved tile), in that order."""
    host = make_host(max_batch=1, min_display=0.0)
    boss = Viewer("boss", "Boss", role=Role.BROADCASTER)

    def shows() -> list[dict[str, Any]]:
        return [f for _, f in host.frames if f["type"] == "show"]

    def pixels(png: bytes) -> np.ndarray:
        return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))

    async def scenario() -> None:
        # the strictest offset, as the OBS slider sends it: every picture is flagged
        host.on_link_message(
            protocol.make_change({"safety.threshold_offset": 1.0, "safety.approval_mode": "hold"})
        )
        for attempt in range(3):
            say(host, "ann", f"!generate a fox {attempt}")
            await until(lambda: len(shows()) == 2 * attempt + 1)  # noqa: B023
            held = shows()[-1]
            assert np.array_equal(pixels(held["image"]), np.asarray(placeholder((64, 64))))
            host.on_chat(ChatMessage(boss, "!approve", f"ok-{attempt}", time.monotonic()))
            await until(lambda: len(shows()) == 2 * attempt + 2)  # noqa: B023
            shown = shows()[-1]
            assert shown["entry_id"] == held["entry_id"]
            path = host.gallery.tile_path(shown["entry_id"], 0)
            assert path is not None and path.parent.parent == host.gallery.public_dir
            with Image.open(path) as original:
                assert np.array_equal(pixels(shown["image"]), np.asarray(original.convert("RGB")))

    run_scenario(host, scenario)


def test_the_host_owns_live_settings_and_every_panel_follows(
    make_host: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The streamer's config (hold, a strict offset) survives a script connecting; a
    panel's change is validated once, logged with its origin and sent to every panel."""
    from websockets.asyncio.client import connect

    host = make_host(max_batch=1, min_display=0.0)
    host.settings.safety.approval_mode = "hold"
    host.settings.safety.threshold_offset = 0.03
    caplog.set_level("INFO", logger="generator_host.app")

    async def panel() -> Any:
        ws = await connect(f"ws://127.0.0.1:{host.link.port}", origin=None)
        await ws.send(protocol.encode(protocol.make_hello("t" * 32, "panel"), "script").text)
        return ws

    async def receive(ws: Any, kind: str) -> dict[str, Any]:
        while True:
            msg = protocol.decode(await asyncio.wait_for(ws.recv(), 10), "host").message
            if msg is not None and msg["type"] == kind:
                return msg

    async def scenario() -> None:
        first, second = await panel(), await panel()
        for ws in (first, second):
            live = (await receive(ws, "settings"))["values"]
            assert live["safety.approval_mode"] == "hold"
            assert live["safety.threshold_offset"] == 0.03
        assert host.settings.safety.approval_mode == "hold"  # connecting changed nothing
        assert host.engine.safety.offset == 0.03
        change = {"safety.approval_mode": "skip", "show.slideshow_seconds": 1.0}
        await first.send(protocol.encode(protocol.make_change(change), "script").text)
        for ws in (first, second):
            back = await receive(ws, "settings")
            assert back["values"]["safety.approval_mode"] == "skip"
            assert back["values"]["show.slideshow_seconds"] == 0.0  # refused: 1 s < 3 s
            assert "refused slideshow_seconds" in back["note"]
        await first.send(
            protocol.encode(protocol.make_change({"safety.threshold_offset": -0.2}), "script").text
        )
        for ws in (first, second):
            await receive(ws, "settings")
        assert host.engine.safety.offset == -0.2  # the next image is judged with it
        # a moderator's !slideshow is a change of the same setting: every panel follows
        say(host, "mod_dora", "!slideshow 12", Role.MODERATOR)
        for ws in (first, second):
            back = await receive(ws, "settings")
            assert back["values"]["show.slideshow_seconds"] == 12.0
            assert back["note"] == "slideshow_seconds 0.0 -> 12.0 (from chat) by Mod_dora"
        say(host, "viewer_x", "!slideshow 30")  # not a moderator: refused, nothing sent
        say(host, "mod_dora", "!clear", Role.MODERATOR)  # stops the slideshow, panels follow
        for ws in (first, second):
            back = await receive(ws, "settings")
            assert back["values"]["show.slideshow_seconds"] == 0.0, back
        await first.close()
        await second.close()

    run_scenario(host, scenario)
    assert host.settings.safety.approval_mode == "skip"
    lines = [r.getMessage() for r in caplog.records]
    assert "settings: approval_mode 'hold' -> 'skip' (from OBS panel)" in lines
    assert "settings: threshold_offset 0.03 -> -0.2 (from OBS panel)" in lines
    assert any("refused slideshow_seconds = 1.0 must be 0 (off) or 3 to 3600" in x for x in lines)
