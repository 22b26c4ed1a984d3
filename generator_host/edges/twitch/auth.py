"""Twitch accounts: log in with the Device Code Grant Flow, store, validate, refresh, revoke.

Why the Device Code flow: it is Twitch's flow for desktop apps that are *public clients*
(no client secret can be kept secret on a streamer's computer): the app asks for a code,
the streamer types it at twitch.tv/activate, the app polls until Twitch hands out an
access token and a refresh token. Refresh tokens of public clients are single-use, so each
refresh is saved at once (an old one is dead after the refresh).

Why hand-written (urllib, run in a thread by the host): the account side is five small
form posts/gets to id.twitch.tv; twitchAPI (the well-kept Python Twitch library) is the
planned path for Helix and EventSub in the channel-points work, and can be adopted here
too then, but adding it only for these five calls would bring its whole dependency tree
for no gain. Every call takes the base URL (`[twitch] id_url`), so tests run the same code
against a local fake of id.twitch.tv.

Why a file and not the OS keyring: the host often runs headless or under a service manager
where no keyring is unlocked (Linux without a desktop session, SSH); a file written 0600
in the host's data folder works everywhere, like the OBS link token beside it.

Tokens never appear in logs, exception messages or reprs: only Twitch's error text,
cut short, and the account's login name.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from generator_host.edges.files import write_private

log = logging.getLogger("generator_host.edges.twitch.auth")

ACCOUNTS = ("broadcaster", "bot")
CHAT_SCOPES = ("chat:read", "chat:write")
CHANNEL_POINTS_SCOPES = ("channel:read:redemptions", "channel:manage:redemptions")
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
LOG_IN_AGAIN = "log in again: generator-host login"
HTTP_TIMEOUT = 15.0
VALIDATE_EVERY = 3600.0  # Twitch requires apps that keep a session to validate hourly
REFRESH_MARGIN = 300.0  # refresh this long before the access token expires


def scopes_for(account: str, *, channel_points: bool = False) -> list[str]:
    """The scopes a login asks for: only what the enabled features need.

    The bot account only chats. The broadcaster chats too when no bot is logged in, and
    manages the channel-point reward (`channel_points`, a later feature) when enabled.
    """
    scopes = list(CHAT_SCOPES)
    if account == "broadcaster" and channel_points:
        scopes += CHANNEL_POINTS_SCOPES
    return scopes


def token_path(home: Path, account: str) -> Path:
    """Where an account's tokens live in the host's data folder."""
    return Path(home) / "twitch" / f"{account}.json"


class AuthError(Exception):
    """Twitch's id service refused or could not be reached; the text names no token."""


class DeadLogin(AuthError):
    """The refresh token is revoked, expired or used up: only a new login helps."""


@dataclass
class Tokens:
    """One account's login. `expires_at` is wall-clock seconds (time.time)."""

    access_token: str = field(repr=False)
    refresh_token: str = field(default="", repr=False)
    expires_at: float = 0.0
    scopes: list[str] = field(default_factory=list)
    login: str = ""
    user_id: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> Tokens:
        raw = json.loads(text)
        if not isinstance(raw, dict) or not isinstance(raw.get("access_token"), str):
            raise ValueError("not a token file")
        known = {k: raw[k] for k in cls.__dataclass_fields__ if k in raw}
        return cls(**known)


def save_tokens(path: Path, tokens: Tokens) -> None:
    """Write atomically, readable by the user alone (0600)."""
    write_private(path, tokens.to_json())


def load_tokens(path: Path) -> Tokens | None:
    """The stored login, or None when there is none or it is unreadable (logged)."""
    try:
        return Tokens.from_json(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as exc:
        log.warning("cannot read the Twitch login in %s (%s); %s", path, type(exc).__name__,
                    LOG_IN_AGAIN)  # fmt: skip
        return None


@dataclass(frozen=True)
class DeviceCode:
    """What the streamer sees (`verification_uri`, `user_code`) and what we poll with."""

    device_code: str = field(repr=False)
    user_code: str
    verification_uri: str
    expires_in: float
    interval: float


@dataclass(frozen=True)
class Validation:
    login: str
    user_id: str
    scopes: list[str]
    expires_in: float


class IdClient:
    """id.twitch.tv (or a local fake at `base_url`) for one application (`client_id`)."""

    def __init__(self, client_id: str, base_url: str = "https://id.twitch.tv") -> None:
        self.client_id = client_id
        self.base_url = base_url.rstrip("/")

    def __repr__(self) -> str:
        return f"IdClient(base_url={self.base_url!r})"

    def _call(
        self, path: str, form: dict[str, str] | None = None, auth: str = ""
    ) -> tuple[int, dict[str, Any]]:
        """One request; (status, JSON body). Network trouble raises AuthError."""
        data = urllib.parse.urlencode(form).encode() if form is not None else None
        req = urllib.request.Request(self.base_url + path, data=data)
        if auth:
            req.add_header("Authorization", f"OAuth {auth}")
        try:
            with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT) as resp:  # noqa: S310
                status, body = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            status, body = exc.code, exc.read()
        except (OSError, ValueError) as exc:  # URLError, timeouts, a bad id_url
            raise AuthError(f"cannot reach {self.base_url}: {type(exc).__name__}") from None
        try:
            parsed = json.loads(body or b"{}")
        except ValueError:
            parsed = {}
        return status, parsed if isinstance(parsed, dict) else {}

    @staticmethod
    def _message(body: dict[str, Any]) -> str:
        text = body.get("message") or body.get("error") or ""
        return str(text)[:120]

    def start_device(self, scopes: list[str]) -> DeviceCode:
        status, body = self._call(
            "/oauth2/device", {"client_id": self.client_id, "scopes": " ".join(scopes)}
        )
        if status != 200 or "device_code" not in body:
            raise AuthError(
                f"Twitch refused to start the login ({status}: {self._message(body)}); "
                "check [twitch] client_id and that the app's client type is Public"
            )
        return DeviceCode(
            device_code=str(body["device_code"]),
            user_code=str(body.get("user_code", "")),
            verification_uri=str(body.get("verification_uri", "")),
            expires_in=float(body.get("expires_in", 1800)),
            interval=float(body.get("interval", 5)),
        )

    def poll_device(self, device: DeviceCode, scopes: list[str]) -> Tokens | str:
        """Tokens once the streamer authorized; else Twitch's word for why not yet
        ("authorization_pending", "slow_down"). A refusal or expiry raises AuthError."""
        status, body = self._call(
            "/oauth2/token",
            {
                "client_id": self.client_id,
                "scopes": " ".join(scopes),
                "device_code": device.device_code,
                "grant_type": DEVICE_GRANT,
            },
        )
        if status == 200 and "access_token" in body:
            return _tokens_from(body)
        message = self._message(body)
        if message in ("authorization_pending", "slow_down"):
            return message
        if message in ("invalid device code", "expired_token"):
            raise AuthError("the code expired before it was entered; run the login again")
        raise AuthError(f"Twitch refused the login ({status}: {message})")

    def refresh(self, refresh_token: str) -> Tokens:
        """New tokens for a refresh token (which is then used up). DeadLogin when refused."""
        if not refresh_token:
            raise DeadLogin("no refresh token stored")
        status, body = self._call(
            "/oauth2/token",
            {
                "client_id": self.client_id,
                "grant_type": "refresh_token",
                "refresh_token": refresh_token,
            },
        )
        if status == 200 and "access_token" in body:
            return _tokens_from(body)
        if status in (400, 401, 403):
            raise DeadLogin(f"Twitch refused the refresh ({status}: {self._message(body)})")
        raise AuthError(f"Twitch could not refresh the login ({status}: {self._message(body)})")

    def validate(self, access_token: str) -> Validation | None:
        """Who the token belongs to and how long it lives; None when Twitch says invalid."""
        status, body = self._call("/oauth2/validate", auth=access_token)
        if status == 401:
            return None
        if status != 200:
            raise AuthError(f"Twitch could not validate ({status}: {self._message(body)})")
        return Validation(
            login=str(body.get("login", "")),
            user_id=str(body.get("user_id", "")),
            scopes=[str(s) for s in body.get("scopes") or []],
            expires_in=float(body.get("expires_in", 0)),
        )

    def revoke(self, token: str) -> bool:
        """Ask Twitch to revoke `token`; True when it did (or it was already invalid)."""
        status, _ = self._call("/oauth2/revoke", {"client_id": self.client_id, "token": token})
        return status in (200, 400)


def _tokens_from(body: dict[str, Any]) -> Tokens:
    scope = body.get("scope") or []
    return Tokens(
        access_token=str(body["access_token"]),
        refresh_token=str(body.get("refresh_token", "")),
        expires_at=time.time() + float(body.get("expires_in", 0) or 0),
        scopes=[str(s) for s in (scope.split() if isinstance(scope, str) else scope)],
    )


def _open_browser(url: str) -> None:
    """Open the activation page where a browser exists; never fails the login."""
    with contextlib.suppress(Exception):
        import webbrowser

        webbrowser.open(url)


def device_login(
    client: IdClient,
    scopes: list[str],
    *,
    account: str,
    out: TextIO,
    open_browser: bool = True,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Tokens:
    """The whole login: show the code, poll until authorized, fill in login and user id."""
    device = client.start_device(scopes)
    print(
        f"To log in the {account} account, open {device.verification_uri}\n"
        f"and enter the code: {device.user_code}\n"
        f"(asks for: {' '.join(scopes)}). Waiting...",
        file=out,
        flush=True,
    )
    if open_browser:
        _open_browser(device.verification_uri)
    deadline = clock() + device.expires_in
    interval = max(0.05, device.interval)
    while True:
        if clock() >= deadline:
            raise AuthError("the code expired before it was entered; run the login again")
        sleep(interval)
        answer = client.poll_device(device, scopes)
        if isinstance(answer, Tokens):
            break
        if answer == "slow_down":
            interval += 5.0  # RFC 8628: each slow_down adds 5 s to the interval
    who = client.validate(answer.access_token)
    if who is not None:
        answer.login, answer.user_id = who.login, who.user_id
        answer.scopes = who.scopes or answer.scopes
    return answer


class TokenKeeper:
    """Keeps one stored login alive while the host runs: validate at start and hourly,
    refresh before expiry and when Twitch refuses the token, save each refresh at once,
    pick up a new `generator-host login` from the file without a restart.

    A dead login (refresh refused) is said once in the log and through `on_problem`
    (the OBS status); the stream goes on with what it has.
    """

    def __init__(
        self,
        client: IdClient,
        path: Path,
        tokens: Tokens,
        *,
        account: str = "broadcaster",
        validate_every: float = VALIDATE_EVERY,
        refresh_margin: float = REFRESH_MARGIN,
        tick: float = 30.0,
        on_problem: Callable[[str], None] | None = None,
    ) -> None:
        self.client = client
        self.path = Path(path)
        self.tokens = tokens
        self.account = account
        self.validate_every = validate_every
        self.refresh_margin = refresh_margin
        self.tick = tick
        self.on_problem = on_problem
        self.dead = False
        self.refreshes = 0
        self._lock = asyncio.Lock()
        self._mtime = self._file_mtime()

    def __repr__(self) -> str:
        return f"TokenKeeper(account={self.account!r}, login={self.login!r})"

    @property
    def login(self) -> str:
        return self.tokens.login

    def access_token(self) -> str:
        self._reload_if_changed()
        return self.tokens.access_token

    def _file_mtime(self) -> float:
        try:
            return os.stat(self.path).st_mtime
        except OSError:
            return 0.0

    def _reload_if_changed(self) -> None:
        """A new `generator-host login` while the host runs: use it."""
        mtime = self._file_mtime()
        if mtime == self._mtime:
            return
        self._mtime = mtime
        fresh = load_tokens(self.path)
        if fresh is not None and fresh.access_token != self.tokens.access_token:
            self.tokens, self.dead = fresh, False
            log.info("Twitch %s login changed on disk (%s); using it", self.account, fresh.login)

    def _problem(self, why: str) -> None:
        if self.dead:
            return
        self.dead = True
        log.error("Twitch %s login no longer works (%s): %s", self.account, why, LOG_IN_AGAIN)
        if self.on_problem is not None:
            with contextlib.suppress(Exception):
                self.on_problem(f"Twitch {self.account} login expired: {LOG_IN_AGAIN}")

    async def refresh(self, stale: str = "") -> bool:
        """Refresh now; True when a new access token is in place. With `stale` (the token
        Twitch refused), only when that is still the current one: two callers that saw the
        same refusal (validation and the chat login) refresh once."""
        async with self._lock:
            self._reload_if_changed()
            if stale and self.tokens.access_token != stale:
                return True  # already replaced meanwhile
            if self.dead:
                return False
            old = self.tokens
            try:
                new = await asyncio.to_thread(self.client.refresh, old.refresh_token)
            except DeadLogin as exc:
                self._problem(str(exc))
                return False
            except AuthError as exc:
                log.warning("Twitch %s login: %s; trying again later", self.account, exc)
                return False
            new.login, new.user_id = old.login, old.user_id
            new.scopes = new.scopes or old.scopes
            self.tokens = new
            self.refreshes += 1
            try:
                save_tokens(self.path, new)
                self._mtime = self._file_mtime()
            except OSError as exc:  # the old refresh token is used up: say it
                log.error("cannot save the refreshed Twitch login to %s: %s", self.path, exc)
            log.info("Twitch %s login (%s) refreshed", self.account, new.login)
            return True

    async def validate(self) -> bool:
        """Ask Twitch whether the token is still good (refreshing when it is not)."""
        self._reload_if_changed()
        token = self.tokens.access_token
        try:
            who = await asyncio.to_thread(self.client.validate, token)
        except AuthError as exc:
            log.warning("Twitch %s login: %s; trying again later", self.account, exc)
            return True  # cannot tell: keep what we have
        if who is None:
            log.info("Twitch says the %s access token is no longer valid; refreshing", self.account)
            return await self.refresh(stale=token)
        if self.tokens.access_token != token:
            return True  # refreshed while we asked: what we learnt is about the old one
        self.tokens.expires_at = time.time() + who.expires_in
        if who.login:
            self.tokens.login = who.login
        return True

    async def renew_after_refusal(self, refused: str) -> bool:
        """Twitch refused `refused` (the token the chat logged in with): refresh unless it
        was replaced meanwhile (the validation at start may have refreshed it already);
        True when there is a new one."""
        return await self.refresh(stale=refused)

    async def keep(self) -> None:
        """Validate now and every `validate_every`; refresh `refresh_margin` before expiry."""
        await self.validate()
        next_validate = time.monotonic() + self.validate_every
        while True:
            refresh_in = self.tokens.expires_at - self.refresh_margin - time.time()
            wait = min(self.tick, next_validate - time.monotonic())
            if not self.dead and self.tokens.refresh_token:
                wait = min(wait, refresh_in)
            await asyncio.sleep(max(0.05, wait))
            self._reload_if_changed()
            if self.dead:
                continue
            if self.tokens.expires_at - self.refresh_margin <= time.time():
                if not await self.refresh() and not self.dead:
                    await asyncio.sleep(self.tick)  # Twitch unreachable: not in a tight loop
            elif time.monotonic() >= next_validate:
                await self.validate()
                next_validate = time.monotonic() + self.validate_every


def stored_chat_login(home: Path) -> tuple[str, Path, Tokens] | None:
    """The login the chat uses: the bot's when one is logged in, else the broadcaster's."""
    for account in ("bot", "broadcaster"):
        path = token_path(home, account)
        tokens = load_tokens(path)
        if tokens is not None:
            return account, path, tokens
    return None


def logout(client: IdClient, home: Path, account: str) -> str:
    """Revoke the account's tokens at Twitch and delete the file; what happened, in words."""
    path = token_path(home, account)
    tokens = load_tokens(path)
    if tokens is None and not path.exists():
        return f"No {account} login stored in {path}."
    revoked = True
    if tokens is not None:
        for token in (tokens.access_token, tokens.refresh_token):
            if token:
                try:
                    revoked = client.revoke(token) and revoked
                except AuthError as exc:
                    log.warning("Twitch %s logout: %s", account, exc)
                    revoked = False
    path.unlink(missing_ok=True)
    if revoked:
        return f"Logged out the {account} account: revoked at Twitch and deleted {path}."
    return (
        f"Deleted {path}, but Twitch could not be told to revoke it; to be sure, remove "
        "the app under Connections in your Twitch settings."
    )
