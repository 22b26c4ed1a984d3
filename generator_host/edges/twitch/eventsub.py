"""Twitch's EventSub over WebSocket: a session that stays up and hands over each event once.

The protocol as Twitch documents it:
- connect; the first message is `session_welcome` (session id, keepalive timeout); the
  subscriptions must be made within about 10 s (`on_welcome` does it);
- silence longer than the keepalive timeout means a dead connection: reconnect to the
  base URL and subscribe again (a new session has no subscriptions);
- `session_reconnect` carries a `reconnect_url`: connect there, wait for its welcome, then
  close the old connection (the subscriptions carry over; events still buffered on the
  old one are read first);
- `revocation`: a subscription ended (`on_revocation` decides what to do);
- the same notification may come twice: de-duplicated on `metadata.message_id` here (the
  caller also de-duplicates on the redemption's id, across restarts).
A message that is not what Twitch sends (bad JSON, wrong shapes, hostile sizes) is one
log line and ignored; nothing a server sends ends the session but a close or silence.
Why hand-written on aiohttp: see helix.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

log = logging.getLogger("generator_host.edges.twitch.eventsub")

WELCOME_TIMEOUT = 10.0
KEEPALIVE_GRACE = 2.0  # added to Twitch's keepalive timeout before a connection is dead
MAX_MESSAGE = 512 * 1024
SEEN_KEPT = 2000


class EventSub:
    """Runs one EventSub WebSocket session until `stop()`; see the module docstring."""

    def __init__(
        self,
        url: str,
        session: aiohttp.ClientSession,
        *,
        on_welcome: Callable[[str], Awaitable[None]],
        on_notification: Callable[[str, dict[str, Any]], None],
        on_revocation: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
        keepalive_grace: float = KEEPALIVE_GRACE,
        retry_max: float = 60.0,
    ) -> None:
        self.url = url
        self.session = session
        self.on_welcome = on_welcome
        self.on_notification = on_notification
        self.on_revocation = on_revocation
        self.keepalive_grace = keepalive_grace
        self.retry_max = retry_max
        self.session_id = ""
        self.connections = 0  # how many times a session was (re)made, for the log and tests
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._keepalive = WELCOME_TIMEOUT
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._stopping = False

    async def stop(self) -> None:
        self._stopping = True
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close()

    async def run(self) -> None:
        """Connect, subscribe, read; reconnect with backoff after a drop or silence."""
        backoff = 0.0  # the first retry at once (Twitch: reconnect right away), then doubling
        while not self._stopping:
            try:
                ws = await self._connect(self.url)
                try:
                    await self.on_welcome(self.session_id)
                except Exception as exc:  # noqa: BLE001 - subscribing failed: said, retried
                    log.warning("EventSub: subscribing failed (%s); reconnecting", exc)
                    await ws.close()
                    raise ConnectionError("subscription failed") from None
                backoff = 0.0
                await self._read(ws)
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError, ConnectionError) as exc:
                if self._stopping:
                    break
                log.warning("EventSub: connection lost (%s); again in %.0f s", exc or
                            type(exc).__name__, backoff)  # fmt: skip
                await asyncio.sleep(backoff)
                backoff = min(self.retry_max, max(1.0, backoff * 2))

    async def _connect(self, url: str) -> aiohttp.ClientWebSocketResponse:
        """A connection whose welcome arrived; sets the session id and keepalive."""
        ws = await self.session.ws_connect(url, heartbeat=None, max_msg_size=MAX_MESSAGE)
        try:
            while True:
                msg = await ws.receive(timeout=WELCOME_TIMEOUT)
                if msg.type != aiohttp.WSMsgType.TEXT:
                    raise ConnectionError(f"no welcome ({msg.type.name})")
                parsed = _parse(msg.data)
                if parsed is None:
                    continue
                kind, payload, _ = parsed
                if kind == "session_welcome":
                    session = payload.get("session") or {}
                    self.session_id = str(session.get("id") or "")
                    keepalive = session.get("keepalive_timeout_seconds")
                    if isinstance(keepalive, int | float) and 0 < keepalive <= 600:
                        self._keepalive = float(keepalive)
                    if not self.session_id:
                        raise ConnectionError("welcome without a session id")
                    break
        except BaseException:
            await ws.close()
            raise
        self.connections += 1
        self._ws = ws
        log.info("EventSub: session %s (keepalive %.0f s)", self.session_id[:12], self._keepalive)
        return ws

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Messages until the connection closes or falls silent (raises ConnectionError)."""
        while not self._stopping:
            try:
                msg = await ws.receive(timeout=self._keepalive + self.keepalive_grace)
            except asyncio.TimeoutError:
                await ws.close()
                raise ConnectionError(f"no keepalive for {self._keepalive:.0f} s") from None
            if msg.type != aiohttp.WSMsgType.TEXT:
                if msg.type in (aiohttp.WSMsgType.BINARY,):
                    log.warning("EventSub: a binary message ignored")
                    continue
                if self._stopping:
                    return
                raise ConnectionError(f"closed ({ws.close_code})")
            parsed = _parse(msg.data)
            if parsed is None:
                continue
            kind, payload, _ = parsed
            if kind == "session_reconnect":
                ws = await self._hand_over(ws, payload)
            else:
                await self._handle(parsed)

    async def _hand_over(
        self, old: aiohttp.ClientWebSocketResponse, payload: dict[str, Any]
    ) -> aiohttp.ClientWebSocketResponse:
        """session_reconnect: the new connection's welcome first, then the old one's
        buffered messages, then the old one closed."""
        url = (payload.get("session") or {}).get("reconnect_url")
        if not isinstance(url, str) or not url.startswith(("ws://", "wss://")):
            log.warning("EventSub: a session_reconnect without a usable URL ignored")
            return old
        new = await self._connect(url)
        while True:
            try:
                msg = await old.receive(timeout=0.05)
            except asyncio.TimeoutError:
                break
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            parsed = _parse(msg.data)
            if parsed is not None and parsed[0] != "session_reconnect":
                await self._handle(parsed)
        await old.close()
        log.info("EventSub: moved to the new connection Twitch asked for")
        return new

    async def _handle(self, parsed: tuple[str, dict[str, Any], dict[str, Any]]) -> None:
        kind, payload, metadata = parsed
        if kind in ("session_keepalive", "session_welcome"):
            return
        message_id = str(metadata.get("message_id") or "")
        if message_id:
            if message_id in self._seen:
                return
            self._seen[message_id] = None
            while len(self._seen) > SEEN_KEPT:
                self._seen.popitem(last=False)
        if kind == "notification":
            sub = payload.get("subscription")
            event = payload.get("event")
            if not isinstance(sub, dict) or not isinstance(event, dict):
                log.warning("EventSub: a notification without subscription or event ignored")
                return
            try:
                self.on_notification(str(sub.get("type", "")), event)
            except Exception:  # a handler bug must not end the session
                log.exception("EventSub: handling a notification failed")
        elif kind == "revocation":
            sub = payload.get("subscription")
            if not isinstance(sub, dict):
                log.warning("EventSub: a revocation without subscription ignored")
                return
            if self.on_revocation is not None:
                await self.on_revocation(sub)
        else:
            log.info("EventSub: message type %r ignored", kind[:40])


def _parse(text: Any) -> tuple[str, dict[str, Any], dict[str, Any]] | None:
    """(message_type, payload, metadata), or None (logged) for what Twitch never sends."""
    try:
        raw = json.loads(text)
    except (ValueError, TypeError, RecursionError):
        log.warning("EventSub: a message that is not JSON ignored (%d characters)", len(text))
        return None
    if not isinstance(raw, dict):
        log.warning("EventSub: a message that is not an object ignored")
        return None
    metadata, payload = raw.get("metadata"), raw.get("payload")
    if not isinstance(metadata, dict) or not isinstance(payload, dict):
        log.warning("EventSub: a message without metadata or payload ignored")
        return None
    kind = metadata.get("message_type")
    if not isinstance(kind, str):
        log.warning("EventSub: a message without a type ignored")
        return None
    return kind, payload, metadata
