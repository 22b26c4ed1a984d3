"""Load (issue #8, part 3): a hostile flood of chat, and a day's worth of gallery.

- 5,000 chat messages from 500 viewers in 10 s against the real host (a subprocess,
  default moderation): the queue stays within its cap, memory stays bounded, the bot's
  replies stay within Twitch's send limit (20 per 30 s, one line, <= 500 characters),
  and the broadcaster's commands are still answered within 1 s.
- A gallery of 10,000 entries (a day at one image every ~9 s): !prev / !next through the
  host and its link stay instant.
Figures go to $RELIABILITY_FIGURES (see tests/reliability_helpers.py).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

import pytest

from tests.reliability_helpers import (
    LINK_TOKEN,
    HostProcess,
    RecordingTwitchServer,
    ScriptLink,
    free_port,
    host_config,
    record,
    rss_kib,
    wait_until,
)

pytestmark = pytest.mark.model

FLOOD_MESSAGES = 5000
FLOOD_USERS = 500
FLOOD_SECONDS = 10.0
SEND_LIMIT, SEND_WINDOW = 20, 30.0
MAX_QUEUE = 50
DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def max_in_window(times: list[float], window: float) -> int:
    times = sorted(times)
    best, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


def test_a_flood_of_5000_messages_keeps_queue_memory_and_replies_bounded(
    tmp_path: Path, server: RecordingTwitchServer, tiny_model_dir: Path
) -> None:
    data = tmp_path / "data"
    port = free_port()
    cfg = host_config(
        tmp_path / "config.toml", model_dir=tiny_model_dir, twitch_port=server.port,
        link_token=LINK_TOKEN,
        moderation={"user_cooldown_seconds": 30.0, "max_queued_per_user": 1,
                    "max_queue": MAX_QUEUE},
        twitch={"send_limit": SEND_LIMIT, "send_window": SEND_WINDOW},
    )  # fmt: skip
    host = HostProcess(cfg, data, port).start()
    obs = ScriptLink(port, LINK_TOKEN, tmp_path / "obs-images").start()
    try:
        assert server.wait_for(lambda: server.joins, 15)
        assert wait_until(lambda: obs.connected_at() is not None, 10)
        # Warm: one image through the whole path before measuring memory.
        server.privmsg("streamer", "!generate warm up", badges="broadcaster/1")
        assert wait_until(lambda: obs.of_type("show"), 60), host.output[-3000:]
        before = rss_kib(host.pid)

        started = time.monotonic()
        flood = server.flood_async(FLOOD_MESSAGES, FLOOD_USERS, FLOOD_SECONDS,
                                   "!generate a flooded fox number {i}")  # fmt: skip
        latencies: list[float] = []
        queue_replies: list[float] = []
        peak = dict(before)
        for k in range(4):  # the broadcaster steers during (and right after) the flood
            time.sleep(2.5)
            asked = time.monotonic()
            server.privmsg("streamer", "!clear", badges="broadcaster/1")
            assert wait_until(lambda: obs.of_type("clear", after=asked), 5), f"!clear #{k}"  # noqa: B023
            latencies.append(obs.of_type("clear", after=asked)[0][0] - asked)
            asked = time.monotonic()
            n_before = len(server.sent("PRIVMSG"))
            server.privmsg("streamer", "!queue", badges="broadcaster/1", msg_id=f"bq{k}")
            wait_until(lambda: any("bq" in s.line and s.time > asked  # noqa: B023
                                   for s in server.sent("PRIVMSG")[n_before:]), 1.0)  # noqa: B023  # fmt: skip
            answered = [s.time - asked for s in server.sent("PRIVMSG")[n_before:]
                        if f"reply-parent-msg-id=bq{k}" in s.line]  # fmt: skip
            queue_replies.append(round(answered[0], 3) if answered else float("inf"))
            now_rss = rss_kib(host.pid)
            peak = {key: max(peak[key], now_rss[key]) for key in peak}
        flood.result(30)
        flood_done = time.monotonic() - started
        time.sleep(2.0)
        after = rss_kib(host.pid)
        assert host.proc is not None and host.proc.poll() is None, "the host died"

        queue_seen = max((i["queue"] for _, i in obs.of_type("status")), default=0)
        state_queue = len(json.loads((data / "state.json").read_text())["queue"])
        replies = [s for s in server.sent("PRIVMSG") if s.time >= started]
        bodies = [s.line.split(" :", 1)[1] if " :" in s.line else "" for s in replies]
        burst = max_in_window([s.time for s in replies], SEND_WINDOW)
        record(
            "load: 5,000 messages from 500 viewers in 10 s",
            messages=FLOOD_MESSAGES,
            viewers=FLOOD_USERS,
            flood_seconds=round(flood_done, 1),
            rss_before_mib=round(before["VmRSS"] / 1024, 1),
            rss_after_mib=round(after["VmRSS"] / 1024, 1),
            rss_peak_mib=round(max(peak["VmHWM"], after["VmHWM"]) / 1024, 1),
            queue_max_seen=queue_seen,
            queue_cap=MAX_QUEUE,
            queue_in_state_file=state_queue,
            bot_messages=len(replies),
            bot_messages_max_per_30s=burst,
            longest_bot_message=max(map(len, bodies), default=0),
            frames_to_obs_during_flood=len([t for t, _ in obs.items if t >= started]),
            status_frames_to_obs=len(obs.of_type("status", after=started)),
            broadcaster_clear_latency_s=[round(x, 3) for x in latencies],
            broadcaster_queue_reply_latency_s=queue_replies,
        )
        assert queue_seen <= MAX_QUEUE and state_queue <= MAX_QUEUE
        assert after["VmRSS"] - before["VmRSS"] < 150 * 1024, (before, after)
        assert burst <= SEND_LIMIT
        assert all(len(b) <= 500 for b in bodies)
        assert all("\r" not in s.line and "\n" not in s.line for s in replies)
        assert max(latencies) <= 1.0, latencies
        assert max(queue_replies) <= 1.0, (
            f"the broadcaster's !queue answers took {queue_replies} s (inf: never answered)"
        )
    finally:
        obs.stop()
        host.stop()


def test_a_day_of_10000_images_keeps_prev_and_next_instant(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """10,000 real gallery entries made through the show; then !prev/!next via the link."""
    import websocket
    from PIL import Image

    from generator_host.app import STATE_FILE, Host
    from generator_host.core.generation import GeneratedImage, GenerationResult
    from generator_host.core.message import ChatMessage, Role, Viewer
    from generator_host.core.settings import Settings
    from generator_host.core.show import GenerationFinished, Show, StartGeneration, Tick
    from generator_host.edges.blocklist import load_blocklist
    from generator_host.edges.gallery import Gallery
    from obs_script import chat_diffusion_protocol as protocol

    settings = Settings()
    settings.twitch.channel = "streamer"
    settings.link.port = 0
    settings.moderation.user_cooldown_seconds = 0.0
    gallery = Gallery(tmp_path / "gallery")
    show = Show(settings, blocklist=load_blocklist("")[0])
    streamer = Viewer("streamer", "Streamer", "1", Role.BROADCASTER)
    tiles = [Image.effect_noise((64, 64), 40 + k).convert("RGB") for k in range(8)]
    build_started = time.monotonic()
    now = 1000.0
    for i in range(10_000):
        now += 60.0  # one image a minute: the show's pacing never holds one back
        # digits spelled out: the blocklist reads leetspeak ("7175" is a blocked word)
        name = " ".join(DIGITS[int(d)] for d in str(i))
        effects = show.handle(ChatMessage(streamer, f"!generate fox {name}", f"m{i}", now))
        start = next(e for e in effects if isinstance(e, StartGeneration))
        req = start.request
        result = GenerationResult(
            request=req, images=[GeneratedImage(tiles[i % 8], req.params.seed, None, False)],
            model="tiny", sampler="PNDM", seconds=0.1, params=req.params,
        )  # fmt: skip
        show.handle(GenerationFinished(req.id, gallery.add(result, "blur"), now + 0.5))
        show.handle(Tick(now + 30.0))
    build_seconds = time.monotonic() - build_started
    (tmp_path / STATE_FILE).write_text(json.dumps(show.snapshot()))
    assert len(gallery.recent(20_000)) == 10_000

    class NoChat:  # the link is what is measured; chat stays silent
        async def run(self, on_event: Any) -> None:
            await asyncio.Event().wait()

        async def say(self, text: str, reply_to: str = "") -> None:
            pass

        async def close(self) -> None:
            pass

    async def scenario() -> list[tuple[str, float]]:
        host = Host(settings, tmp_path, NoChat(), None, gallery, LINK_TOKEN)
        ready = asyncio.Event()
        task = asyncio.ensure_future(host.run(on_ready=lambda h: ready.set()))
        await asyncio.wait_for(ready.wait(), 30)
        ws = await asyncio.to_thread(websocket.create_connection,
                                     f"ws://127.0.0.1:{host.link.port}", timeout=10,
                                     suppress_origin=True)  # fmt: skip
        ws.send(protocol.encode(protocol.make_hello(LINK_TOKEN, "load"), "script").text)
        live = protocol.decode(await asyncio.to_thread(ws.recv), "host").message
        assert live and live["type"] == "settings"  # the live settings come first
        first = protocol.decode(await asyncio.to_thread(ws.recv), "host").message
        assert first and first["type"] == "state" and first["show"] is not None
        timings: list[tuple[str, float]] = []
        shown = first["show"]["entry_id"]
        for action in ["prev"] * 30 + ["next"] * 30:
            sent = time.monotonic()
            ws.send(protocol.encode(protocol.make_action(action), "script").text)
            while True:
                msg = protocol.decode(await asyncio.to_thread(ws.recv), "host").message
                if msg and msg["type"] == "show":
                    break
            timings.append((action, time.monotonic() - sent))
            assert msg["entry_id"] == shown + (-1 if action == "prev" else 1)
            shown = msg["entry_id"]
        ws.close()
        host.stopped.set()
        await asyncio.wait_for(task, 30)
        return timings

    timings = asyncio.run(scenario())
    seconds = sorted(t for _, t in timings)
    query_started = time.perf_counter()
    for entry_id in range(1, 10_001, 97):
        gallery.get(entry_id)  # what each display looks up
    per_query_ms = (time.perf_counter() - query_started) / len(range(1, 10_001, 97)) * 1000
    gallery.close()
    record(
        "load: gallery of 10,000 entries, !prev/!next through the link",
        entries=10_000,
        build_seconds=round(build_seconds, 1),
        steps_measured=len(timings),
        median_ms=round(statistics.median(seconds) * 1000, 1),
        max_ms=round(seconds[-1] * 1000, 1),
        get_query_ms=round(per_query_ms, 3),
    )
    assert seconds[-1] < 0.25, f"slowest step {seconds[-1] * 1000:.0f} ms"
