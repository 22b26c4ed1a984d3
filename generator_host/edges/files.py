"""Writing files so that no reader sees half of one and no secret is readable by others.

One place for the two rules every writer in the host follows: write beside the target
and rename (OBS, the gallery index and a restarted host never read a torn file), and
create files that may hold a token readable by the user alone (0600).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

# Windows: an antivirus or the search indexer opens a file the moment it is written, and
# renaming over it (or it) then fails with WinError 5 (access denied) or 32 (in use) for
# a few tens of milliseconds. Retried with backoff for up to ~2 s in all.
REPLACE_DELAYS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8)
_SHARING_ERRORS = (5, 32, 33)  # ERROR_ACCESS_DENIED, _SHARING_VIOLATION, _LOCK_VIOLATION


def _transient(exc: OSError) -> bool:
    """A Windows share/lock error that goes away once the other reader lets go."""
    return isinstance(exc, PermissionError) or getattr(exc, "winerror", None) in _SHARING_ERRORS


def replace_retrying(
    src: str | Path, dst: str | Path, sleep: Callable[[float], None] | None = None
) -> None:
    """os.replace, retried with backoff while another process briefly holds a file."""
    sleep = sleep or time.sleep
    for delay in (*REPLACE_DELAYS, None):
        try:
            os.replace(src, dst)
            return
        except OSError as exc:
            if delay is None or not _transient(exc):
                raise
            sleep(delay)


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, then rename: readers never see half a file.

    The temporary file is created 0600 (mkstemp), so the result is private to the user.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        replace_retrying(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_private(path: Path, text: str) -> None:
    """Create or replace a text file readable and writable by the user alone (0600)."""
    write_atomic(path, text.encode("utf-8"))
    if os.name == "posix":
        os.chmod(path, 0o600)
