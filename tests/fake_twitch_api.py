"""A local fake of Twitch's Helix API and EventSub WebSocket over real loopback sockets.

Speaks what generator_host/edges/twitch/{helix,eventsub,channel_points}.py use, as Twitch
documents it: GET /helix/users; GET/POST/PATCH /helix/channel_points/custom_rewards;
GET/PATCH /helix/channel_points/custom_rewards/redemptions; POST/DELETE
/helix/eventsub/subscriptions; and an EventSub WebSocket at /ws (welcome, keepalive,
notification, session_reconnect, revocation). Every HTTP call is recorded (`calls`), every
status change Twitch would apply too (`statuses`). Runs aiohttp on its own thread and
loop, so an in-process host and a subprocess host are served alike.

Knobs: `affiliate=False` answers 403 on the reward endpoints (a channel without channel
points); `token_ok` decides which bearer tokens are valid (e.g. FakeTwitchId's, so a
token expires and must be refreshed); `hang_status` makes the next N status PATCHes hang
unapplied (a host killed while waiting); `keepalive` is the welcome's keepalive timeout.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

EVENT = "channel.channel_points_custom_reward_redemption.add"


@dataclass
class ApiCall:
    method: str
    path: str
    query: list[tuple[str, str]]
    body: Any
    auth: str


@dataclass
class Conn:
    ws: web.WebSocketResponse
    session_id: str
    welcomed_at: float
    closed: bool = False


@dataclass
class FakeTwitchApi:
    client_id: str = "test-client-id"
    user_id: str = "12345"
    login: str = "streamer"
    affiliate: bool = True
    keepalive: int = 10
    send_keepalives: bool = True
    hang_status: int = 0
    token_ok: Callable[[str], bool] = lambda token: token.startswith("at-")
    calls: list[ApiCall] = field(default_factory=list)
    rewards: dict[str, dict[str, Any]] = field(default_factory=dict)
    redemptions: dict[str, dict[str, Any]] = field(default_factory=dict)
    statuses: list[tuple[str, str]] = field(default_factory=list)  # applied (id, status)
    applied_at: dict[str, float] = field(default_factory=dict)  # id -> time.monotonic()
    redeemed_at: dict[str, float] = field(default_factory=dict)
    subscriptions: dict[str, dict[str, Any]] = field(default_factory=dict)
    conns: list[Conn] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._n = itertools.count(1)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self.port = 0

    # ---- life ------------------------------------------------------------------------
    def start(self) -> FakeTwitchApi:
        self._thread.start()
        self._run(self._start())
        return self

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/helix/{tail:.*}", self._helix)
        app.router.add_get("/ws", self._ws)
        self._runner = web.AppRunner(
            app, handle_signals=False, shutdown_timeout=0.5, access_log=None
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def stop(self) -> None:
        async def _stop() -> None:
            for conn in self.conns:
                if not conn.ws.closed:
                    await conn.ws.close()
            if self._runner is not None:
                await self._runner.cleanup()

        self._run(_stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def _run(self, coro: Any, timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    @property
    def helix_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/helix"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    # ---- what tests read -------------------------------------------------------------
    def calls_to(self, path: str, method: str = "") -> list[ApiCall]:
        return [c for c in self.calls if c.path == path and (not method or c.method == method)]

    def status_of(self, redemption_id: str) -> str:
        return self.redemptions[redemption_id]["status"]

    def applied(self, redemption_id: str) -> list[str]:
        return [s for r, s in self.statuses if r == redemption_id]

    def live_conns(self) -> list[Conn]:
        return [c for c in self.conns if not c.closed and not c.ws.closed]

    # ---- Helix -----------------------------------------------------------------------
    async def _helix(self, request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        body: Any = None
        if request.can_read_body:
            try:
                body = await request.json()
            except ValueError:
                body = "<not json>"
        path = "/" + request.match_info["tail"]
        query = list(request.query.items())
        self.calls.append(ApiCall(request.method, path, query, body, auth))
        if request.headers.get("Client-Id") != self.client_id:
            return _json(401, {"error": "Unauthorized", "message": "invalid client id"})
        if not auth.startswith("Bearer ") or not self.token_ok(auth.removeprefix("Bearer ")):
            return _json(401, {"error": "Unauthorized", "message": "Invalid OAuth token"})
        status_call = path == "/channel_points/custom_rewards/redemptions"
        if status_call and request.method == "PATCH" and self.hang_status > 0:
            self.hang_status -= 1
            await asyncio.sleep(3600)
        status, answer = self._answer(request.method, path, query, body)
        return _json(status, answer)

    def _answer(
        self, method: str, path: str, query: list[tuple[str, str]], body: Any
    ) -> tuple[int, dict[str, Any]]:
        q = dict(query)
        if path == "/users" and method == "GET":
            return 200, {"data": [{"id": self.user_id, "login": self.login,
                                   "display_name": self.login.capitalize()}]}  # fmt: skip
        if path.startswith("/channel_points"):
            if q.get("broadcaster_id") != self.user_id:
                return 403, {"message": "broadcaster_id must match the token's user"}
            if not self.affiliate:
                why = "The broadcaster must have partner or affiliate status."
                return 403, {"error": "Forbidden", "message": why}
        if path == "/channel_points/custom_rewards":
            return self._rewards(method, q, body)
        if path == "/channel_points/custom_rewards/redemptions":
            return self._redemptions(method, query, body)
        if path == "/eventsub/subscriptions" and method == "POST":
            return self._subscribe(body)
        if path == "/eventsub/subscriptions" and method == "DELETE":
            self.subscriptions.pop(q.get("id", ""), None)
            return 204, {}
        return 404, {"message": "not found"}

    def _rewards(self, method: str, q: dict[str, str], body: Any) -> tuple[int, dict[str, Any]]:
        if method == "GET":
            return 200, {"data": list(self.rewards.values())}
        if not isinstance(body, dict):
            return 400, {"message": "body must be JSON"}
        if method == "POST":
            if not body.get("title") or "cost" not in body:
                return 400, {"message": "title and cost are required"}
            if any(r["title"].lower() == body["title"].lower() for r in self.rewards.values()):
                return 400, {"message": "CREATE_CUSTOM_REWARD_DUPLICATE_REWARD"}
            reward_id = str(uuid.uuid4())
            self.rewards[reward_id] = {"id": reward_id, "is_paused": False, **body}
            return 200, {"data": [self.rewards[reward_id]]}
        if method == "PATCH":
            reward = self.rewards.get(q.get("id", ""))
            if reward is None:
                return 404, {"message": "reward not found"}
            reward.update(body)
            return 200, {"data": [reward]}
        return 405, {"message": "method"}

    def _redemptions(
        self, method: str, query: list[tuple[str, str]], body: Any
    ) -> tuple[int, dict[str, Any]]:
        q = dict(query)
        reward_id = q.get("reward_id", "")
        if reward_id not in self.rewards:
            return 404, {"message": "reward not found"}
        ids = [v for k, v in query if k == "id"]
        if method == "GET":
            found = [r for r in self.redemptions.values() if r["reward"]["id"] == reward_id]
            if ids:
                found = [r for r in found if r["id"] in ids]
            elif "status" in q:
                found = [r for r in found if r["status"] == q["status"]]
            return 200, {"data": found, "pagination": {}}
        if method == "PATCH":
            status = body.get("status") if isinstance(body, dict) else None
            if status not in ("FULFILLED", "CANCELED"):
                return 400, {"message": "status must be FULFILLED or CANCELED"}
            hits = [self.redemptions.get(i) for i in ids]
            hits = [r for r in hits if r and r["status"] == "UNFULFILLED"]
            if not hits:
                return 404, {"message": "no UNFULFILLED redemptions with those ids"}
            for red in hits:
                red["status"] = status
                self.statuses.append((red["id"], status))
                self.applied_at[red["id"]] = time.monotonic()
            return 200, {"data": hits}
        return 405, {"message": "method"}

    def _subscribe(self, body: Any) -> tuple[int, dict[str, Any]]:
        if not isinstance(body, dict) or body.get("type") != EVENT:
            return 400, {"message": "unknown type"}
        transport = body.get("transport") or {}
        session = transport.get("session_id")
        if not any(c.session_id == session for c in self.live_conns()):
            return 400, {"message": "websocket transport session does not exist"}
        cond = body.get("condition") or {}
        if cond.get("broadcaster_user_id") != self.user_id:
            return 403, {"message": "condition does not match the token"}
        sub_id = str(uuid.uuid4())
        sub = {"id": sub_id, "type": EVENT, "version": "1", "status": "enabled",
               "condition": cond, "transport": transport, "session_id": session}  # fmt: skip
        self.subscriptions[sub_id] = sub
        return 202, {"data": [sub], "total": 1}

    # ---- EventSub WebSocket ----------------------------------------------------------
    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        session_id = request.query.get("session") or f"session-{next(self._n)}"
        conn = Conn(ws, session_id, time.monotonic())
        await ws.send_str(self._message("session_welcome", {"session": {
            "id": session_id, "status": "connected", "keepalive_timeout_seconds": self.keepalive,
            "reconnect_url": None, "connected_at": _now()}}))  # fmt: skip
        for old in self.conns:  # a reconnect: the new one takes over the session
            if old.session_id == session_id:
                old.closed = True
        self.conns.append(conn)
        pinger = asyncio.ensure_future(self._keepalives(conn))
        try:
            async for msg in ws:
                if msg.type == WSMsgType.ERROR:
                    break
        finally:
            pinger.cancel()
            conn.closed = True
            if not any(c.session_id == session_id for c in self.live_conns()):
                # Twitch drops a closed session's subscriptions
                for sub_id in [k for k, s in self.subscriptions.items()
                               if s["session_id"] == session_id]:  # fmt: skip
                    del self.subscriptions[sub_id]
        return ws

    async def _keepalives(self, conn: Conn) -> None:
        while not conn.ws.closed:
            await asyncio.sleep(self.keepalive * 0.5)
            if self.send_keepalives and not conn.closed and not conn.ws.closed:
                await conn.ws.send_str(self._message("session_keepalive", {}))

    def _message(
        self, kind: str, payload: dict[str, Any], message_id: str = "", sub: str = ""
    ) -> str:
        metadata = {"message_id": message_id or str(uuid.uuid4()), "message_type": kind,
                    "message_timestamp": _now()}  # fmt: skip
        if sub:
            metadata |= {"subscription_type": sub, "subscription_version": "1"}
        return json.dumps({"metadata": metadata, "payload": payload})

    def _target(self) -> tuple[Conn, dict[str, Any]] | None:
        """The newest live connection holding the redemption subscription."""
        for conn in reversed(self.live_conns()):
            for sub in self.subscriptions.values():
                if sub["session_id"] == conn.session_id:
                    return conn, sub
        return None

    def subscribed(self) -> bool:
        return self._target() is not None

    # ---- what tests do ---------------------------------------------------------------
    def redeem(self, login: str, text: str, *, repeat: int = 1, notify: bool = True) -> str:
        """A viewer redeems the host's reward: stored UNFULFILLED; the notification sent
        `repeat` times with the same message id (when a session is subscribed)."""
        reward = next(iter(self.rewards.values()))
        rid = str(uuid.uuid4())
        event = {
            "id": rid, "broadcaster_user_id": self.user_id, "broadcaster_user_login": self.login,
            "broadcaster_user_name": self.login, "user_id": str(next(self._n) + 1000),
            "user_login": login, "user_name": login.capitalize(), "user_input": text,
            "status": "UNFULFILLED", "redeemed_at": _now(),
            "reward": {"id": reward["id"], "title": reward["title"], "cost": reward["cost"],
                       "prompt": reward.get("prompt", "")},
        }  # fmt: skip
        self.redemptions[rid] = event
        self.redeemed_at[rid] = time.monotonic()
        if notify:
            self._run(self._notify(dict(event, status="unfulfilled"), repeat))
        return rid

    async def _notify(self, event: dict[str, Any], repeat: int) -> None:
        target = self._target()
        if target is None:
            return
        conn, sub = target
        text = self._message("notification", {"subscription": sub, "event": event}, sub=EVENT)
        for _ in range(repeat):
            await conn.ws.send_str(text)

    def send_raw(self, text: str) -> None:
        """Anything, as a text frame, to the subscribed session (hostile input)."""

        async def send() -> None:
            target = self._target()
            assert target is not None, "no subscribed session"
            await target[0].ws.send_str(text)

        self._run(send())

    def notification_text(self, event: dict[str, Any]) -> str:
        target = self._target()
        sub = target[1] if target else {"type": EVENT}
        return self._message("notification", {"subscription": sub, "event": event}, sub=EVENT)

    def session_reconnect(self) -> None:
        """Ask the subscribed session to move (same session id, new URL)."""

        async def send() -> None:
            target = self._target()
            assert target is not None, "no subscribed session"
            conn = target[0]
            url = f"{self.ws_url}?session={conn.session_id}"
            await conn.ws.send_str(self._message("session_reconnect", {"session": {
                "id": conn.session_id, "status": "reconnecting", "keepalive_timeout_seconds":
                None, "reconnect_url": url, "connected_at": _now()}}))  # fmt: skip

        self._run(send())

    def revoke(self, status: str = "authorization_revoked") -> None:
        async def send() -> None:
            target = self._target()
            assert target is not None, "no subscribed session"
            conn, sub = target
            self.subscriptions.pop(sub["id"], None)
            payload = {"subscription": dict(sub, status=status)}
            await conn.ws.send_str(self._message("revocation", payload, sub=EVENT))

        self._run(send())


def _json(status: int, body: dict[str, Any]) -> web.Response:
    if status == 204:
        return web.Response(status=204)
    return web.json_response(body, status=status)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
