"""The approval policy: what the safety verdicts let the stream show, and how that changes.

Every approval rule is here and nowhere else, as pure functions on plain values:
- `judge`: how a finished request is judged: the mode (`mode_for`), which tiles count as
  flagged (`tile_flags`: a tile's own verdict, or the request's prompt) and the outcome
  (`outcome_for`: shown, blurred, held, skipped);
- `screen`: what each tile of a grid shows on stream (clear, blurred, placeholder or
  nothing) for an outcome, the mode it was made under, its verdicts and its approved tiles;
- `approve` (the whole grid or one tile) and `reject`: the transitions a streamer or a
  moderator makes, in chat, from OBS or from the review page (`rejected_text`: what the
  requester of a rejected picture is told);
- `settlement`: what a paid request (a channel-point redemption) becomes at Twitch for
  what its picture shows on stream: spent (FULFILLED) or refunded (CANCELED).
The gallery stores what these return and renders the tiles it is told to; the show keeps
entries and emits `Display(entry_id, tiles)` with the tiles from `screen`.
A new kind of safety check adds a reason to the verdict, not a path here.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from generator_host.core.generation import Entry
from generator_host.core.settings import APPROVAL_MODES

MODES = APPROVAL_MODES  # blur, hold, skip, off: declared with the setting


class Outcome(str, enum.Enum):
    """What became of a request. A str enum: it is stored as its value (SQLite, state.json)."""

    SHOWN = "shown"  # nothing flagged, or the check was off
    BLURRED = "blurred"  # flagged tiles blurred on stream (mode blur)
    HELD = "held"  # flagged tiles replaced by a placeholder until approved (mode hold)
    SKIPPED = "skipped"  # nothing shown at all (mode skip)
    APPROVED = "approved"  # a streamer or moderator approved every flagged tile
    REJECTED = "rejected"  # a streamer or moderator rejected it: never shown, held files gone

    def __str__(self) -> str:
        return self.value


class Tile(str, enum.Enum):
    """How one tile of a grid appears on stream."""

    CLEAR = "clear"
    BLURRED = "blurred"
    PLACEHOLDER = "placeholder"
    NOTHING = "nothing"


_FILTERED = {Outcome.BLURRED: Tile.BLURRED, Outcome.HELD: Tile.PLACEHOLDER}
# A mode's filter for the tiles not (yet) approved. After skip, blur: never bare, and a
# skipped picture that was partly approved shows its approved tiles beside blurred ones.
_MODE_FILTER = {"blur": Tile.BLURRED, "hold": Tile.PLACEHOLDER, "skip": Tile.BLURRED}

# What may be approved or rejected: a picture the filter acted on, not yet decided.
APPROVABLE = frozenset({Outcome.BLURRED, Outcome.HELD, Outcome.SKIPPED})
REJECTABLE = frozenset({Outcome.BLURRED, Outcome.HELD, Outcome.SKIPPED})


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"unknown approval mode {mode!r}: use one of {', '.join(MODES)}")
    return mode


def mode_for(mode: str, prompt_flagged: bool, prompt_action: str) -> str:
    """The approval mode a picture is judged under: the streamer's, except for a picture
    whose prompt came too close to a safety category under [safety] prompt_action =
    "hold": held for review whatever the mode (with "flag" its tiles are merely flagged,
    and the mode decides)."""
    return "hold" if prompt_flagged and prompt_action == "hold" else mode


def tile_flags(
    image_flagged: Sequence[bool], prompt_flagged: bool, prompt_action: str
) -> tuple[bool, ...]:
    """Which tiles count as flagged for the approval mode: each tile's own verdict (the
    engine's: the checker and the image categories), or every tile when the request's
    prompt came too close to a category under prompt_action "flag" (the mode decides)
    or "hold" (`mode_for` holds them). The engine's verdict stays the image's own."""
    by_prompt = prompt_flagged and prompt_action in ("flag", "hold")
    return tuple(bool(f) or by_prompt for f in image_flagged)


@dataclass(frozen=True)
class Judgement:
    """A finished request as the approval policy sees it: what the gallery stores."""

    mode: str  # the approval mode it is judged under (`mode_for`)
    flagged: tuple[bool, ...]  # per tile: counts as flagged (`tile_flags`)
    outcome: Outcome


def judge(
    image_flagged: Sequence[bool],
    mode: str,
    prompt_flagged: Sequence[str] = (),
    prompt_action: str = "refuse",
) -> Judgement:
    """How a finished request is judged: the engine's verdict per tile, the streamer's
    approval mode, the categories its prompt came too close to and [safety]
    prompt_action (what the prompt check does about them)."""
    by_prompt = bool(prompt_flagged)
    mode = mode_for(mode, by_prompt, prompt_action)
    flagged = tile_flags(image_flagged, by_prompt, prompt_action)
    return Judgement(mode, flagged, outcome_for(flagged, mode))


def outcome_for(flagged: Sequence[bool], mode: str) -> Outcome:
    """What the approval mode makes of a finished request, from its tiles' verdicts."""
    check_mode(mode)
    if mode == "off" or not any(flagged):
        return Outcome.SHOWN
    return {"blur": Outcome.BLURRED, "hold": Outcome.HELD, "skip": Outcome.SKIPPED}[mode]


def screen(
    outcome: str,
    mode: str,
    flagged: Sequence[bool],
    approved: Sequence[int] = (),
) -> tuple[Tile, ...]:
    """What each tile shows on stream. Each tile is judged by its own flag alone
    (`tile_flags`): a clean tile is always clear; a flagged one is clear only once
    approved (or when the check was off); otherwise it is filtered as its outcome says,
    or not shown at all."""
    outcome = Outcome(outcome)
    if outcome is Outcome.REJECTED or (outcome is Outcome.SKIPPED and not approved):
        return (Tile.NOTHING,) * len(flagged)
    if outcome is Outcome.SHOWN or mode == "off":
        return (Tile.CLEAR,) * len(flagged)
    cover = _FILTERED.get(outcome) or _MODE_FILTER.get(mode, Tile.PLACEHOLDER)
    done = set(approved)
    return tuple(
        Tile.CLEAR if not bad or outcome is Outcome.APPROVED or k in done else cover
        for k, bad in enumerate(flagged)
    )


_MODE_OF = {Outcome.BLURRED: "blur", Outcome.HELD: "hold", Outcome.SKIPPED: "skip"}


def flags(entry: Entry) -> tuple[bool, ...]:
    """Which of the entry's tiles count as flagged (`tile_flags`, stored by the gallery).
    Entries saved before verdicts were kept per tile count every tile as flagged unless
    the outcome was shown."""
    if entry.flagged:
        return tuple(entry.flagged)
    return (Outcome(entry.outcome) is not Outcome.SHOWN,) * max(1, entry.count)


def entry_tiles(entry: Entry) -> tuple[Tile, ...]:
    """`screen` for a stored entry."""
    outcome = Outcome(entry.outcome)
    mode = entry.mode or _MODE_OF.get(outcome, "blur" if outcome is not Outcome.SHOWN else "off")
    return screen(outcome, mode, flags(entry), entry.approved)


def visible(tiles: Sequence[Tile]) -> bool:
    """True when the picture appears on stream at all."""
    return any(t is not Tile.NOTHING for t in tiles)


def replayable(entry: Entry) -> bool:
    """Whether the slideshow shows it again: visible, and no tile waiting for approval."""
    tiles = entry_tiles(entry)
    return visible(tiles) and Tile.PLACEHOLDER not in tiles


class Settlement(str, enum.Enum):
    """A redemption's end at Twitch (the values are Twitch's statuses)."""

    FULFILLED = "FULFILLED"  # the points are spent
    CANCELED = "CANCELED"  # the points are refunded

    def __str__(self) -> str:
        return self.value


def settlement(tiles: Sequence[Tile]) -> Settlement | None:
    """The refund rule for a paid picture, from the tiles it shows on stream.

    FULFILLED once at least one tile is clear on stream (shown, approved, or a grid with
    some clean tiles); None while a held tile waits for the streamer's decision; else
    CANCELED: nothing reached the stream unfiltered (skipped, rejected, or only blurred
    tiles, in blur mode: a later approval of a blurred picture changes nothing, the points
    are back already). Requests that end without a picture (refused, failed, cancelled,
    not served before the host stops) are CANCELED by the show.
    """
    if Tile.CLEAR in tiles:
        return Settlement.FULFILLED
    if Tile.PLACEHOLDER in tiles:
        return None
    return Settlement.CANCELED


@dataclass(frozen=True)
class Decision:
    """The result of a transition: the new outcome and approved tiles, or why not."""

    outcome: Outcome
    approved: tuple[int, ...]
    refusal: str = ""  # empty when the transition happened


def approve(entry: Entry, tile: int | None = None) -> Decision:
    """Approve the whole grid (tile None) or one tile (0-based); the others stay filtered.

    The outcome becomes APPROVED once every flagged tile is approved.
    """
    outcome = Outcome(entry.outcome)
    done = tuple(sorted(set(entry.approved)))
    if outcome not in APPROVABLE:
        return Decision(outcome, done, f"picture {entry.id} is {outcome.value}, not waiting")
    flagged = flags(entry)
    bad = {k for k, f in enumerate(flagged) if f} or set(range(len(flagged)))
    if tile is not None and not 0 <= tile < len(flagged):
        return Decision(outcome, done, f"picture {entry.id} has no tile {tile + 1}")
    picked = bad if tile is None else {tile} & bad
    now_done = tuple(sorted(set(done) | picked))
    return Decision(Outcome.APPROVED if bad <= set(now_done) else outcome, now_done)


def rejected_text(entry: Entry) -> str:
    """What the requester reads when their picture is rejected: a reason, as every other
    refusal gives one. Only a picture the safety filter flagged can be rejected, so that
    is the reason; the reviewer's own words stay in the host's log (they may be blunt)."""
    flagged = flags(entry)
    bad = sum(flagged)
    what = "it" if bad == len(flagged) else f"{bad} of its {len(flagged)} tiles"
    return f"your image was rejected by the streamer: the safety filter flagged {what}"


def reject(entry: Entry) -> Decision:
    """Reject a flagged picture: never shown again; the gallery deletes its held files."""
    outcome = Outcome(entry.outcome)
    if outcome not in REJECTABLE:
        refusal = f"picture {entry.id} is {outcome.value}, it cannot be rejected"
        return Decision(outcome, tuple(entry.approved), refusal)
    return Decision(Outcome.REJECTED, ())
