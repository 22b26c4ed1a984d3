"""Fixtures for the twitch tests: a local Twitch-dialect server and settings pointing at it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator

import pytest

from generator_host.core.settings import TwitchSettings
from tests.reliability_helpers import RecordingTwitchServer
from tests.twitch_server import TwitchServer

__all__ = ["server", "twitch_server", "twitch_settings", "until"]


@pytest.fixture
def twitch_server() -> Iterator[TwitchServer]:
    """A started local server for channel `streamer`; stopped after the test."""
    server = TwitchServer("streamer").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def server() -> Iterator[RecordingTwitchServer]:
    """The reliability tests' server: `twitch_server` that also records deliveries."""
    srv = RecordingTwitchServer("streamer").start()
    yield srv
    srv.stop()


@pytest.fixture
def twitch_settings(twitch_server: TwitchServer) -> TwitchSettings:
    """Bot settings for the local server: plain TCP, a fake token, a fast send limit."""
    return TwitchSettings(
        channel="streamer",
        login="paintbot",
        token="sekrit-token-123",
        host="127.0.0.1",
        port=twitch_server.port,
        tls=False,
        send_limit=20,
        send_window=30.0,
    )


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll `predicate` on the running loop until true or `timeout` seconds passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.01)
    return predicate()
