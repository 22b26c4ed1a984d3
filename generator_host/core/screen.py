"""What is on screen: the history, the cursor, the deck of finished pictures, the slideshow.

No I/O; time passed in. The history is the show's (kept in state.json, `[show]
history_size` entries): !prev, !next and the slideshow walk it without touching the
disk. The gallery keeps every picture's files and metadata, not the browsing order.

- Minimum time on screen (`[show] min_display_seconds`): a finished picture waits on deck
  until the one on screen had that long; `tick` moves it up. !clear/!prev/!next/!approve
  act at once.
- What each tile shows comes from the approval policy (`approval.entry_tiles`); the
  slideshow skips pictures still held for approval (`approval.replayable`).
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from typing import Any

from generator_host.core import approval
from generator_host.core.events import Display, Effect
from generator_host.core.generation import Entry


def display(entry: Entry) -> Display:
    """The Display effect for an entry: its tiles as the approval policy says."""
    return Display(entry.id, approval.entry_tiles(entry))


class Screen:
    """History, cursor, deck and slideshow."""

    def __init__(self, min_display: float, slideshow: float, history_size: int) -> None:
        self.history: list[Entry] = []
        self.entry_msg: dict[int, str] = {}  # entry id -> chat message that asked for it
        self.deck: deque[int] = deque()  # finished entries waiting for their screen time
        self.cursor: int | None = None  # index in history of what is on screen
        self.browse = -1  # where !prev/!next continue after !clear
        self.shown_at = -math.inf  # when the screen last changed (min_display_seconds)
        self.min_display = min_display
        self.slideshow = slideshow
        self.slideshow_next = 0.0
        self.history_size = history_size

    # ---- looking -----------------------------------------------------------------------
    def on_screen(self) -> Entry | None:
        if self.cursor is None or not 0 <= self.cursor < len(self.history):
            return None
        return self.history[self.cursor]

    def index_of(self, entry_id: int) -> int | None:
        return next((i for i, e in enumerate(self.history) if e.id == entry_id), None)

    def entry(self, entry_id: int) -> Entry | None:
        index = self.index_of(entry_id)
        return None if index is None else self.history[index]

    def holding(self, now: float) -> bool:
        """The picture on screen (or a cleared screen) has not had its minimum time yet."""
        return self.min_display > 0 and now < self.shown_at + self.min_display

    def deck_wait(self, login: str, now: float) -> float | None:
        """Seconds until this viewer's finished picture on deck is shown, if they have one."""
        for place, entry_id in enumerate(self.deck):
            entry = self.entry(entry_id)
            if entry is not None and (entry.requester_login or entry.requester.lower()) == login:
                wait = max(self.shown_at + self.min_display - now, 0.0)
                return wait + place * self.min_display
        return None

    # ---- changing ----------------------------------------------------------------------
    def resume(self, now: float, out: list[Effect]) -> None:
        """Put a restored screen back up."""
        entry = self.on_screen()
        if entry is not None:
            out.append(display(entry))
            self.slideshow_next = now + self.slideshow
            self.shown_at = now

    def add(self, entry: Entry, msg_id: str, now: float, out: list[Effect]) -> None:
        """A finished picture: on screen at once, or on deck while the screen holds."""
        self.history.append(entry)
        if msg_id:
            self.entry_msg[entry.id] = msg_id
        self._trim()
        if self.deck or self.holding(now):
            self.deck.append(entry.id)
        else:
            self.show(len(self.history) - 1, now, out)

    def replace(self, entry: Entry) -> int | None:
        """An entry changed (approved, rejected): returns its index, None when gone."""
        index = self.index_of(entry.id)
        if index is not None:
            self.history[index] = entry
        return index

    def show(self, index: int, now: float, out: list[Effect], restart: bool = True) -> None:
        self.cursor = self.browse = index
        entry = self.history[index]
        out.append(display(entry))
        self.shown_at = now
        if entry.id in self.deck:
            self.deck.remove(entry.id)  # shown by hand (!next, !approve): no second time
        if restart:
            self.slideshow_next = now + self.slideshow

    def blank(self, out: list[Effect]) -> None:
        """An empty screen; !prev/!next go on from the picture that was up."""
        if self.cursor is not None:
            self.browse = self.cursor
        self.cursor = None
        out.append(Display(None))

    def clear(self, now: float, out: list[Effect]) -> None:
        """!clear: blank, slideshow off; the empty screen counts as shown (the deck waits)."""
        self.blank(out)
        self.slideshow = 0.0
        self.shown_at = now

    def prev(self, now: float, out: list[Effect]) -> str:
        """!prev: the picture before the one on screen; else why not."""
        if not self.history:
            return "no images yet"
        current = self.cursor
        if current is None:  # screen cleared: step back from where it was
            current = self.browse + 1 if self.browse >= 0 else len(self.history)
        if current <= 0:
            return "this is the oldest image"
        self.show(current - 1, now, out)
        return ""

    def next(self, now: float, out: list[Effect]) -> str:
        """!next: the picture after the one on screen; else why not."""
        current = self.cursor if self.cursor is not None else self.browse
        if current + 1 >= len(self.history):
            return "this is the newest image" if self.history else "no images yet"
        self.show(current + 1, now, out)
        return ""

    def set_slideshow(self, seconds: float, now: float) -> None:
        self.slideshow = seconds
        self.slideshow_next = now + seconds

    def tick(self, now: float, out: list[Effect]) -> None:
        """Waiting pictures go up first; else the slideshow advances."""
        if self.deck:
            self._show_from_deck(now, out)
            return  # the slideshow waits while new pictures do
        if self.slideshow <= 0 or now < self.slideshow_next:
            return
        self.slideshow_next = now + self.slideshow
        shown = [i for i, e in enumerate(self.history) if approval.replayable(e)]
        if len(shown) < 2:
            return
        current = self.cursor if self.cursor is not None else self.browse
        following = [i for i in shown if i > current]
        self.show(following[0] if following else shown[0], now, out, restart=False)

    def _show_from_deck(self, now: float, out: list[Effect]) -> None:
        """Put the oldest waiting picture up once the one on screen had its minimum time."""
        if self.holding(now):
            return
        while self.deck:
            index = self.index_of(self.deck[0])
            if index is None:
                self.deck.popleft()  # gone from the history meanwhile
                continue
            self.show(index, now, out)
            return

    def _trim(self) -> None:
        extra = len(self.history) - max(1, self.history_size)
        if extra <= 0:
            return
        for entry in self.history[:extra]:
            self.entry_msg.pop(entry.id, None)
            if entry.id in self.deck:
                self.deck.remove(entry.id)
        del self.history[:extra]
        if self.cursor is not None:
            self.cursor = max(0, self.cursor - extra)
        self.browse = max(-1, self.browse - extra)

    def forget(self, entry_id: int, out: list[Effect]) -> None:
        """Remove a history entry (its message deleted, or rejected); off screen if it is up."""
        index = self.index_of(entry_id)
        self.entry_msg.pop(entry_id, None)
        if entry_id in self.deck:
            self.deck.remove(entry_id)
        if index is None:
            return
        del self.history[index]
        if self.cursor == index:
            self.cursor = None
            self.browse = index - 1
            self.shown_at = -math.inf  # nothing to hold: a waiting picture may go up
            out.append(Display(None))
        elif self.cursor is not None and self.cursor > index:
            self.cursor -= 1
        if self.browse >= index and self.cursor is None:
            self.browse = max(-1, self.browse - 1)

    # ---- snapshot ----------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        return {
            "history": [dataclasses.asdict(e) for e in self.history],
            "entry_msg": {str(k): v for k, v in self.entry_msg.items()},
            "deck": list(self.deck),
            "cursor": self.cursor,
            "browse": self.browse,
            "slideshow": self.slideshow,
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Raises TypeError/ValueError/KeyError on damaged parts (the show reports them)."""
        self.history = [Entry.from_dict(e) for e in state.get("history", [])]
        self.entry_msg = {int(k): str(v) for k, v in state.get("entry_msg", {}).items()}
        known = {e.id for e in self.history}
        self.deck = deque(int(i) for i in state.get("deck", []) if int(i) in known)
        cursor = state.get("cursor")
        ok = isinstance(cursor, int) and 0 <= cursor < len(self.history)
        self.cursor = cursor if ok else None
        browse = int(state.get("browse", -1))
        self.browse = browse if -1 <= browse < len(self.history) else -1
        self.slideshow = float(state.get("slideshow", self.slideshow))
