"""Logging in to Twitch and staying logged in, against a local fake of id.twitch.tv and the
local Twitch-dialect IRC server, over real loopback sockets."""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from generator_host.core.message import ChatMessage
from generator_host.core.settings import TwitchSettings
from generator_host.edges.chat.irc import TwitchAdapter
from generator_host.edges.twitch import auth
from tests.fake_twitch_id import FakeTwitchId
from tests.fixtures_twitch import until
from tests.twitch_server import TwitchServer

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def fake_id() -> Iterator[FakeTwitchId]:
    fake = FakeTwitchId().start()
    try:
        yield fake
    finally:
        fake.stop()


def _config(tmp_path: Path, fake: FakeTwitchId) -> Path:
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        f'[twitch]\nchannel = "streamer"\nclient_id = "{fake.client_id}"\nid_url = "{fake.url}"\n'
    )
    return cfg


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    full.pop("CHAT_DIFFUSION_TWITCH_TOKEN", None)
    return subprocess.run(
        [sys.executable, "-m", "generator_host", *args],
        cwd=ROOT,
        env=full,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_login_end_to_end_prints_the_code_opens_the_browser_and_stores_privately(
    tmp_path: Path, fake_id: FakeTwitchId
) -> None:
    cfg = _config(tmp_path, fake_id)
    opened = tmp_path / "opened.txt"
    browser = tmp_path / "browser.sh"
    browser.write_text(f'#!/bin/sh\necho "$1" > "{opened}"\n')
    browser.chmod(0o755)
    data = tmp_path / "data"
    done = _cli("login", "--config", str(cfg), "--data-dir", str(data),
                env={"BROWSER": str(browser)})  # fmt: skip
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "https://www.twitch.tv/activate?public=true&device-code=WDJB-MJHT" in done.stdout
    assert "WDJB-MJHT" in done.stdout
    assert "Logged in as streamer (broadcaster)" in done.stdout
    assert opened.read_text().strip().startswith("https://www.twitch.tv/activate")
    # Twitch was asked as documented: device code with only the chat scopes, then polled.
    (device,) = fake_id.calls_to("/oauth2/device")
    assert device.form == {"client_id": fake_id.client_id, "scopes": "chat:read chat:write"}
    polls = fake_id.calls_to("/oauth2/token")
    assert len(polls) == fake_id.authorize_after + 1
    assert {p.form["grant_type"] for p in polls} == {auth.DEVICE_GRANT}
    path = auth.token_path(data, "broadcaster")
    if os.name == "posix":
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    stored = auth.load_tokens(path)
    assert stored is not None and stored.login == "streamer"
    assert stored.access_token == fake_id.current
    assert "secret" not in out  # no token (nor the device code) in the output
    assert "secret" not in repr(stored)


def test_login_without_client_id_says_how_to_get_one(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text('[twitch]\nchannel = "streamer"\n')
    done = _cli("login", "--bot", "--config", str(cfg), "--data-dir", str(tmp_path))
    assert done.returncode != 0
    assert "client_id" in done.stderr and "dev.twitch.tv" in done.stderr
    assert "Traceback" not in done.stderr


def test_logout_revokes_and_deletes(tmp_path: Path, fake_id: FakeTwitchId) -> None:
    cfg = _config(tmp_path, fake_id)
    issued = fake_id.issue()
    path = auth.token_path(tmp_path, "bot")
    auth.save_tokens(path, auth.Tokens(issued["access_token"], issued["refresh_token"]))
    done = _cli("logout", "--bot", "--config", str(cfg), "--data-dir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "revoked" in done.stdout
    assert not path.exists()
    assert fake_id.revoked == [issued["access_token"], issued["refresh_token"]]
    assert "secret" not in done.stdout + done.stderr


def _keeper(fake: FakeTwitchId, tmp_path: Path, life: float, **kw: object) -> auth.TokenKeeper:
    issued = fake.issue(expires_in=life)
    tokens = auth.Tokens(issued["access_token"], issued["refresh_token"], login="paintbot")
    path = auth.token_path(tmp_path, "bot")
    auth.save_tokens(path, tokens)
    client = auth.IdClient(fake.client_id, fake.url)
    return auth.TokenKeeper(client, path, tokens, account="bot", tick=0.1, **kw)  # type: ignore[arg-type]


def _settings(server: TwitchServer) -> TwitchSettings:
    return TwitchSettings(channel="streamer", host="127.0.0.1", port=server.port, tls=False,
                          send_limit=20, reconnect_max_seconds=1.0)  # fmt: skip


def _texts(events: list) -> list[str]:
    return [e.text for e in events if isinstance(e, ChatMessage)]


def test_token_expiring_mid_stream_is_refreshed_and_the_reconnect_uses_it(
    tmp_path: Path, fake_id: FakeTwitchId, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server = TwitchServer("streamer", expected_token=fake_id.irc_token).start()
    keeper = _keeper(fake_id, tmp_path, life=1.5, refresh_margin=1.0)
    first = fake_id.current
    fake_id.expires_in = 3600.0  # the refreshed token lives long

    async def main() -> list:
        events: list = []
        adapter = TwitchAdapter(_settings(server), tokens=keeper, backoff_base=0.05)
        task = asyncio.ensure_future(adapter.run(events.append))
        assert await until(adapter.connected.is_set, 5)
        server.privmsg("viewer", "!generate before")
        assert await until(lambda: keeper.refreshes == 1, 5), "no refresh before expiry"
        server.privmsg("viewer", "!generate between")
        assert await until(lambda: len(_texts(events)) == 2, 5)
        server.reconnect()
        assert await until(lambda: len(server.joins) == 2, 5), "no rejoin after RECONNECT"
        server.privmsg("viewer", "!generate after")
        assert await until(lambda: len(_texts(events)) == 3, 5)
        await adapter.close()
        await asyncio.wait_for(task, 5)
        return events

    try:
        events = asyncio.run(main())
    finally:
        server.stop()
    assert _texts(events) == ["!generate before", "!generate between", "!generate after"]
    passes = [s.line for s in server.sent("PASS")]
    assert passes == [f"PASS oauth:{first}", f"PASS oauth:{fake_id.current}"]
    assert fake_id.current != first
    stored = auth.load_tokens(keeper.path)
    assert stored is not None and stored.access_token == fake_id.current  # saved at once
    assert "secret" not in caplog.text


def test_refused_irc_login_refreshes_and_reconnects_without_a_restart(
    tmp_path: Path, fake_id: FakeTwitchId, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server = TwitchServer("streamer", expected_token=fake_id.irc_token).start()
    keeper = _keeper(fake_id, tmp_path, life=3600)
    fake_id.issue()  # Twitch now wants a newer token: ours is refused at the IRC login

    async def main() -> list:
        events: list = []
        adapter = TwitchAdapter(_settings(server), tokens=keeper, backoff_base=0.05)
        task = asyncio.ensure_future(adapter.run(events.append))
        assert await until(adapter.connected.is_set, 5), "no join after the refresh"
        server.privmsg("viewer", "!generate a fox")
        assert await until(lambda: len(_texts(events)) == 1, 5)
        await adapter.close()
        await asyncio.wait_for(task, 5)
        return events

    try:
        asyncio.run(main())
    finally:
        server.stop()
    assert keeper.refreshes == 1
    assert len(server.sent("PASS")) == 2
    assert "refreshed token" in caplog.text
    assert "secret" not in caplog.text


def test_dead_refresh_token_says_log_in_again_once_and_chat_goes_on(
    tmp_path: Path, fake_id: FakeTwitchId, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server = TwitchServer("streamer").start()
    problems: list[str] = []
    keeper = _keeper(fake_id, tmp_path, life=1.2, refresh_margin=1.0, on_problem=problems.append)
    fake_id.dead_refresh = True  # revoked at Twitch (or unused for 30 days)

    async def main() -> list:
        events: list = []
        adapter = TwitchAdapter(_settings(server), tokens=keeper, backoff_base=0.05)
        task = asyncio.ensure_future(adapter.run(events.append))
        assert await until(adapter.connected.is_set, 5)
        assert await until(lambda: keeper.dead, 5)
        await asyncio.sleep(0.5)  # the keeper keeps running; it must not say it again
        server.privmsg("viewer", "!generate still here")
        assert await until(lambda: len(_texts(events)) == 1, 5)
        assert not task.done()
        await adapter.close()
        await asyncio.wait_for(task, 5)
        return events

    try:
        asyncio.run(main())
    finally:
        server.stop()
    lines = [r.getMessage() for r in caplog.records if "log in again" in r.getMessage()]
    assert len(lines) == 1 and "generator-host login" in lines[0]
    assert problems == ["Twitch bot login expired: log in again: generator-host login"]
    assert len(fake_id.calls_to("/oauth2/token")) == 1  # tried once, not hammered
    assert "secret" not in caplog.text


def test_scopes_are_only_what_the_features_need() -> None:
    assert auth.scopes_for("bot") == ["chat:read", "chat:write"]
    assert auth.scopes_for("bot", channel_points=True) == ["chat:read", "chat:write"]
    assert auth.scopes_for("broadcaster", channel_points=True) == [
        "chat:read", "chat:write", "channel:read:redemptions", "channel:manage:redemptions",
    ]  # fmt: skip


def test_a_dead_login_is_told_in_obs_status_and_the_host_runs_on(
    tmp_path: Path, fake_id: FakeTwitchId
) -> None:
    import websocket

    from generator_host import app
    from generator_host.core.settings import Settings
    from generator_host.edges.gallery import Gallery
    from obs_script import chat_diffusion_protocol as p
    from tests.test_app_wiring import Silent

    settings = Settings()
    settings.link.port = 0
    settings.twitch.client_id, settings.twitch.id_url = fake_id.client_id, fake_id.url
    issued = fake_id.issue()
    tokens = auth.Tokens(issued["access_token"], issued["refresh_token"], login="streamer")
    auth.save_tokens(auth.token_path(tmp_path, "broadcaster"), tokens)
    fake_id.dead_refresh = True
    keeper, hosts = app._chat_login(settings, tmp_path)
    assert keeper is not None
    gallery = Gallery.from_settings(settings.gallery, tmp_path / "gallery")
    host = app.Host(settings, tmp_path, Silent(), None, gallery, "t" * 32)

    def status_lines(port: int) -> list[str]:
        ws = websocket.create_connection(f"ws://127.0.0.1:{port}", timeout=5, suppress_origin=True)
        ws.send(p.encode(p.make_hello("t" * 32, "test OBS"), "script").text)
        seen: list[str] = []
        try:
            while not any("log in again" in s for s in seen):
                msg = p.decode(ws.recv(), "host").message or {}
                if msg.get("type") == "status":
                    seen.append(msg["text"])
        finally:
            ws.close()
        return seen

    async def main() -> list[str]:
        ready = asyncio.Event()
        task = asyncio.ensure_future(host.run(on_ready=lambda h: (hosts.append(h), ready.set())))
        await asyncio.wait_for(ready.wait(), 10)
        reading = asyncio.ensure_future(asyncio.to_thread(status_lines, host.link.port))
        await asyncio.sleep(0.3)  # the script has said hello
        assert not await keeper.refresh()
        seen = await asyncio.wait_for(reading, 10)
        assert not task.done()  # the host runs on
        host.stopped.set()
        await asyncio.wait_for(task, 10)
        return seen

    seen = asyncio.run(main())
    assert seen[-1] == "Twitch broadcaster login expired: log in again: generator-host login"
    assert not any("secret" in s for s in seen)


def test_the_login_is_validated_at_start_and_every_interval(
    tmp_path: Path, fake_id: FakeTwitchId
) -> None:
    keeper = _keeper(fake_id, tmp_path, life=3600, validate_every=0.3)

    async def main() -> None:
        task = asyncio.ensure_future(keeper.keep())
        await asyncio.sleep(1.0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())
    checks = fake_id.calls_to("/oauth2/validate")
    assert 3 <= len(checks) <= 5  # at start, then every 0.3 s
    assert {c.auth for c in checks} == {f"OAuth {keeper.tokens.access_token}"}
    assert keeper.refreshes == 0


def test_a_dead_login_at_start_stops_with_one_clear_line(
    tmp_path: Path, fake_id: FakeTwitchId
) -> None:
    from generator_host.edges.chat.irc import LoginFailed

    server = TwitchServer("streamer", expected_token="not-ours").start()
    keeper = _keeper(fake_id, tmp_path, life=3600)
    fake_id.dead_refresh = True

    async def main() -> None:
        adapter = TwitchAdapter(_settings(server), tokens=keeper, backoff_base=0.05)
        await asyncio.wait_for(adapter.run(lambda e: None), 10)

    try:
        with pytest.raises(LoginFailed) as refused:
            asyncio.run(main())
    finally:
        server.stop()
    assert "log in again: generator-host login" in str(refused.value)
    assert "secret" not in str(refused.value)


def test_a_fresh_token_refused_too_is_refreshed_once_not_in_a_loop(
    tmp_path: Path, fake_id: FakeTwitchId
) -> None:
    from generator_host.edges.chat.irc import LoginFailed

    server = TwitchServer("streamer", expected_token="not-ours").start()  # e.g. scopes missing
    keeper = _keeper(fake_id, tmp_path, life=3600)

    async def main() -> None:
        adapter = TwitchAdapter(_settings(server), tokens=keeper, backoff_base=0.05)
        await asyncio.wait_for(adapter.run(lambda e: None), 10)

    try:
        with pytest.raises(LoginFailed) as refused:
            asyncio.run(main())
    finally:
        server.stop()
    assert keeper.refreshes == 1
    assert len(server.sent("PASS")) == 2
    assert "chat:read" in str(refused.value)  # says what to check


@pytest.mark.model
def test_run_uses_the_stored_login_and_refreshes_an_expired_token_at_start(
    tmp_path: Path, fake_id: FakeTwitchId, tiny_model_dir: Path
) -> None:
    import signal
    import time

    server = TwitchServer("streamer", expected_token=fake_id.irc_token).start()
    issued = fake_id.issue(expires_in=0.1)  # expired by the time the host starts
    data = tmp_path / "data"
    path = auth.token_path(data, "broadcaster")
    old = auth.Tokens(issued["access_token"], issued["refresh_token"], login="streamer")
    auth.save_tokens(path, old)
    cfg = _config(tmp_path, fake_id)
    cfg.write_text(
        cfg.read_text()
        + f'host = "127.0.0.1"\nport = {server.port}\ntls = false\n'
        + f'[model]\nmodel = "{tiny_model_dir}"\ndevice = "cpu"\nwarmup = false\n'
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    env.pop("CHAT_DIFFUSION_TWITCH_TOKEN", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "generator_host", "run", "--config", str(cfg),
         "--data-dir", str(data), "--link-port", "0"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        assert server.wait_for(lambda: len(server.joins) == 1, 90), "the host did not join"
        server.privmsg("viewer", "!queue")
        assert server.wait_for(lambda: len(server.sent("PRIVMSG")) >= 1, 10)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
            server.stop()
    time.sleep(0)  # the host is gone
    assert "chat as the broadcaster account 'streamer'" in out
    assert "refreshed" in out, out
    passes = [s.line for s in server.sent("PASS")]  # the expired one may be tried first
    assert passes[-1] == f"PASS oauth:{fake_id.current}" and len(passes) <= 2
    assert len(fake_id.calls_to("/oauth2/token")) == 1  # validation and the refusal: one refresh
    stored = auth.load_tokens(path)
    assert stored is not None and stored.access_token == fake_id.current != old.access_token
    assert "secret" not in out


def test_slow_down_lengthens_the_polling_interval_and_an_expired_code_says_so(
    fake_id: FakeTwitchId,
) -> None:
    import io

    fake_id.slow_down_polls, fake_id.authorize_after = 1, 2
    client = auth.IdClient(fake_id.client_id, fake_id.url)
    waits: list[float] = []
    out = io.StringIO()
    tokens = auth.device_login(client, ["chat:read"], account="bot", out=out,
                               open_browser=False, sleep=waits.append)  # fmt: skip
    assert waits == [0.2, 5.2, 5.2]  # RFC 8628: each slow_down adds 5 s
    assert tokens.login == "streamer" and "secret" not in out.getvalue()

    now = [0.0]
    fake_id.authorize_after = 10**6  # never authorized
    fake_id.interval = 600.0  # the code (1800 s) expires after three polls

    def sleep(seconds: float) -> None:
        now[0] += seconds

    with pytest.raises(auth.AuthError, match="code expired"):
        auth.device_login(client, ["chat:read"], account="bot", out=io.StringIO(),
                          open_browser=False, sleep=sleep, clock=lambda: now[0])  # fmt: skip
