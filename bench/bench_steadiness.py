"""Steadiness (issue #7, part 4): does the host keep its memory, does OBS keep its frame?

1. Host memory over 300 generations: the host's own pieces in this process (Show, Engine
   with the tiny model, Gallery on disk, the PNG and link frame for OBS), driven the way
   app.py drives them. RSS (VmRSS from /proc/self/status) after a warm-up of 30
   generations vs after the 300 that follow. Target: growth under 5%.
2. The OBS script's time per timer tick, in a real OBS 29 (30 fps, Xvfb) with the probe
   of bench_chat_to_screen (the real script, its timer wrapped in perf_counter): idle
   (connected, nothing arriving), then while receiving 512x512 images 4 times a second
   from the host's real link server.

    python -m bench.bench_steadiness [--quick]
"""

from __future__ import annotations

import gc
import io
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.bench_chat_to_screen import LINK_TOKEN, Obs, median, percentile, wait_until
from bench.report import part_main

SECTION = "Steadiness"
GROWTH_LIMIT = 5.0  # percent
FRAME_MS = 1000 / 30


def rss_mib() -> float:
    """This process's resident set size in MiB (VmRSS; Linux)."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # peak, not current


# ---- 1. memory --------------------------------------------------------------------------
class MiniHost:
    """The host's work per request without sockets: show -> engine -> gallery -> frame."""

    def __init__(self, work: Path) -> None:
        from generator_host.core.settings import Settings
        from generator_host.core.show import Show
        from generator_host.edges.blocklist import load_blocklist
        from generator_host.edges.gallery import Gallery
        from generator_host.engine.pipeline import Engine
        from generator_host.engine.tiny_model import build_tiny_model
        from generator_host.ports import EngineLike, GalleryLike

        folder = build_tiny_model(work / "tiny-sd")
        self.settings = Settings()
        m = self.settings.model
        m.model, m.device, m.steps, m.guidance, m.width, m.height = (
            str(folder), "cpu", 1, 0.0, 64, 64,
        )  # fmt: skip
        self.settings.safety.checker = str(folder)
        self.settings.moderation.user_cooldown_seconds = 0.0
        self.settings.show.min_display_seconds = 0.0  # screen-time policy, not work
        self.engine: EngineLike = Engine(self.settings.model, self.settings.safety)
        self.engine.load()
        self.gallery: GalleryLike = Gallery(work / "gallery")
        self.show = Show(self.settings, rng_seed=1, blocklist=load_blocklist("")[0])
        self.frames = 0
        self.now = 1000.0

    def request(self, i: int) -> None:
        """One chat request carried through to the frame OBS would get (as app.py does)."""
        from collections import deque

        from generator_host.core import show as s
        from generator_host.core.message import ChatMessage, Role, Viewer

        self.now += 2.0
        viewer = Viewer(f"viewer{i % 500}", role=Role.SUBSCRIBER)
        message = ChatMessage(viewer, f"!generate fox {i}", f"m{i}", self.now)
        pending = deque(self.show.handle(message))
        for _ in range(40):  # bounded: the show is idle again after a few ticks
            while pending:
                pending += self._execute(pending.popleft(), s)
            if not (self.show.running or self.show.queued or self.show.on_deck):
                break
            self.now += 0.5
            pending += self.show.handle(s.Tick(now=self.now))

    def _execute(self, effect: object, s: object) -> list[object]:
        """StartGeneration / StartBatch run on the engine; Display builds the link frame."""
        from obs_script import chat_diffusion_protocol as protocol

        out: list[object] = []
        requests = getattr(effect, "requests", None) or (
            [effect.request] if hasattr(effect, "request") else []
        )
        for req in requests:
            result = self.engine.generate(req.params, req)
            entry = self.gallery.add(result, self.settings.safety.approval_mode)
            out += self.show.handle(s.GenerationFinished(req.id, entry, self.now + 0.1))
        if isinstance(effect, s.Display) and effect.entry_id is not None:
            entry = self.gallery.get(effect.entry_id)
            png = self.gallery.screen_png(effect.entry_id, effect.tiles)
            if entry is not None and png is not None:
                frame = protocol.make_show(entry.id, png, entry.requester, entry.prompt)
                if protocol.encode(frame, "host").text:
                    self.frames += 1
        return out


def bench_memory(quick: bool) -> list[dict[str, Any]]:
    warmup, count = (10, 60) if quick else (30, 300)
    with tempfile.TemporaryDirectory(prefix="bench-mem-") as tmp:
        host = MiniHost(Path(tmp))
        for i in range(warmup):
            host.request(i)
        gc.collect()
        start = rss_mib()
        samples = [start]
        t0 = time.perf_counter()
        for i in range(warmup, warmup + count):
            host.request(i)
            if (i - warmup + 1) % 30 == 0:
                samples.append(rss_mib())
        seconds = time.perf_counter() - t0
        gc.collect()
        end = rss_mib()
        frames = host.frames
    if frames < warmup + count:
        raise RuntimeError(f"only {frames} of {warmup + count} requests reached the screen")
    growth = (end - start) / start * 100
    how = (
        f"{count} generations after {warmup} warm-up ones, in one process: Show, Engine "
        "(tiny model, 64x64, 1 step, checker on), Gallery (PNGs + SQLite), the link frame; "
        "VmRSS"
    )
    return [
        {"section": SECTION, "name": f"host RSS after warm-up ({warmup} generations)",
         "value": start, "unit": "MiB", "how": how},
        {"section": SECTION, "name": f"host RSS after {count} more generations",
         "value": end, "unit": "MiB",
         "detail": f"max {max(samples + [end]):.1f} MiB; {frames} frames for OBS; "
                   f"{count / seconds:.1f} generations/s"},
        {"section": SECTION, "name": f"host memory growth over {count} generations",
         "value": growth, "unit": "%", "target": f"< {GROWTH_LIMIT:.0f}%",
         "ok": growth < GROWTH_LIMIT},
    ]  # fmt: skip


# ---- 2. OBS timer ticks -----------------------------------------------------------------
def screen_png(i: int, size: int = 512) -> bytes:
    """A 512x512 picture with smooth areas and detail, like a generated one (not noise)."""
    from PIL import Image, ImageDraw

    img = Image.linear_gradient("L").resize((size, size)).convert("RGB")
    draw = ImageDraw.Draw(img)
    for k in range(12):
        x, y = (i * 37 + k * 53) % size, (i * 91 + k * 29) % size
        draw.ellipse((x, y, x + 60 + k * 5, y + 40 + k * 3), fill=((k * 20 + i) % 256, 90, 160))
    buf = io.BytesIO()
    img.save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def bench_obs_ticks(quick: bool) -> list[dict[str, Any]]:
    from tests.fixtures_obs import RunningLink

    idle_s, receive_s, rate = (4.0, 4.0, 4.0) if quick else (10.0, 10.0, 4.0)
    images = [screen_png(i) for i in range(8)]
    link = RunningLink(token=LINK_TOKEN)
    with tempfile.TemporaryDirectory(prefix="bench-ticks-") as tmp:
        obs = Obs(Path(tmp), link.port)
        try:
            obs.start()
            if not wait_until(lambda: obs.probe().connected, 30, 0.1):
                raise RuntimeError("the OBS script did not connect")
            time.sleep(1.0)
            idle = (time.monotonic(), time.monotonic() + idle_s)
            time.sleep(idle_s)
            sent = 0
            t0 = time.monotonic()
            while time.monotonic() - t0 < receive_s:
                link.show(sent + 1, images[sent % len(images)], "viewer", f"image {sent}")
                sent += 1
                time.sleep(max(0.0, t0 + sent / rate - time.monotonic()))
            receiving = (t0, time.monotonic() + 0.3)
            time.sleep(0.6)
            ticks = obs.probe().ticks
        finally:
            obs.stop()
            link.close()
    idle_us = [us for t, us, _, _ in ticks if idle[0] <= t < idle[1]]
    recv_us = [us for t, us, _, _ in ticks if receiving[0] <= t < receiving[1]]
    apply_us = [us for t, us, _, shows in ticks if receiving[0] <= t < receiving[1] and shows]
    how = (
        "real OBS at 30 fps; the script's timer callback wrapped in perf_counter by the probe; "
        f"idle {idle_s:.0f} s connected, then {rate:.0f} images/s (512x512 PNG) for "
        f"{receive_s:.0f} s; a frame at 30 fps is {FRAME_MS:.0f} ms"
    )
    return [
        {"section": SECTION, "name": "OBS script: time per timer tick, idle, median",
         "value": median(idle_us), "unit": "µs", "how": how,
         "detail": f"{len(idle_us)} ticks; p99 {percentile(idle_us, 99):.0f} µs, "
                   f"max {max(idle_us, default=float('nan')):.0f} µs"},
        {"section": SECTION, "name": "OBS script: time per timer tick, receiving, median",
         "value": median(recv_us), "unit": "µs",
         "detail": f"{len(recv_us)} ticks; p99 {percentile(recv_us, 99):.0f} µs, "
                   f"max {max(recv_us, default=float('nan')):.0f} µs; {sent} images sent"},
        {"section": SECTION, "name": "OBS script: a tick that applies an image, median",
         "value": median(apply_us), "unit": "µs",
         "detail": f"{len(apply_us)} ticks; max {max(apply_us, default=float('nan')):.0f} µs "
                   "(image decoding is OBS's own, in its video tick)"},
    ]  # fmt: skip


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Memory first (a clean process), then the OBS ticks."""
    return bench_memory(quick) + bench_obs_ticks(quick)


def main(argv: list[str] | None = None) -> int:
    return part_main(run, __doc__, "60 generations, shorter phases", argv)


if __name__ == "__main__":
    sys.exit(main())
