"""Chat text -> a command and its checked arguments. Pure: no I/O, no state.

Why its own module: the original matched any word starting with `!g` and crashed on a
malformed number. Here a command is an exact word (the prefix plus a name or an alias,
case-insensitive), and every argument is validated into a value or a reason the viewer
can read. Nothing here raises on hostile input.

Generate syntax (documented for streamers in docs/chat.md):
    !generate a red fox in the snow ### blurry, text
        the part after `###` is the negative prompt.
    !generate steps=20 size=512x768 count=4 seed=42 a red fox
        optional `key=value` words anywhere; each is checked against the streamer's caps,
        and every bad one is named in one answer. seed=-1 means a random seed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from generator_host.core.message import Role
from generator_host.core.settings import declared

# Every command word the show knows; grep for a word to find its behaviour in show.py.
COMMANDS: tuple[str, ...] = (
    "generate",
    "regenerate",
    "clear",
    "approve",
    "terminate",
    "prev",
    "next",
    "slideshow",
    "queue",
    "cancel",
    "params",
    "seed",
    "prompt",
    "help",
    "mode",
    "ignore",
    "unignore",
)

DEFAULT_ALIASES: dict[str, str] = {
    "gen": "generate",
    "g": "generate",
    "regen": "regenerate",
    "previous": "prev",
    "back": "prev",
    "info": "params",
}

# Minimum role per command; the streamer overrides any of them in [show] command_roles.
DEFAULT_ROLES: dict[str, Role] = {
    "approve": Role.BROADCASTER,
    "terminate": Role.BROADCASTER,
    "clear": Role.MODERATOR,
    "prev": Role.MODERATOR,
    "next": Role.MODERATOR,
    "slideshow": Role.MODERATOR,
    "mode": Role.MODERATOR,
    "ignore": Role.MODERATOR,
    "unignore": Role.MODERATOR,
}

ROLE_NAMES: dict[str, Role] = {
    "everyone": Role.EVERYONE,
    "all": Role.EVERYONE,
    "viewer": Role.EVERYONE,
    "viewers": Role.EVERYONE,
    "subscriber": Role.SUBSCRIBER,
    "subscribers": Role.SUBSCRIBER,
    "sub": Role.SUBSCRIBER,
    "subs": Role.SUBSCRIBER,
    "vip": Role.VIP,
    "vips": Role.VIP,
    "moderator": Role.MODERATOR,
    "moderators": Role.MODERATOR,
    "mod": Role.MODERATOR,
    "mods": Role.MODERATOR,
    "broadcaster": Role.BROADCASTER,
    "streamer": Role.BROADCASTER,
}

NEGATIVE_SEPARATOR = "###"
# Invisible characters chat clients add (7TV's duplicate-bypass tag, zero-width spaces).
_INVISIBLE = dict.fromkeys(map(ord, "\U000e0000\u200b\u200c\u200d\u2060\ufeff\u034f"), None)
_OPTION = re.compile(r"^(steps|size|count|seed)=(\S*)$", re.IGNORECASE)
RANDOM_SEED = "-1"  # seed=-1: a random seed, as in AUTOMATIC1111 and ComfyUI
_ACTION = "\x01ACTION "


@dataclass(frozen=True)
class Command:
    """A recognised command: its canonical name, the word typed and the raw argument text."""

    name: str
    args: str = ""
    word: str = ""


@dataclass(frozen=True)
class Limits:
    """What chat may ask for: the streamer's caps (model settings and the show's grid)."""

    max_steps: int = 50
    max_size: int = 1024
    max_count: int = 1
    min_size: int = 64


@dataclass(frozen=True)
class GenerateArgs:
    """A checked !generate: prompt text and only the options the viewer actually gave."""

    prompt: str
    negative: str = ""
    steps: int | None = None
    width: int | None = None
    height: int | None = None
    count: int | None = None
    seed: int | None = None


def role_name(role: Role) -> str:
    return role.name.lower()


def parse_role(text: str) -> Role | None:
    return ROLE_NAMES.get(text.strip().lower())


def parse_mapping(items: list[str], what: str) -> tuple[dict[str, str], list[str]]:
    """Parse `key=value` settings lines (aliases, command roles); returns pairs and problems."""
    out: dict[str, str] = {}
    problems: list[str] = []
    for item in items:
        key, sep, value = item.partition("=")
        key, value = key.strip().lower().lstrip("!"), value.strip().lower().lstrip("!")
        if not sep or not key or not value:
            problems.append(f"{what}: {item!r} is not name=value; ignored")
            continue
        out[key] = value
    return out, problems


def build_aliases(items: list[str]) -> tuple[dict[str, str], list[str]]:
    """Default aliases plus the streamer's `alias=command` lines; every command names itself."""
    aliases = dict(DEFAULT_ALIASES)
    pairs, problems = parse_mapping(items, "aliases")
    for alias, target in pairs.items():
        if target not in COMMANDS:
            problems.append(f"aliases: {alias}={target}: no command {target!r}; ignored")
        elif alias in COMMANDS:
            problems.append(f"aliases: {alias!r} is already a command; ignored")
        else:
            aliases[alias] = target
    aliases.update({name: name for name in COMMANDS})
    return aliases, problems


def build_roles(items: list[str]) -> tuple[dict[str, Role], list[str]]:
    """Default minimum roles plus the streamer's `command=role` overrides."""
    roles = {name: DEFAULT_ROLES.get(name, Role.EVERYONE) for name in COMMANDS}
    pairs, problems = parse_mapping(items, "command_roles")
    for name, role_text in pairs.items():
        role = parse_role(role_text)
        if name not in COMMANDS:
            problems.append(f"command_roles: no command {name!r}; ignored")
        elif role is None:
            problems.append(f"command_roles: {name}: unknown role {role_text!r}; ignored")
        else:
            roles[name] = role
    return roles, problems


def clean_text(text: str) -> str:
    """Drop invisible characters and /me framing; collapse nothing else."""
    if text.startswith(_ACTION):
        text = text[len(_ACTION) :].rstrip("\x01")
    return text.translate(_INVISIBLE).strip()


def parse_command(
    text: str, prefix: str = "!", aliases: dict[str, str] | None = None
) -> Command | None:
    """Return the command a chat line asks for, or None when it is not one of ours.

    The first word must be exactly prefix + a known name or alias: `!generatefoo` and
    `!g2` are not commands (the original's prefix matching made them generate).
    """
    if not text or not prefix:
        return None
    if not text.startswith(prefix):
        text = clean_text(text)
        if not text.startswith(prefix):
            return None
    else:
        text = clean_text(text)
    head, _, rest = text.partition(" ")
    word = head[len(prefix) :].lower()
    table = aliases if aliases is not None else _DEFAULT_TABLE
    name = table.get(word)
    if name is None:
        return None
    return Command(name=name, args=rest.strip(), word=head)


_DEFAULT_TABLE = build_aliases([])[0]


def _int(text: str) -> int | None:
    if not text.isascii() or not text.isdigit() or len(text) > 12:
        return None
    return int(text)


def _size(text: str) -> tuple[int, int] | None:
    w, sep, h = text.lower().partition("x")
    width = _int(w)
    height = _int(h) if sep else width
    if width is None or height is None:
        return None
    return width, height


def parse_generate(args: str, limits: Limits) -> GenerateArgs | str:
    """Split prompt / `###` negative / key=value options; a str result is the refusal.

    Every bad option is named in that one refusal ("steps must be 1-50; count must be 1
    or 4"), so a viewer fixes them all at once. `seed=-1` asks for a random seed, as in
    other Stable Diffusion tools.
    """
    positive, _, negative = args.partition(NEGATIVE_SEPARATOR)
    negative = " ".join(negative.replace(NEGATIVE_SEPARATOR, " ").split())
    words: list[str] = []
    opts: dict[str, int | tuple[int, int]] = {}
    problems: list[str] = []
    for word in positive.split():
        m = _OPTION.match(word)
        if not m:
            words.append(word)
            continue
        key, value = m.group(1).lower(), m.group(2)
        if key == "seed" and value == RANDOM_SEED:
            opts.pop("seed", None)
            continue
        parsed = _size(value) if key == "size" else _int(value)
        if parsed is None:
            example = "512x512" if key == "size" else "a whole number"
            problem = f"{key}= needs {example}"
            # Each bad option named once: repeats would only make the answer long.
            if not any(p.startswith(problem) for p in problems):
                problems.append(f"{problem}, not {value[:20]!r}")
            continue
        opts[key] = parsed
    out = GenerateArgs(prompt=" ".join(words), negative=negative)
    if "steps" in opts:
        steps = opts["steps"]
        assert isinstance(steps, int)
        if 1 <= steps <= limits.max_steps:
            out = _replace(out, steps=steps)
        else:
            problems.append(f"steps must be 1-{limits.max_steps}")
    if "size" in opts:
        size = opts["size"]
        assert isinstance(size, tuple)
        w, h = (v // 8 * 8 for v in size)
        low, high = limits.min_size, limits.max_size
        if low <= w <= high and low <= h <= high:
            out = _replace(out, width=w, height=h)
        else:
            problems.append(f"size must be {low}-{high} per side")
    if "count" in opts:
        count = opts["count"]
        allowed = [n for n in (1, 4, 9) if n <= limits.max_count]
        if count in allowed:
            out = _replace(out, count=count)
        else:
            problems.append(f"count must be {' or '.join(map(str, allowed))}")
    if "seed" in opts:
        seed = opts["seed"]
        assert isinstance(seed, int)
        if seed < 2**32:
            out = _replace(out, seed=seed)
        else:
            problems.append("seed must be below 4294967296 (or -1 for a random one)")
    if not out.prompt:
        problems.append("give a prompt, e.g. !generate a red fox in the snow ### blurry")
    return "; ".join(problems) if problems else out


def _replace(args: GenerateArgs, **changes: int | None) -> GenerateArgs:
    return replace(args, **changes)  # type: ignore[arg-type]


def parse_slideshow(args: str, prefix: str = "!") -> float | str | None:
    """`!slideshow 20` -> 20.0, `off` -> 0.0, empty -> None (toggle); str = refusal reason."""
    text = args.strip().lower()
    if text in ("", "on", "start", "yes"):
        return None
    if text in ("off", "stop", "0", "no"):
        return 0.0
    try:
        seconds = float(text.removesuffix("s"))
    except ValueError:
        return f"use {prefix}slideshow <seconds> or {prefix}slideshow off"
    checked, error = declared("show.slideshow_seconds").check(seconds)
    if error:
        return f"slideshow seconds {error}"
    return checked


def parse_login(args: str) -> str:
    """`@Name` or `name` -> `name` (a Twitch login is lower case, no @)."""
    word = args.split()[0] if args.split() else ""
    return word.lstrip("@").lower()
