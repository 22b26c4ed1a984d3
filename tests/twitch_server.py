"""A local IRC server speaking Twitch's dialect, over a real socket, for the chat tests.

It runs its own asyncio loop on a background thread, so a test drives it with plain calls
(`privmsg`, `ping`, `reconnect`, `clearmsg`, `clearchat`, `notice`, `drop`, `flood`,
`userstate`) while the adapter under test runs on the test's loop. It accepts
PASS/NICK/CAP/JOIN like irc.chat.twitch.tv, answers JOIN and each PRIVMSG of the bot with a
USERSTATE carrying the bot's badges (`bot_badges`: "moderator/1" makes it a moderator),
can refuse the login or drop the connection right after it, and records every line the
bot sent with the time it arrived (`received`).

Tag values are escaped here by its own code, not the project's, so a shared bug cannot
hide on both sides.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

HOST = "tmi.twitch.tv"


@dataclass(frozen=True)
class Sent:
    """One line the bot sent: when it arrived (time.monotonic), on which connection, what."""

    time: float
    conn: int
    line: str

    @property
    def command(self) -> str:
        words = self.line.split(" ")
        if words and words[0].startswith("@"):
            words = words[1:]
        return words[0].upper() if words else ""


def escape(value: str) -> str:
    out = value.replace("\\", "\\\\").replace(";", "\\:").replace(" ", "\\s")
    return out.replace("\r", "\\r").replace("\n", "\\n")


class TwitchServer:
    """See the module docstring. `start()` / `stop()`, or use the `twitch_server` fixture."""

    def __init__(
        self,
        channel: str = "streamer",
        *,
        refuse_login: str = "",
        expected_token: str | Callable[[], str] = "",  # a callable: the current one
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.channel = channel
        self.refuse_login = refuse_login  # "" | "auth" | "format"
        self.expected_token = expected_token
        self.drop_after_login = 0  # the next N logins are dropped right after the welcome
        self.bot_badges = ""  # the bot's badges in its USERSTATE ("moderator/1", ...)
        self.ssl_context = ssl_context
        self.received: list[Sent] = []
        self.logins: list[float] = []
        self.joins: list[float] = []
        self.port = 0
        self._ids = itertools.count(1)
        self._conn_ids = itertools.count(1)
        self._writers: dict[int, asyncio.StreamWriter] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.AbstractServer | None = None

    # ---- lifecycle -----------------------------------------------------------------
    def start(self) -> TwitchServer:
        self._thread.start()
        self._call(self._start())
        return self

    def stop(self) -> None:
        async def _stop() -> None:
            for writer in list(self._writers.values()):
                writer.close()
            if self._server is not None:
                self._server.close()

        self._call(_stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    async def _start(self) -> None:
        self._server = await asyncio.start_server(
            self._handle, "127.0.0.1", 0, ssl=self.ssl_context, limit=1 << 20
        )
        self.port = self._server.sockets[0].getsockname()[1]

    def _call(self, coro, timeout: float = 10.0):  # noqa: ANN001, ANN202 - any coroutine
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    # ---- what a test does ----------------------------------------------------------
    @property
    def connections(self) -> int:
        return len(self._writers)

    def send_raw(self, line: str) -> None:
        """Send one raw line to every connected client."""
        self._call(self._broadcast([line]))

    def send_bytes(self, data: bytes) -> None:
        """Send raw bytes (no CR LF added) to every connected client: part of a line."""

        async def _send() -> None:
            for writer in list(self._writers.values()):
                if not writer.is_closing():
                    writer.write(data)
                    with contextlib.suppress(ConnectionError):
                        await writer.drain()

        self._call(_send())

    def privmsg(
        self,
        login: str,
        text: str,
        *,
        msg_id: str = "",
        badges: str = "",
        tags: dict[str, str] | None = None,
    ) -> str:
        """A chat message from `login`; returns its message id."""
        line, msg_id = self._privmsg_line(login, text, msg_id=msg_id, badges=badges, tags=tags)
        self.send_raw(line)
        return msg_id

    def userstate(self) -> None:
        """The bot's USERSTATE with the current `bot_badges` (as after a /mod or /unmod)."""
        self.send_raw(self._userstate_line(""))

    def _userstate_line(self, nick: str) -> str:
        mod = "1" if "moderator" in self.bot_badges else "0"
        return (
            f"@badge-info=;badges={self.bot_badges};color=;display-name={nick};emote-sets=0;"
            f"mod={mod};subscriber=0;user-type={'mod' if mod == '1' else ''} "
            f":{HOST} USERSTATE #{self.channel}"
        )

    def ping(self) -> None:
        self.send_raw(f"PING :{HOST}")

    def reconnect(self) -> None:
        self.send_raw(f":{HOST} RECONNECT")

    def notice(self, text: str) -> None:
        self.send_raw(f"@msg-id=generic :{HOST} NOTICE #{self.channel} :{text}")

    def clearmsg(self, msg_id: str, login: str) -> None:
        self.send_raw(
            f"@login={login};room-id=1;target-msg-id={msg_id};tmi-sent-ts=1 "
            f":{HOST} CLEARMSG #{self.channel} :deleted text"
        )

    def clearchat(self, login: str, duration: int = 600) -> None:
        self.send_raw(
            f"@ban-duration={duration};room-id=1;target-user-id=99;tmi-sent-ts=1 "
            f":{HOST} CLEARCHAT #{self.channel} :{login}"
        )

    def drop(self) -> None:
        """Close every connection abruptly, as a network failure would."""

        async def _drop() -> None:
            for writer in list(self._writers.values()):
                writer.transport.abort()

        self._call(_drop())

    def flood(
        self, count: int, users: int, seconds: float, text: str = "!generate a fox {i}"
    ) -> None:
        """Send `count` PRIVMSGs from `users` viewers evenly over `seconds` (blocks until done)."""
        self._call(self._flood(count, users, seconds, text), timeout=seconds + 30)

    def flood_async(
        self, count: int, users: int, seconds: float, text: str, start_index: int = 0
    ) -> asyncio.Future[None]:
        """Start a flood (like `flood`) without waiting; `text` gets `{i}` from `start_index`."""
        return asyncio.run_coroutine_threadsafe(
            self._flood(count, users, seconds, text, start_index), self._loop
        )

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.01)
        return predicate()

    def sent(self, command: str) -> list[Sent]:
        """What the bot sent, filtered by IRC command (PRIVMSG, JOIN, PONG ...)."""
        return [s for s in list(self.received) if s.command == command.upper()]

    # ---- the server side -----------------------------------------------------------
    def _privmsg_line(
        self, login: str, text: str, *, msg_id: str, badges: str, tags: dict[str, str] | None
    ) -> tuple[str, str]:
        msg_id = msg_id or f"msg-{next(self._ids)}"
        all_tags = {
            "badge-info": "",
            "badges": badges,
            "color": "#FF0000",
            "display-name": login.capitalize(),
            "emotes": "",
            "id": msg_id,
            "mod": "1" if "moderator" in badges else "0",
            "room-id": "1",
            "subscriber": "1" if "subscriber" in badges else "0",
            "tmi-sent-ts": "1700000000000",
            "turbo": "0",
            "user-id": str(abs(hash(login)) % 10**8),
            "user-type": "",
        }
        all_tags.update(tags or {})
        tag_text = ";".join(f"{k}={escape(v)}" for k, v in all_tags.items())
        prefix = f"{login}!{login}@{login}.{HOST}"
        return f"@{tag_text} :{prefix} PRIVMSG #{self.channel} :{text}", msg_id

    async def _broadcast(self, lines: list[str]) -> None:
        data = "".join(f"{line}\r\n" for line in lines).encode()
        for writer in list(self._writers.values()):
            if not writer.is_closing():
                writer.write(data)
                with contextlib.suppress(ConnectionError):
                    await writer.drain()

    async def _flood(
        self, count: int, users: int, seconds: float, text: str, start_index: int = 0
    ) -> None:
        batches = max(1, int(seconds / 0.02))
        per_batch = -(-count // batches)
        start = time.monotonic()
        for b in range(batches):
            lines = []
            for i in range(b * per_batch, min(count, (b + 1) * per_batch)):
                line, _ = self._privmsg_line(
                    f"user{i % users}", text.format(i=start_index + i),
                    msg_id="", badges="", tags=None,
                )  # fmt: skip
                lines.append(line)
            if lines:
                await self._broadcast(lines)
            await asyncio.sleep(max(0.0, start + (b + 1) * seconds / batches - time.monotonic()))

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = next(self._conn_ids)
        self._writers[conn] = writer
        password = ""
        nick = ""

        def send(*lines: str) -> None:
            writer.write("".join(f"{line}\r\n" for line in lines).encode())

        try:
            while True:
                raw = await reader.readline()
                if not raw:
                    break
                line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
                self.received.append(Sent(time.monotonic(), conn, line))
                words = line.split(" ")
                command = words[0].upper()
                if command == "PASS":
                    password = words[1] if len(words) > 1 else ""
                elif command == "NICK":
                    nick = words[1].lower() if len(words) > 1 else ""
                    expected = self.expected_token
                    expected = expected() if callable(expected) else expected
                    if self.refuse_login or (expected and password != f"oauth:{expected}"):
                        text = (
                            "Improperly formatted auth"
                            if self.refuse_login == "format"
                            else "Login authentication failed"
                        )
                        send(f":{HOST} NOTICE * :{text}")
                        await writer.drain()
                        break
                    send(
                        f":{HOST} 001 {nick} :Welcome, GLHF!",
                        f":{HOST} 002 {nick} :Your host is {HOST}",
                        f":{HOST} 003 {nick} :This server is rather new",
                        f":{HOST} 004 {nick} :-",
                        f":{HOST} 375 {nick} :-",
                        f":{HOST} 372 {nick} :You are in a maze of twisty passages.",
                        f":{HOST} 376 {nick} :>",
                    )
                    self.logins.append(time.monotonic())
                    if self.drop_after_login > 0:
                        self.drop_after_login -= 1
                        await writer.drain()
                        writer.transport.abort()
                        break
                elif command == "CAP":
                    send(f":{HOST} CAP * ACK :twitch.tv/tags twitch.tv/commands")
                elif command == "JOIN":
                    chan = words[1] if len(words) > 1 else ""
                    self.joins.append(time.monotonic())
                    send(
                        f":{nick}!{nick}@{nick}.{HOST} JOIN {chan}",
                        f":{nick}.{HOST} 353 {nick} = {chan} :{nick}",
                        f":{nick}.{HOST} 366 {nick} {chan} :End of /NAMES list",
                        self._userstate_line(nick),
                        f"@emote-only=0;followers-only=-1;r9k=0;room-id=1;slow=0;subs-only=0 "
                        f":{HOST} ROOMSTATE {chan}",
                    )
                elif command == "PRIVMSG":
                    send(self._userstate_line(nick))
                elif command == "PING":
                    send(f":{HOST} PONG {HOST} :{line.partition(':')[2] or HOST}")
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._writers.pop(conn, None)
            writer.close()
