"""The review page's web server: the page, its state, tile images, clicks and a live channel.

Why aiohttp: the page needs ordinary HTTP (GET pages and images, POST for clicks with
proper 4xx answers, cookies, static files) and a websocket for live updates, all on the
host's own asyncio loop. The `websockets` library already in use answers only GET
handshakes in its HTTP hook (`process_request`), so POSTs, cookies and content types would
be hand-written there; aiohttp is the established asyncio web server and does all of it.
No Node build step: the page is three static files in `static/`.

Security (docs/review.md):
- every route that says anything about a picture needs a valid secret: the `key` in the
  printed URL once, then a `SameSite=Strict; HttpOnly` cookie holding it;
- wrong secrets are answered ever more slowly per address (auth.py), never logged: the
  access log is off, because request lines carry the key;
- clicks are POSTs of JSON whose Origin must be this page's own (with the Strict cookie:
  no cross-site request can act); the websocket checks Origin the same way;
- images are sent with `Cache-Control: no-store`; a held tile is served blurred unless the
  page asks for the revealed one (a click), and never once rejected;
- bad input gets a 4xx with a reason; a failing handler gets a 500 and the host goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import ipaddress
import json
import logging
import re
import socket
import ssl
import time
from importlib import resources
from typing import Any

from aiohttp import WSMsgType, web

from generator_host.core import approval
from generator_host.core import events as ev
from generator_host.core import settings as settings_mod
from generator_host.core.settings import ReviewSettings
from generator_host.edges.review import state as page_state
from generator_host.edges.review.auth import Identity, ReviewAuth
from obs_script import chat_diffusion_protocol as protocol

log = logging.getLogger(__name__)

COOKIE = "cd_review"
COOKIE_DAYS = 30
PUSH_DEBOUNCE = 0.03  # seconds: events arriving together become one push
MODS_POLL = 0.5  # seconds between looks at the moderators' file
MAX_BODY = 16 * 1024
STATIC = {"review.js": "text/javascript", "review.css": "text/css"}
LOGIN = re.compile(r"^[a-z0-9_]{1,25}$")
# Who may click what: moderators review and keep the queue clean; settings are the streamer's.
MOD_ACTIONS = ("approve", "reject", "clear", "prev", "next", "cancel", "ignore", "unignore")
BROADCASTER_ACTIONS = (*MOD_ACTIONS, "slideshow")
CLOSE_REVOKED = 4003
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


class BadRequest(web.HTTPBadRequest):
    def __init__(self, reason: str) -> None:
        super().__init__(text=json.dumps({"error": reason}), content_type="application/json")


def _ssl_context(settings: ReviewSettings) -> ssl.SSLContext | None:
    if not settings.tls_cert:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(settings.tls_cert, settings.tls_key or None)
    return ctx


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def page_url(settings: ReviewSettings, port: int, secret: str) -> str:
    """The review page's address with a secret in it (the streamer's, or a moderator's).

    A wildcard listen address names this computer by its host name (for phones on the
    same network); the streamer may need to put its IP address there instead.
    """
    host = settings.host
    if host in ("0.0.0.0", "::", ""):
        host = socket.gethostname()
    if ":" in host:
        host = f"[{host}]"
    scheme = "https" if settings.tls_cert else "http"
    return f"{scheme}://{host}:{port}/?key={secret}"


def _static(name: str) -> bytes:
    return resources.files("generator_host.edges.review").joinpath("static", name).read_bytes()


class ReviewServer:
    """Serves the review page for one Host (app.py): reads its show and gallery, and feeds
    the show the review page's events (core/events.py), so a click follows the same rule
    as chat and the OBS buttons."""

    def __init__(self, settings: ReviewSettings, auth: ReviewAuth, host: Any) -> None:
        self.settings = settings
        self.auth = auth
        self.host = host
        self.port = settings.port
        self._runner: web.AppRunner | None = None
        self._clients: dict[web.WebSocketResponse, tuple[str, Identity]] = {}
        self._changed = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._last_text = ""
        self.pushes: list[float] = []  # monotonic times of state pushes (bench)

    @property
    def scheme(self) -> str:
        return "https" if self.settings.tls_cert else "http"

    def url(self, secret: str) -> str:
        """The page's address with a secret (what `Review page:` prints)."""
        return page_url(self.settings, self.port, secret)

    # ---- life ---------------------------------------------------------------------------
    async def start(self) -> None:
        app = web.Application(client_max_size=MAX_BODY, middlewares=[self._guard])
        app.router.add_get("/", self._page)
        app.router.add_get("/static/{name}", self._static)
        app.router.add_get("/api/state", self._state)
        app.router.add_get(r"/api/tile/{entry:\d{1,9}}/{tile:\d{1,2}}", self._tile)
        app.router.add_get(r"/api/screen/{entry:\d{1,9}}", self._screen)
        app.router.add_post("/api/action", self._action)
        app.router.add_post("/api/settings", self._settings)
        app.router.add_get("/ws", self._ws)
        # access_log=None: request lines carry the key, and secrets never reach a log
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=1.0
        )
        await self._runner.setup()
        site = web.TCPSite(
            self._runner,
            self.settings.host,
            self.settings.port,
            ssl_context=_ssl_context(self.settings),
        )
        await site.start()
        server = getattr(site, "_server", None)
        if server is not None and server.sockets:
            self.port = server.sockets[0].getsockname()[1]
        if not is_loopback(self.settings.host) and not self.settings.tls_cert:
            log.warning(
                "!!! The review page listens on %s WITHOUT TLS: its secrets and held pictures "
                "cross the network in clear. Set [review] tls_cert and tls_key. !!!",
                self.settings.host,
            )
        self._tasks = [
            asyncio.ensure_future(self._pusher()),
            asyncio.ensure_future(self._watch_mods()),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for ws in list(self._clients):
            with contextlib.suppress(Exception):
                await ws.close(code=1001, message=b"host is shutting down")
        self._clients.clear()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def notify(self) -> None:
        """Something the page shows may have changed (an event, an approval on disk)."""
        self._changed.set()

    # ---- middleware: headers, errors ----------------------------------------------------
    @web.middleware
    async def _guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            _secure_headers(exc.headers)
            raise
        except Exception:  # noqa: BLE001 - one bad request must not take the host down
            log.exception("review page: %s %s failed", request.method, request.path)
            response = web.json_response({"error": "internal error"}, status=500)
        if not response.prepared:
            _secure_headers(response.headers)
        return response

    # ---- who is asking -------------------------------------------------------------------
    def _peer(self, request: web.Request) -> str:
        return request.remote or "?"

    async def _refuse(self, request: web.Request, given: bool) -> web.HTTPException:
        """401 after the address's penalty (only a wrong secret counts as a failure)."""
        if given:
            peer = self._peer(request)
            delay = self.auth.penalty(peer)
            self.auth.failed(peer)
            log.warning("review page: a wrong secret from %s", peer)
            if delay:
                await asyncio.sleep(delay)
        return web.HTTPUnauthorized(
            text="Open the review page through the link the host printed "
            "(or `generator-host mods add NAME` for a moderator).\n"
        )

    async def _who(self, request: web.Request) -> tuple[str, Identity]:
        secret = request.cookies.get(COOKIE, "")
        self.auth.reload()
        ident = self.auth.identify(secret)
        if ident is None:
            raise await self._refuse(request, bool(secret))
        return secret, ident

    def _same_origin(self, request: web.Request) -> bool:
        origin = request.headers.get("Origin")
        return origin is not None and origin == f"{self.scheme}://{request.host}"

    # ---- routes ------------------------------------------------------------------------------
    async def _page(self, request: web.Request) -> web.Response:
        key = request.query.get("key")
        if key is not None:
            self.auth.reload()
            ident = self.auth.identify(key)
            if ident is None:
                raise await self._refuse(request, True)
            self.auth.succeeded(self._peer(request))
            response = web.Response(body=_static("index.html"), content_type="text/html")
            # Strict: no other site's page can make the browser send it; HttpOnly: no script
            # reads it. The page itself drops the key from the address bar.
            response.set_cookie(
                COOKIE,
                key,
                max_age=COOKIE_DAYS * 86400,
                httponly=True,
                samesite="Strict",
                secure=self.scheme == "https",
                path="/",
            )
            return response
        await self._who(request)
        return web.Response(body=_static("index.html"), content_type="text/html")

    async def _static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in STATIC:
            raise web.HTTPNotFound(text="no such file\n")
        response = web.Response(body=_static(name), content_type=STATIC[name])
        response.headers["Cache-Control"] = "no-cache"
        return response

    async def _state(self, request: web.Request) -> web.Response:
        _, ident = await self._who(request)
        data = await self._build()
        data["you"] = _you(ident)
        return web.json_response(data)

    async def _tile(self, request: web.Request) -> web.Response:
        await self._who(request)
        entry, tile = int(request.match_info["entry"]), int(request.match_info["tile"])
        view = request.query.get("view", "blur")
        if view not in ("blur", "raw"):
            raise BadRequest("view is blur or raw")
        png = await asyncio.to_thread(self._tile_png, entry, tile, view == "raw")
        if png is None:
            raise web.HTTPNotFound(text="no such tile\n")
        return web.Response(body=png, content_type="image/png")

    def _tile_png(self, entry: int, tile: int, raw: bool) -> bytes | None:
        from generator_host.engine import grid

        image = self.host.gallery.tile_image(entry, tile - 1)
        if image is None:
            return None
        if not raw:
            image = grid.blur(image, label="")
        buf = io.BytesIO()
        image.convert("RGB").save(buf, format="PNG", compress_level=1)
        return buf.getvalue()

    async def _screen(self, request: web.Request) -> web.Response:
        """A picture as the stream shows it (the screen now, a history entry): the tiles
        the show's approval policy gives its entry, as `Display` gives them to OBS."""
        await self._who(request)
        entry_id = int(request.match_info["entry"])
        gallery = self.host.gallery
        entry = page_state.find(self.host.show, entry_id)
        if entry is None:
            entry = await asyncio.to_thread(gallery.get, entry_id)
        if entry is None or entry.outcome == approval.Outcome.REJECTED:
            raise web.HTTPNotFound(text="no such picture\n")
        tiles = approval.entry_tiles(entry)
        png = await asyncio.to_thread(gallery.screen_png, entry_id, tiles)
        if png is None:
            raise web.HTTPNotFound(text="nothing of it may be shown\n")
        return web.Response(body=png, content_type="image/png")

    async def _json_body(self, request: web.Request) -> tuple[Identity, dict[str, Any]]:
        if not self._same_origin(request):
            raise web.HTTPForbidden(text="cross-site request refused\n")
        _, ident = await self._who(request)
        if request.content_type != "application/json":
            raise BadRequest("send JSON (Content-Type: application/json)")
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            raise BadRequest("the body is not valid JSON") from None
        if not isinstance(body, dict):
            raise BadRequest("the body must be a JSON object")
        return ident, body

    async def _action(self, request: web.Request) -> web.Response:
        ident, body = await self._json_body(request)
        action = body.get("action")
        allowed = BROADCASTER_ACTIONS if ident.is_broadcaster else MOD_ACTIONS
        if not isinstance(action, str) or action not in BROADCASTER_ACTIONS:
            raise BadRequest(f"action is one of {', '.join(BROADCASTER_ACTIONS)}")
        if action not in allowed:
            raise web.HTTPForbidden(text="only the broadcaster may do that\n")
        by = "the streamer" if ident.is_broadcaster else f"moderator {ident.name}"
        event = _event(action, body, f"{by} (review page)")
        if isinstance(event, ev.StreamerAction):  # the core logs the others, with `by`
            log.info("review page: %s (%s) %s %s", ident.name, ident.role, action, event.arg)
        if isinstance(event, ev.RejectEntry):
            reason = _reason(body)
            if reason:
                log.info("review page: %s's reason to reject %d: %s", ident.name,
                         event.entry_id, reason)  # fmt: skip
        self.host.feed(event)
        return web.json_response({"ok": True})

    async def _settings(self, request: web.Request) -> web.Response:
        """A proposed change of live settings, through the host's one owner of them
        (`Host.change_settings`): who may change what, and every value's check, are the
        declarations' (core/settings.py)."""
        ident, body = await self._json_body(request)
        known = {d.key: d for d in settings_mod.live_declarations("review")}
        if not body or set(body) - set(known):
            raise BadRequest(f"settings are {', '.join(known)}")
        denied = [k for k in body if not known[k].spec.live.allows("review", ident.role)]
        if denied:
            raise web.HTTPForbidden(text=f"only the broadcaster changes {', '.join(denied)}\n")
        by = "the streamer" if ident.is_broadcaster else f"moderator {ident.name}"
        asked = ", ".join(f"{k}={str(v)[:20]!r}" for k, v in body.items())
        log.info("review page: %s proposes %s", by, asked)
        proposal = {known[k].name: v for k, v in body.items()}
        _changes, refused = self.host.change_settings(proposal, "review", ident.role)
        if refused:
            raise BadRequest("; ".join(refused))
        return web.json_response(
            {"ok": True, "settings": page_state.live_settings(self.host.settings)}
        )

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        if not self._same_origin(request):
            raise web.HTTPForbidden(text="cross-site websocket refused\n")
        secret, ident = await self._who(request)
        ws = web.WebSocketResponse(heartbeat=20, max_msg_size=1024)
        await ws.prepare(request)
        data = await self._build()
        data["you"] = _you(ident)
        await ws.send_str(json.dumps({"type": "state", "state": data}))
        self._clients[ws] = (secret, ident)
        log.info("review page opened by %s (%d open)", ident.name, len(self._clients))
        try:
            async for msg in ws:  # the page only listens; anything it sends is ignored
                if msg.type == WSMsgType.ERROR:
                    break
        finally:
            if self._clients.pop(ws, None) is not None:
                log.info("review page closed by %s (%d open)", ident.name, len(self._clients))
        return ws

    # ---- live state -------------------------------------------------------------------------
    async def _build(self) -> dict[str, Any]:
        part = page_state.show_part(self.host, time.monotonic())
        return await asyncio.to_thread(page_state.gallery_part, self.host.gallery, part)

    async def _pusher(self) -> None:
        while True:
            await self._changed.wait()
            await asyncio.sleep(PUSH_DEBOUNCE)
            self._changed.clear()
            if not self._clients:
                continue
            try:
                data = await self._build()
            except Exception:  # noqa: BLE001
                log.exception("review page: building the state failed")
                continue
            text = json.dumps(data, sort_keys=True)
            if text == self._last_text:
                continue
            self._last_text = text
            frame = json.dumps({"type": "state", "state": data})
            for ws in list(self._clients):
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(ws.send_str(frame), 5.0)
            self.pushes.append(time.monotonic())
            del self.pushes[:-1000]

    async def _watch_mods(self) -> None:
        """A removed moderator's open pages are closed within MODS_POLL seconds."""
        while True:
            await asyncio.sleep(MODS_POLL)
            if not self.auth.reload():
                continue
            for ws, (secret, ident) in list(self._clients.items()):
                if self.auth.identify(secret) is None:
                    log.info("review page: %s's link was removed; closing their page", ident.name)
                    self._clients.pop(ws, None)
                    with contextlib.suppress(Exception):
                        await ws.close(code=CLOSE_REVOKED, message=b"access removed")


def _you(ident: Identity) -> dict[str, Any]:
    """Who the page is for, and which live settings they may change."""
    return {"name": ident.name, "role": ident.role, "may_change": page_state.may_change(ident.role)}


def _secure_headers(headers: Any) -> None:
    headers.setdefault("Cache-Control", "no-store")
    headers["Referrer-Policy"] = "no-referrer"
    headers["X-Content-Type-Options"] = "nosniff"
    headers["Content-Security-Policy"] = CSP
    headers["Server"] = "chat-diffusion"  # not the framework's name and version


def _int_field(body: dict[str, Any], key: str, lo: int, hi: int) -> int:
    value = body.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise BadRequest(f"{key} must be a whole number from {lo} to {hi}")
    return value


def _reason(body: dict[str, Any]) -> str:
    """A reject's reason (for the log), cleaned like any chat text."""
    reason = body.get("reason", "")
    if not isinstance(reason, str):
        raise BadRequest("reason must be text")
    return protocol.clean_text(reason, 120)


def _login(body: dict[str, Any]) -> str:
    login = body.get("login")
    if not isinstance(login, str) or not LOGIN.match(login.lstrip("@").lower()):
        raise BadRequest("login must be a Twitch login")
    return login.lstrip("@").lower()


def _event(action: str, body: dict[str, Any], by: str) -> ev.Event:
    """The core's event for a click, from checked fields only: the review page's own
    events (approve a grid or one tile, reject, cancel, ignore) or the OBS buttons'
    StreamerAction (clear, prev, next, slideshow)."""
    now = time.monotonic()
    if action == "approve":
        entry = _int_field(body, "entry", 1, 10**9 - 1)
        tile = None if body.get("tile") is None else _int_field(body, "tile", 1, 16) - 1
        return ev.ApproveEntry(entry, tile, by=by, now=now)
    if action == "reject":
        _reason(body)  # a bad reason is a 400 before anything happens
        return ev.RejectEntry(_int_field(body, "entry", 1, 10**9 - 1), by=by, now=now)
    if action == "cancel":
        return ev.CancelRequests(_login(body), by=by, now=now)
    if action in ("ignore", "unignore"):
        return ev.IgnoreViewer(_login(body), ignore=action == "ignore", by=by, now=now)
    arg = ""
    if action == "slideshow":
        seconds = body.get("seconds")
        if seconds is not None:
            arg = "off" if seconds == 0 else str(_int_field(body, "seconds", 3, 3600))
    return ev.StreamerAction(action=action, arg=arg, now=now)
