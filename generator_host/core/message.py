"""What the chat adapters hand to the show: messages, deletions and removals.

Adapters translate their wire format (Twitch IRC tags, a terminal line) into these;
nothing downstream knows which adapter produced them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Role(enum.IntEnum):
    """Chat roles, ordered: a command's minimum role admits everyone above it."""

    EVERYONE = 0
    SUBSCRIBER = 1
    VIP = 2
    MODERATOR = 3
    BROADCASTER = 4


@dataclass(frozen=True)
class Viewer:
    login: str
    display_name: str = ""
    user_id: str = ""
    role: Role = Role.EVERYONE

    @property
    def name(self) -> str:
        return self.display_name or self.login


@dataclass(frozen=True)
class ChatMessage:
    viewer: Viewer
    text: str  # a cheer's text comes without its Cheer100-style words
    msg_id: str = ""
    now: float = 0.0
    bits: int = 0  # a cheer's bits (Twitch's `bits` tag), 0 for a plain message


@dataclass(frozen=True)
class MessageDeleted:
    """A moderator deleted one message (Twitch CLEARMSG)."""

    msg_id: str
    now: float = 0.0


@dataclass(frozen=True)
class UserRemoved:
    """A user was timed out or banned (Twitch CLEARCHAT with a login)."""

    login: str
    now: float = 0.0


@dataclass(frozen=True)
class BotStatus:
    """Twitch said (USERSTATE) whether the bot is a moderator or the broadcaster in the
    channel, which sets how many messages it may send."""

    elevated: bool
    now: float = 0.0


ChatEvent = ChatMessage | MessageDeleted | UserRemoved | BotStatus
