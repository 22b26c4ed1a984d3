"""Processes for the link tests and bench/soak_link.py: the OBS script's link client
under a chosen Python, and the host's real LinkServer in a process of its own.

`Probe` runs tests/link_client_probe.py (the script's LinkClient, nothing else) under
e.g. the system Python with Debian's websocket-client, which is what OBS on Linux runs.
`HostProcess` is a host that can be killed (kill -9) or frozen (SIGSTOP) for real.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.fixtures_obs import LINK_TOKEN
from tests.obs_harness import wait_for
from tests.requirements import require

REPO = Path(__file__).resolve().parent.parent
PROBE = REPO / "tests" / "link_client_probe.py"
SYSTEM_PYTHON = "/usr/bin/python3"  # OBS on Linux runs scripts with it


def websocket_version(python: str) -> str:
    """websocket-client's version under `python`, or '' when it cannot import it."""
    try:
        out = subprocess.run(
            [python, "-c", "import websocket; print(websocket.__version__)"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    except OSError:
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def require_system_python() -> str:
    version = websocket_version(SYSTEM_PYTHON)
    require(
        bool(version),
        f"{SYSTEM_PYTHON} cannot import websocket (apt install python3-websocket; "
        "install/install.py does it)",
    )
    return version


class Probe:
    """tests/link_client_probe.py (the script's LinkClient) in a child process."""

    def __init__(self, python: str, url: str, folder: Path, token: str = LINK_TOKEN) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env["XDG_DATA_HOME"] = str(folder / "xdg")  # never the user's own token file
        self.proc = subprocess.Popen(
            [python, str(PROBE), url, token, str(folder / "images")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env=env,
        )  # fmt: skip
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.ready = self.wait(lambda e: e["type"] in ("ready", "error"), timeout=30)
        assert self.ready["type"] == "ready", self.ready

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._lock:
                self.events.append(json.loads(line))

    def find(self, match: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self.events if match(e)]

    def wait(self, match: Callable[[dict[str, Any]], bool], timeout: float = 10.0) -> Any:
        found = wait_for(lambda: self.find(match), timeout=timeout, what="a probe event")
        return found[0]

    def links(self) -> list[dict[str, Any]]:
        """The client's connection status changes, in order."""
        return self.find(lambda e: e["type"] == "link")

    def connects(self) -> int:
        return sum(1 for e in self.links() if e["connected"])

    def press(self, action: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"action {action}\n")
        self.proc.stdin.flush()

    def close(self) -> str:
        """Stop the client; returns its stderr (tracebacks would be there)."""
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.close()
                self.proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(5)
        assert self.proc.stderr is not None
        return self.proc.stderr.read()


HOST_CODE = """
import sys, threading
from tests.fixtures_obs import RunningLink
host = RunningLink(port=int(sys.argv[1]))
print("ready", flush=True)
threading.Event().wait()
"""


class HostProcess:
    """The host's real LinkServer in its own process, to kill -9 or freeze (SIGSTOP)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"ws://127.0.0.1:{port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOST_CODE, str(port)],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.strip() == "ready", line

    def signal(self, sig: int) -> None:
        os.kill(self.proc.pid, sig)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.signal(signal.SIGCONT)
            self.proc.kill()
        self.proc.wait(10)
