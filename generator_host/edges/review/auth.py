"""Who may open the review page: the streamer's secret and the moderators' personal links.

Files (in the host's data folder, readable by the user alone):
    review-token       the streamer's secret, made on first run (printed in the page's URL)
    review-mods.json   {"name": "<sha256 of that moderator's secret>"}: only hashes, so the
                       file never holds a working link; `mods add` prints the link once
The host re-reads the moderators' file when it changes (`mods add/remove` run in another
process), so a removed link stops working at once. Secrets are compared in constant time
and never logged.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from generator_host.edges.failures import FailedAttempts
from generator_host.edges.files import write_private

log = logging.getLogger(__name__)

TOKEN_FILE = "review-token"
MODS_FILE = "review-mods.json"
BROADCASTER = "broadcaster"
MODERATOR = "moderator"
NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}$")


@dataclass(frozen=True)
class Identity:
    """Who holds a valid secret: the broadcaster, or a moderator by the name given at `add`."""

    name: str
    role: str

    @property
    def is_broadcaster(self) -> bool:
        return self.role == BROADCASTER


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def _read_mods(path: Path) -> dict[str, str]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.error("cannot read %s (%s); no moderator links work until it is fixed", path, exc)
        return {}
    if not isinstance(raw, dict):
        return {}
    return {str(k): str(v) for k, v in raw.items() if NAME.match(str(k))}


class ModStore:
    """`generator-host mods add/list/remove`: the moderators' personal secrets (hashed)."""

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / MODS_FILE

    def names(self) -> list[str]:
        return sorted(_read_mods(self.path))

    def add(self, name: str) -> str:
        """A new personal secret for `name` (replacing an older one); returned once."""
        if not NAME.match(name):
            raise ValueError("a name is 1-32 letters, digits, '_', '.' or '-'")
        mods = _read_mods(self.path)
        secret = secrets.token_urlsafe(24)
        mods[name] = _digest(secret)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_private(self.path, json.dumps(mods, indent=1) + "\n")
        return secret

    def remove(self, name: str) -> bool:
        mods = _read_mods(self.path)
        if mods.pop(name, None) is None:
            return False
        write_private(self.path, json.dumps(mods, indent=1) + "\n")
        return True


def load_or_create_secret(folder: Path) -> str:
    """The streamer's review secret: read, or made on first run (a user-only file)."""
    path = Path(folder) / TOKEN_FILE
    with contextlib.suppress(FileNotFoundError):
        secret = path.read_text(encoding="utf-8").strip()
        if secret:
            return secret
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    secret = secrets.token_urlsafe(24)
    write_private(path, secret + "\n")
    return secret


class ReviewAuth:
    """Checks secrets (constant time), remembers failures per address, follows the mods file."""

    def __init__(self, folder: Path, secret: str) -> None:
        if not secret:
            raise ValueError("the review page needs a non-empty secret")
        self._secret = secret.encode("utf-8")
        self._mods_path = Path(folder) / MODS_FILE
        self._mods: dict[str, str] = {}
        self._mods_raw: bytes | None = b"unread"
        self._failures = FailedAttempts()  # wrong secrets per address (edges/failures.py)
        self.reload()

    def reload(self) -> bool:
        """Re-read the moderators' file if its content changed; True when it did.

        The content, not the modification time, is compared: two quick edits (add, then
        remove) can share one timestamp. The file is small; reading it costs microseconds.
        """
        try:
            raw: bytes | None = self._mods_path.read_bytes()
        except OSError:
            raw = None
        if raw == self._mods_raw:
            return False
        self._mods_raw = raw
        self._mods = _read_mods(self._mods_path) if raw is not None else {}
        return True

    def identify(self, secret: str | None) -> Identity | None:
        """The holder of `secret`, or None. Every known secret is compared, in constant time."""
        if not secret or len(secret) > 200:
            return None
        given = secret.encode("utf-8", "replace")
        found: Identity | None = None
        if hmac.compare_digest(given, self._secret):
            found = Identity("broadcaster", BROADCASTER)
        digest = _digest(secret)
        for name, stored in self._mods.items():
            if hmac.compare_digest(digest, stored) and found is None:
                found = Identity(name, MODERATOR)
        return found

    def penalty(self, peer: str) -> float:
        """Seconds to wait before answering a wrong secret from `peer` (grows per failure)."""
        return self._failures.penalty(peer)

    def failed(self, peer: str) -> None:
        self._failures.failed(peer)

    def succeeded(self, peer: str) -> None:
        self._failures.succeeded(peer)
