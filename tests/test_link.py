"""The host's link server against a real websocket client (websocket-client, as in OBS).

The server runs on its own asyncio loop in a thread, as inside the host; the tests talk
to it over 127.0.0.1 exactly as the OBS script does.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import ssl
import stat
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import websocket

from generator_host.core.settings import LinkSettings
from generator_host.edges import link as link_mod
from generator_host.edges.failures import FREE_FAILURES
from generator_host.edges.link import load_or_create_token
from obs_script import chat_diffusion_protocol as p
from tests.fixtures_obs import LINK_TOKEN, RunningLink, make_cert, make_png

TOKEN = LINK_TOKEN


@pytest.fixture
def link(link_server: RunningLink) -> RunningLink:
    link_server.send_settings = False  # the link alone: what the host sends is its business
    return link_server


def connect(url: str, token: str = TOKEN, **opts: Any) -> websocket.WebSocket:
    """Connect and say hello the way the OBS script does (no Origin header)."""
    ws = websocket.create_connection(url, timeout=5, suppress_origin=True, **opts)
    ws.send(p.encode(p.make_hello(token, "test OBS"), "script").text)
    return ws


def recv(ws: websocket.WebSocket) -> dict:
    dec = p.decode(ws.recv(), "host")
    assert dec.message is not None, dec.error
    return dec.message


def close_of(ws: websocket.WebSocket) -> tuple[int, str]:
    """Read until the server closes; return its close code and reason."""
    while True:
        opcode, data = ws.recv_data(control_frame=True)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            code = int.from_bytes(data[:2], "big") if len(data) >= 2 else 1005
            ws.shutdown()
            return code, data[2:].decode("utf-8", "replace")


def test_a_connected_script_gets_the_state_then_every_image(link: RunningLink) -> None:
    ws = connect(link.url)
    state = recv(ws)
    assert state["type"] == "state" and state["status"]["text"] == "idle"
    red = make_png((255, 0, 0))
    link.broadcast(p.make_show(5, red, "alice", "a red square"))
    shown = recv(ws)
    assert shown["type"] == "show" and shown["image"] == red and shown["requester"] == "alice"
    link.broadcast(p.make_status("generating 1/2", 1, 2, 3))
    assert recv(ws)["queue"] == 3
    ws.close()


def test_buttons_and_settings_reach_the_host(link: RunningLink) -> None:
    ws = connect(link.url)
    recv(ws)
    change = {"show.grid": 4, "safety.approval_mode": "hold"}
    ws.send(p.encode(p.make_change(change), "script").text)
    ws.send(p.encode(p.make_action("approve"), "script").text)
    proposal = link.received.get(timeout=5)
    assert proposal["type"] == "change" and proposal["values"] == change
    assert link.received.get(timeout=5)["action"] == "approve"
    ws.close()


def test_wrong_token_is_refused_with_a_clear_reason(link: RunningLink) -> None:
    ws = connect(link.url, token="guess")
    code, reason = close_of(ws)
    assert code == p.CLOSE_BAD_TOKEN and "token" in reason
    assert link.server.client_count == 0


def test_repeated_wrong_tokens_are_slowed_down(link: RunningLink) -> None:
    for _ in range(FREE_FAILURES):
        start = time.monotonic()
        close_of(connect(link.url, token="guess"))
        assert time.monotonic() - start < 0.4
    start = time.monotonic()
    close_of(connect(link.url, token="guess"))
    assert time.monotonic() - start >= 0.45
    # the right token still gets in, and resets the count
    ws = connect(link.url)
    assert recv(ws)["type"] == "state"
    ws.close()


def test_missing_hello_and_wrong_version_are_refused(
    link: RunningLink, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = websocket.create_connection(link.url, timeout=5, suppress_origin=True)
    ws.send(json.dumps({"v": 1, "type": "action", "action": "clear"}))
    assert close_of(ws)[0] == p.CLOSE_NO_HELLO
    ws = websocket.create_connection(link.url, timeout=5, suppress_origin=True)
    ws.send(json.dumps({"v": 99, "type": "hello", "token": TOKEN}))
    code, reason = close_of(ws)
    assert code == p.CLOSE_BAD_VERSION and "version 99" in reason
    monkeypatch.setattr(link_mod, "HELLO_TIMEOUT", 0.3)
    ws = websocket.create_connection(link.url, timeout=5, suppress_origin=True)
    assert close_of(ws)[0] == p.CLOSE_NO_HELLO
    assert link.received.empty()


def test_browsers_are_refused(link: RunningLink) -> None:
    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        websocket.create_connection(link.url, timeout=5, origin="https://evil.example")
    assert info.value.status_code == 403
    # websocket-client's default also sends an Origin: the script must suppress it
    with pytest.raises(websocket.WebSocketBadStatusException):
        websocket.create_connection(link.url, timeout=5)


def test_malformed_frames_get_an_error_and_the_connection_stays(link: RunningLink) -> None:
    ws = connect(link.url)
    recv(ws)
    for junk in ("{not json", '{"v":1,"type":"action","action":"explode"}', "[" * 5000, "null"):
        ws.send(junk)
        answer = recv(ws)
        assert answer["type"] == "error" and answer["reason"]
    ws.send_binary(b"\x00\xff")
    assert "binary" in recv(ws)["reason"]
    ws.send(p.encode(p.make_action("next"), "script").text)
    assert link.received.get(timeout=5)["action"] == "next"
    ws.close()


def test_oversize_frames_close_only_that_connection(link: RunningLink) -> None:
    ws = connect(link.url)
    recv(ws)
    ws.send("x" * (p.MAX_SCRIPT_FRAME + 10))
    assert close_of(ws)[0] == 1009
    other = connect(link.url)
    assert recv(other)["type"] == "state"
    other.close()


def test_a_failing_host_callback_does_not_drop_the_script(link: RunningLink) -> None:
    called = threading.Event()

    def boom(msg: dict) -> None:
        called.set()
        raise RuntimeError("host bug")

    link.server._on_message = boom
    ws = connect(link.url)
    recv(ws)
    ws.send(p.encode(p.make_action("clear"), "script").text)
    assert called.wait(5), "the host callback was never called"  # it has raised by now
    link.broadcast(p.make_clear())
    assert recv(ws)["type"] == "clear"
    link.server._on_message = link.received.put  # and the script's next action still arrives
    ws.send(p.encode(p.make_action("next"), "script").text)
    assert link.received.get(timeout=5)["action"] == "next"
    ws.close()


def test_several_obs_instances_all_get_each_broadcast(link: RunningLink) -> None:
    clients = [connect(link.url) for _ in range(3)]
    for ws in clients:
        recv(ws)
    assert link.server.client_count == 3
    link.broadcast(p.make_show(1, make_png((0, 255, 0)), "bob", "green"))
    for ws in clients:
        assert recv(ws)["entry_id"] == 1
        ws.close()


def test_stop_says_bye_to_every_script(link: RunningLink) -> None:
    ws = connect(link.url)
    recv(ws)
    stopping = asyncio.run_coroutine_threadsafe(link.server.stop("restarting"), link.loop)
    bye = recv(ws)
    assert bye["type"] == "bye" and bye["reason"] == "restarting"
    assert close_of(ws)[0] in (1000, 1001)
    stopping.result(5)


def test_invalid_broadcasts_are_not_sent(link: RunningLink) -> None:
    ws = connect(link.url)
    recv(ws)
    link.broadcast(p.make_show(1, b"not a png"))
    link.broadcast(p.make_clear())
    assert recv(ws)["type"] == "clear"
    ws.close()


def test_listens_on_localhost_only_by_default() -> None:
    assert LinkSettings().host == "127.0.0.1"


def test_token_file_is_created_once_private_and_never_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    path = tmp_path / "data" / "link-token"
    token = load_or_create_token(path)
    assert len(token) >= 24 and load_or_create_token(path) == token
    if os.name == "posix":
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    running = RunningLink(token=token)
    try:
        close_of(connect(running.url, token=token + "x"))
        ws = connect(running.url, token=token)
        recv(ws)
        ws.close()
    finally:
        running.close()
    assert token not in caplog.text


def test_tls_link(tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path)
    running = RunningLink(LinkSettings(port=0, tls_cert=str(cert), tls_key=str(key)))
    try:
        assert running.url.startswith("wss://")
        ws = connect(running.url, sslopt={"ca_certs": str(cert)})
        assert recv(ws)["type"] == "settings"
        ws.close()
        with pytest.raises(ssl.SSLError):
            connect(running.url)  # an unknown certificate is not trusted silently
    finally:
        running.close()
