"""Twitch's Helix API: the few calls the channel-point reward needs, over aiohttp.

Why not twitchAPI (the well-kept library the issue suggests; its 4.5 was observed against
a local server, see the project's notes): this edge needs (1) the token of our own
`TokenKeeper` (auth.py), which saves each single-use refresh token atomically before use
and is shared with the chat, where twitchAPI would refresh on its own; (2) the whole
reward state in every update (twitchAPI's `update_custom_reward` resets fields it is not
given: user input off, enabled, unpaused); (3) EventSub de-duplication, which its
WebSocket client does not do, and keepalive/reconnect behaviour we can test against a
local fake. Each would be a workaround around the library; the calls themselves are
seven JSON requests on aiohttp, which the host already ships (the review page). Every URL
comes from `[twitch] helix_url`, so the tests run this code against a local fake.

Tokens travel only in the Authorization header; no token is ever logged or put in an
exception's text (errors carry Twitch's status and message, cut short).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

import aiohttp

log = logging.getLogger("generator_host.edges.twitch.helix")

HTTP_TIMEOUT = 15.0
REDEMPTION_EVENT = "channel.channel_points_custom_reward_redemption.add"
MAX_IDS = 50  # Helix takes at most this many redemption ids (and items per page) a call


class Tokens(Protocol):
    """What Helix needs of a login (auth.TokenKeeper)."""

    def access_token(self) -> str: ...

    async def refresh(self, stale: str = "") -> bool: ...


class HelixError(Exception):
    """Twitch answered with an error (or could not be reached: status 0)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}" if status else message)
        self.status = status
        self.message = message


class Helix:
    """One application (`client_id`) acting with one user's login (`tokens`)."""

    def __init__(
        self, base_url: str, client_id: str, tokens: Tokens, session: aiohttp.ClientSession
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.client_id = client_id
        self.tokens = tokens
        self.session = session

    def __repr__(self) -> str:
        return f"Helix(base_url={self.base_url!r})"

    async def call(
        self,
        method: str,
        path: str,
        params: dict[str, str] | list[tuple[str, str]] | None = None,
        body: dict[str, Any] | None = None,
    ) -> tuple[int, dict[str, Any]]:
        """One call; on 401 the login is refreshed and the call made once more."""
        for attempt in (1, 2):
            token = self.tokens.access_token()
            headers = {"Authorization": f"Bearer {token}", "Client-Id": self.client_id}
            try:
                async with self.session.request(
                    method,
                    self.base_url + path,
                    params=params,
                    json=body,
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT),
                ) as resp:
                    status = resp.status
                    try:
                        data = await resp.json(content_type=None)
                    except ValueError:
                        data = {}
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                raise HelixError(0, f"cannot reach {self.base_url}: {type(exc).__name__}") from None
            if not isinstance(data, dict):
                data = {}
            if status == 401 and attempt == 1 and await self.tokens.refresh(stale=token):
                continue
            return status, data
        return status, data  # pragma: no cover - the loop always returns

    async def checked(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """`call`, raising HelixError for anything but 2xx."""
        status, data = await self.call(method, path, **kwargs)
        if not 200 <= status < 300:
            raise HelixError(status, str(data.get("message") or data.get("error") or "")[:160])
        return data

    # ---- the calls ---------------------------------------------------------------------
    async def user_id(self) -> tuple[str, str]:
        """(id, login) of the token's user."""
        data = await self.checked("GET", "/users")
        users = data.get("data") or [{}]
        return str(users[0].get("id", "")), str(users[0].get("login", ""))

    async def rewards(self, broadcaster: str) -> list[dict[str, Any]]:
        """The channel's rewards this application may manage."""
        params = {"broadcaster_id": broadcaster, "only_manageable_rewards": "true"}
        data = await self.checked("GET", "/channel_points/custom_rewards", params=params)
        return [r for r in data.get("data") or [] if isinstance(r, dict)]

    async def create_reward(self, broadcaster: str, state: dict[str, Any]) -> dict[str, Any]:
        data = await self.checked(
            "POST", "/channel_points/custom_rewards",
            params={"broadcaster_id": broadcaster}, body=state,
        )  # fmt: skip
        return (data.get("data") or [{}])[0]

    async def update_reward(
        self, broadcaster: str, reward_id: str, state: dict[str, Any]
    ) -> dict[str, Any]:
        """Always the whole desired state: Twitch keeps what is not sent, but a partial
        state invites the library-style bug of resetting a field (see the docstring)."""
        data = await self.checked(
            "PATCH", "/channel_points/custom_rewards",
            params={"broadcaster_id": broadcaster, "id": reward_id}, body=state,
        )  # fmt: skip
        return (data.get("data") or [{}])[0]

    async def redemptions(
        self, broadcaster: str, reward_id: str, *, status: str = "", ids: tuple[str, ...] = ()
    ) -> list[dict[str, Any]]:
        """Redemptions of the reward: by status (all pages) or by id (up to MAX_IDS)."""
        base = [("broadcaster_id", broadcaster), ("reward_id", reward_id)]
        if ids:
            base += [("id", i) for i in ids[:MAX_IDS]]
        else:
            base += [("status", status or "UNFULFILLED"), ("first", str(MAX_IDS))]
        out: list[dict[str, Any]] = []
        cursor = ""
        for _ in range(100):  # at most 5000: a bound, not a limit anyone meets
            params = base + ([("after", cursor)] if cursor else [])
            data = await self.checked(
                "GET", "/channel_points/custom_rewards/redemptions", params=params
            )
            out += [r for r in data.get("data") or [] if isinstance(r, dict)]
            cursor = str((data.get("pagination") or {}).get("cursor") or "")
            if not cursor or ids:
                break
        return out

    async def set_status(
        self, broadcaster: str, reward_id: str, redemption_id: str, status: str
    ) -> tuple[int, dict[str, Any]]:
        """FULFILLED or CANCELED; (HTTP status, body) for the caller to judge."""
        return await self.call(
            "PATCH", "/channel_points/custom_rewards/redemptions",
            params={"broadcaster_id": broadcaster, "reward_id": reward_id, "id": redemption_id},
            body={"status": status},
        )  # fmt: skip

    async def subscribe(self, session_id: str, broadcaster: str, reward_id: str) -> str:
        """The redemption subscription on an EventSub WebSocket session; its id."""
        body = {
            "type": REDEMPTION_EVENT,
            "version": "1",
            "condition": {"broadcaster_user_id": broadcaster, "reward_id": reward_id},
            "transport": {"method": "websocket", "session_id": session_id},
        }
        data = await self.checked("POST", "/eventsub/subscriptions", body=body)
        return str((data.get("data") or [{}])[0].get("id", ""))
