"""The Twitch adapter against a local Twitch-dialect server over a real socket."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import logging
import os
import shutil
import ssl
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest

from generator_host.core.message import BotStatus, ChatMessage, MessageDeleted, Role, UserRemoved
from generator_host.core.settings import Settings
from generator_host.core.show import Display, Reply, Show
from generator_host.edges.blocklist import load_blocklist
from generator_host.edges.chat.console import ConsoleAdapter
from generator_host.edges.chat.irc import LoginFailed, TwitchAdapter
from generator_host.edges.files import write_private
from tests.fixtures_twitch import until
from tests.requirements import require
from tests.twitch_server import TwitchServer


async def _start(adapter: TwitchAdapter, events: list) -> asyncio.Task:
    task = asyncio.ensure_future(adapter.run(events.append))
    assert await until(adapter.connected.is_set, 5), "the bot did not join"
    return task


async def _stop(adapter: TwitchAdapter, task: asyncio.Task) -> None:
    await adapter.close()
    await asyncio.wait_for(task, 5)


def _max_in_window(times: list[float], window: float) -> int:
    best = 0
    for i, t in enumerate(times):
        best = max(best, sum(1 for u in times[i:] if u - t < window))
    return best


def test_login_sequence_and_escaped_tags(twitch_server: TwitchServer, twitch_settings, caplog):
    caplog.set_level(logging.DEBUG)

    async def main() -> list:
        events: list = []
        adapter = TwitchAdapter(twitch_settings)
        task = await _start(adapter, events)
        twitch_server.privmsg(
            "foxfan",
            "!generate a fox; with \\ backslash",
            msg_id="abc-1",
            badges="moderator/1,subscriber/12",
            tags={"display-name": "Fox Fan; the \\ Great", "client-nonce": "a\nb\rc"},
        )
        twitch_server.privmsg("boss", "!approve", badges="broadcaster/1")
        twitch_server.privmsg("vipper", "hi", badges="vip/1")
        twitch_server.privmsg("founder", "hi", badges="founder/0")
        twitch_server.privmsg("viewer", "hi")
        assert await until(lambda: len(events) == 5)
        await _stop(adapter, task)
        return events

    events = asyncio.run(main())
    sent = [s.line for s in twitch_server.received]
    assert sent[:4] == [
        "PASS oauth:sekrit-token-123",
        "NICK paintbot",
        "CAP REQ :twitch.tv/tags twitch.tv/commands",
        "JOIN #streamer",
    ]
    first = events[0]
    assert isinstance(first, ChatMessage)
    assert first.text == "!generate a fox; with \\ backslash"
    assert first.msg_id == "abc-1"
    assert first.viewer.display_name == "Fox Fan; the \\ Great"
    assert first.viewer.login == "foxfan" and first.viewer.role == Role.MODERATOR
    assert [e.viewer.role for e in events[1:]] == [
        Role.BROADCASTER, Role.VIP, Role.SUBSCRIBER, Role.EVERYONE,
    ]  # fmt: skip
    assert "sekrit-token-123" not in caplog.text
    assert "sekrit" not in repr(TwitchAdapter(twitch_settings))


def test_ping_is_answered_and_moderation_lines_become_events(twitch_server, twitch_settings):
    async def main() -> list:
        events: list = []
        adapter = TwitchAdapter(twitch_settings)
        task = await _start(adapter, events)
        twitch_server.ping()
        assert await until(lambda: twitch_server.sent("PONG"))
        twitch_server.clearmsg("abc-1", "foxfan")
        twitch_server.clearchat("FoxFan")
        assert await until(lambda: len(events) == 2)
        await _stop(adapter, task)
        return events

    events = asyncio.run(main())
    assert twitch_server.sent("PONG")[0].line == "PONG :tmi.twitch.tv"
    assert events[0] == MessageDeleted(msg_id="abc-1", now=events[0].now)
    assert events[1] == UserRemoved(login="foxfan", now=events[1].now)


def test_reconnect_command_rejoins_within_5_seconds(twitch_server, twitch_settings):
    async def main() -> None:
        events: list = []
        adapter = TwitchAdapter(twitch_settings)
        task = await _start(adapter, events)
        asked = time.monotonic()
        twitch_server.reconnect()
        assert await until(lambda: len(twitch_server.joins) == 2, 5)
        assert twitch_server.joins[1] - asked < 5
        assert await until(adapter.connected.is_set)
        twitch_server.privmsg("viewer", "!queue")
        assert await until(lambda: len(events) == 1)
        await _stop(adapter, task)

    asyncio.run(main())
    joins = twitch_server.sent("JOIN")
    assert [j.line for j in joins] == ["JOIN #streamer", "JOIN #streamer"]
    assert joins[0].conn != joins[1].conn  # a new connection, not a second JOIN on the old one


def _send_on(server: TwitchServer, conn: int, *lines: str) -> None:
    """Write lines to ONE connection of the server (what Twitch does to the old one)."""

    async def write() -> None:
        writer = server._writers[conn]
        writer.write("".join(f"{line}\r\n" for line in lines).encode())
        await writer.drain()

    server._call(write())


def _chat_line(server: TwitchServer, login: str, text: str, msg_id: str) -> str:
    return server._privmsg_line(login, text, msg_id=msg_id, badges="", tags=None)[0]


def test_reconnect_keeps_reading_the_old_connection_and_delivers_each_line_once(
    twitch_server, twitch_settings
):
    """Twitch still delivers on the old connection after RECONNECT: nothing is lost or doubled.

    Chat in the same write as the RECONNECT, on the old connection only after the new one
    joined, and on both at once (same id) each reach the host exactly once; the rejoin is
    within 5 s, replies go out on the new connection, the old one is closed after the grace.
    """

    async def main() -> tuple[list, TwitchAdapter, float]:
        events: list = []
        adapter = TwitchAdapter(twitch_settings, handover_grace=0.5)
        task = await _start(adapter, events)
        old = twitch_server.sent("JOIN")[0].conn
        asked = time.monotonic()
        with_it = _chat_line(twitch_server, "alice", "!generate with the reconnect", "id-1")
        _send_on(twitch_server, old, ":tmi.twitch.tv RECONNECT", with_it)  # one write
        assert await until(lambda: len(twitch_server.joins) == 2, 5)
        rejoin = twitch_server.joins[1] - asked
        assert old in twitch_server._writers, "the old connection was left at once"
        _send_on(
            twitch_server, old, _chat_line(twitch_server, "bob", "!generate late on old", "id-2")
        )
        twitch_server.privmsg("carol", "!generate on both", msg_id="id-3")  # both connections
        assert await until(lambda: len(events) == 3, 5), events
        await adapter.say("hello after the handover")
        assert await until(lambda: twitch_server.sent("PRIVMSG"), 5)
        assert await until(lambda: twitch_server.connections == 1, 5)  # the old one retired
        await asyncio.sleep(0.3)  # a doubled line would arrive by now
        assert adapter.connected.is_set()
        await _stop(adapter, task)
        return events, adapter, rejoin

    events, adapter, rejoin = asyncio.run(main())
    assert rejoin < 5
    assert [e.text for e in events] == [
        "!generate with the reconnect", "!generate late on old", "!generate on both",
    ]  # fmt: skip
    assert [e.msg_id for e in events] == ["id-1", "id-2", "id-3"]
    assert adapter.duplicates_dropped == 1  # id-3 came on both connections
    joins = twitch_server.sent("JOIN")
    assert joins[0].conn != joins[1].conn
    assert [s.conn for s in twitch_server.sent("PRIVMSG")] == [joins[1].conn]


def test_old_connection_after_reconnect_answers_ping_and_ends_when_twitch_closes_it(
    twitch_server, twitch_settings
):
    """No new connection can join: the old one still delivers until Twitch closes it."""

    async def main() -> list:
        events: list = []
        adapter = TwitchAdapter(twitch_settings, backoff_base=5.0)
        task = await _start(adapter, events)
        old = twitch_server.sent("JOIN")[0].conn
        twitch_server.drop_after_login = 100  # every new connection is cut after the welcome
        _send_on(twitch_server, old, ":tmi.twitch.tv RECONNECT")
        assert await until(lambda: len(twitch_server.logins) >= 2, 5)
        _send_on(twitch_server, old, "PING :tmi.twitch.tv",
                 _chat_line(twitch_server, "dave", "!generate still on old", "id-9"))  # fmt: skip
        assert await until(lambda: len(events) == 1, 5)
        assert await until(lambda: [p for p in twitch_server.sent("PONG") if p.conn == old], 5)
        assert adapter.connected.is_set()  # the old connection is still joined
        twitch_server._call(_close(twitch_server, old))  # then Twitch closes it
        assert await until(lambda: not adapter.connected.is_set(), 5)
        await _stop(adapter, task)
        return events

    events = asyncio.run(main())
    assert [e.text for e in events] == ["!generate still on old"]


async def _close(server: TwitchServer, conn: int) -> None:
    server._writers[conn].close()


def test_dropped_connection_reconnects_with_growing_backoff(twitch_server, twitch_settings):
    twitch_server.drop_after_login = 3

    async def main() -> None:
        adapter = TwitchAdapter(twitch_settings, backoff_base=0.25)
        task = asyncio.ensure_future(adapter.run(lambda e: None))
        assert await until(lambda: len(twitch_server.joins) == 1, 8)
        await _stop(adapter, task)

    asyncio.run(main())
    logins = twitch_server.logins
    assert len(logins) == 4
    gaps = [b - a for a, b in zip(logins, logins[1:], strict=False)]
    assert gaps[0] >= 0.1
    assert gaps[0] < gaps[1] < gaps[2], gaps  # 0.25, 0.5, 1 s (+-20 % jitter)


def test_drop_mid_session_reconnects_and_keeps_reading(twitch_server, twitch_settings):
    async def main() -> list:
        events: list = []
        adapter = TwitchAdapter(twitch_settings, backoff_base=0.05)
        task = await _start(adapter, events)
        twitch_server.drop()
        assert await until(lambda: len(twitch_server.joins) == 2, 5)
        assert await until(adapter.connected.is_set)
        twitch_server.privmsg("viewer", "!queue")
        assert await until(lambda: len(events) == 1)
        await _stop(adapter, task)
        return events

    assert asyncio.run(main())[0].text == "!queue"


@pytest.mark.parametrize("kind", ["auth", "format"])
def test_refused_login_raises_a_clear_error(kind, twitch_settings, caplog):
    server = TwitchServer("streamer", refuse_login=kind).start()
    settings = dataclasses.replace(twitch_settings, port=server.port)

    async def main() -> None:
        await asyncio.wait_for(TwitchAdapter(settings).run(lambda e: None), 5)

    try:
        with pytest.raises(LoginFailed) as info:
            asyncio.run(main())
    finally:
        server.stop()
    message = str(info.value)
    assert "refused the login for 'paintbot'" in message
    assert "chat:read" in message
    assert "sekrit-token-123" not in message + caplog.text
    assert len(server.logins) == 0


def test_missing_token_is_refused_before_connecting(twitch_server, twitch_settings):
    settings = dataclasses.replace(twitch_settings, token="")
    with pytest.raises(LoginFailed, match="CHAT_DIFFUSION_TWITCH_TOKEN"):
        asyncio.run(TwitchAdapter(settings).run(lambda e: None))
    assert twitch_server.received == []


def test_send_limit_is_never_exceeded(twitch_server, twitch_settings):
    settings = dataclasses.replace(
        twitch_settings, send_limit=5, send_window=0.5, max_pending_sends=100
    )

    async def main() -> None:
        adapter = TwitchAdapter(settings)
        task = await _start(adapter, [])
        for i in range(17):
            await adapter.say(f"message {i}")
        assert await until(lambda: len(twitch_server.sent("PRIVMSG")) == 17, 5)
        await _stop(adapter, task)

    asyncio.run(main())
    sent = twitch_server.sent("PRIVMSG")
    assert [s.line.rsplit(" ", 1)[1] for s in sent] == [str(i) for i in range(17)]  # in order
    assert _max_in_window([s.time for s in sent], 0.5) <= 5
    assert sent[-1].time - sent[0].time >= 1.5  # 17 messages need at least 3 full windows


def test_the_send_limit_follows_the_bots_moderator_status(twitch_server, twitch_settings):
    """Automatic limit: Twitch's 20 per 30 s, 100 while USERSTATE says the bot is a mod."""
    settings = dataclasses.replace(twitch_settings, send_limit=0, max_pending_sends=100)
    count = lambda: len(twitch_server.sent("PRIVMSG"))  # noqa: E731

    async def main() -> list:
        events: list = []
        adapter = TwitchAdapter(settings)
        task = await _start(adapter, events)
        for i in range(25):
            await adapter.say(f"message {i}")
        assert await until(lambda: count() == 20)
        await asyncio.sleep(0.3)
        assert count() == 20  # a regular account: the rest wait for the window
        twitch_server.bot_badges = "moderator/1"
        twitch_server.userstate()  # the streamer typed /mod paintbot
        assert await until(lambda: count() == 25), count()
        twitch_server.bot_badges = ""
        twitch_server.userstate()  # ... and /unmod paintbot
        assert await until(lambda: adapter.limiter.limit == 20)
        await adapter.say("one more")
        await asyncio.sleep(0.3)
        assert count() == 25  # 25 already went out in this window
        await _stop(adapter, task)
        return events

    events = asyncio.run(main())
    assert [e.elevated for e in events if isinstance(e, BotStatus)] == [True, False]


def test_waiting_sends_are_bounded_oldest_dropped(twitch_server, twitch_settings):
    settings = dataclasses.replace(
        twitch_settings, send_limit=2, send_window=30, max_pending_sends=3
    )

    async def main() -> TwitchAdapter:
        adapter = TwitchAdapter(settings)
        task = await _start(adapter, [])
        for i in range(10):
            await adapter.say(f"m{i}")
        assert await until(lambda: len(twitch_server.sent("PRIVMSG")) == 2)
        await asyncio.sleep(0.2)
        await _stop(adapter, task)
        return adapter

    adapter = asyncio.run(main())
    sent = [s.line.rsplit(":", 1)[1] for s in twitch_server.sent("PRIVMSG")]
    assert sent == ["m7", "m8"]  # the oldest were dropped, the newest still waits
    assert adapter.dropped_sends == 7 and list(adapter._pending) == ["PRIVMSG #streamer :m9\r\n"]


def test_cr_lf_and_privmsg_in_text_never_make_an_extra_line(twitch_server, twitch_settings):
    evil = "a fox\r\nPRIVMSG #streamer :pwned\nJOIN #other\x00\x07\u2028QUIT"

    async def main() -> None:
        adapter = TwitchAdapter(twitch_settings)
        task = await _start(adapter, [])
        await adapter.say(f"@viewer {evil}", reply_to="abc-1\r\nJOIN #x")
        await adapter.say("x" * 2000)
        await adapter.say("/ban viewer")
        await adapter.say("\r\n\t ")  # nothing printable: nothing sent
        assert await until(lambda: len(twitch_server.sent("PRIVMSG")) == 3)
        await asyncio.sleep(0.1)
        await _stop(adapter, task)

    asyncio.run(main())
    lines = [s.line for s in twitch_server.received]
    assert [s.command for s in twitch_server.received] == [
        "PASS", "NICK", "CAP", "JOIN", "PRIVMSG", "PRIVMSG", "PRIVMSG",
    ]  # fmt: skip
    assert lines[4].startswith("@reply-parent-msg-id=abc-1JOINx PRIVMSG #streamer :@viewer a fox ")
    assert "PRIVMSG #streamer :pwned JOIN #other QUIT" in lines[4]
    assert lines[5] == "PRIVMSG #streamer :" + "x" * 500
    assert lines[6] == "PRIVMSG #streamer :ban viewer"


def test_repeated_text_is_varied_so_twitch_does_not_drop_it(twitch_server, twitch_settings):
    async def main() -> None:
        adapter = TwitchAdapter(twitch_settings)
        task = await _start(adapter, [])
        for _ in range(2):
            await adapter.say("queued #1, about 9 s")
        assert await until(lambda: len(twitch_server.sent("PRIVMSG")) == 2)
        await _stop(adapter, task)

    asyncio.run(main())
    first, second = (s.line for s in twitch_server.sent("PRIVMSG"))
    assert first == "PRIVMSG #streamer :queued #1, about 9 s"
    assert second == first + " \U000e0000"


def test_tls_connection(tmp_path: Path, twitch_settings):
    cert, key = _self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(cert))
    server = TwitchServer("streamer", ssl_context=server_ctx).start()
    settings = dataclasses.replace(twitch_settings, port=server.port, tls=True)

    async def main() -> list:
        events: list = []
        adapter = TwitchAdapter(settings, ssl_context=client_ctx)
        task = await _start(adapter, events)
        server.privmsg("viewer", "!help")
        assert await until(lambda: events)
        await _stop(adapter, task)
        return events

    try:
        events = asyncio.run(main())
    finally:
        server.stop()
    assert events[0].text == "!help"


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    require(shutil.which("openssl") is not None, "openssl is needed to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def test_an_untrusted_certificate_is_reported_once_with_the_fix(
    tmp_path: Path, twitch_settings, caplog
):
    """A certificate the bot cannot verify (clock, TLS-inspecting antivirus): one clear
    error naming the fix, then quiet retries, never a warning per attempt."""
    cert, key = _self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    server = TwitchServer("streamer", ssl_context=server_ctx).start()
    settings = dataclasses.replace(twitch_settings, port=server.port, tls=True)
    caplog.set_level(logging.DEBUG, logger="generator_host.edges.chat.irc")

    async def main() -> None:
        adapter = TwitchAdapter(settings, backoff_base=0.01)
        task = asyncio.ensure_future(adapter.run(lambda e: None))
        tries = lambda: sum("certificate" in r.getMessage() for r in caplog.records)  # noqa: E731
        assert await until(lambda: tries() >= 4, 10)
        await adapter.close()
        await asyncio.wait_for(task, 5)

    try:
        asyncio.run(main())
    finally:
        server.stop()
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(loud) == 1, [r.getMessage() for r in loud]
    text = loud[0].getMessage()
    assert loud[0].levelno == logging.ERROR
    assert "cannot verify the TLS certificate of 127.0.0.1" in text
    assert "date and time" in text and "antivirus" in text


def test_the_tls_context_trusts_certifi_even_without_system_roots(tmp_path: Path):
    """python.org's Python on macOS has no root certificates of its own: the context for
    Twitch must still hold a full set (certifi's), whatever the system offers."""
    code = (
        "from generator_host.edges.chat.irc import tls_context; "
        "print(tls_context().cert_store_stats()['x509_ca'])"
    )
    env = dict(os.environ, SSL_CERT_FILE=str(tmp_path / "none.pem"), SSL_CERT_DIR=str(tmp_path))
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip()) > 100


def test_token_file_is_private(tmp_path: Path):
    path = tmp_path / "conf" / "config.toml"
    write_private(path, 'token = "x"\n')
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.read_text() == 'token = "x"\n'


def test_flood_keeps_queue_memory_and_sends_bounded(twitch_server, twitch_settings):
    """5,000 messages from 500 viewers in 10 s: queue capped, sends limited, host answers."""
    settings = Settings(twitch=dataclasses.replace(twitch_settings, max_pending_sends=30))
    settings.moderation.max_queue = 50
    show = Show(settings, rng_seed=1, blocklist=load_blocklist("")[0])
    late_effects: list = []

    async def main() -> dict:
        adapter = TwitchAdapter(settings.twitch)
        arrived: list = []

        def on_event(event) -> None:
            arrived.append(event)
            effects = show.handle(event)
            if isinstance(event, ChatMessage) and event.viewer.login == "boss":
                late_effects.extend(effects)
            for effect in effects:
                if isinstance(effect, Reply):
                    asyncio.ensure_future(adapter.say(effect.text, effect.reply_to))

        task = asyncio.ensure_future(adapter.run(on_event))
        assert await until(adapter.connected.is_set)
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        await asyncio.to_thread(twitch_server.flood, 5000, 500, 10.0)
        assert await until(lambda: len(arrived) == 5000, 10)
        grown = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        # the host still answers at once: the streamer's !clear reaches the show promptly
        t0 = time.monotonic()
        twitch_server.privmsg("boss", "!clear", badges="broadcaster/1")
        assert await until(lambda: len(arrived) == 5001, 2)
        latency = time.monotonic() - t0
        await asyncio.sleep(0.2)
        await _stop(adapter, task)
        return {"grown": grown, "latency": latency, "pending": len(adapter._pending)}

    stats = asyncio.run(main())
    assert show.queued <= 50
    assert stats["grown"] < 5_000_000, stats
    assert stats["latency"] < 1.0, stats
    assert stats["pending"] <= 30
    assert Display(None) in late_effects
    sent = twitch_server.sent("PRIVMSG")
    assert 0 < len(sent) <= 20
    assert _max_in_window([s.time for s in sent], 30.0) <= 20


def test_console_adapter_for_the_demo():
    """Each typed line is the broadcaster's message; `/as` speaks as a viewer; say prints."""
    stdin = io.StringIO("!generate a fox\n\n/as Alice !queue\n")
    stdout = io.StringIO()
    console = ConsoleAdapter("Boss", stdin=stdin, stdout=stdout)
    events: list = []

    async def main() -> None:
        await asyncio.wait_for(console.run(events.append), 5)  # returns at end of input
        await console.say("queued #1\r\nPRIVMSG #x :evil")

    asyncio.run(main())
    assert [(e.viewer.login, e.viewer.role, e.text) for e in events] == [
        ("boss", Role.BROADCASTER, "!generate a fox"),
        ("alice", Role.EVERYONE, "!queue"),
    ]
    assert events[0].msg_id != events[1].msg_id
    assert stdout.getvalue() == "[bot] queued #1 PRIVMSG #x :evil\n"
