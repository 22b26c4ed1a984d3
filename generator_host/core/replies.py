"""What the bot says in chat, within Twitch's send limit. No I/O; time passed in.

Twitch lets a bot send `send_limit_for(elevated)` messages in any `send_window` (20 per
30 s, 100 while it moderates). `SendLimiter` is how that is counted, once, for both the
chat adapter (which holds back what would break the limit) and this reply policy (which
decides what is worth saying with what the limit leaves):
- a margin of 2 below the limit, and a third of it kept for moderators and the
  broadcaster, so a flood of viewers never mutes the streamer;
- refusals past `[show] refusal_replies` per window are coalesced by kind into one
  line per window, naming up to 15 people and counting the rest ("+450 more viewers");
- courtesy answers (an accepted !generate that starts at once) only while the window
  is less than half used;
- the same text is never sent twice within 30 s (Twitch drops duplicates): a repeat
  names the person ("@name text"), then is numbered ("... (2)"), and keeps its thread;
  past that it is dropped.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field

from generator_host.core.events import Effect, Reply
from generator_host.core.settings import Settings

DUPLICATE_SECONDS = 30.0  # Twitch drops a message equal to one sent this recently
SUMMARY_NAMES = 15  # people named in a coalesced refusal; the rest are counted
SUMMARY_KINDS = 8  # distinct coalesced kinds per window; more share "request refused"


class SendLimiter:
    """A token bucket whose tokens each come back `window` seconds after they were spent.

    So at most `limit` sends happen in ANY window of that length, which is how Twitch
    counts (a plain refill-rate bucket can burst past it). The chat adapter adds a small
    margin so clock differences never tip it over.
    """

    def __init__(self, limit: int, window: float, margin: float = 0.0) -> None:
        self.limit = max(1, limit)
        self.window = window * (1 + margin)
        self._spent: deque[float] = deque()

    def used(self, now: float) -> int:
        """Sends in the window that ends now."""
        while self._spent and now - self._spent[0] >= self.window:
            self._spent.popleft()
        return len(self._spent)

    def delay(self, now: float) -> float:
        """Seconds to wait before the next send may go out."""
        if self.used(now) < self.limit:
            return 0.0
        return self._spent[0] + self.window - now

    def spend(self, now: float) -> None:
        self._spent.append(now)


def staff_reserved(budget: int) -> int:
    """Replies of each send window kept for moderators and the broadcaster (a third)."""
    return budget // 3


@dataclass
class _Summary:
    """Refusals of one kind past the cap: the people, counted once each."""

    names: list[str] = field(default_factory=list)
    people: set[str] = field(default_factory=set)


class Replies:
    """The reply budget. `roll(now, out)` on every event; `send`/`refuse` for answers."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.elevated = False  # the chat said the bot moderates: Twitch's bigger limit
        self._sent = SendLimiter(1, settings.twitch.send_window)  # counts; budget() limits
        self._window_start: float | None = None
        self._refused = 0
        self._summaries: dict[str, _Summary] = {}
        self._recent: OrderedDict[str, float] = OrderedDict()  # text -> when it went out

    def budget(self, staff: bool = False) -> int:
        """Replies per send window: a margin below Twitch's limit, a third kept for staff."""
        total = max(1, self.settings.twitch.send_limit_for(self.elevated) - 2)
        return total if staff else max(1, total - staff_reserved(total))

    def roll(self, now: float, out: list[Effect]) -> None:
        """A new refusal window: the coalesced refusals go out as one line per kind."""
        window = self.settings.twitch.send_window
        self._sent.window = window
        if self._window_start is not None and now - self._window_start < window:
            return
        self._window_start = now
        self._refused = 0
        summaries, self._summaries = self._summaries, {}
        for kind, summary in summaries.items():
            extra = len(summary.people) - len(summary.names)
            who = " ".join(f"@{n}" for n in summary.names)
            more = f" (+{extra} more viewer{'s' if extra != 1 else ''})" if extra > 0 else ""
            self._emit(out, f"{who}{more}: {kind}", "", now)

    def send(
        self,
        out: list[Effect],
        now: float,
        text: str,
        to: str = "",
        reply_to: str = "",
        *,
        staff: bool = False,
        courtesy: bool = False,
    ) -> bool:
        """An answer to viewer `to` (threaded to their message when there is one, else
        "@to text"), or a line for everyone (`to` empty). False when it was not sent."""
        used = self._sent.used(now)
        room = self.budget(staff) - used
        if room <= 0 or (courtesy and used >= self.budget() // 2):
            return False
        return self._emit(out, text, reply_to, now, to)

    def refuse(
        self, out: list[Effect], now: float, text: str, kind: str, to: str, reply_to: str = ""
    ) -> None:
        """A refusal: answered while under the cap, else coalesced by `kind` for later."""
        cap = min(self.settings.show.refusal_replies, self.budget())
        under = self._refused < cap and self._sent.used(now) < self.budget()
        if under and self._emit(out, text, reply_to, now, to):
            self._refused += 1
            return
        if kind not in self._summaries and len(self._summaries) >= SUMMARY_KINDS:
            kind = "request refused"  # keeps the summary (and memory) small
        summary = self._summaries.setdefault(kind, _Summary())
        if to.lower() not in summary.people:
            summary.people.add(to.lower())
            if len(summary.names) < SUMMARY_NAMES:
                summary.names.append(to)

    def _emit(self, out: list[Effect], text: str, reply_to: str, now: float, to: str = "") -> bool:
        """One Reply, unless Twitch would drop it as a duplicate of a recent one."""
        plain = (text if (reply_to or not to) else f"@{to} {text}")[:500]
        named = f"@{to} {text}"[:500] if to else plain
        # A repeat is told apart, not dropped: first by naming the person (still threaded),
        # then by a number, so a streamer asking !queue twice in a minute gets two answers;
        # Twitch drops only text equal to one sent in the last 30 s.
        candidates = [plain, named] + [f"{named[:494]} ({n})" for n in range(2, 10)]
        line = next((c for c in candidates if not self._duplicate(c, now)), "")
        if not line:
            return False
        self._recent[line] = now
        self._recent.move_to_end(line)
        self._sent.spend(now)
        out.append(Reply(line, reply_to=reply_to))
        return True

    def _duplicate(self, line: str, now: float) -> bool:
        while self._recent and now - next(iter(self._recent.values())) >= DUPLICATE_SECONDS:
            self._recent.popitem(last=False)
        sent = self._recent.get(line[:500])
        return sent is not None and now - sent < DUPLICATE_SECONDS
