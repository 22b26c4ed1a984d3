"""IRC lines in Twitch's dialect, both ways. Pure: strings in, values out, never raises.

In: `parse_line` splits `@tags :prefix COMMAND params :trailing` and unescapes IRCv3 tag
values (`\\s` space, `\\:` semicolon, `\\\\` backslash, `\\r`, `\\n`); `to_event` turns a
PRIVMSG / CLEARMSG / CLEARCHAT into the show's chat events with the viewer's role read
from tags and badges. Only the joined channel's lines count (`Room`: channel name and,
once ROOMSTATE told it, room id). A message sent with Twitch's Reply button loses the
`@parent ` mention Twitch puts in front, so `@bot !queue` is the command `!queue`.
Twitch Shared Chat mirrors the partner channels' messages into ours with a
`source-room-id` of their own: they are dropped unless `Room.shared_chat`, and even then
roles come from `badges` (the viewer's badges in OUR channel), never `source-badges`
(their badges in the channel they wrote in).
A cheer (`bits` tag) reaches the show with its bits and its text without the cheermote
words (`Cheer100`, `Kappa50`, a channel's own `Foo10`): see `cheer_text`.
Out: `build_privmsg` is the only way a chat message leaves the bot. It removes CR, LF
and every other control character (so a prompt can never smuggle an extra IRC line),
caps the text at 500 characters and threads replies with `reply-parent-msg-id`.
"""

from __future__ import annotations

import itertools
import re
import unicodedata
from dataclasses import dataclass, field

from generator_host.core.message import (
    ChatEvent,
    ChatMessage,
    MessageDeleted,
    Role,
    UserRemoved,
    Viewer,
)

MAX_MESSAGE = 500
_UNESCAPE = {":": ";", "s": " ", "\\": "\\", "r": "\r", "n": "\n"}
_ESCAPE = {";": "\\:", " ": "\\s", "\\": "\\\\", "\r": "\\r", "\n": "\\n"}
_MSG_ID = re.compile(r"[^A-Za-z0-9_-]")
_CHANNEL = re.compile(r"[^a-z0-9_]")


@dataclass(frozen=True)
class Line:
    """One parsed IRC line."""

    command: str
    params: list[str] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)
    prefix: str = ""

    @property
    def nick(self) -> str:
        return self.prefix.split("!", 1)[0]

    @property
    def trailing(self) -> str:
        return self.params[-1] if self.params else ""


def unescape_tag_value(value: str) -> str:
    """IRCv3 message-tags unescaping; an unknown `\\x` is `x`, a lone final `\\` is dropped."""
    if "\\" not in value:
        return value
    out: list[str] = []
    chars = iter(value)
    for c in chars:
        if c == "\\":
            nxt = next(chars, "")
            out.append(_UNESCAPE.get(nxt, nxt))
        else:
            out.append(c)
    return "".join(out)


def escape_tag_value(value: str) -> str:
    return "".join(_ESCAPE.get(c, c) for c in value)


def parse_tags(raw: str) -> dict[str, str]:
    """`a=1;b=x\\sy` -> {"a": "1", "b": "x y"} (the hot path of every chat line)."""
    tags = dict(item.partition("=")[::2] for item in raw.split(";") if item)
    if "\\" in raw:
        for key, value in tags.items():
            if "\\" in value:
                tags[key] = unescape_tag_value(value)
    return tags


def parse_line(raw: str) -> Line | None:
    """Parse one line (without CR LF); None when there is no command."""
    line = raw.rstrip("\r\n")
    tags: dict[str, str] = {}
    prefix = ""
    if line.startswith("@"):
        raw_tags, _, line = line[1:].partition(" ")
        tags = parse_tags(raw_tags)
        line = line.lstrip(" ")
    if line.startswith(":"):
        prefix, _, line = line[1:].partition(" ")
        line = line.lstrip(" ")
    head, sep, trailing = line.partition(" :")
    if line.startswith(":"):
        head, sep, trailing = "", ":", line[1:]
    words = head.split()
    if not words:
        return None
    params = words[1:] + ([trailing] if sep else [])
    return Line(command=words[0].upper(), params=params, tags=tags, prefix=prefix)


@dataclass(frozen=True)
class Room:
    """The chat the bot joined: lines for any other channel or room are not ours."""

    channel: str  # login, without '#'
    room_id: str = ""  # the channel's user id, from its ROOMSTATE; "" until then
    shared_chat: bool = False  # obey viewers of partner channels in a Shared Chat session

    def holds(self, line: Line) -> bool:
        """True when `line` was said in this channel's chat (not another one's)."""
        target = line.params[0].lower().lstrip("#") if line.params else ""
        if target != self.channel:
            return False
        room_id = line.tags.get("room-id", "")
        return not (self.room_id and room_id and room_id != self.room_id)

    def is_partner(self, line: Line) -> bool:
        """A Shared Chat message mirrored from a partner channel (its `source-room-id` is
        not ours; Twitch sets it to our own id for our own viewers during a session)."""
        source = line.tags.get("source-room-id", "")
        ours = self.room_id or line.tags.get("room-id", "")
        return bool(source) and source != ours


def role_from_tags(tags: dict[str, str]) -> Role:
    """Highest role from `badges` (broadcaster, moderator, vip, subscriber/founder) and flags."""
    badges = {b.partition("/")[0] for b in tags.get("badges", "").split(",") if b}
    if "broadcaster" in badges:
        return Role.BROADCASTER
    if badges & {"moderator", "lead_moderator"} or tags.get("mod") == "1":
        return Role.MODERATOR
    if "vip" in badges or tags.get("vip") == "1":
        return Role.VIP
    if badges & {"subscriber", "founder"} or tags.get("subscriber") == "1":
        return Role.SUBSCRIBER
    return Role.EVERYONE


def viewer_from(line: Line, partner: bool = False) -> Viewer:
    """The speaker. For a partner channel's message (`partner`) only the `badges` tag
    counts (our channel's badges; never `source-badges` nor the mod/subscriber/vip flags),
    and a broadcaster badge only for our broadcaster (user id = room id)."""
    login = line.nick.lower()
    tags = line.tags
    user_id = tags.get("user-id", "")
    if partner:
        badges = [b for b in tags.get("badges", "").split(",") if b]
        if user_id != tags.get("room-id", "") or not user_id:
            badges = [b for b in badges if b.partition("/")[0] != "broadcaster"]
        tags = {"badges": ",".join(badges)}
    return Viewer(
        login=login,
        display_name=line.tags.get("display-name", "") or login,
        user_id=user_id,
        role=role_from_tags(tags),
    )


def without_reply_mention(text: str, tags: dict[str, str]) -> str:
    """The text without the `@ParentName ` Twitch's Reply button puts in front, when the
    reply-parent tags say it is a reply and the mention names that parent (login or
    display name); any other text is left as it is."""
    if not tags.get("reply-parent-msg-id"):
        return text
    parent = {
        tags.get("reply-parent-user-login", "").lower(),
        tags.get("reply-parent-display-name", "").lower(),
    } - {""}
    head, _, rest = text.lstrip(" ").partition(" ")
    if head.startswith("@") and head[1:].lower() in parent:
        return rest.lstrip(" ")
    return text


_CHEERMOTE = re.compile(r"[A-Za-z][A-Za-z_]*?(\d+)")
MAX_BITS = 10_000_000  # more than any single cheer; a bigger tag value is not a number we trust
# Twitch's global cheermote prefixes (the Helix cheermotes list): removed from a cheer's text
# even when the amounts do not add up to the tag (a channel's own prefixes are removed only
# when they do).
# fmt: off
GLOBAL_CHEERMOTES = frozenset((
    "cheer", "doodlecheer", "biblethump", "cheerwhal", "corgo", "uni", "showlove", "party",
    "seemsgood", "pride", "kappa", "frankerz", "heyguys", "dansgame", "elegiggle", "trihard",
    "kreygasm", "4head", "swiftrage", "notlikethis", "failfish", "vohiyo", "pjsalt",
    "mrdestructoid", "bday", "ripcheer", "shamrock", "streamlabs", "muxy", "holidaycheer",
    "goal", "anon", "charity",
))
# fmt: on


def bits_of(tags: dict[str, str]) -> int:
    """The `bits` tag as a number of bits; 0 when absent or not a plain positive number."""
    raw = tags.get("bits", "")
    if not raw.isascii() or not raw.isdigit() or len(raw) > 8:
        return 0
    return min(int(raw), MAX_BITS)


def cheer_text(text: str, bits: int) -> str:
    """A cheer's text without its cheermote words, so `Cheer100 a red fox` paints "a red fox".

    Twitch puts each cheered amount into the text as PrefixAmount words. Words with a
    global prefix (`Cheer100`) always go; of the other words that look like a channel's own
    cheermote (`Foo10`), the set whose amounts make up the rest of the `bits` tag goes, so
    "mp3" or "R2D2" in a prompt survive."""
    if bits <= 0:
        return text
    words = [w for w in text.split(" ") if w]
    amount = {i: int(m.group(1)) for i, w in enumerate(words) if (m := _CHEERMOTE.fullmatch(w))}
    drop = {i for i in amount if words[i].rstrip("0123456789").lower() in GLOBAL_CHEERMOTES}
    rest = bits - sum(amount[i] for i in drop)
    others = [i for i in amount if i not in drop][:12]  # a few words; 4096 subsets at most
    for size in range(len(others), 0, -1) if rest > 0 else ():
        chosen = next(
            (c for c in itertools.combinations(others, size) if sum(amount[i] for i in c) == rest),
            None,
        )
        if chosen:
            drop.update(chosen)
            break
    return " ".join(w for i, w in enumerate(words) if i not in drop)


def to_event(line: Line, now: float, room: Room | None = None) -> ChatEvent | None:
    """The show's event for a chat line, or None for everything the show does not need
    (and, with `room`, for lines of another channel or of a Shared Chat partner's viewers
    unless `room.shared_chat`)."""
    chat = line.command in ("PRIVMSG", "CLEARMSG", "CLEARCHAT")
    if chat and room is not None and not room.holds(line):
        return None
    if line.command == "PRIVMSG" and len(line.params) >= 2:
        partner = room is not None and room.is_partner(line)
        if partner and not room.shared_chat:
            return None
        bits = bits_of(line.tags)
        return ChatMessage(
            viewer=viewer_from(line, partner),
            text=cheer_text(without_reply_mention(line.trailing, line.tags), bits),
            msg_id=line.tags.get("id", ""),
            now=now,
            bits=bits,
        )
    if line.command == "CLEARMSG":
        msg_id = line.tags.get("target-msg-id", "")
        return MessageDeleted(msg_id=msg_id, now=now) if msg_id else None
    if line.command == "CLEARCHAT" and len(line.params) >= 2:
        return UserRemoved(login=line.trailing.strip().lower(), now=now)
    return None


def sanitize(text: str, limit: int = MAX_MESSAGE) -> str:
    """Every control character becomes a space (CR, LF, NUL, U+2028...), then cap the length."""
    cleaned = "".join(" " if unicodedata.category(c) in ("Cc", "Zl", "Zp") else c for c in text)
    return " ".join(cleaned.split())[:limit].rstrip()


def build_privmsg(channel: str, text: str, reply_to: str = "") -> str:
    """The exact line (with CR LF) that sends `text`; "" when nothing printable is left.

    A leading `/` or `.` is dropped so text can never read as a chat command.
    """
    body = sanitize(text).lstrip("/.").lstrip()
    chan = _CHANNEL.sub("", channel.lower().lstrip("#"))
    if not body or not chan:
        return ""
    parent = _MSG_ID.sub("", reply_to)[:64]
    tags = f"@reply-parent-msg-id={parent} " if parent else ""
    return f"{tags}PRIVMSG #{chan} :{body}\r\n"


def build_line(command: str, *params: str, trailing: bool = False) -> str:
    """A simple outgoing command line (PASS, NICK, CAP, JOIN, PONG); control chars removed."""
    parts = [sanitize(p, 450) for p in params]
    if parts and (trailing or " " in parts[-1] or parts[-1].startswith(":") or not parts[-1]):
        parts[-1] = ":" + parts[-1]
    return " ".join([command, *parts]) + "\r\n"
