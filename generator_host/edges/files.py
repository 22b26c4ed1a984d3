"""Writing files so that no reader sees half of one and no secret is readable by others.

One place for the two rules every writer in the host follows: write beside the target
and rename (OBS, the gallery index and a restarted host never read a torn file), and
create files that may hold a token readable by the user alone (0600).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


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
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_private(path: Path, text: str) -> None:
    """Create or replace a text file readable and writable by the user alone (0600)."""
    write_atomic(path, text.encode("utf-8"))
    if os.name == "posix":
        os.chmod(path, 0o600)
