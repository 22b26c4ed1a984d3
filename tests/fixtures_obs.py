"""Fixtures for the OBS link and script tests.

`RunningLink` is the host's real LinkServer on its own asyncio loop (a thread), driven
synchronously from tests, so the OBS side can be tested against the real server. The
`obs_instance` fixture (real OBS under Xvfb) lives in tests/obs_harness.py.
"""

from __future__ import annotations

import asyncio
import io
import logging
import queue
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from tests.requirements import require

__all__ = ["RunningLink", "make_png", "make_cert", "link_server", "LINK_TOKEN"]

LINK_TOKEN = "test-token-1234567890"


def make_png(color: tuple[int, int, int], size: int = 16) -> bytes:
    """A solid-colour PNG: easy to recognise again in a screenshot."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, "PNG")
    return buf.getvalue()


def make_cert(folder: Any) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 (cert, key); needs openssl (require())."""
    import shutil
    import subprocess
    from pathlib import Path

    require(shutil.which("openssl") is not None, "openssl is not installed")
    cert, key = Path(folder) / "cert.pem", Path(folder) / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return str(cert), str(key)


class _ConnectCounter(logging.Handler):
    """Counts the host's "OBS script connected" log lines: one per link a script opens."""

    def __init__(self, thread: threading.Thread) -> None:
        super().__init__(logging.INFO)
        self.thread = thread  # the host's loop: other hosts in this process log too
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread != self.thread.ident:
            return
        if record.getMessage().startswith("OBS script connected"):
            self.count += 1


class RunningLink:
    """A real LinkServer on a background loop; `received` gets what scripts send.

    `connects` counts the links scripts opened, from the host's own log lines.
    Like the host, it owns live settings (`live`, a real Settings): a connecting script
    gets them first, and a proposed change goes through the host's own check
    (settings.apply_changes) and is sent back to every script.
    """

    def __init__(self, settings: Any = None, token: str = LINK_TOKEN, port: int = 0) -> None:
        from generator_host.core.settings import LinkSettings, Settings
        from generator_host.edges.link import LinkServer
        from obs_script import chat_diffusion_protocol as p

        self.received: queue.Queue[dict] = queue.Queue()
        self.live = Settings()
        self.send_settings = True  # False: only `state` on connect (tests of the link alone)
        self._tasks: set[asyncio.Task] = set()
        self.state: list[dict] = [p.make_state(None, p.make_status("idle"))]
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self._counter = _ConnectCounter(self.thread)
        self._logger = logging.getLogger("generator_host.edges.link")
        self._logger.addHandler(self._counter)
        self._raised = not self._logger.isEnabledFor(logging.INFO)
        if self._raised:  # INFO lines must be made to be counted
            self._logger.setLevel(logging.INFO)
        self.server = LinkServer(
            settings or LinkSettings(port=port),
            token,
            self._on_message,
            lambda: [self.settings_message()] * self.send_settings + self.state,
        )
        self.call(self.server.start())
        scheme = "wss" if self.server.settings.tls_cert else "ws"
        self.url = f"{scheme}://127.0.0.1:{self.server.port}"
        self.port = self.server.port

    def settings_message(self, note: str = "") -> dict:
        from generator_host.core import settings as st
        from obs_script import chat_diffusion_protocol as p

        return p.make_settings(st.live_values(self.live, "obs"), st.live_schema("obs"), note)

    def _on_message(self, msg: dict) -> None:
        from generator_host.core.settings import apply_changes

        self.received.put(msg)
        if msg["type"] == "change":
            changes, refused = apply_changes(self.live, msg["values"], "obs")
            note = "; ".join([c.describe() for c in changes] + refused)
            task = asyncio.ensure_future(self.server.broadcast(self.settings_message(note)))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def wait_connected(self, count: int = 1, timeout: float = 20.0) -> None:
        """Until `count` scripts have said a valid hello (they then get the settings)."""
        import time

        deadline = time.monotonic() + timeout
        while self.server.client_count < count:
            assert time.monotonic() < deadline, "no OBS script connected"
            time.sleep(0.02)

    def call(self, coro: Any, timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def broadcast(self, msg: dict) -> None:
        self.call(self.server.broadcast(msg))

    def show(self, entry_id: int, png: bytes, requester: str = "", prompt: str = "") -> None:
        """Broadcast an image and make it the state a (re)connecting script gets."""
        from obs_script import chat_diffusion_protocol as p

        msg = p.make_show(entry_id, png, requester, prompt)
        self.state = [p.make_state(msg, p.make_status("idle"))]
        self.broadcast(msg)

    def next_message(self, kind: str, timeout: float = 5.0) -> dict:
        """The next message of `kind` the host received (others are skipped)."""
        import time

        deadline = time.monotonic() + timeout
        while True:
            msg = self.received.get(timeout=max(0.01, deadline - time.monotonic()))
            if msg["type"] == kind:
                return msg

    @property
    def connects(self) -> int:
        """How many links scripts have opened to this host (its log's connect lines)."""
        return self._counter.count

    def close(self) -> None:
        if self.loop.is_closed():
            return
        self._logger.removeHandler(self._counter)
        if self._raised:
            self._logger.setLevel(logging.NOTSET)
        self.call(self.server.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def link_server() -> Iterator[RunningLink]:
    running = RunningLink()
    yield running
    running.close()
