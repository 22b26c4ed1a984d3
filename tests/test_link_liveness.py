"""The OBS link over a streamer's evening: idle for minutes, a host that dies or freezes,
buttons pressed while the link is down.

The script's own link client runs as OBS would run it: under the system Python with
Debian's websocket-client (python3-websocket, 1.2.3 on Debian 12; what OBS on Linux
uses), under the venv's newest websocket-client, and inside a real OBS. The host is the
real LinkServer. Reconnects are counted where a streamer sees them: the host's
"OBS script connected" lines, the client's status changes, the status text in OBS.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures_obs import LINK_TOKEN, RunningLink
from tests.obs_harness import STATUS, free_port, obs_missing, run_obs, wait_for
from tests.requirements import require

REPO = Path(__file__).resolve().parent.parent
PROBE = REPO / "tests" / "link_client_probe.py"
SYSTEM_PYTHON = "/usr/bin/python3"  # OBS on Linux runs scripts with it
IDLE_SECONDS = 90.0  # the host pings every 20 s: the old client dropped every ~25 s
OFFLINE_TEXT = "Chat Diffusion: waiting for the host"


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


@pytest.fixture
def probes() -> Iterator[list[Probe]]:
    started: list[Probe] = []
    yield started
    for probe in started:
        probe.close()


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


# ---- idle: one link held, in every client OBS may use -------------------------------------


@pytest.mark.slow
@pytest.mark.obs
def test_an_idle_link_holds_without_a_reconnect(tmp_path: Path, probes: list[Probe]) -> None:
    """90 s of nothing happening: the system Python's websocket-client, the newest one and
    the script in a real OBS each keep their one link (run side by side: one wait)."""
    system_version = require_system_python()
    require(not obs_missing(), obs_missing())
    host = RunningLink()
    try:
        probes.append(Probe(SYSTEM_PYTHON, host.url, tmp_path / "system"))
        probes.append(Probe(sys.executable, host.url, tmp_path / "venv"))
        with run_obs(tmp_path / "obs", {"host": host.url, "token": LINK_TOKEN}) as obs:
            for probe in probes:
                probe.wait(lambda e: e["type"] == "link" and e["connected"], timeout=20)
            wait_for(lambda: obs.input_settings(STATUS)["text"] == "idle", timeout=20)
            wait_for(lambda: host.connects == 3, what="three links")
            texts: set[str] = set()
            started = time.monotonic()
            while time.monotonic() - started < IDLE_SECONDS:
                texts.add(obs.input_settings(STATUS)["text"])
                time.sleep(0.2)
            log = obs.log()
            connects = host.connects
            links = [probe.links() for probe in probes]  # before the host stops
    finally:
        host.close()
    versions = [p.ready["websocket"] for p in probes]
    print(f"\nFIGURES idle {IDLE_SECONDS:.0f} s: websocket-client {versions}, "
          f"host connects {connects}, OBS status texts {sorted(texts)}")  # fmt: skip
    assert versions[0] == system_version
    for version, changes in zip(versions, links, strict=True):
        assert [e["connected"] for e in changes] == [True], (version, changes)
    assert connects == 3, f"the host saw {connects} links for 3 clients"
    assert texts == {"idle"}, f"the status text in OBS showed {texts}"
    assert log.count("[Chat Diffusion] connected to") == 1, log[-3000:]


# ---- a host that dies or freezes is noticed within a few seconds --------------------------


def dropped_within(probe: Probe, since: float, timeout: float) -> float:
    """Seconds from `since` until the client's status said it lost the host."""
    event = probe.wait(lambda e: e["type"] == "link" and not e["connected"] and e["t"] > since,
                       timeout=timeout)  # fmt: skip
    return float(event["t"]) - since


@pytest.mark.parametrize("how", ["kill -9", "frozen"])
def test_a_dead_host_is_noticed_within_a_few_seconds(
    how: str, tmp_path: Path, probes: list[Probe]
) -> None:
    """kill -9 closes the socket; a frozen host (SIGSTOP) keeps it open and answers
    nothing, which only the script's heartbeat can tell."""
    require_system_python()
    host = HostProcess(free_port())
    try:
        probes.append(Probe(SYSTEM_PYTHON, host.url, tmp_path / "system"))
        probes.append(Probe(sys.executable, host.url, tmp_path / "venv"))
        for probe in probes:
            probe.wait(lambda e: e["type"] == "link" and e["connected"], timeout=20)
        since = time.monotonic()
        host.signal(signal.SIGKILL if how == "kill -9" else signal.SIGSTOP)
        if how == "frozen":  # the worst moment to press: the link still looks up
            for probe in probes:
                probe.press("next")
        seconds = [dropped_within(p, since, timeout=20) for p in probes]
        print(f"\nFIGURES dead host ({how}) noticed after {[round(s, 2) for s in seconds]} s")
        assert max(seconds) < 8.0, seconds
        if how == "frozen":
            for probe in probes:  # never silently lost: reported, not sent twice later
                report = probe.wait(lambda e: e["type"] == "undelivered", timeout=5)
                assert "'next' may not have reached the host" in report["text"], report
            host.signal(signal.SIGCONT)  # and when it thaws, the link comes back by itself
            for probe in probes:
                wait_for(lambda: probe.connects() == 2, timeout=20, what="reconnect")  # noqa: B023
    finally:
        host.close()
