"""Twitch chat over IRC (TLS, port 6697 by default): the ChatAdapter for real streams.

Why a small asyncio client of our own instead of an IRC library: Twitch speaks a narrow
dialect (IRCv3 tags, CLEARMSG/CLEARCHAT/RECONNECT, its own login NOTICEs, a strict
per-account send limit) and we need only ~200 lines of it. The general IRC libraries
(irc, pydle, bottom) either run their own loop or thread, or hide reconnects and sending
behind behaviour we would have to override to get Twitch's rules exactly right; twitchio
pulls in its own HTTP client and is moving to EventSub. Parsing and building lines live
in the pure `ircparse` module, so the socket part here stays small and every rule is
tested against a real socket (tests/twitch_server.py).

What it does: PASS/NICK, `CAP REQ :twitch.tv/tags twitch.tv/commands`, JOIN; answers
PING; on RECONNECT joins on a new connection at once while still reading the old one
(Twitch delivers on it until it closes it), then retires the old one, delivering each chat
line once by its `id` tag; after a drop reconnects with
exponential backoff (with jitter); raises `LoginFailed` on Twitch's login NOTICEs; sends
through a limiter that never lets more than Twitch's limit out in any `send_window` (20,
or 100 while USERSTATE says the bot is a moderator or the broadcaster; or a fixed
`send_limit`); drops the oldest waiting reply when too many pile up. The token is never
logged or shown in a repr.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Protocol

from generator_host.core.message import BotStatus, ChatEvent, Role
from generator_host.core.replies import (
    DUPLICATE_SECONDS,
    SendLimiter,  # how Twitch counts, shared with the reply policy
)
from generator_host.core.settings import TwitchSettings
from generator_host.edges.chat import ircparse
from generator_host.edges.twitch.auth import LOG_IN_AGAIN

log = logging.getLogger("generator_host.edges.chat.irc")

LOGIN_FAILURES = ("login authentication failed", "improperly formatted auth", "login unsuccessful")
# The replies policy (core/replies.py) words repeats differently; a line can still repeat
# within Twitch's window when the send queue delays it, so the writer marks an exact repeat.
DUPLICATE_MARK = " \U000e0000"  # invisible; chat clients and commands.py ignore it
_READ_CHUNK = 65536
_MAX_LINE = 65536
SEEN_IDS = 2000  # chat ids remembered to deliver each line once across a handover


def _emit(on_event: Callable[[ChatEvent], None], event: ChatEvent) -> None:
    """Hand one event to the host; the host's bug must not cut the chat."""
    try:
        on_event(event)
    except Exception:
        log.exception("handling %s failed", type(event).__name__)


class TokenSource(Protocol):
    """A login kept alive elsewhere (edges/twitch/auth.TokenKeeper): the current token,
    its account's login name, a refresh when Twitch refused it, and the upkeep task."""

    @property
    def login(self) -> str: ...

    def access_token(self) -> str: ...

    async def renew_after_refusal(self, refused: str) -> bool: ...

    async def keep(self) -> None: ...


class LoginFailed(Exception):
    """Twitch refused the login; the message says what to check (never the token itself)."""


class _Dropped(Exception):
    """The connection ended; reconnect (after backoff unless `now`)."""

    def __init__(self, reason: str, now: bool = False, certificate: bool = False) -> None:
        super().__init__(reason)
        self.now = now
        self.certificate = certificate  # TLS verification failed: retrying alone won't fix it


CERTIFICATE_FIX = (
    "check that this computer's date and time are right; an antivirus or proxy that "
    "inspects encrypted connections must be told to leave {host} alone (or its "
    "certificate added to the system's trusted ones)"
)


def tls_context() -> ssl.SSLContext:
    """The TLS context for Twitch: the system's trusted roots plus certifi's.

    Why both: python.org's Python on macOS ships no root certificates until its "Install
    Certificates.command" is run, so the system's store alone fails there; certifi's
    bundle (Mozilla's roots) always exists. The system's store is kept so a root the
    user trusts (a company proxy's) still works.
    """
    ctx = ssl.create_default_context()
    try:
        import certifi

        ctx.load_verify_locations(cafile=certifi.where())
    except (ImportError, OSError, ssl.SSLError) as exc:  # a broken install: say why
        log.warning("certifi's root certificates are not usable (%s)", exc)
    return ctx


class _Connection:
    """One socket to Twitch and what we know about it."""

    def __init__(
        self, number: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.number = number
        self.reader = reader
        self.writer = writer
        self.logged_in = False
        self.joined = False
        self.sender: asyncio.Task[None] | None = None


class TwitchAdapter:
    """Twitch IRC as a ChatAdapter: `run(on_event)`, `say(text, reply_to)`, `close()`.

    RECONNECT is a handover, not a drop: Twitch keeps delivering on the old connection
    until it closes it, so the old one is read on (`_hand_over`) while a new one logs in
    and joins. Sending moves to the new one when it has joined; the old one is closed when
    Twitch closes it, `handover_grace` seconds after the new one joined, or at the latest
    `handover_max` seconds after the RECONNECT. Both connections see the same chat
    meanwhile, so chat lines are delivered once by their `id` tag (the last
    `SEEN_IDS` ids are remembered). One SendLimiter serves every connection.
    """

    def __init__(
        self,
        settings: TwitchSettings,
        *,
        ssl_context: ssl.SSLContext | None = None,
        backoff_base: float = 1.0,
        stable_seconds: float = 30.0,
        login_timeout: float = 15.0,
        idle_timeout: float = 360.0,
        handover_grace: float = 3.0,
        handover_max: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        tokens: TokenSource | None = None,
    ) -> None:
        self.settings = settings
        self.tokens = tokens  # a stored login (refreshed); None: the pasted [twitch] token
        self.channel = settings.channel.lower().lstrip("#")
        self.login = (settings.login or (tokens.login if tokens else "") or self.channel).lower()
        # Whose lines count; the room id comes with the channel's ROOMSTATE after JOIN.
        self.room = ircparse.Room(self.channel, shared_chat=settings.shared_chat_commands)
        self._ssl = ssl_context
        self.backoff_base = backoff_base
        self.stable_seconds = stable_seconds
        self.login_timeout = login_timeout
        self.idle_timeout = idle_timeout
        self.handover_grace = handover_grace
        self.handover_max = handover_max
        self.clock = clock
        self.elevated = False  # Twitch's USERSTATE says the bot moderates the channel
        self.limiter = SendLimiter(
            settings.send_limit_for(False), settings.send_window, margin=0.03
        )
        self._pending: deque[str] = deque()
        self._wake = asyncio.Event()
        self._limit_changed = asyncio.Event()
        self._stop = asyncio.Event()
        self._conns: set[_Connection] = set()  # open: the current one and any being retired
        self._retiring: set[asyncio.Task[None]] = set()
        self._join_event = asyncio.Event()  # set (and replaced) whenever a connection joins
        self._seen: set[str] = set()
        self._seen_order: deque[str] = deque()
        self._closing = False
        self._joins = 0  # successful joins so far
        self._last_line = ""
        self._last_time = -DUPLICATE_SECONDS
        self.connected = asyncio.Event()  # set while a connection is logged in and joined
        self.connections = 0
        self.dropped_sends = 0
        self.duplicates_dropped = 0
        self._token_sent = ""  # the token of the last chat login (never logged)

    def __repr__(self) -> str:  # never the token
        return f"TwitchAdapter(channel={self.channel!r}, login={self.login!r})"

    # ---- ChatAdapter ------------------------------------------------------------------------
    async def run(self, on_event: Callable[[ChatEvent], None]) -> None:
        """Connect, read forever, reconnect; returns after close(); raises LoginFailed."""
        if not self.channel:
            raise LoginFailed('no Twitch channel set: put channel = "yourname" under [twitch]')
        if self.tokens is None and not self.settings.token.strip():
            raise LoginFailed(
                "no Twitch token: set the environment variable CHAT_DIFFUSION_TWITCH_TOKEN "
                "(or token under [twitch]) to an OAuth token with chat:read and chat:write"
            )
        keeper = asyncio.ensure_future(self.tokens.keep()) if self.tokens else None
        try:
            await self._run(on_event)
        finally:
            if keeper is not None:
                keeper.cancel()
                await asyncio.gather(keeper, return_exceptions=True)
            retiring = list(self._retiring)
            for task in retiring:
                task.cancel()
            if retiring:
                await asyncio.gather(*retiring, return_exceptions=True)

    async def _run(self, on_event: Callable[[ChatEvent], None]) -> None:
        failures = 0
        certificate_reported = False
        renewed_at = -1  # joins so far when the token was last refreshed after a refusal
        while not self._closing:
            started = self.clock()
            try:
                await self._session(on_event)
                return  # closed on purpose
            except LoginFailed as refused:
                if self.tokens is None:
                    raise
                # One refresh per refusal streak: a fresh token refused too (missing
                # scopes, another account) is not fixed by refreshing again.
                renewed = renewed_at == self._joins  # and not joined since
                if not renewed and await self.tokens.renew_after_refusal(self._token_sent):
                    renewed_at = self._joins
                    log.info("Twitch refused the chat login; reconnecting with the refreshed token")
                    continue
                if not self._joins:  # at start: one clear line and stop
                    fix = "" if renewed else f" ({LOG_IN_AGAIN})"
                    raise LoginFailed(f"{refused}{fix}") from None
                renewed_at = -1  # mid-stream: a refresh may be tried again after the pause
                # Mid-stream: the show goes on; retry quietly (a new login is picked up).
                delay = self.settings.reconnect_max_seconds
                log.debug("Twitch chat login refused; retrying in %.0f s", delay)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), timeout=delay)
            except _Dropped as drop:
                if self._closing:
                    return
                if drop.now:
                    log.info(
                        "Twitch asked us to reconnect; joining on a new connection "
                        "while the old one is still read"
                    )
                    failures = 0
                    continue
                if self.clock() - started >= self.stable_seconds:
                    failures = 0
                delay = min(self.backoff_base * 2**failures, self.settings.reconnect_max_seconds)
                delay *= random.uniform(0.8, 1.2)
                failures += 1
                if drop.certificate and not certificate_reported:
                    certificate_reported = True  # once: retries stay quiet until it works
                    fix = CERTIFICATE_FIX.format(host=self.settings.host)
                    log.error("Twitch chat: %s. To fix: %s. Retrying quietly", drop, fix)
                elif drop.certificate:
                    log.debug("Twitch chat: %s; reconnecting in %.1f s", drop, delay)
                else:
                    log.warning(
                        "Twitch chat connection lost (%s); reconnecting in %.1f s", drop, delay
                    )
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), timeout=delay)

    async def say(self, text: str, reply_to: str = "") -> None:
        """Queue a message; it goes out as soon as the send limit allows."""
        line = ircparse.build_privmsg(self.channel, text, reply_to)
        if not line:
            return
        if len(self._pending) >= max(1, self.settings.max_pending_sends):
            self._pending.popleft()
            self.dropped_sends += 1
            log.info("chat send queue full; dropped the oldest waiting message")
        self._pending.append(line)
        self._wake.set()

    async def close(self) -> None:
        self._closing = True
        self._wake.set()
        self._stop.set()
        for conn in list(self._conns):
            with contextlib.suppress(Exception):
                conn.writer.close()

    # ---- one connection -----------------------------------------------------------------------
    async def _session(self, on_event: Callable[[ChatEvent], None]) -> None:
        s = self.settings
        ctx = self._ssl
        if s.tls and ctx is None:
            ctx = self._ssl = tls_context()
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(s.host, s.port, ssl=ctx if s.tls else None),
                timeout=self.login_timeout,
            )
        except ssl.SSLCertVerificationError as exc:
            raise _Dropped(
                f"cannot verify the TLS certificate of {s.host}:{s.port} "
                f"({exc.verify_message or exc})",
                certificate=True,
            ) from None
        except (OSError, asyncio.TimeoutError, ssl.SSLError) as exc:
            raise _Dropped(f"cannot connect to {s.host}:{s.port}: {exc}") from None
        self.connections += 1
        conn = _Connection(self.connections, reader, writer)
        self._conns.add(conn)
        handed_over = False
        try:
            token = (self.tokens.access_token() if self.tokens else s.token).strip()
            self._token_sent = token.removeprefix("oauth:")  # which one a refusal was about
            token = token if token.startswith("oauth:") else f"oauth:{token}"
            self._write_raw(writer, ircparse.build_line("PASS", token))
            self._write_raw(writer, ircparse.build_line("NICK", self.login))
            self._write_raw(writer, "CAP REQ :twitch.tv/tags twitch.tv/commands\r\n")
            await writer.drain()
            log.info("connecting to Twitch chat as %s", self.login)
            lines = self._lines(conn, self.clock() + self.login_timeout)
            async for line in lines:
                if self._handle(conn, line, on_event) and not self._closing:
                    if conn.joined:  # read on until Twitch closes it; join anew meanwhile
                        self._hand_over(conn, lines, on_event)
                        handed_over = True
                    raise _Dropped("RECONNECT", now=True)
                await writer.drain()
            if not self._closing:
                raise _Dropped("connection closed by Twitch")
        except (ConnectionError, OSError) as exc:
            if self._closing:
                return
            raise _Dropped(str(exc) or type(exc).__name__) from None
        finally:
            if not handed_over:
                await self._shut(conn)

    def _handle(
        self, conn: _Connection, line: ircparse.Line, on_event: Callable[[ChatEvent], None]
    ) -> bool:
        """Act on one line from `conn`; True when Twitch asked us to reconnect."""
        cmd = line.command
        if cmd == "PING":
            self._write_raw(
                conn.writer,
                ircparse.build_line("PONG", line.trailing or "tmi.twitch.tv", trailing=True),
            )
        elif cmd == "001":
            conn.logged_in = True
            self._write_raw(conn.writer, ircparse.build_line("JOIN", f"#{self.channel}"))
        elif cmd == "JOIN" and line.nick.lower() == self.login:
            self._joined(conn)
        elif cmd == "RECONNECT":
            return True
        elif cmd == "USERSTATE":
            self._userstate(line, on_event)
        elif cmd == "ROOMSTATE":
            room_id = line.tags.get("room-id", "")
            if room_id and not self.room.room_id and self.room.holds(line):
                self.room = dataclasses.replace(self.room, room_id=room_id)
        elif cmd == "NOTICE" and any(f in line.trailing.lower() for f in LOGIN_FAILURES):
            raise LoginFailed(
                f"Twitch refused the login for {self.login!r}: {line.trailing!r}. "
                "Check that the token is valid, belongs to that account and has "
                "the chat:read and chat:write scopes"
            )
        elif cmd == "NOTICE" and line.tags.get("msg-id", "").startswith("msg_"):
            log.warning("Twitch refused a message: %s", ircparse.sanitize(line.trailing, 200))
        elif cmd == "NOTICE":
            log.info("Twitch notice: %s", ircparse.sanitize(line.trailing, 200))
        else:
            self._deliver(line, on_event)
        return False

    def _joined(self, conn: _Connection) -> None:
        """`conn` joined the channel: it sends from now on (no other connection does)."""
        log.info("joined #%s", self.channel)
        conn.joined = True
        for other in self._conns:
            if other is not conn and other.sender is not None:
                other.sender.cancel()  # cancelled between lines, never within one
        if conn.sender is None:
            conn.sender = asyncio.ensure_future(self._send_loop(conn.writer))
        self.connected.set()
        self._joins += 1
        event, self._join_event = self._join_event, asyncio.Event()
        event.set()

    def _userstate(self, line: ircparse.Line, on_event: Callable[[ChatEvent], None]) -> None:
        """Twitch sends USERSTATE on JOIN and after each message we send: follow the bot's
        moderator status (modded or unmodded mid-stream) with the send limit."""
        elevated = ircparse.role_from_tags(line.tags) >= Role.MODERATOR
        if elevated == self.elevated:
            return
        self.elevated = elevated
        self.limiter.limit = max(1, self.settings.send_limit_for(elevated))
        self._limit_changed.set()
        log.info(
            "the bot is %s in #%s: it sends up to %d messages per %g s",
            "a moderator" if elevated else "not a moderator",
            self.channel,
            self.limiter.limit,
            self.settings.send_window,
        )
        _emit(on_event, BotStatus(elevated=elevated, now=self.clock()))

    def _deliver(self, line: ircparse.Line, on_event: Callable[[ChatEvent], None]) -> None:
        """Pass a chat line on as an event, once per `id` tag (the same line may come on
        both connections during a handover)."""
        event = ircparse.to_event(line, self.clock(), self.room)
        if event is None:
            return
        msg_id = line.tags.get("id", "")
        if msg_id:
            if msg_id in self._seen:
                self.duplicates_dropped += 1
                return
            if len(self._seen_order) >= SEEN_IDS:
                self._seen.discard(self._seen_order.popleft())
            self._seen_order.append(msg_id)
            self._seen.add(msg_id)
        _emit(on_event, event)

    def _hand_over(
        self,
        conn: _Connection,
        lines: AsyncIterator[ircparse.Line],
        on_event: Callable[[ChatEvent], None],
    ) -> None:
        """Keep reading `conn` (after its RECONNECT) in the background until it is retired."""
        # What "the next connection joined" means is fixed now, before any other line runs.
        task = asyncio.ensure_future(
            self._retire(conn, lines, on_event, self._join_event, self.clock())
        )
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _retire(
        self,
        conn: _Connection,
        lines: AsyncIterator[ircparse.Line],
        on_event: Callable[[ChatEvent], None],
        joined: asyncio.Event,
        started: float,
    ) -> None:
        """Read on until Twitch closes `conn`, or `handover_grace` after `joined` is set
        (the next connection joined), or `handover_max` after `started`; then close it."""
        reading = asyncio.ensure_future(self._read_on(conn, lines, on_event))
        waiting = asyncio.ensure_future(joined.wait())
        how = f"handover limit of {self.handover_max:g} s"
        try:
            await asyncio.wait(
                {reading, waiting}, timeout=self.handover_max, return_when=asyncio.FIRST_COMPLETED
            )
            if not reading.done() and joined.is_set():
                how = f"new connection joined {self.handover_grace:g} s before"
                left = self.handover_max - (self.clock() - started)
                await asyncio.wait({reading}, timeout=max(0.0, min(self.handover_grace, left)))
            if reading.done():
                how = "closed by Twitch"
        finally:
            reading.cancel()
            waiting.cancel()
            await asyncio.gather(reading, waiting, return_exceptions=True)
            await self._shut(conn)
            log.info(
                "old Twitch connection retired (%s), %.1f s after RECONNECT",
                how,
                self.clock() - started,
            )

    async def _read_on(
        self,
        conn: _Connection,
        lines: AsyncIterator[ircparse.Line],
        on_event: Callable[[ChatEvent], None],
    ) -> None:
        """The old connection's lines after RECONNECT: chat is delivered, PING answered."""
        try:
            async for line in lines:
                self._handle(conn, line, on_event)  # a second RECONNECT changes nothing
                await conn.writer.drain()
        except (_Dropped, LoginFailed, ConnectionError, OSError) as exc:
            log.debug("old Twitch connection: %s", exc)

    async def _shut(self, conn: _Connection) -> None:
        """Close `conn` and stop its sender."""
        self._conns.discard(conn)
        conn.joined = False
        if not any(c.joined for c in self._conns):
            self.connected.clear()
        if conn.sender is not None:
            conn.sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await conn.sender
        with contextlib.suppress(Exception):
            conn.writer.close()

    async def _lines(self, conn: _Connection, deadline: float) -> AsyncIterator[ircparse.Line]:
        """Complete lines as they arrive (split across reads or many per read).

        A line longer than `_MAX_LINE` is discarded whole, up to its line end: its tail
        must never be read as a line of its own (it could hold a PRIVMSG)."""
        buffer = b""
        overlong = False  # inside a too-long line: skip up to the next line end
        pinged = False
        while not self._closing:
            timeout = self.idle_timeout if conn.logged_in else max(0.1, deadline - self.clock())
            try:
                data = await asyncio.wait_for(conn.reader.read(_READ_CHUNK), timeout=timeout)
            except asyncio.TimeoutError:
                if not conn.logged_in:
                    raise _Dropped("no answer to the login") from None
                if pinged:
                    raise _Dropped("no answer to our PING") from None
                pinged = True
                self._write_raw(conn.writer, "PING :tmi.twitch.tv\r\n")
                continue
            if not data:
                return
            pinged = False
            buffer += data
            *complete, buffer = buffer.split(b"\n")
            if overlong and complete:  # the too-long line ends here
                complete = complete[1:]
                overlong = False
            if len(buffer) > _MAX_LINE:  # a runaway line: drop it, and its tail when it comes
                buffer = b""
                overlong = True
            for raw in complete:
                if len(raw) > _MAX_LINE:
                    log.warning("dropped a chat line of %d bytes (over %d)", len(raw), _MAX_LINE)
                    continue
                line = ircparse.parse_line(raw.decode("utf-8", errors="replace"))
                if line is not None:
                    yield line

    def _write_raw(self, writer: asyncio.StreamWriter, line: str) -> None:
        writer.write(line.encode("utf-8"))

    async def _send_loop(self, writer: asyncio.StreamWriter) -> None:
        """Drain waiting messages no faster than the send limit allows."""
        while not self._closing:
            if not self._pending:
                self._wake.clear()
                await self._wake.wait()
                continue
            delay = self.limiter.delay(self.clock())
            if delay > 0:  # wait for the window, or for a raised limit (the bot was modded)
                self._limit_changed.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._limit_changed.wait(), delay)
                continue
            line = self._pending.popleft()
            now = self.clock()
            if line == self._last_line and now - self._last_time < DUPLICATE_SECONDS:
                line = line[:-2] + DUPLICATE_MARK + "\r\n"  # Twitch drops exact repeats
            self._last_line, self._last_time = line, now
            self.limiter.spend(now)
            self._write_raw(writer, line)
            await writer.drain()
