"""The app's wiring without a model: effects carried out in the show's order by one
consumer, the blocklist file read by the host (never by the core), a review-page reject
through the real gallery file layout."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

from generator_host.app import Host
from generator_host.core import events as ev
from generator_host.core.approval import Tile
from generator_host.core.settings import Settings
from generator_host.ports import GalleryLike


class SlowFirstGallery:
    """A GalleryLike whose first picture takes long to render (a slow disk): the second
    Display must still reach OBS after it."""

    legacy_folder = None

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.first = True

    def get(self, entry_id: int) -> Any:
        from generator_host.core.generation import Entry

        return Entry(entry_id, "r", "Dora", f"p{entry_id}", "", 1, 2, 0.0, 64, 64, 1, "m",
                     "held", 0.0, "dora", "hold", (True,))  # fmt: skip

    def screen_png(self, entry_id: int, tiles: Any) -> bytes:
        if self.first:
            self.first = False
            time.sleep(0.3)
        self.calls.append(f"png {entry_id} {','.join(t.value for t in tiles)}")
        return b"png"

    def record(self, entry_id: int, outcome: str, approved: Any = ()) -> Any:
        self.calls.append(f"record {entry_id} {outcome} {list(approved)}")
        return self.get(entry_id)

    def add(self, *a: Any) -> Any:
        raise AssertionError("no generation here")

    def publish_legacy(self, *a: Any) -> None:
        pass


class Silent:
    async def run(self, on_event: Any) -> None:
        await asyncio.Event().wait()

    async def say(self, text: str, reply_to: str = "") -> None:
        pass

    async def close(self) -> None:
        pass


def _host(tmp_path: Path, gallery: GalleryLike) -> Host:
    settings = Settings()
    settings.link.port = 0
    return Host(settings, tmp_path, Silent(), None, gallery, "t" * 32)


def test_effects_run_in_the_shows_order_even_when_one_is_slow(tmp_path: Path) -> None:
    gallery = SlowFirstGallery()
    host = _host(tmp_path, gallery)
    sent: list[dict[str, Any]] = []

    async def record(frame: dict[str, Any]) -> None:
        sent.append(frame)

    host._broadcast = record  # type: ignore[method-assign]
    assert not hasattr(host, "_display_lock")

    async def main() -> None:
        consumer = asyncio.get_running_loop().create_task(host._consume())
        for effect in (
            ev.Display(1, (Tile.PLACEHOLDER,)),  # slow
            ev.Approve(2, "approved", (0,)),
            ev.Display(2, (Tile.CLEAR,)),
            ev.Status("ready", step=3, total=8, queue=2),
        ):
            host._effects.put_nowait(effect)
        await asyncio.wait_for(host._effects.join(), 10)
        consumer.cancel()

    asyncio.run(main())
    assert gallery.calls == ["png 1 placeholder", "record 2 approved [0]", "png 2 clear"]
    assert [(f["type"], f.get("entry_id")) for f in sent] == [
        ("show", 1),
        ("show", 2),
        ("status", None),
    ]
    assert sent[0]["held"] and not sent[1]["held"]
    assert (sent[2]["step"], sent[2]["total"], sent[2]["queue"]) == (3, 8, 2)


def test_the_host_reads_a_changed_blocklist_file_and_hands_it_in(tmp_path: Path) -> None:
    host = _host(tmp_path, SlowFirstGallery())
    assert host.settings_changed(1.0).blocklist is None  # unchanged: nothing read
    path = tmp_path / "list.txt"
    path.write_text("kittens\n", encoding="utf-8")
    host.settings.moderation.blocklist_file = str(path)
    event = host.settings_changed(2.0)
    assert event.blocklist is not None and event.blocklist.match("fluffy KITTENS")
    effects = host.show.handle(event)
    assert not [e for e in effects if isinstance(e, ev.Reply)]
    assert host.show.moderator.blocklist.match("kittens")


def test_generation_runs_are_tracked_tasks(tmp_path: Path) -> None:
    host = _host(tmp_path, SlowFirstGallery())
    gate = threading.Event()

    async def fake_generate(requests: Any) -> None:
        await asyncio.to_thread(gate.wait, 5)

    host._generate = fake_generate  # type: ignore[method-assign]

    async def main() -> None:
        from generator_host.core.generation import GenerationParams, GenerationRequest, Requester

        req = GenerationRequest("r1", Requester("dora", "Dora"), GenerationParams("x"), 0.0)
        await host._execute(ev.StartGeneration(req))
        assert len(host._runs) == 1  # the consumer goes on while the run runs
        gate.set()
        await asyncio.gather(*host._runs)
        await asyncio.sleep(0)
        assert not host._runs

    asyncio.run(main())
