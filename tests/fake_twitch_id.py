"""A local fake of Twitch's id service (id.twitch.tv) over a real loopback socket.

Speaks what generator_host/edges/twitch/auth.py uses, as Twitch documents it: POST
/oauth2/device, POST /oauth2/token (device code grant and refresh_token grant), GET
/oauth2/validate (Authorization: OAuth <token>), POST /oauth2/revoke. It authorizes a
device code after `authorize_after` polls, issues tokens that expire after `expires_in`
seconds, makes refresh tokens single-use (as Twitch does for public clients), can make
refreshes fail (`dead_refresh`), and records every call (`calls`).
"""

from __future__ import annotations

import itertools
import json
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Call:
    method: str
    path: str
    form: dict[str, str]
    auth: str = ""


@dataclass
class FakeTwitchId:
    client_id: str = "test-client-id"
    authorize_after: int = 2  # device polls answered authorization_pending before success
    interval: float = 0.2
    expires_in: float = 14400.0
    login: str = "streamer"
    dead_refresh: bool = False
    calls: list[Call] = field(default_factory=list)
    access: dict[str, float] = field(default_factory=dict)  # valid access token -> expiry
    refresh_tokens: set[str] = field(default_factory=set)
    revoked: list[str] = field(default_factory=list)
    current: str = ""  # the newest access token issued
    user_code: str = "WDJB-MJHT"
    slow_down_polls: int = 0  # the first N device polls are answered slow_down

    def __post_init__(self) -> None:
        self._n = itertools.count(1)
        self._polls = 0
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # quiet
                pass

            def _answer(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                auth = self.headers.get("Authorization", "")
                fake.calls.append(Call("GET", self.path, {}, auth))
                status, body = fake.handle("GET", self.path, {}, auth)
                self._answer(status, body)

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length", "0"))
                raw = self.rfile.read(length).decode()
                form = dict(urllib.parse.parse_qsl(raw))
                fake.calls.append(Call("POST", self.path, form))
                status, body = fake.handle("POST", self.path, form, "")
                self._answer(status, body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FakeTwitchId:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def issue(self, expires_in: float | None = None) -> dict:
        """New tokens as Twitch's token endpoint returns them."""
        n = next(self._n)
        access, refresh = f"at-{n}-secret", f"rt-{n}-secret"
        life = self.expires_in if expires_in is None else expires_in
        self.access[access] = time.time() + life
        self.refresh_tokens.add(refresh)
        self.current = access
        return {
            "access_token": access,
            "refresh_token": refresh,
            "expires_in": life,
            "scope": ["chat:read", "chat:write"],
            "token_type": "bearer",
        }

    def irc_token(self) -> str:
        """The token Twitch's chat accepts now: the newest, while it has not expired."""
        with self._lock:
            alive = self.access.get(self.current, 0.0) > time.time()
            return self.current if alive else "<none is valid>"

    def calls_to(self, path: str) -> list[Call]:
        return [c for c in self.calls if c.path.split("?")[0] == path]

    def handle(self, method: str, path: str, form: dict[str, str], auth: str) -> tuple[int, dict]:
        with self._lock:
            return self._handle(method, path.split("?")[0], form, auth)

    def _handle(self, method: str, path: str, form: dict[str, str], auth: str) -> tuple[int, dict]:
        bad_client = {"status": 400, "message": "invalid client"}
        if path == "/oauth2/device" and method == "POST":
            if form.get("client_id") != self.client_id:
                return 400, bad_client
            return 200, {
                "device_code": "dc-secret",
                "expires_in": 1800,
                "interval": self.interval,
                "user_code": self.user_code,
                "verification_uri": "https://www.twitch.tv/activate?public=true&device-code="
                + self.user_code,
            }
        if path == "/oauth2/token" and method == "POST":
            if form.get("client_id") != self.client_id:
                return 400, bad_client
            grant = form.get("grant_type")
            if grant == "urn:ietf:params:oauth:grant-type:device_code":
                if form.get("device_code") != "dc-secret":
                    return 400, {"status": 400, "message": "invalid device code"}
                self._polls += 1
                if self._polls <= self.slow_down_polls:
                    return 400, {"status": 400, "message": "slow_down"}
                if self._polls <= self.authorize_after:
                    return 400, {"status": 400, "message": "authorization_pending"}
                return 200, self.issue()
            if grant == "refresh_token":
                token = form.get("refresh_token", "")
                if self.dead_refresh or token not in self.refresh_tokens:
                    return 400, {"status": 400, "message": "Invalid refresh token"}
                self.refresh_tokens.discard(token)  # single use
                return 200, self.issue()
            return 400, {"status": 400, "message": "unsupported grant type"}
        if path == "/oauth2/validate" and method == "GET":
            token = auth.removeprefix("OAuth ")
            expiry = self.access.get(token)
            if expiry is None or expiry <= time.time():
                return 401, {"status": 401, "message": "invalid access token"}
            return 200, {
                "client_id": self.client_id,
                "login": self.login,
                "scopes": ["chat:read", "chat:write"],
                "user_id": "12345",
                "expires_in": int(expiry - time.time()),
            }
        if path == "/oauth2/revoke" and method == "POST":
            token = form.get("token", "")
            self.revoked.append(token)
            if form.get("client_id") != self.client_id:
                return 400, bad_client
            self.access.pop(token, None)
            self.refresh_tokens.discard(token)
            return 200, {}
        return 404, {"status": 404, "message": "not found"}
