"""The host's memory of channel-point redemptions, so each one is settled exactly once.

One SQLite file in the data folder (`twitch/redemptions.sqlite`), each change committed
before the host acts on it:
- `received`: the redemption reached the host (written before the show sees it);
- `intent`: the show settled it (FULFILLED or CANCELED), written before the Helix call;
- `done`: Twitch took the status (or said it was settled already).
A kill -9 anywhere leaves a state the next start reconciles (edges/twitch/channel_points):
an intent is sent again (after asking Twitch whether the first one arrived), a received
one the show no longer holds is queued again, a done one is never sent again.
Why SQLite: atomic, durable commits without a hand-made journal, in the standard library
(the gallery uses it too). Also remembers the reward's id (`meta`).
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

RECEIVED, INTENT, DONE = "received", "intent", "done"
KEEP_DONE_SECONDS = 30 * 86400  # settled rows older than this are pruned at start

_SCHEMA = """
CREATE TABLE IF NOT EXISTS redemptions (
    id TEXT PRIMARY KEY,
    reward_id TEXT NOT NULL,
    login TEXT NOT NULL,
    display_name TEXT NOT NULL,
    user_id TEXT NOT NULL,
    prompt TEXT NOT NULL,
    state TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT '',
    reason TEXT NOT NULL DEFAULT '',
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True)
class Stored:
    id: str
    reward_id: str
    login: str
    display_name: str
    user_id: str
    prompt: str
    state: str
    status: str = ""
    reason: str = ""


class RedemptionStore:
    """Small and synchronous: a few rows a minute. Every change is one statement, so one
    commit; write-ahead logging makes that commit one flush of the log, not of the file."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        cutoff = time.time() - KEEP_DONE_SECONDS
        self._db.execute("DELETE FROM redemptions WHERE state = ? AND updated < ?", (DONE, cutoff))

    def close(self) -> None:
        self._db.close()

    def get(self, redemption_id: str) -> Stored | None:
        row = self._db.execute(
            "SELECT id, reward_id, login, display_name, user_id, prompt, state, status, reason "
            "FROM redemptions WHERE id = ?",
            (redemption_id,),
        ).fetchone()
        return Stored(*row) if row else None

    def receive(self, item: Stored) -> bool:
        """Remember a new redemption; False when it is known already (a repeat)."""
        cur = self._db.execute(
            "INSERT OR IGNORE INTO redemptions "
            "(id, reward_id, login, display_name, user_id, prompt, state, updated) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (item.id, item.reward_id, item.login, item.display_name, item.user_id,
             item.prompt, RECEIVED, time.time()),
        )  # fmt: skip
        return cur.rowcount == 1

    def intend(self, redemption_id: str, status: str, reason: str, reward_id: str = "") -> bool:
        """The show settled it: record the status to send. False when it was settled
        before (never a second status), True when the caller should send it."""
        # One statement: a row the store never saw (a saved queue from older data) is
        # inserted; a received one becomes an intent; a settled one is left alone.
        cur = self._db.execute(
            "INSERT INTO redemptions (id, reward_id, login, display_name, user_id, prompt, "
            "state, status, reason, updated) VALUES (?, ?, '', '', '', '', ?, ?, ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET state = excluded.state, status = excluded.status, "
            "reason = excluded.reason, updated = excluded.updated "
            "WHERE redemptions.state = ?",
            (redemption_id, reward_id, INTENT, status, reason[:200], time.time(), RECEIVED),
        )
        return cur.rowcount == 1

    def done(self, redemption_id: str, status: str = "") -> None:
        """Twitch has the status (`status`: what Twitch says it is, when it differs)."""
        if status:
            self._db.execute(
                "UPDATE redemptions SET state = ?, status = ?, updated = ? WHERE id = ?",
                (DONE, status, time.time(), redemption_id),
            )
        else:
            self._db.execute(
                "UPDATE redemptions SET state = ?, updated = ? WHERE id = ?",
                (DONE, time.time(), redemption_id),
            )

    def in_state(self, state: str) -> list[Stored]:
        rows = self._db.execute(
            "SELECT id, reward_id, login, display_name, user_id, prompt, state, status, reason "
            "FROM redemptions WHERE state = ? ORDER BY rowid",
            (state,),
        ).fetchall()
        return [Stored(*row) for row in rows]

    def settled_ids(self) -> set[str]:
        rows = self._db.execute("SELECT id FROM redemptions WHERE state != ?", (RECEIVED,))
        return {row[0] for row in rows}

    def meta(self, key: str) -> str:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else ""

    def set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))
