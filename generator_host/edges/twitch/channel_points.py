"""The channel-point reward: own it on Twitch, turn its redemptions into requests, and
carry out the show's `Settle` effects exactly once.

- At start: the reward is found (its id remembered in the store; else one of this app's
  rewards with the configured title) or created, and PATCHed to the whole configured
  state, unpaused. It is paused again at a clean stop and while the queue is full. A 403
  (the channel has no channel points: not Affiliate or Partner, or the login lacks the
  scope) is one clear line in the log and in OBS's status; chat commands go on.
- Restart reconciliation: redemptions the store says are settled are dropped from the
  show's saved queue (`RedemptionsSettled`); statuses decided but maybe not sent are
  checked at Twitch and sent if they did not arrive; the reward's UNFULFILLED
  redemptions the show does not hold are queued (those that came while the host was
  down, or were lost to a kill -9 before the queue was saved).
- EventSub (eventsub.py) delivers new redemptions; each is stored (`received`) before the
  show sees it, and a repeat (same message id or same redemption id) is dropped.
- A `Settle` is stored as an intent synchronously when the show emits it (`intend`), then
  sent (`settle`), then marked done: see redemptions.py for why that order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from generator_host.core import events as ev
from generator_host.core.settings import Settings
from generator_host.edges.twitch.eventsub import KEEPALIVE_GRACE, EventSub
from generator_host.edges.twitch.helix import MAX_IDS, REDEMPTION_EVENT, Helix, HelixError
from generator_host.edges.twitch.redemptions import INTENT, RECEIVED, RedemptionStore, Stored

log = logging.getLogger("generator_host.edges.twitch.channel_points")

STORE_FILE = Path("twitch") / "redemptions.sqlite"
NO_CHANNEL_POINTS = (
    "channel points: Twitch refuses to manage the reward (403{why}): only Affiliate and "
    "Partner channels have channel points, and the broadcaster login needs the "
    "channel:manage:redemptions scope (run generator-host login again); "
    "chat commands work as before"
)
_LOGIN = re.compile(r"^[a-z0-9_]{1,25}$")
_ID = re.compile(r"^[A-Za-z0-9_-]{1,100}$")


def reward_state(settings: Settings, paused: bool) -> dict[str, Any]:
    """The reward's whole desired state (every update sends all of it)."""
    cp = settings.channel_points
    state: dict[str, Any] = {
        "title": cp.title,
        "cost": cp.cost,
        "prompt": cp.prompt,
        "is_enabled": True,
        "is_paused": paused,
        "is_user_input_required": cp.user_input_required,
        "is_global_cooldown_enabled": cp.global_cooldown_seconds > 0,
        "is_max_per_stream_enabled": cp.max_per_stream > 0,
        "is_max_per_user_per_stream_enabled": cp.max_per_user_per_stream > 0,
        "should_redemptions_skip_request_queue": False,  # else no status can be set
    }
    if cp.global_cooldown_seconds > 0:  # Twitch's minimum is 1 when enabled
        state["global_cooldown_seconds"] = cp.global_cooldown_seconds
    if cp.max_per_stream > 0:
        state["max_per_stream"] = cp.max_per_stream
    if cp.max_per_user_per_stream > 0:
        state["max_per_user_per_stream"] = cp.max_per_user_per_stream
    return state


class ChannelPoints:
    """See the module docstring. `attach` connects it to a running host."""

    def __init__(
        self,
        settings: Settings,
        tokens: Any,  # auth.TokenKeeper of the broadcaster
        home: Path,
        *,
        run_keeper: bool = True,
        retry_max: float = 60.0,
    ) -> None:
        self.settings = settings
        self.tokens = tokens
        self.store = RedemptionStore(Path(home) / STORE_FILE)
        self.run_keeper = run_keeper  # False when the chat already keeps this login alive
        self.retry_max = retry_max
        self.keepalive_grace = KEEPALIVE_GRACE
        self.available = False
        self.broadcaster = ""
        self.reward_id = ""
        self._feed: Callable[[Any], None] = lambda event: None
        self._notice: Callable[[str], None] = lambda text: None
        self._pending: Callable[[], set[str]] = set
        self._session: aiohttp.ClientSession | None = None
        self.helix: Helix | None = None
        self.eventsub: EventSub | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._settling: set[asyncio.Task[Any]] = set()
        self._paused: bool | None = None
        self._want_paused = False
        self._pause_lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"ChannelPoints(reward={self.reward_id!r}, available={self.available})"

    def attach(
        self,
        feed: Callable[[Any], None],
        notice: Callable[[str], None],
        pending: Callable[[], set[str]],
    ) -> None:
        """Connect to the host, and at once (before the restored queue may start a run)
        tell the show which redemptions were settled before the restart."""
        self._feed, self._notice, self._pending = feed, notice, pending
        settled = tuple(sorted(self.store.settled_ids()))
        if settled:
            self._feed(ev.RedemptionsSettled(settled, now=time.monotonic()))

    def begin(self) -> None:
        """`start` in the background: a slow Twitch never delays the chat or OBS."""
        self._spawn(self.start())

    def _spawn(self, coro: Any, into: set[asyncio.Task[Any]] | None = None) -> None:
        task = asyncio.ensure_future(coro)
        bucket = self._tasks if into is None else into
        bucket.add(task)
        task.add_done_callback(bucket.discard)

    # ---- start ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Reward, reconciliation, EventSub. Never raises: a problem is one clear line."""
        try:
            await self._start()
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug here must not end the stream: chat commands go on
            log.exception("channel points: setting up failed; chat commands work as before")
            self._notice("channel points unavailable (see the host's log); chat works")

    async def _start(self) -> None:
        self._session = aiohttp.ClientSession()
        self.helix = Helix(
            self.settings.twitch.helix_url,
            self.settings.twitch.client_id.strip(),
            self.tokens,
            self._session,
        )
        if self.run_keeper:
            self._spawn(self.tokens.keep())
        try:
            self.broadcaster = self.tokens.tokens.user_id or (await self.helix.user_id())[0]
            self.reward_id = await self._ensure_reward()
        except HelixError as exc:
            self._problem(exc)
            return
        self.available = True
        self._paused = False
        log.info("channel points: reward %r (%s) ready, %d points",
                 self.settings.channel_points.title, self.reward_id,
                 self.settings.channel_points.cost)  # fmt: skip
        try:
            await self._resend_intents()
            await self._reconcile()
        except HelixError as exc:
            log.warning("channel points: reconciling with Twitch failed (%s); "
                        "the next start tries again", exc)  # fmt: skip
        self.eventsub = EventSub(
            self.settings.twitch.eventsub_url,
            self._session,
            on_welcome=self._subscribe,
            on_notification=self._on_notification,
            on_revocation=self._on_revocation,
            keepalive_grace=self.keepalive_grace,
            retry_max=self.retry_max,
        )
        self._spawn(self.eventsub.run())

    def _problem(self, exc: HelixError) -> None:
        if exc.status == 403:
            line = NO_CHANNEL_POINTS.format(why=f": {exc.message}" if exc.message else "")
            log.error("%s", line)
            self._notice("channel points unavailable (not Affiliate/Partner?); chat works")
            return
        log.error("channel points: cannot set up the reward (%s); chat commands work as "
                  "before, the next start tries again", exc)  # fmt: skip
        self._notice("channel points unavailable (see the host's log); chat works")

    async def _ensure_reward(self) -> str:
        """The reward's id: remembered, else ours with this title, else new."""
        assert self.helix is not None
        state = reward_state(self.settings, paused=False)
        known = self.store.meta("reward_id")
        if known:
            try:
                await self.helix.update_reward(self.broadcaster, known, state)
                return known
            except HelixError as exc:
                if exc.status != 404:
                    raise
                log.info("channel points: the reward was deleted on Twitch; making it again")
        title = self.settings.channel_points.title.casefold()
        try:
            listed = await self.helix.rewards(self.broadcaster)
        except HelixError as exc:
            if exc.status == 403:
                raise
            listed = []  # cannot list: try to create (a duplicate title is said below)
        mine = [r for r in listed if str(r.get("title", "")).casefold() == title]
        if mine:
            reward_id = str(mine[0].get("id", ""))
            await self.helix.update_reward(self.broadcaster, reward_id, state)
        else:
            try:
                made = await self.helix.create_reward(self.broadcaster, state)
            except HelixError as exc:
                if exc.status == 400 and "duplicate" in exc.message.lower():
                    raise HelixError(400, f"a reward titled {self.settings.channel_points.title!r}"
                                     " exists that this app did not make; rename it or set "
                                     "[channel_points] title") from None  # fmt: skip
                raise
            reward_id = str(made.get("id", ""))
            log.info("channel points: created the reward %r", self.settings.channel_points.title)
        if not reward_id:
            raise HelixError(0, "Twitch returned a reward without an id")
        self.store.set_meta("reward_id", reward_id)
        return reward_id

    async def _resend_intents(self) -> None:
        """Statuses decided before a restart: sent again unless Twitch has them already."""
        assert self.helix is not None
        pending = self.store.in_state(INTENT)
        for start in range(0, len(pending), MAX_IDS):
            chunk = pending[start : start + MAX_IDS]
            try:
                found = await self.helix.redemptions(
                    self.broadcaster, self.reward_id, ids=tuple(s.id for s in chunk)
                )
            except HelixError as exc:  # cannot ask: send; Twitch refuses a second status
                log.info("channel points: cannot look up decided redemptions (%s)", exc)
                found = []
            status = {str(r.get("id")): str(r.get("status", "")).upper() for r in found}
            for item in chunk:
                now = status.get(item.id, "")
                if now and now != "UNFULFILLED":
                    self.store.done(item.id, now)
                    log.info("channel points: %s was %s already", item.id[:12], now)
                else:
                    self._spawn(self._send(item.id, item.status, item.reason), self._settling)

    async def _reconcile(self) -> None:
        """Unfulfilled redemptions at Twitch that the show does not hold become requests."""
        assert self.helix is not None
        found = await self.helix.redemptions(self.broadcaster, self.reward_id, status="UNFULFILLED")
        holds = self._pending()
        queued = 0
        for raw in sorted(found, key=lambda r: str(r.get("redeemed_at", ""))):
            item = self._stored_from(raw)
            if item is None:
                continue
            known = self.store.get(item.id)
            if known is None:
                self.store.receive(item)
            elif known.state != RECEIVED or item.id in holds:
                continue
            self._feed_redemption(item)
            queued += 1
        if found or queued:
            log.info("channel points: %d unfulfilled redemption(s) at Twitch, %d queued now",
                     len(found), queued)  # fmt: skip

    # ---- EventSub ------------------------------------------------------------------------
    async def _subscribe(self, session_id: str) -> None:
        assert self.helix is not None
        await self.helix.subscribe(session_id, self.broadcaster, self.reward_id)
        log.info("channel points: listening for redemptions")
        self._spawn(self._catch_up())  # redemptions made while no session listened

    async def _catch_up(self) -> None:
        try:
            await self._reconcile()
        except HelixError as exc:
            log.warning("channel points: cannot list unfulfilled redemptions (%s)", exc)

    async def _on_revocation(self, subscription: dict[str, Any]) -> None:
        why = str(subscription.get("status", ""))[:60]
        log.warning("channel points: Twitch ended the redemption subscription (%s)", why)
        if why in ("user_removed", "version_removed") or self.eventsub is None:
            return
        try:  # e.g. authorization_revoked after a new login: try once with what we have
            await self._subscribe(self.eventsub.session_id)
        except HelixError as exc:
            log.error("channel points: cannot subscribe again (%s); new redemptions are "
                      "not seen until the host restarts", exc)  # fmt: skip
            self._notice("channel points: redemptions not received (see the host's log)")

    def _on_notification(self, kind: str, event: dict[str, Any]) -> None:
        if kind != REDEMPTION_EVENT:
            log.info("EventSub: a %r notification ignored", kind[:60])
            return
        item = self._stored_from(event)
        if item is None:
            return
        if str(event.get("status", "unfulfilled")).lower() != "unfulfilled":
            return
        if not self.store.receive(item):
            return  # seen before (a repeat, or before a restart)
        self._feed_redemption(item)

    def _stored_from(self, raw: dict[str, Any]) -> Stored | None:
        """A redemption as Twitch describes it (EventSub event or Helix item), checked."""
        reward = raw.get("reward")
        reward_id = str(reward.get("id", "")) if isinstance(reward, dict) else ""
        rid, login = raw.get("id"), raw.get("user_login")
        user_input = raw.get("user_input", "")
        if not (isinstance(rid, str) and _ID.match(rid)):
            log.warning("channel points: a redemption without a usable id ignored")
            return None
        if not (isinstance(login, str) and _LOGIN.match(login.lower())):
            log.warning("channel points: redemption %s without a usable login ignored", rid[:12])
            return None
        if reward_id != self.reward_id:
            log.info("channel points: redemption %s of another reward ignored", rid[:12])
            return None
        name = raw.get("user_name")
        name = name if isinstance(name, str) and name.isprintable() else login
        user_id = raw.get("user_id")
        return Stored(
            id=rid,
            reward_id=reward_id,
            login=login.lower(),
            display_name=name[:40],
            user_id=str(user_id)[:40] if isinstance(user_id, str | int) else "",
            prompt=user_input[:2000] if isinstance(user_input, str) else "",
            state=RECEIVED,
        )

    def _feed_redemption(self, item: Stored) -> None:
        log.info("channel points: redemption %s by @%s", item.id[:12], item.login)
        self._feed(
            ev.Redemption(
                redemption_id=item.id,
                login=item.login,
                display_name=item.display_name,
                user_id=item.user_id,
                prompt=item.prompt,
                now=time.monotonic(),
            )
        )

    # ---- settling ------------------------------------------------------------------------
    def intend(self, settle: ev.Settle) -> bool:
        """Synchronously, when the show emits it: False when it was settled before."""
        fresh = self.store.intend(settle.redemption_id, settle.status, settle.reason,
                                  self.reward_id)  # fmt: skip
        if not fresh:
            log.info("channel points: %s was settled before; not sent again",
                     settle.redemption_id[:12])  # fmt: skip
        return fresh

    def settle(self, settle: ev.Settle) -> None:
        """Send the status (in the background, retried while the host runs)."""
        self._spawn(self._send(settle.redemption_id, settle.status, settle.reason), self._settling)

    async def _send(self, redemption_id: str, status: str, reason: str) -> None:
        delay = 1.0
        while True:
            if self.helix is None or not self.available:
                log.warning("channel points: %s stays unsettled (Twitch not reachable); "
                            "the next start sends it", redemption_id[:12])  # fmt: skip
                return
            stored = self.store.get(redemption_id)
            reward_id = (stored.reward_id if stored else "") or self.reward_id
            try:
                code, body = await self.helix.set_status(
                    self.broadcaster, reward_id, redemption_id, status
                )
            except HelixError as exc:
                code, body = 0, {"message": exc.message}
            if 200 <= code < 300:
                self.store.done(redemption_id)
                log.info("channel points: %s %s (%s)", redemption_id[:12], status, reason[:80])
                return
            if code == 403:
                log.error("channel points: Twitch refuses to set %s (403); the next start "
                          "tries again", redemption_id[:12])  # fmt: skip
                return
            if code in (400, 404):  # not UNFULFILLED any more: settled elsewhere
                self.store.done(redemption_id, "SETTLED_ELSEWHERE")
                log.warning("channel points: Twitch would not set %s to %s (%d: %s); it was "
                            "settled already", redemption_id[:12], status, code,
                            str(body.get("message", ""))[:80])  # fmt: skip
                return
            log.warning("channel points: setting %s to %s failed (%s); retrying",
                        redemption_id[:12], status, code or body.get("message"))  # fmt: skip
            await asyncio.sleep(delay)
            delay = min(self.retry_max, delay * 2)

    # ---- pausing -------------------------------------------------------------------------
    def queue_full(self, full: bool) -> None:
        """Pause the reward while the queue is full, unpause when there is room."""
        if not self.available or full == self._want_paused:
            return
        self._want_paused = full
        self._spawn(self._apply_pause())

    async def _apply_pause(self) -> None:
        async with self._pause_lock:
            want = self._want_paused
            if self.helix is None or want == self._paused:
                return
            try:
                state = reward_state(self.settings, paused=want)
                await self.helix.update_reward(self.broadcaster, self.reward_id, state)
                self._paused = want
                log.info("channel points: reward %s", "paused" if want else "unpaused")
            except HelixError as exc:
                log.warning("channel points: cannot %s the reward (%s)",
                            "pause" if want else "unpause", exc)  # fmt: skip

    # ---- stop ----------------------------------------------------------------------------
    async def stop_events(self) -> None:
        """No new redemptions (the host is stopping)."""
        if self.eventsub is not None:
            await self.eventsub.stop()

    async def stop(self, timeout: float = 10.0) -> None:
        """Send what is being settled, pause the reward, close."""
        await self.stop_events()
        if self._settling:
            _, late = await asyncio.wait(set(self._settling), timeout=timeout)
            for task in late:
                task.cancel()
        if self.available:
            self._want_paused = True
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._apply_pause(), timeout)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
        self.store.close()
