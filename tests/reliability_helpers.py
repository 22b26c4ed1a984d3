"""Shared pieces of the reliability and security tests (issue #8).

- `HostProcess`: the real `generator-host run` in a subprocess, configured against the
  local Twitch-dialect server and the tiny model, with its output captured line by line.
- `RecordingTwitchServer`: tests/twitch_server.py's server, also recording which chat
  line went out on which connection and when (to tell "lost by the host" from "never
  delivered because no connection was open", which Twitch does not replay either).
- `Figures`: measured numbers, printed and appended to the JSON-lines file named by env
  `RELIABILITY_FIGURES` (docs/reliability.md quotes them).
- small utilities: free ports, RSS of a process, reading the gallery's history.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.obs_harness import free_port  # noqa: F401 - the tests import it from here
from tests.twitch_server import TwitchServer

REPO = Path(__file__).resolve().parent.parent
OBS_SCRIPT_DIR = REPO / "obs_script"
TWITCH_TOKEN = "twitch-secret-Zq81xVbN4k"  # recognisable, to grep logs for
LINK_TOKEN = "link-secret-Hd72PqLw3m9s"


# ---- figures -----------------------------------------------------------------------------
def record(scenario: str, **figures: Any) -> None:
    """Print measured figures and append them to $RELIABILITY_FIGURES (JSON lines)."""
    line = {"scenario": scenario, "time": time.strftime("%Y-%m-%d %H:%M:%S"), **figures}
    print(f"\nFIGURES {json.dumps(line, default=str)}")
    path = os.environ.get("RELIABILITY_FIGURES")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(line, default=str) + "\n")


# ---- processes and ports -------------------------------------------------------------------
def rss_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a live process, in KiB, from /proc."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    return out


def listening_addresses(port: int) -> list[str]:
    """Local addresses with a TCP socket LISTENing on `port` (from /proc/net/tcp{,6})."""
    found = []
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            local, state = parts[1], parts[3]
            addr, _, hexport = local.partition(":")
            if state != "0A" or int(hexport, 16) != port:
                continue
            if len(addr) == 8:
                found.append(socket.inet_ntop(socket.AF_INET, bytes.fromhex(addr)[::-1]))
            else:
                raw = bytes.fromhex(addr)
                raw = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
                found.append(socket.inet_ntop(socket.AF_INET6, raw))
    return found


def gallery_rows(data_dir: Path) -> list[tuple[int, str, str, str]]:
    """(id, request_id, requester, prompt) of every gallery entry, oldest first."""
    db = data_dir / "gallery" / "history.sqlite3"
    if not db.exists():
        return []
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return con.execute(
            "SELECT id, request_id, requester, prompt FROM entries ORDER BY id"
        ).fetchall()
    finally:
        con.close()


def host_config(
    path: Path,
    *,
    model_dir: Path,
    twitch_port: int,
    link_token: str = "",
    moderation: dict[str, Any] | None = None,
    model: dict[str, Any] | None = None,
    twitch: dict[str, Any] | None = None,
    show: dict[str, Any] | None = None,
    safety: dict[str, Any] | None = None,
) -> Path:
    """A TOML config for `generator-host run` against the local server and tiny model."""
    sections: dict[str, dict[str, Any]] = {
        "twitch": {
            "channel": "streamer",
            "login": "paintbot",
            "token": TWITCH_TOKEN,
            "host": "127.0.0.1",
            "port": twitch_port,
            "tls": False,
            **(twitch or {}),
        },
        "model": {
            "model": str(model_dir),
            "device": "cpu",
            "steps": 1,
            "guidance": 0.0,
            "width": 64,
            "height": 64,
            "warmup": False,
            **(model or {}),
        },
        "safety": {"checker": str(model_dir), **(safety or {})},
        "moderation": {
            "user_cooldown_seconds": 0.0,
            "max_queued_per_user": 100,
            "max_queue": 10000,
            **(moderation or {}),
        },
        "show": dict(show or {}),
        "link": {"token": link_token} if link_token else {},
    }

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return json.dumps(str(v))

    text = ""
    for name, values in sections.items():
        text += f"[{name}]\n" + "".join(f"{k} = {value(v)}\n" for k, v in values.items())
    path.write_text(text, encoding="utf-8")
    return path


class HostProcess:
    """`python -m generator_host run` in a subprocess; stdout+stderr captured in `lines`."""

    def __init__(
        self, config: Path, data_dir: Path, link_port: int, *, log_level: str = "INFO"
    ) -> None:
        self.config = config
        self.data_dir = data_dir
        self.link_port = link_port
        self.log_level = log_level
        self.lines: list[str] = []
        self.timed: list[tuple[float, str]] = []  # (time.monotonic(), line)
        self.proc: subprocess.Popen[str] | None = None
        self.started_at = 0.0
        self.ready_at = 0.0

    def start(self, timeout: float = 120.0) -> HostProcess:
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
            "XDG_DATA_HOME": str(self.data_dir.parent / "xdg-data"),
            "XDG_CACHE_HOME": str(self.data_dir.parent / "xdg-cache"),
        }
        env.pop("CHAT_DIFFUSION_TWITCH_TOKEN", None)
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "generator_host", "run",
                "--config", str(self.config),
                "--data-dir", str(self.data_dir),
                "--link-port", str(self.link_port),
                "--review-port", "0",
                "--log-level", self.log_level,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=str(REPO),
        )  # fmt: skip
        threading.Thread(target=self._pump, args=(self.proc,), daemon=True).start()
        self.wait_for(r"^Ready\.", timeout)
        self.ready_at = time.monotonic()
        return self

    def _pump(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.timed.append((time.monotonic(), line.rstrip("\n")))
            self.lines.append(line.rstrip("\n"))

    def time_of(self, pattern: str, after: float = 0.0) -> float | None:
        """When the first line matching `pattern` (printed after `after`) was read."""
        for stamp, line in list(self.timed):
            if stamp >= after and re.search(pattern, line):
                return stamp
        return None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            for line in list(self.lines):
                m = re.search(pattern, line)
                if m:
                    return m
            if time.monotonic() > deadline or (self.proc and self.proc.poll() is not None):
                time.sleep(0.2)  # let the pump catch the last lines
                for line in list(self.lines):
                    m = re.search(pattern, line)
                    if m:
                        return m
                raise AssertionError(
                    f"no line matching {pattern!r} within {timeout}s "
                    f"(exit {self.proc.poll() if self.proc else None}):\n" + self.output[-6000:]
                )
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: no cleanup, no state saved on the way out."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGINT (a clean stop), then SIGKILL if it does not end in time."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode


# ---- a Twitch server that records deliveries ----------------------------------------------
@dataclass(frozen=True)
class Delivery:
    time: float
    conn: int
    line: str


class RecordingTwitchServer(TwitchServer):
    """TwitchServer + a record of which line went out on which connection (`deliveries`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.deliveries: list[Delivery] = []
        self.undelivered: list[tuple[float, str]] = []  # sent while no connection was open
        self.closed_at: dict[int, float] = {}

    async def _broadcast(self, lines: list[str]) -> None:  # noqa: D401 - same as the parent
        data = "".join(f"{line}\r\n" for line in lines).encode()
        now = time.monotonic()
        open_writers = [(c, w) for c, w in list(self._writers.items()) if not w.is_closing()]
        if not open_writers:
            self.undelivered += [(now, line) for line in lines]
        for conn, writer in open_writers:
            writer.write(data)
            self.deliveries += [Delivery(now, conn, line) for line in lines]
        for _, writer in open_writers:
            with contextlib.suppress(ConnectionError):
                await writer.drain()

    def close_connections(self, abort: bool = False) -> list[int]:
        """Close every connection: gracefully (FIN after what was written) or abort (RST)."""

        async def _close() -> list[int]:
            conns = []
            for conn, writer in list(self._writers.items()):
                self.closed_at[conn] = time.monotonic()
                conns.append(conn)
                if abort:
                    writer.transport.abort()
                else:
                    writer.close()
                self._writers.pop(conn, None)
            return conns

        return self._call(_close())

    def reconnect_with_chat(self, login: str, text: str) -> None:
        """RECONNECT and a chat line in one write, as Twitch may (it closes later)."""
        line, _ = self._privmsg_line(login, text, msg_id="", badges="", tags=None)
        self._call(self._broadcast([":tmi.twitch.tv RECONNECT", line]))

    def joined_connections(self) -> int:
        return len(self.joins)


def privmsg_text(line: str) -> str:
    """The chat text of a PRIVMSG line built by the server."""
    return line.split(" PRIVMSG ", 1)[1].split(" :", 1)[1]


def obs_link_module() -> Any:
    """The OBS script's link module (imported the way OBS does: from its own folder)."""
    if str(OBS_SCRIPT_DIR) not in sys.path:
        sys.path.insert(0, str(OBS_SCRIPT_DIR))
    import chat_diffusion_link

    return chat_diffusion_link


def wait_until(predicate: Any, timeout: float, step: float = 0.02) -> bool:
    """Poll `predicate` until true or `timeout` seconds passed; its last answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return bool(predicate())


class ScriptLink:
    """The OBS script's real LinkClient (its own thread), outside OBS, with a timed log.

    `items` gets every inbox item as (time.monotonic(), item): what the script's OBS timer
    would apply to the sources. Images land in `image_dir`, as in OBS.
    """

    def __init__(self, port: int, token: str, image_dir: Path) -> None:
        mod = obs_link_module()
        self.client = mod.LinkClient(f"ws://127.0.0.1:{port}", token, "reliability test",
                                     str(image_dir))  # fmt: skip
        self.items: list[tuple[float, dict[str, Any]]] = []
        self._stop = threading.Event()
        self._drain = threading.Thread(target=self._run, daemon=True)

    def start(self) -> ScriptLink:
        self.client.start()
        self._drain.start()
        return self

    def _run(self) -> None:
        import queue as queue_mod

        while not self._stop.is_set():
            try:
                item = self.client.inbox.get(timeout=0.05)
            except queue_mod.Empty:
                continue
            self.items.append((time.monotonic(), item))

    def of_type(self, kind: str, after: float = 0.0) -> list[tuple[float, dict[str, Any]]]:
        return [(t, i) for t, i in list(self.items) if i.get("type") == kind and t >= after]

    def connected_at(self, after: float = 0.0) -> float | None:
        for t, item in self.of_type("link", after):
            if item.get("connected"):
                return t
        return None

    def stop(self) -> bool:
        self._stop.set()
        return self.client.stop(2.0)
