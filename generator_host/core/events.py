"""What goes into the show (events) and what comes out (effects). Plain data, no I/O.

Chat events come from `message.py` (the chat adapters make them); the rest are made by
the app (generation runs, the clock, settings), the OBS link (`StreamerAction`) and the
review page (`ApproveEntry`, `RejectEntry`, `CancelRequests`, `IgnoreViewer`). Every event
carries `now`, read at the edge: the core never reads a clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from generator_host.core.approval import Tile
from generator_host.core.generation import Entry, GenerationRequest
from generator_host.core.message import (
    BotStatus,
    ChatMessage,
    MessageDeleted,
    UserRemoved,
)

# ---- events -------------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamerAction:
    """An OBS button or hotkey: approve, clear, prev, next, slideshow, terminate, cancel."""

    action: str
    arg: str = ""
    now: float = 0.0


@dataclass(frozen=True)
class ApproveEntry:
    """The review page approves a picture: the whole grid (tile None) or one tile (0-based);
    `by` is who clicked (logged, and named in the requester's answer)."""

    entry_id: int
    tile: int | None = None
    by: str = "the streamer"
    now: float = 0.0


@dataclass(frozen=True)
class RejectEntry:
    """The review page rejects a flagged picture: never shown, its held files deleted."""

    entry_id: int
    by: str = "the streamer"
    now: float = 0.0


@dataclass(frozen=True)
class CancelRequests:
    """The review page cancels a viewer's requests (queued and running)."""

    login: str
    by: str = "the streamer"
    now: float = 0.0


@dataclass(frozen=True)
class IgnoreViewer:
    """The review page ignores (or stops ignoring) a viewer, as !ignore / !unignore."""

    login: str
    ignore: bool = True
    by: str = "the streamer"
    now: float = 0.0


@dataclass(frozen=True)
class SettingsChanged:
    """The app changed the settings object in place; re-read what the show caches.

    `blocklist`: a new blocklist when its file changed (the app reads files, the core not).
    """

    now: float = 0.0
    blocklist: Any = None  # moderation.Blocklist | None


@dataclass(frozen=True)
class GenerationStarted:
    request_id: str
    now: float = 0.0


@dataclass(frozen=True)
class GenerationProgress:
    request_id: str
    step: int
    total: int
    now: float = 0.0


@dataclass(frozen=True)
class GenerationFinished:
    """`memory`: the host's peak memory after the run, as engine/memory.py words it."""

    request_id: str
    entry: Entry
    now: float = 0.0
    memory: str = ""


@dataclass(frozen=True)
class GenerationFailed:
    request_id: str
    reason: str
    now: float = 0.0
    memory: str = ""  # as GenerationFinished's: an out-of-memory failure is when it matters


@dataclass(frozen=True)
class PromptChecked:
    """The app scored a request's prompt against the safety categories that apply to
    prompts (`CheckPrompt`): {category: best cosine - threshold}; above 0 is too close.
    `error`: the check itself failed (the request is refused: never unchecked)."""

    request_id: str
    scores: dict[str, float]
    error: str = ""
    now: float = 0.0


@dataclass(frozen=True)
class Tick:
    now: float = 0.0


@dataclass(frozen=True)
class Redemption:
    """A viewer redeemed the channel-point reward (EventSub): `prompt` is what they typed.
    A paid request: it ends with exactly one `Settle`."""

    redemption_id: str
    login: str
    display_name: str = ""
    user_id: str = ""
    prompt: str = ""
    now: float = 0.0


@dataclass(frozen=True)
class RedemptionsSettled:
    """At start: redemptions the host already settled before a restart (its store says so);
    the show forgets any it still holds from its saved state, without a second `Settle`."""

    redemption_ids: tuple[str, ...]
    now: float = 0.0


@dataclass(frozen=True)
class Stopping:
    """The host stops cleanly (also after !terminate's `Shutdown`): redemptions not served
    are settled as [channel_points] on_stop says (refund), or kept in the saved queue
    (keep). The show's only settlement at the stop; nothing is settled twice."""

    now: float = 0.0


Event = (
    ChatMessage
    | MessageDeleted
    | UserRemoved
    | BotStatus
    | StreamerAction
    | ApproveEntry
    | RejectEntry
    | CancelRequests
    | IgnoreViewer
    | SettingsChanged
    | GenerationStarted
    | GenerationProgress
    | GenerationFinished
    | GenerationFailed
    | PromptChecked
    | Tick
    | Redemption
    | RedemptionsSettled
    | Stopping
)

# ---- effects ------------------------------------------------------------------------------


@dataclass(frozen=True)
class StartGeneration:
    request: GenerationRequest


@dataclass(frozen=True)
class StartBatch:
    """Several waiting requests with the same steps, guidance and size: one pipeline call.

    Each request still ends with its own GenerationFinished or GenerationFailed.
    """

    requests: tuple[GenerationRequest, ...]


@dataclass(frozen=True)
class CheckPrompt:
    """Score this request's prompt (not its negative prompt) against the categories that
    apply to prompts, off the loop, and answer with `PromptChecked`. The request is not
    queued until then."""

    request: GenerationRequest


@dataclass(frozen=True)
class CancelGeneration:
    request_id: str


@dataclass(frozen=True)
class Display:
    """Show this entry on screen (None clears it), each tile as `tiles` says
    (`approval.screen`): the gallery renders exactly that."""

    entry_id: int | None
    tiles: tuple[Tile, ...] = ()

    @property
    def held(self) -> bool:
        return Tile.PLACEHOLDER in self.tiles

    @property
    def blurred(self) -> bool:
        return Tile.BLURRED in self.tiles


@dataclass(frozen=True)
class Approve:
    """Store an approval decision in the gallery (held tiles that are now clear go public)."""

    entry_id: int
    outcome: str = "approved"
    approved: tuple[int, ...] = ()


@dataclass(frozen=True)
class Reject:
    """Store a rejection in the gallery: its held files are deleted."""

    entry_id: int


@dataclass(frozen=True)
class Reply:
    text: str
    reply_to: str = ""


@dataclass(frozen=True)
class Status:
    """The status line; with the run's progress and the queue length for OBS's bar."""

    text: str
    step: int = 0
    total: int = 0
    queue: int = 0


@dataclass(frozen=True)
class SettingsApplied:
    """A chat command or an OBS button changed live settings (already checked and applied
    by `settings.apply_changes`): log who changed what and send every view the new values."""

    changes: tuple[Any, ...]  # settings.Change
    by: str


@dataclass(frozen=True)
class Log:
    """A line for the host's log: who did what from the review page or OBS."""

    text: str


@dataclass(frozen=True)
class Settle:
    """Set a redemption's status at Twitch, once: FULFILLED (the points are spent) or
    CANCELED (refunded); `approval.Settlement` has the values and the rule. `reason` is
    for the log."""

    redemption_id: str
    status: str
    reason: str = ""


@dataclass(frozen=True)
class Shutdown:
    pass


Effect = (
    StartGeneration
    | StartBatch
    | CheckPrompt
    | CancelGeneration
    | Display
    | Approve
    | Reject
    | Reply
    | Status
    | SettingsApplied
    | Log
    | Settle
    | Shutdown
)
