"""What a generation is: the parameters asked for and the images that came back.

Plain data shared by the show (which decides what to generate), the engine (which
generates), the gallery (which stores) and the link (which shows). No I/O here.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from generator_host.core.categories import too_close


@dataclass(frozen=True)
class GenerationParams:
    """Everything that determines the pixels, so the same params give the same image."""

    prompt: str
    negative_prompt: str = ""
    steps: int = 2
    guidance: float = 0.0
    width: int = 64
    height: int = 64
    seed: int = 0
    count: int = 1  # images in the grid: 1, 4, 9 or rows*cols

    def seeds(self) -> list[int]:
        """One seed per image: consecutive from `seed`, so each tile is reproducible alone."""
        return [(self.seed + i) % (2**63) for i in range(self.count)]


@dataclass(frozen=True)
class Requester:
    """Who asked, as chat knows them."""

    login: str
    display_name: str = ""
    user_id: str = ""

    @property
    def name(self) -> str:
        return self.display_name or self.login


class Paid(str, enum.Enum):
    """How a viewer paid for a request (None: a free chat command)."""

    BITS = "bits"  # a cheer: Twitch has no refunds for bits
    POINTS = "points"  # a channel-point redemption: refunded when no picture comes

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class GenerationRequest:
    """A queued request: one chat command's worth of images."""

    id: str
    requester: Requester
    params: GenerationParams
    created: float  # seconds, from the clock passed into the show
    msg_id: str = ""  # chat message that asked for it (for replies and CLEARMSG)
    paid: Paid | None = None
    ahead: bool = False  # waits ahead of free requests (a paid one, when the setting says)
    redemption_id: str = ""  # a channel-point redemption paid for it (settled once)
    # The prompt's scores against the safety categories that apply to prompts, when they
    # were checked (core/categories.py), and those it came too close to under
    # [safety] prompt_action = "hold" or "flag": every tile of the picture then counts as
    # flagged for the approval mode (approval.tile_flags; the engine's verdicts stay the
    # images' own).
    prompt_scores: tuple[tuple[str, float], ...] = ()
    prompt_flagged: tuple[str, ...] = ()


@dataclass
class SafetyScores:
    """Raw safety-checker scores of one image: cosine similarity minus each threshold.

    `categories`: the streamer's categories (core/categories.py) scored on the same image
    embedding, best cosine minus the category's threshold; above 0 flags.
    """

    concept: list[float]  # 17 values
    special: list[float]  # 3 values
    categories: dict[str, float] = field(default_factory=dict)

    @property
    def flagged_categories(self) -> list[str]:
        return list(too_close(self.categories))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"concept": list(self.concept), "special": list(self.special)}
        if self.categories:
            out["categories"] = dict(self.categories)
        return out


def safety_line(
    scores: Sequence[SafetyScores | None],
    offset: float,
    prompt_scores: Iterable[tuple[str, float]] = (),
    most: int = 4,
) -> str:
    """One short line of safety scores for moderators (`!params`), over a grid's worst
    tile: the checker's closest concept (score plus the offset it was judged at), then
    the categories' scores, highest first (at most `most`), then the prompt's. Positive
    means past the threshold. Empty when nothing was scored (the checker was off)."""
    checked = [s for s in scores if s is not None]
    parts: list[str] = []
    if checked:
        margins = [max([*s.concept, *s.special], default=float("-inf")) for s in checked]
        if max(margins) > float("-inf"):
            parts.append(f"checker {max(margins) + offset:+.3f}")
        names = sorted({n for s in checked for n in s.categories})
        worst = {n: max(s.categories[n] for s in checked if n in s.categories) for n in names}
        top = sorted(worst.items(), key=lambda kv: -kv[1])[:most]
        parts += [f"{name} {value:+.3f}" for name, value in top]
    line = ", ".join(parts)
    prompt = sorted(prompt_scores, key=lambda kv: -kv[1])[:most]
    if prompt:
        line += ("; " if line else "") + "prompt " + ", ".join(f"{n} {v:+.3f}" for n, v in prompt)
    return line


@dataclass
class GeneratedImage:
    """One image of a request, with its own seed and verdict (`flagged`: the safety
    checker's and the image categories', never the prompt's)."""

    image: Any  # PIL.Image.Image; Any so this module needs no Pillow import
    seed: int
    scores: SafetyScores | None  # None when the checker is switched off
    flagged: bool


@dataclass
class GenerationResult:
    request: GenerationRequest
    images: list[GeneratedImage]
    model: str
    sampler: str
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)
    # What was generated after the engine filled defaults and applied the caps; None in
    # results built elsewhere, where request.params is what was generated.
    params: GenerationParams | None = None

    @property
    def used_params(self) -> GenerationParams:
        return self.params if self.params is not None else self.request.params

    @property
    def any_flagged(self) -> bool:
        return any(img.flagged for img in self.images)


@dataclass(frozen=True)
class Entry:
    """A gallery entry as the show sees it: enough to answer !params and to show it again.

    `outcome` is an `approval.Outcome` value ("shown", "blurred", "held", "skipped",
    "approved", "rejected"); `requester` is the display name, `requester_login` the login
    (they differ: "Dora" / "dora"); `flagged` per tile whether it counts as flagged
    (`approval.tile_flags`: its own verdict or its prompt's), `mode` the approval
    mode it was made under and `approved` the tiles approved one by one (0-based).
    """

    id: int
    request_id: str
    requester: str
    prompt: str
    negative_prompt: str
    seed: int
    steps: int
    guidance: float
    width: int
    height: int
    count: int
    model: str
    outcome: str
    created: float
    requester_login: str = ""
    mode: str = ""
    flagged: tuple[bool, ...] = ()
    approved: tuple[int, ...] = ()
    safety: str = ""  # `safety_line` of its scores, for moderators' !params

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Entry:
        """From `dataclasses.asdict` (state.json): unknown keys dropped, lists as tuples."""
        known = {f: raw[f] for f in cls.__dataclass_fields__ if f in raw}
        known["flagged"] = tuple(bool(x) for x in known.get("flagged", ()))
        known["approved"] = tuple(int(x) for x in known.get("approved", ()))
        return cls(**known)
