"""Who may ask for what: blocklist, cooldowns, per-user and global limits, modes, ignores.

Pure: the blocklist is handed in (edges/blocklist.py reads the file). The show asks the
`Moderator` before it queues anything and answers with the `Refusal` returned here (its
kind coalesces refusals), so every rule a viewer can run into is in this one file.

The blocklist matches whole words after normalising both the prompt and the list the
same way: case folded, invisible characters removed (every format character such as the
soft hyphen or a zero-width joiner, combining marks such as accents and variation
selectors, Hangul fillers), look-alike characters mapped (Cyrillic `а`, `0`, `@`, `$`
...), punctuation treated as space, and runs of single letters joined (`n u d e`,
`n.u.d.e`). A line may be a word, a phrase, a word ending in `*` (prefix) or a
`/regular expression/` that sees the normalised text.

The negative prompt (after `###`) is checked too: its comma-separated parts that contain
a blocked word are dropped (`Moderator.negative_prompt`), so a blocked word never reaches
the model's negative prompt nor any reply that repeats it.
"""

from __future__ import annotations

import enum
import re
import unicodedata
from dataclasses import dataclass, field

from generator_host.core.categories import too_close
from generator_host.core.commands import parse_role
from generator_host.core.generation import Paid
from generator_host.core.message import Role, Viewer
from generator_host.core.settings import ModerationSettings

_LOOKALIKE = str.maketrans(
    {
        "0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "8": "b",
        "@": "a", "$": "s", "€": "e",
        # Cyrillic and Greek letters that look Latin
        "а": "a", "в": "b", "е": "e", "ё": "e", "к": "k", "м": "m", "н": "h", "о": "o",
        "р": "p", "с": "c", "т": "t", "у": "y", "х": "x", "і": "i", "ї": "i", "ѕ": "s",
        "ј": "j", "ԁ": "d", "ɡ": "g", "α": "a", "β": "b", "ε": "e", "ι": "i", "κ": "k",
        "ν": "v", "ο": "o", "ρ": "p", "τ": "t", "υ": "u", "χ": "x", "ѵ": "v",
    }
)  # fmt: skip
_NON_WORD = re.compile(r"[^a-z0-9 ]+")
_MAX_RUN = 40
# Characters a chat client draws as nothing: format characters (Cf: soft hyphen U+00AD,
# U+2063, U+180E, ZWJ/ZWNJ, tags ...), unassigned ones (Cn, drawn as nothing when
# default-ignorable), combining marks (Mn/Me: accents after NFKD, variation selectors,
# U+034F). Hangul fillers are letters (Lo) yet invisible; Unicode lists them among the
# default-ignorable code points, which unicodedata does not expose.
_INVISIBLE_CATEGORIES = frozenset({"Cf", "Cn", "Mn", "Me"})
_HANGUL_FILLERS = frozenset("\u115f\u1160\u3164\uffa0")


def _visible(c: str) -> bool:
    """False for a character that renders as nothing (see above); whitespace is kept, as
    it separates words, and so is every other control character (read as a space)."""
    if c in _HANGUL_FILLERS:
        return False
    return unicodedata.category(c) not in _INVISIBLE_CATEGORIES


def normalize(text: str) -> str:
    """Lower-case, invisible characters and accents removed, look-alikes mapped,
    punctuation as space, single spaces."""
    text = unicodedata.normalize("NFKD", text.casefold())
    text = "".join(c for c in text if _visible(c))
    text = _NON_WORD.sub(" ", text.translate(_LOOKALIKE))
    return " ".join(text.split())


def _words_with_joined_runs(words: list[str]) -> list[str]:
    """Words plus every join of consecutive single letters (`n u d e` -> `nude`)."""
    out = list(words)
    run: list[str] = []
    for word in [*words, ""]:
        if len(word) == 1:
            run.append(word)
            continue
        if len(run) > 1:
            run = run[:_MAX_RUN]
            out += ["".join(run[i:j]) for i in range(len(run)) for j in range(i + 2, len(run) + 1)]
        run = []
    return out


@dataclass
class Blocklist:
    words: frozenset[str] = frozenset()
    prefixes: tuple[str, ...] = ()
    phrases: dict[str, list[tuple[str, ...]]] = field(default_factory=dict)
    pattern: re.Pattern[str] | None = None

    @classmethod
    def from_lines(cls, lines: list[str]) -> tuple[Blocklist, list[str]]:
        """Build from list-file lines; `#` starts a comment. Returns the list and problems."""
        words: set[str] = set()
        prefixes: list[str] = []
        phrases: dict[str, list[tuple[str, ...]]] = {}
        patterns: list[str] = []
        problems: list[str] = []
        for number, raw in enumerate(lines, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if len(line) > 2 and line.startswith("/") and line.endswith("/"):
                try:
                    re.compile(line[1:-1])
                    patterns.append(f"(?:{line[1:-1]})")
                except re.error as exc:
                    problems.append(f"blocklist line {number}: bad pattern ({exc}); ignored")
                continue
            star = line.endswith("*")
            norm = normalize(line.rstrip("*")).split()
            if not norm:
                continue
            if star and len(norm) == 1:
                prefixes.append(norm[0])
            elif len(norm) == 1:
                words.add(norm[0])
            else:
                phrases.setdefault(norm[0], []).append(tuple(norm))
        pattern = re.compile("|".join(patterns)) if patterns else None
        return cls(frozenset(words), tuple(prefixes), phrases, pattern), problems

    def match(self, text: str) -> bool:
        """True when the text contains a blocked word, phrase or pattern."""
        norm = normalize(text)
        words = norm.split()
        candidates = _words_with_joined_runs(words)
        if not self.words.isdisjoint(candidates):
            return True
        if self.prefixes and any(w.startswith(self.prefixes) for w in candidates):
            return True
        if self.phrases:
            for i, word in enumerate(words):
                for phrase in self.phrases.get(word, ()):
                    if tuple(words[i : i + len(phrase)]) == phrase:
                        return True
        return bool(self.pattern and self.pattern.search(norm))

    def drop_blocked(self, text: str) -> tuple[str, int]:
        """`text` without its comma-separated parts that contain a blocked word, and how
        many parts were dropped. When the kept parts still match together (a word spread
        over commas, `n, u, d, e`), nothing is kept."""
        parts = [p.strip() for p in text.split(",")]
        parts = [p for p in parts if p]
        kept = [p for p in parts if not self.match(p)]
        if kept and self.match(" ".join(kept)):
            kept = []
        return ", ".join(kept), len(parts) - len(kept)


_MODE_WORDS = {
    "open": Role.EVERYONE,
    "off": Role.EVERYONE,
    "subonly": Role.SUBSCRIBER,
    "modonly": Role.MODERATOR,
}


def parse_mode(text: str) -> Role | None:
    """Who may request images: everyone, subscribers (and up) or moderators (and up).
    Role words as `commands.parse_role` reads them, plus a few mode words."""
    key = text.strip().lower()
    role = _MODE_WORDS.get(key, parse_role(key))
    return role if role in MODE_NAMES else None


MODE_NAMES = {
    Role.EVERYONE: "everyone",
    Role.SUBSCRIBER: "subscribers",
    Role.MODERATOR: "moderators",
}


class RefusalKind(str, enum.Enum):
    """Why a request was refused. The value is the line that sums up everyone refused
    this way when refusals are coalesced (see core/replies.py)."""

    MODE = "requests are closed to you right now"
    COOLDOWN = "please wait for your cooldown"
    PER_USER = "you already have a request waiting"
    QUEUE_FULL = "the queue is full; try again later"
    TOO_LONG = "prompt too long"
    BLOCKED = "the prompt contains a blocked word"
    CATEGORY = "the safety filter refused the prompt"


@dataclass(frozen=True)
class Refusal:
    """A refusal: its kind (to coalesce) and the answer for this viewer."""

    kind: RefusalKind
    text: str


class Moderator:
    """The rules between a viewer's command and the queue; state: cooldowns, mode, ignores."""

    def __init__(self, settings: ModerationSettings, blocklist: Blocklist) -> None:
        self.settings = settings
        self.blocklist = blocklist
        mode = parse_mode(settings.mode)
        self.mode = Role.EVERYONE if mode is None else mode
        exempt = parse_role(settings.exempt_role)  # Role.EVERYONE is 0: no `or` here
        self.exempt = Role.MODERATOR if exempt is None else exempt
        self.ignored_extra: set[str] = set()
        self.unignored: set[str] = set()
        self._ignored_cfg: frozenset[str] = frozenset()
        self._last_request: dict[str, float] = {}
        self.refresh()

    def refresh(self, blocklist: Blocklist | None = None) -> None:
        """Re-read the settings the streamer may change while live (ignored users); take
        a new blocklist when the app read one (its file changed)."""
        self._ignored_cfg = frozenset(
            u.strip().lstrip("@").lower() for u in self.settings.ignored_users
        )
        if blocklist is not None:
            self.blocklist = blocklist

    def is_ignored(self, login: str) -> bool:
        if login in self.ignored_extra:
            return True
        return login in self._ignored_cfg and login not in self.unignored

    def ignore(self, login: str, on: bool) -> None:
        (self.ignored_extra.add if on else self.ignored_extra.discard)(login)
        (self.unignored.discard if on else self.unignored.add)(login)

    def check_prompt(self, prompt: str) -> Refusal | None:
        """Why this prompt text is refused, or None. Never echoes the blocked word."""
        limit = self.settings.max_prompt_length
        if len(prompt) > limit:
            text = f"the prompt is {len(prompt)} characters; the limit is {limit}"
            return Refusal(RefusalKind.TOO_LONG, text)
        if self.blocklist.match(prompt):
            return Refusal(RefusalKind.BLOCKED, RefusalKind.BLOCKED.value)
        return None

    def check_prompt_scores(self, scores: dict[str, float]) -> Refusal | None:
        """Why a prompt is refused by the streamer's safety categories that apply to prompts
        (core/categories.py: best cosine minus the threshold; above 0 is too close), or
        None. Names the categories, never repeats the prompt."""
        close = too_close(scores)
        if not close:
            return None
        text = f"the safety filter refused the prompt: too close to {', '.join(close[:3])}"
        return Refusal(RefusalKind.CATEGORY, text)

    def check_request(
        self,
        viewer: Viewer,
        now: float,
        queued_by_user: int,
        queued_total: int,
        paid: Paid | None = None,
    ) -> Refusal | None:
        """Why queueing a request now is refused (mode, cooldown, limits), or None.

        A paid request skips the cooldown and the per-viewer limit: they ration free
        requests, and a paid one is rationed by its price (and a reward's own cooldowns).
        A cheer also skips the queue cap, because bits cannot be refunded; a channel-point
        redemption is refused when the queue is full (its points come back)."""
        if viewer.role < self.mode:
            who = MODE_NAMES.get(self.mode, "moderators")
            return Refusal(RefusalKind.MODE, f"only {who} can request images right now")
        if paid is Paid.BITS:
            return None
        exempt = viewer.role >= self.exempt or paid is not None
        if not exempt:
            last = self._last_request.get(viewer.login)
            wait = self.settings.user_cooldown_seconds - (now - last) if last is not None else 0
            if wait > 0:
                return Refusal(RefusalKind.COOLDOWN, f"cooldown: try again in {wait:.0f} s")
            limit = self.settings.max_queued_per_user
            if queued_by_user >= limit:
                text = f"you already have {queued_by_user} request(s) waiting (limit {limit})"
                return Refusal(RefusalKind.PER_USER, text)
        if self.queue_full(queued_total):
            text = f"the queue is full ({self.settings.max_queue}); try again later"
            return Refusal(RefusalKind.QUEUE_FULL, text)
        return None

    def queue_full(self, waiting: int) -> bool:
        """No room for another free request (`waiting`: Show.waiting)."""
        return waiting >= self.settings.max_queue

    def note_request(self, login: str, now: float) -> None:
        """Start the viewer's cooldown; old entries are pruned so a flood stays bounded."""
        self._last_request[login] = now
        if len(self._last_request) > 4096:
            cutoff = now - self.settings.user_cooldown_seconds
            self._last_request = {k: t for k, t in self._last_request.items() if t > cutoff}

    def check_negative(self, user_negative: str) -> tuple[str, int]:
        """The viewer's negative prompt with every part holding a blocked word dropped, and
        how many parts were dropped. Dropping rather than refusing: a blocked word in a
        negative prompt asks the model to avoid it, so the request itself is fine; only
        the word must never reach the model or a reply (`!prompt`) that repeats it."""
        return self.blocklist.drop_blocked(user_negative)

    def negative_prompt(self, user_negative: str) -> str:
        """The viewer's negative prompt (blocked parts dropped, see `check_negative`) with
        the streamer's forced one appended."""
        kept, _ = self.check_negative(user_negative)
        forced = self.settings.forced_negative_prompt.strip()
        parts = [p for p in (kept, forced) if p]
        return ", ".join(parts)

    def snapshot(self) -> dict[str, object]:
        return {
            "mode": MODE_NAMES.get(self.mode, "everyone"),
            "ignored": sorted(self.ignored_extra),
            "unignored": sorted(self.unignored),
        }

    def restore(self, state: dict[str, object]) -> None:
        mode = state.get("mode")
        if isinstance(mode, str):
            restored = parse_mode(mode)
            self.mode = self.mode if restored is None else restored
        for key, target in (("ignored", self.ignored_extra), ("unignored", self.unignored)):
            values = state.get(key)
            if isinstance(values, list):
                target.update(str(v) for v in values)
