"""Reading the streamer's blocklist file (the core's `moderation.Blocklist` never reads one).

The app reads it at start and again when `[moderation] blocklist_file` changes, and hands
the result to the show (`Show(blocklist=...)`, `SettingsChanged(blocklist=...)`).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from generator_host.core.moderation import Blocklist


def default_blocklist_path() -> Path:
    return Path(str(resources.files("generator_host") / "data" / "blocklist.txt"))


def load_blocklist(path: str = "") -> tuple[Blocklist, list[str]]:
    """Read the streamer's list file (empty path: the shipped default); returns the list
    and the problems found (an unreadable file falls back to the default list)."""
    file = Path(path).expanduser() if path else default_blocklist_path()
    try:
        text = file.read_text(encoding="utf-8-sig")  # a BOM from Notepad is not a word
    except (OSError, UnicodeDecodeError, ValueError) as exc:  # ValueError: a NUL in the path
        problems = [f"blocklist {file}: cannot read ({exc}); using the default list"]
        if not path:
            return Blocklist(), problems
        block, more = load_blocklist("")
        return block, problems + more
    return Blocklist.from_lines(text.splitlines())
