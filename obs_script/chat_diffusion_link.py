"""The OBS script's end of the link: a websocket-client thread and the image folder.

Kept apart from chat_diffusion.py because nothing here may touch OBS: this runs on its
own thread, and everything OBS must do is handed over through `LinkClient.inbox`, which
the script's OBS timer drains. Standard library + websocket-client, Python 3.9+.

Why a thread with select() and a wake-up socket: OBS's own thread must never block on
the network, sends (buttons, hotkeys) must leave at once, and script_unload must be able
to stop everything within a second, even mid-connect.

Liveness: the thread reads only when select() says bytes are there, so a quiet host is
never mistaken for a dead one (the host sends nothing while idle, bar its own pings). It
pings the host every PING_EVERY seconds with websocket-client's public `ping()`; a host
that sends nothing at all (no pong either) for DEAD_AFTER seconds is gone: killed without
its socket closing, frozen, or cut off. Both websocket-client 1.2.x (Debian's) and 1.9.x
return the pongs through the same public `recv_data(control_frame=True)`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import queue
import select
import socket
import ssl
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import chat_diffusion_protocol as protocol

try:
    import websocket  # websocket-client (Debian: python3-websocket)
except ImportError:  # the script explains how to install it
    websocket = None  # type: ignore[assignment]

THREAD_NAME = "chat-diffusion-link"
CONNECT_TIMEOUT = 5.0
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 1.5  # the host is on localhost; back within 2 s of it returning
REFUSED_WAIT = 30.0  # after a wrong token or version: the user has to change something
PING_EVERY = 2.0  # seconds between the script's pings to the host (docs/protocol.md)
DEAD_AFTER = 6.0  # seconds without any frame from the host (pongs included): it is gone
ACTION_GRACE = 10.0  # a button pressed while the link is down waits this long for it
# Acts on the picture on screen at the moment of the press: after a reconnect (usually
# a restarted host) that may be another picture, so it is reported, never sent late.
NOT_REPLAYED = ("approve",)
KEEP_IMAGES = 3  # our own newest files kept; older ones are deleted
STALE_SECONDS = 3600.0  # other processes' files older than this are cleaned on start


class Refused(Exception):
    """The host refused us for a reason only the streamer can fix (token, version)."""


class NoToken(Exception):
    """No token set, and the host's token file on this computer is not there (yet)."""


def token_paths(platform: str = "", env: Any = None, home: str = "") -> list[str]:
    """Where the host may keep its link token on this computer, most likely first.

    The host writes it in its data folder, platformdirs' user_data_dir("chat-diffusion")
    (a test checks the two agree). OBS and the host may not share one environment: OBS
    started from the desktop never sees a shell's XDG_DATA_HOME, and a Flatpak OBS gets
    its own XDG_DATA_HOME inside the sandbox. So the script tries the folder its own
    environment names and then the default one; on macOS the host ignores XDG_* (see
    generator_host.core.settings.data_dir), so there is one place only.
    """
    import sys

    platform = platform or sys.platform
    env = os.environ if env is None else env
    home = home or os.path.expanduser("~")
    if platform.startswith("win"):
        bases = [env.get("LOCALAPPDATA", ""), os.path.join(home, "AppData", "Local")]
    elif platform == "darwin":
        bases = [os.path.join(home, "Library", "Application Support")]
    else:
        bases = [env.get("XDG_DATA_HOME", "").strip(), os.path.join(home, ".local", "share")]
    paths = [os.path.join(b, "chat-diffusion", "link-token") for b in bases if b]
    return list(dict.fromkeys(paths))


def default_token_path(platform: str = "", env: Any = None, home: str = "") -> str:
    """The token file shown in messages: the first of token_paths() that exists, else the
    first of them."""
    paths = token_paths(platform, env, home)
    return next((p for p in paths if os.path.exists(p)), paths[0])


def read_local_token(path: str = "") -> str:
    """The token from the host's token file, or "" when there is none to read.

    utf-8-sig: a file saved by Notepad or PowerShell 5 may start with a byte-order mark.
    """
    for candidate in [path] if path else token_paths():
        try:
            with open(candidate, encoding="utf-8-sig") as f:
                token = f.read(protocol.MAX_TOKEN + 1).strip()[: protocol.MAX_TOKEN]
        except (OSError, UnicodeDecodeError):
            continue
        if token:
            return token
    return ""


def is_local_address(address: str) -> bool:
    try:
        host = parse_address(address)[1]
    except ValueError:
        return False
    return host in ("127.0.0.1", "localhost", "::1", "[::1]")


def parse_address(address: str) -> tuple[str, str, int, bool]:
    """'ws://host:port', 'host:port' or 'host' -> (url, host, port, tls); ValueError if bad."""
    address = address.strip()
    if not address:
        raise ValueError("no host address set")
    if "://" not in address:
        address = "ws://" + address
    parts = urlsplit(address)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError("the host address must look like ws://127.0.0.1:8765")
    try:
        port = parts.port or 8765
    except ValueError:
        raise ValueError("the port in the host address is not a number") from None
    host = parts.hostname
    shown = f"[{host}]" if ":" in host else host
    url = f"{parts.scheme}://{shown}:{port}/"
    return url, host, port, parts.scheme == "wss"


class ImageStore:
    """Writes each image under a NEW name in our folder, and prunes old ones.

    A new name per image is what makes OBS show it at once (setting `file` to a new path).
    The file is written in place, not renamed: OBS is given the path only after the write
    returns, so it never reads half a PNG, and there is no rename for a Windows antivirus
    that opens every new file to make fail (WinError 5/32).
    """

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.prefix = f"show-{os.getpid()}-"  # this process's files: show-<pid>-<seq>-<entry>
        self._seq = 0
        self._mine: list[str] = []

    def clean_stale(self) -> None:
        """Remove old images; runs on the link thread (file work stays off OBS's thread).

        This process's files that this store does not keep (left by earlier stores: link
        restarts, script reloads) go now; other processes' (another OBS using this folder)
        only when over STALE_SECONDS old. The newest file stays, as a source may still
        show it; when it is this process's, this store adopts it, so it is pruned like
        its own as new images come. Numbering goes on after the highest number seen, so
        no new image reuses the name of one OBS still shows.
        """
        now = time.time()
        try:
            names = [n for n in os.listdir(self.folder) if n.startswith("show-")]
        except OSError:
            return
        mtimes: dict[str, float] = {}
        for name in names:
            path = os.path.join(self.folder, name)
            with contextlib.suppress(OSError):
                mtimes[path] = os.path.getmtime(path)
        newest = max(mtimes, key=mtimes.__getitem__, default="")
        for path, mtime in mtimes.items():
            name = os.path.basename(path)
            ours = name.startswith(self.prefix)
            if ours:
                seq = name[len(self.prefix) :].split("-", 1)[0]
                self._seq = max(self._seq, int(seq) if seq.isdigit() else 0)
            if path in self._mine:
                continue
            if path == newest:
                if ours and not name.endswith(".tmp"):
                    self._mine.insert(0, path)
                continue
            if ours or name.endswith(".tmp") or now - mtime > STALE_SECONDS:
                with contextlib.suppress(OSError):
                    os.remove(path)

    def write(self, png: bytes, entry_id: int) -> str:
        os.makedirs(self.folder, exist_ok=True)
        self._seq += 1
        name = f"{self.prefix}{self._seq}-{entry_id}.png"
        path = os.path.join(self.folder, name)
        with open(path, "wb") as f:
            f.write(png)
        self._mine.append(path)
        while len(self._mine) > KEEP_IMAGES:
            old = self._mine.pop(0)
            with contextlib.suppress(OSError):
                os.remove(old)
        return path


def _cap_frames(ws: Any, limit: int) -> None:
    """Refuse a frame as soon as its header announces more than `limit` bytes.

    websocket-client has no max_size; without this a hostile host could make OBS
    allocate any amount. Uses websocket-client internals, so it degrades to the size
    check in protocol.decode if they change.
    """
    fb = getattr(ws, "frame_buffer", None)
    original = getattr(fb, "recv_length", None)
    if original is None:
        return

    def recv_length() -> None:
        original()
        pending = 0
        cont = getattr(getattr(ws, "cont_frame", None), "cont_data", None)
        if cont:
            pending = len(cont[1])
        if (fb.length or 0) + pending > limit:
            raise websocket.WebSocketException(f"host sent a frame over {limit} bytes")

    fb.recv_length = recv_length


class LinkClient:
    """Keeps a connection to the host, turning its messages into `inbox` items for OBS.

    Inbox items are protocol messages, except that `show` carries `path` (the written
    PNG) instead of image bytes, and a `state` is split into `show`/`clear` + `status`.
    `status` is a one-line human description of the connection.
    """

    def __init__(self, address: str, token: str, client_name: str, image_dir: str) -> None:
        self.address = address
        self.token = token  # "" with a local address: read the host's token file
        self.client_name = client_name
        self.images = ImageStore(image_dir)
        self.inbox: queue.Queue = queue.Queue()
        self.status = "not started"
        self.connected = False
        self._outbox: list[tuple[float, dict[str, Any]]] = []  # (pressed at, message)
        self._unconfirmed: list[tuple[int, dict[str, Any]]] = []  # (ping that confirms, msg)
        self._ping_seq = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._kick = threading.Event()  # reconnect now / stop waiting
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sock: socket.socket | None = None
        self._thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)

    # --- called from OBS's threads --------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 1.0) -> bool:
        """Stop the thread; True when it ended within `timeout` seconds."""
        self._stop.set()
        self._kick.set()
        self._wake()
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        if self._thread.is_alive():
            self._thread.join(timeout)
        alive = self._thread.is_alive()
        if not alive:
            for s in (self._wake_r, self._wake_w):
                s.close()
        return not alive

    def send(self, msg: dict[str, Any]) -> bool:
        """Queue a message for the host: it leaves now, or once the link is back.

        Every action ends delivered or reported (an `undelivered` inbox item): sent and
        confirmed by the host's pong; or waiting while disconnected, sent after the
        reconnect if that comes within ACTION_GRACE s, reported otherwise. An action in
        NOT_REPLAYED pressed while disconnected is reported at once (False).
        """
        name = msg.get("action", msg.get("type", "?"))
        if not self.connected:
            if msg.get("action") in NOT_REPLAYED:
                why = "not sent: not connected to the host; press it again once connected"
                self._undelivered(msg, why)
                return False
            self._log(f"'{name}' waits for the host (not connected); it is sent once the "
                      f"link is back, if within {ACTION_GRACE:g} s")  # fmt: skip
        with self._lock:
            self._outbox.append((time.monotonic(), msg))
        self._wake()
        return True

    def reconnect_now(self) -> None:
        """Drop the current connection (if any) and try again without waiting."""
        self._kick.set()
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._wake()

    # --- the thread -----------------------------------------------------------------------

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except OSError:
            pass

    def _log(self, line: str) -> None:
        """Log lines travel through the inbox: OBS prints them on its own thread."""
        self.inbox.put({"type": "log", "text": line})

    def _undelivered(self, msg: dict[str, Any], why: str) -> None:
        """Tell the streamer an action did not (or may not) reach the host, and why."""
        name = msg.get("action", msg.get("type", "?"))
        self.inbox.put({"type": "undelivered", "action": name, "text": f"'{name}' {why}"})

    def _set_status(self, text: str, connected: bool = False) -> None:
        if text != self.status:  # one line per change, never a line per retry
            self._log(text)
        self.status = text
        self.connected = connected
        self.inbox.put({"type": "link", "text": text, "connected": connected})

    def _token(self) -> str:
        """The token for this attempt: the panel's, else the host's file on this computer.

        Read at every attempt, so a file the host writes after OBS started (its first
        run) or writes anew (the streamer deleted it) is picked up without a click.
        """
        if self.token:
            return self.token
        if not is_local_address(self.address):
            raise NoToken("no token: copy the host's link token into Token")
        token = read_local_token()
        if not token:
            raise NoToken(
                f"no token yet: the host's token file {default_token_path()} is not there "
                "yet; start the host on this computer (or copy its token into Token)"
            )
        return token

    def _run(self) -> None:
        self.images.clean_stale()
        backoff = BACKOFF_FIRST
        try:
            url, _, _, _ = parse_address(self.address)
        except ValueError as exc:
            self._set_status(f"not connected: {exc}")
            return
        while not self._stop.is_set():
            self._kick.clear()
            wait = backoff
            try:
                ws = self._connect(self._token())
                backoff = BACKOFF_FIRST
                self._session(ws)
            except Refused as exc:
                self._set_status(f"refused by the host: {exc}")
                wait = REFUSED_WAIT
            except NoToken as exc:
                if str(exc) != self.status:
                    self._set_status(str(exc))
                backoff = min(BACKOFF_MAX, backoff * 2)
            except Exception as exc:  # noqa: BLE001 - every failure means: retry later
                if self._stop.is_set():
                    break
                if self.connected or not self.status.startswith("host not reachable"):
                    why = str(exc) or type(exc).__name__
                    self._set_status(f"host not reachable at {url} ({why[:80]}); retrying")
                backoff = min(BACKOFF_MAX, backoff * 2)
            finally:
                self.connected = False
                self._close_socket()
                self._link_lost()
            deadline = time.monotonic() + wait
            while not self._kick.is_set() and time.monotonic() < deadline:
                self._expire_waiting()  # a press must not wait unreported for the link
                self._kick.wait(min(1.0, max(0.0, deadline - time.monotonic())))
        with self._lock:
            left, self._outbox = self._outbox, []
        for _, msg in left:
            if msg.get("type") == "action":
                self._undelivered(msg, "not sent: the script stopped before the link was back")
        self._set_status("stopped")

    def _link_lost(self) -> None:
        """Report the actions sent on the lost link that the host never confirmed.

        Never re-sent: the host may have acted on them already (a second 'next' would skip
        a picture), so the streamer decides.
        """
        with self._lock:
            lost, self._unconfirmed = self._unconfirmed, []
        for _, msg in lost:
            self._undelivered(msg, "may not have reached the host: the link dropped")

    def _close_socket(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    def _tcp_connect(self, host: str, port: int) -> socket.socket:
        """A TCP connection to the first of the host's addresses that answers.

        Every address getaddrinfo gives is tried in turn ("localhost" may be ::1 first
        while the host listens on 127.0.0.1 only); the last failure is raised.
        """
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        error = OSError(f"no address found for {host}")
        for family, kind, proto, _, addr in infos:
            try:
                return self._tcp_connect_to(family, kind, proto, addr)
            except OSError as exc:
                self._close_socket()
                if self._stop.is_set() or self._kick.is_set():
                    raise
                error = exc
        raise error

    def _tcp_connect_to(self, family: int, kind: int, proto: int, addr: Any) -> socket.socket:
        """One TCP connect that stop() can interrupt (select on the wake-up socket)."""
        sock = socket.socket(family, kind, proto)
        self._sock = sock
        sock.setblocking(False)
        err = sock.connect_ex(addr)
        if err not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN, 10035):
            raise OSError(err, os.strerror(err))
        deadline = time.monotonic() + CONNECT_TIMEOUT
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise OSError("connection timed out")
            _, ready, failed = select.select([self._wake_r], [sock], [sock], left)
            if self._stop.is_set() or self._kick.is_set():
                raise OSError("stopped")
            if ready or failed:
                break
            self._drain_wake()  # a settings change or a click: not a reason to give up
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise OSError(err, os.strerror(err))
        sock.setblocking(True)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def _connect(self, token: str) -> Any:
        url, host, port, tls = parse_address(self.address)
        sock = self._tcp_connect(host, port)
        sock.settimeout(CONNECT_TIMEOUT)
        if tls:
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
            self._sock = sock
        ws = websocket.WebSocket(skip_utf8_validation=False, enable_multithread=True)
        _cap_frames(ws, protocol.MAX_HOST_FRAME)
        ws.connect(url, socket=sock, suppress_origin=True, timeout=CONNECT_TIMEOUT)
        hello = protocol.encode(protocol.make_hello(token, self.client_name), "script")
        if hello.error or hello.text is None:
            where = "the script settings" if self.token else default_token_path()
            raise Refused(f"the token in {where} is not usable ({hello.error})")
        ws.send(hello.text)
        return ws

    def _flush(self, ws: Any) -> None:
        """Send queued messages (actions, proposed settings changes).

        Actions that waited longer than ACTION_GRACE are reported instead. The sent
        actions are followed by a ping: its pong confirms the host has read them.
        """
        self._expire_waiting()
        with self._lock:
            pending, self._outbox = self._outbox, []
        sent: list[dict[str, Any]] = []
        for i, (_, msg) in enumerate(pending):
            is_action = msg.get("type") == "action"
            enc = protocol.encode(msg, "script")
            if enc.text is None:
                self._log(f"not sending an invalid {msg.get('type')} message: {enc.error}")
                continue
            try:
                ws.send(enc.text)
            except Exception:
                with self._lock:  # what is left goes out on the next link, but not a
                    # settings change: the next link starts from the host's values
                    left = [m for m in pending[i + 1 :] if m[1].get("type") != "change"]
                    self._outbox[:0] = left
                    if is_action:
                        self._unconfirmed.append((self._ping_seq + 1, msg))
                raise
            if is_action:
                sent.append(msg)
        if sent:
            seq = self._ping(ws)
            with self._lock:
                self._unconfirmed.extend((seq, msg) for msg in sent)

    def _expire_waiting(self) -> None:
        """Report the actions that waited for the link longer than ACTION_GRACE."""
        now = time.monotonic()
        with self._lock:
            expired = [(t, m) for t, m in self._outbox if now - t > ACTION_GRACE]
            if not expired:
                return
            self._outbox = [(t, m) for t, m in self._outbox if now - t <= ACTION_GRACE]
        for _, msg in expired:
            self._undelivered(msg, f"not sent: no link to the host within {ACTION_GRACE:g} s")

    def _ping(self, ws: Any) -> int:
        """Send a ping carrying a new sequence number; the host's pong echoes it."""
        self._ping_seq += 1
        ws.ping(str(self._ping_seq))
        return self._ping_seq

    def _confirmed(self, payload: Any) -> None:
        """A pong: every action sent before the ping it answers has reached the host."""
        if isinstance(payload, str):
            payload = payload.encode("utf-8")
        try:
            seq = int(bytes(payload or b"").decode("ascii"))
        except (TypeError, ValueError):
            return  # not one of ours (a pong without a ping is allowed)
        with self._lock:
            self._unconfirmed = [(s, m) for s, m in self._unconfirmed if s > seq]

    def _session(self, ws: Any) -> None:
        """Read frames until the connection ends; send queued messages as they come.

        Reads happen only when select() reports bytes, so a quiet host costs nothing; a
        frame that has begun to arrive must go on arriving (socket timeout DEAD_AFTER).
        """
        sock = ws.sock
        ws.settimeout(DEAD_AFTER)
        heard = time.monotonic()  # the last frame of any kind from the host
        next_ping = heard + PING_EVERY
        while not self._stop.is_set() and not self._kick.is_set():
            now = time.monotonic()
            if now - heard > DEAD_AFTER:
                raise OSError(f"the host stopped answering ({now - heard:.0f} s without a frame)")
            if now >= next_ping:
                self._ping(ws)
                next_ping = now + PING_EVERY
            if isinstance(sock, ssl.SSLSocket) and sock.pending() > 0:
                readable = [sock]  # decrypted bytes select() cannot see
            else:
                wait = max(0.0, min(next_ping, heard + DEAD_AFTER + 0.01) - now)
                readable, _, _ = select.select([sock, self._wake_r], [], [], wait)
            if self._wake_r in readable:
                self._drain_wake()
            self._flush(ws)
            if sock not in readable:
                continue
            opcode, data = ws.recv_data(True)  # True: pings and pongs come back too
            heard = time.monotonic()
            if opcode == websocket.ABNF.OPCODE_PONG:
                self._confirmed(data)
                continue
            if opcode == websocket.ABNF.OPCODE_PING:
                continue  # websocket-client has answered it
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                self._closed(bytes(data or b""))
                return
            if opcode == websocket.ABNF.OPCODE_TEXT:
                data = bytes(data).decode("utf-8", "replace")
            if not self._handle(data):
                return
            self._flush(ws)

    def _closed(self, payload: bytes) -> None:
        code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
        reason = protocol.clean_text(payload[2:].decode("utf-8", "replace"), 120)
        if code == protocol.CLOSE_BAD_TOKEN:
            raise Refused("wrong token: copy the token the host prints into this script")
        if code == protocol.CLOSE_BAD_VERSION:
            raise Refused(f"version mismatch, update the script or the host ({reason})")
        if code == protocol.CLOSE_NO_HELLO:
            raise Refused(reason or "the host did not accept our hello")
        raise OSError(f"host closed the link ({code} {reason})".strip())

    def _handle(self, raw: Any) -> bool:
        """Turn one host frame into inbox items; False when the host said bye."""
        decoded = protocol.decode(raw, "host")
        msg = decoded.message
        if msg is None:
            self._log(f"ignored a bad frame from the host: {decoded.error}")
            return True
        kind = msg["type"]
        if not self.connected:
            self._set_status(f"connected to {parse_address(self.address)[0]}", connected=True)
        if kind == "state":
            show = msg["show"]
            if show is None:
                self.inbox.put(protocol.make_clear())
            else:
                self._put_show(show)
            if msg["status"] is not None:
                self.inbox.put({"v": protocol.VERSION, "type": "status", **msg["status"]})
        elif kind == "show":
            self._put_show(msg)
        elif kind == "bye":
            self.connected = False
            reason = msg["reason"] or "host stopped"
            self._set_status(f"host stopped ({reason}); waiting for it to come back")
            return False
        elif kind == "error":
            self._log(f"the host refused a message: {msg['reason']}")
        else:
            self.inbox.put(msg)
        return True

    def _put_show(self, show: dict[str, Any]) -> None:
        try:
            path = self.images.write(show["image"], show["entry_id"])
        except OSError as exc:
            self._log(f"cannot write the image into {self.images.folder}: {exc}")
            return
        item = {k: v for k, v in show.items() if k != "image"}
        item.update(type="show", path=path)
        self.inbox.put(item)
