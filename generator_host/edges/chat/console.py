"""A terminal stands in for Twitch chat in the demo: each stdin line is a chat message.

Lines come from the broadcaster (all commands allowed). `/as <login> <text>` sends a line
as an ordinary viewer, to try the queue, cooldowns and permissions without Twitch.
The bot's answers are printed (`[bot] ...`), and so is what OBS would show, so every
accepted command visibly does something even without OBS: the picture put on screen and
what the safety filter made of it (`[screen] ...`), and the status line whenever it says
something new (`[status] ...`; the step counter and countdown ticking alone are not new). Same
ChatAdapter shape as chat/irc.py.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

from generator_host.core.generation import Entry
from generator_host.core.message import ChatEvent, ChatMessage, Role, Viewer
from generator_host.edges.chat.ircparse import sanitize

_TICKING = re.compile(r"(generating|next picture in) \d+(?:/\d+| s)")  # numbers that tick
_FLAGGED = {
    "blurred": "BLURRED: the safety filter flagged it; !approve shows it clear",
    "held": "HELD: the safety filter flagged it; OBS shows a placeholder until !approve",
}


class ConsoleAdapter:
    """Chat from a terminal; `run` returns at end of input (Ctrl-D)."""

    def __init__(
        self, login: str = "streamer", stdin: TextIO | None = None, stdout: TextIO | None = None
    ):
        self.login = (login or "streamer").lower()
        self._stdin = stdin or sys.stdin
        self._stdout = stdout or sys.stdout
        self._ids = itertools.count(1)
        self._closed = False
        self._status = ""

    def to_event(self, line: str) -> ChatMessage | None:
        """One terminal line -> a ChatMessage (None for a blank line)."""
        text = line.strip()
        if not text:
            return None
        viewer = Viewer(
            login=self.login, display_name=self.login, user_id="0", role=Role.BROADCASTER
        )
        if text.startswith("/as "):
            _, login, *rest = text.split(" ", 2)
            viewer = Viewer(login=login.lstrip("@").lower(), display_name=login.lstrip("@"))
            text = rest[0] if rest else ""
        return ChatMessage(
            viewer=viewer, text=text, msg_id=f"console-{next(self._ids)}", now=time.monotonic()
        )

    async def run(self, on_event: Callable[[ChatEvent], None]) -> None:
        """Lines are read on a daemon thread of their own: a read waiting on the terminal
        must not keep the program alive after !terminate or Ctrl-C (a read on the loop's
        executor would: asyncio.run waits for that thread until Enter is pressed)."""
        loop = asyncio.get_running_loop()
        lines: asyncio.Queue[str] = asyncio.Queue()

        def read() -> None:
            for line in itertools.chain(iter(self._stdin.readline, ""), [""]):
                try:
                    loop.call_soon_threadsafe(lines.put_nowait, line)
                except RuntimeError:  # the loop is gone: the program is ending
                    return

        threading.Thread(target=read, name="console-input", daemon=True).start()
        while not self._closed:
            line = await lines.get()
            if not line:  # end of input
                return
            event = self.to_event(line)
            if event is not None:
                on_event(event)

    async def say(self, text: str, reply_to: str = "") -> None:
        self._print(f"[bot] {sanitize(text)}")

    def screen(self, entry: Entry | None, held: bool = False, blurred: bool = False) -> None:
        """What OBS shows now: a picture (and what the safety filter made of it) or nothing."""
        if entry is None:
            self._print("[screen] cleared")
            return
        note = _FLAGGED["held"] if held else _FLAGGED["blurred"] if blurred else ""
        tail = f" ({note})" if note else ""
        self._print(f"[screen] picture {entry.id} by @{entry.requester}: {entry.prompt}{tail}")

    def status(self, text: str) -> None:
        """OBS's status line, when it says something new (not a mere tick of a number)."""
        key = _TICKING.sub(r"\1", text)
        if key != self._status:
            self._status = key
            self._print(f"[status] {sanitize(text)}")

    def _print(self, line: str) -> None:
        self._stdout.write(line + "\n")
        self._stdout.flush()

    async def close(self) -> None:
        self._closed = True
