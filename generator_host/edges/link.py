"""The host's end of the link to OBS: a websocket server the OBS script connects to.

Why a server on the host: the streamer starts OBS and the host in any order, several OBS
instances may watch one host, and the host may run on a GPU machine elsewhere (then with
TLS). Every connection must first prove it knows the shared token; browsers are refused
outright (a web page must not drive the show), and hostile frames get an error reply,
never a crash. Message shapes live in `obs_script.chat_diffusion_protocol`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import secrets
import ssl
from collections.abc import Callable
from pathlib import Path

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from generator_host.core.settings import LinkSettings
from generator_host.edges.failures import FailedAttempts
from generator_host.edges.files import write_private
from obs_script import chat_diffusion_protocol as protocol

log = logging.getLogger(__name__)

HELLO_TIMEOUT = 10.0  # seconds a connection may stay silent before its hello
SEND_TIMEOUT = 10.0  # a client slower than this for one frame is dropped (it reconnects)
MAX_ERRORS_IN_A_ROW = 50  # malformed frames in a row before a client is cut off
# Keepalive (docs/protocol.md, "Liveness"): websockets pings each script this often and
# drops one whose pong is this late. The script answers at once (it reads whenever bytes
# arrive) and pings the host every 2 s itself, which websockets answers: each side finds
# a dead peer on its own, neither mistakes a quiet one for dead.
PING_INTERVAL = 20.0
PING_TIMEOUT = 20.0


def load_or_create_token(path: Path) -> str:
    """The link token: read from `path`, or generated there on first run (user-only file).

    Kept in a file (not the config) so `init` templates never carry it; never logged.
    """
    path = Path(path)
    try:
        token = path.read_text(encoding="utf-8-sig").strip()
    except FileNotFoundError:
        token = ""
    if token:
        with contextlib.suppress(OSError):
            if os.name == "posix" and path.stat().st_mode & 0o077:
                path.chmod(0o600)
        return token
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    token = secrets.token_urlsafe(24)
    write_private(path, token + "\n")
    return token


def _ssl_context(settings: LinkSettings) -> ssl.SSLContext | None:
    if not settings.tls_cert:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(settings.tls_cert, settings.tls_key or None)
    return ctx


class LinkServer:
    """Websocket server for OBS scripts: authenticate, send state, relay messages.

    `on_message` gets every valid `settings`/`action` message from an authenticated
    script (Python form, see the protocol module); `initial_state()` returns the messages
    a newly connected script needs (normally one `state`), so nothing depends on history.
    """

    def __init__(
        self,
        settings: LinkSettings,
        token: str,
        on_message: Callable[[dict], None],
        initial_state: Callable[[], list[dict]],
    ) -> None:
        if not token:
            raise ValueError("the link needs a non-empty token")
        self.settings = settings
        self._token = token.encode("utf-8")
        self._on_message = on_message
        self._initial_state = initial_state
        self._server: Server | None = None
        # authenticated connections, each with a lock that keeps its frames in order
        self._clients: dict[ServerConnection, asyncio.Lock] = {}
        self.failures = FailedAttempts()  # wrong tokens per address (edges/failures.py)
        self.port: int = settings.port

    @property
    def client_count(self) -> int:
        """How many authenticated OBS scripts are connected now."""
        return len(self._clients)

    async def start(self) -> None:
        self._server = await serve(
            self._handle,
            self.settings.host,
            self.settings.port,
            ssl=_ssl_context(self.settings),
            process_request=self._check_request,
            max_size=protocol.MAX_SCRIPT_FRAME,
            max_queue=16,
            write_limit=2**20,
            ping_interval=PING_INTERVAL,
            ping_timeout=PING_TIMEOUT,
            close_timeout=2,
            server_header=None,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        scheme = "wss" if self.settings.tls_cert else "ws"
        log.info("OBS link listening on %s://%s:%d", scheme, self.settings.host, self.port)

    async def stop(self, reason: str = "host is shutting down") -> None:
        """Say `bye` to every script, then close the server."""
        if self._server is None:
            return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.broadcast(protocol.make_bye(reason)), 2.0)
        self._server.close(close_connections=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 5.0)
        self._server = None
        self._clients.clear()

    async def broadcast(self, msg: dict) -> None:
        """Send one message to every authenticated script; invalid messages are logged.

        `msg` is a protocol message in Python form (build it with the protocol module's
        `make_show`, `make_clear`, `make_status`...; images as PNG bytes).
        """
        if not self._clients:
            return
        text = await self._encode(msg)
        if text is None:
            return
        clients = list(self._clients.items())
        await asyncio.gather(*(self._send(ws, lock, text) for ws, lock in clients))

    # --- internals ------------------------------------------------------------------------

    async def _encode(self, msg: dict) -> str | None:
        # Images are base64-encoded off the loop: a 9-image grid is megabytes.
        if msg.get("type") in ("show", "state"):
            encoded = await asyncio.to_thread(protocol.encode, msg, "host")
        else:
            encoded = protocol.encode(msg, "host")
        if encoded.error:
            log.error("not sending an invalid %r message: %s", msg.get("type"), encoded.error)
            return None
        return encoded.text

    async def _send(self, ws: ServerConnection, lock: asyncio.Lock, text: str) -> None:
        try:
            async with lock:
                await asyncio.wait_for(ws.send(text), SEND_TIMEOUT)
        except (ConnectionClosed, TimeoutError, asyncio.TimeoutError):
            self._clients.pop(ws, None)
            with contextlib.suppress(Exception):
                await ws.close(1011, "too slow")

    def _check_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """Refuse browsers: any Origin header means a web page is trying to connect."""
        if "Origin" in request.headers:
            log.warning("refused a browser connection (Origin header present)")
            return connection.respond(403, "Browsers may not connect to the OBS link.\n")
        return None

    async def _handshake(self, ws: ServerConnection, peer: str) -> dict | None:
        """Wait for a valid hello with the right token; close with a reason otherwise."""
        try:
            raw = await asyncio.wait_for(ws.recv(), HELLO_TIMEOUT)
        except (TimeoutError, asyncio.TimeoutError):
            await ws.close(protocol.CLOSE_NO_HELLO, "no hello within 10 s")
            return None
        decoded = protocol.decode(raw, "script")
        msg = decoded.message
        if msg is None or msg["type"] != "hello":
            if decoded.error.startswith("unsupported protocol version"):
                code, reason = protocol.CLOSE_BAD_VERSION, decoded.error
            else:
                code, reason = protocol.CLOSE_NO_HELLO, "first frame must be a valid hello"
            await ws.close(code, reason[:120])
            return None
        if not hmac.compare_digest(msg["token"].encode("utf-8"), self._token):
            delay = self.failures.penalty(peer)
            self.failures.failed(peer)
            log.warning("OBS script from %s refused: wrong token", peer)
            if delay:
                await asyncio.sleep(delay)
            await ws.close(
                protocol.CLOSE_BAD_TOKEN, "wrong token: copy the host's link token into the script"
            )
            return None
        self.failures.succeeded(peer)
        return msg

    async def _handle(self, ws: ServerConnection) -> None:
        peer = str(ws.remote_address[0]) if ws.remote_address else "?"
        try:
            hello = await self._handshake(ws, peer)
            if hello is None:
                return
            name = hello["client"] or "OBS"
            lock = asyncio.Lock()
            async with lock:
                # Snapshot and registration with no await between them: every later
                # broadcast reaches this script, and only after the state it builds on.
                state = self._safe_initial_state()
                self._clients[ws] = lock
                for msg in state:
                    text = await self._encode(msg)
                    if text is not None:
                        await ws.send(text)
            log.info(
                "OBS script connected: %s from %s (%d connected)", name, peer, len(self._clients)
            )
            await self._serve(ws)
        except ConnectionClosed:
            pass
        except Exception:  # noqa: BLE001 - one bad connection must not take the host down
            log.exception("OBS link connection from %s failed", peer)
        finally:
            if self._clients.pop(ws, None) is not None:
                log.info("OBS script disconnected (%d connected)", len(self._clients))

    def _safe_initial_state(self) -> list[dict]:
        try:
            return list(self._initial_state())
        except Exception:  # noqa: BLE001
            log.exception("initial_state() failed; the script starts with a blank screen")
            return []

    async def _serve(self, ws: ServerConnection) -> None:
        errors = 0
        async for raw in ws:
            decoded = protocol.decode(raw, "script")
            msg = decoded.message
            if msg is None or msg["type"] == "hello":
                errors += 1
                reason = decoded.error or "already said hello"
                if errors >= MAX_ERRORS_IN_A_ROW:
                    await ws.close(1008, "too many invalid messages")
                    return
                error = protocol.encode(protocol.make_error(reason), "host").text
                async with self._clients.get(ws) or asyncio.Lock():
                    await ws.send(error or "")
                continue
            errors = 0
            if msg["type"] == "error":
                log.warning("OBS script reports: %s", msg["reason"])
                continue
            try:
                self._on_message(msg)
            except Exception:  # noqa: BLE001
                log.exception("handling a %r message from OBS failed", msg["type"])
