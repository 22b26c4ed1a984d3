"""The show: events in, effects out. No I/O, no clock, no entropy.

`Show.handle(event)` applies one event (events.py: chat, OBS, review page, generation
runs, settings, the clock's ticks, each with its `now`) and returns the effects for the
app to carry out, in order. It owns the runs and ties the parts together; each rule lives
in the part named after it:
- the fair queue and which requests share a run: fairqueue.py
- the screen (history, cursor, deck, slideshow, minimum screen time): screen.py
- what the bot says within Twitch's send limit: replies.py
- how long a viewer waits: estimates.py
- what a flagged picture shows, approve and reject: approval.py
- who may queue what (blocklist, cooldowns, limits, modes): moderation.py
- each chat command's behaviour: command_handlers.py (parsing: commands.py)
- what a paid picture becomes at Twitch (spent or refunded): approval.settlement

Rules kept here:
- One run at a time: the next StartGeneration (one request) or StartBatch (up to
  [model] max_batch requests with the same batch key) only after every request of the
  previous run finished, failed or was cancelled (a cancelled request is forgotten at
  once and a late result for it is ignored), and only when the deck is empty, so
  generation stays at most one batch ahead of the screen.
- While others wait, a grid request is cut to 1 image to keep the line moving.
- A channel-point redemption (`Redemption`) is a request like !generate's that ends with
  exactly one `Settle`: CANCELED (refunded) when refused, cancelled, failed, withheld or
  rejected, or not served when the host stops ([channel_points] on_stop = "refund"; on
  `Stopping` only, which the host feeds at every clean stop, !terminate's included);
  FULFILLED when its picture first goes on screen with a clear tile (`approval.settlement`;
  a held one waits for the streamer's decision). `paid_entries` keeps the finished paid
  pictures not settled yet.
- With prompt checking on (`prompt_check`: the engine has safety categories that apply
  to prompts), an accepted request first waits in `checking`: the show emits
  `CheckPrompt`, and queues it (or refuses it, moderation.py) on `PromptChecked`. It
  counts toward the viewer's limits meanwhile and is dropped like a queued one. Requests
  still being checked are not saved: a restart forgets them before they were confirmed.
- `snapshot()` is JSON-able; `Show(settings, state, blocklist=...)` restores queue,
  history, cursor and screen; the first handled event re-shows the screen.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from generator_host.core import approval
from generator_host.core import command_handlers as handlers
from generator_host.core import commands as cmds
from generator_host.core.declaration import ROLES
from generator_host.core.estimates import Estimates
from generator_host.core.events import (
    Approve,
    ApproveEntry,
    CancelGeneration,
    CancelRequests,
    CheckPrompt,
    Display,
    Effect,
    Event,
    GenerationFailed,
    GenerationFinished,
    GenerationProgress,
    GenerationStarted,
    IgnoreViewer,
    Log,
    PromptChecked,
    Redemption,
    RedemptionsSettled,
    Reject,
    RejectEntry,
    Reply,
    SettingsApplied,
    SettingsChanged,
    Settle,
    Shutdown,
    StartBatch,
    StartGeneration,
    Status,
    Stopping,
    StreamerAction,
    Tick,
)
from generator_host.core.fairqueue import FairQueue
from generator_host.core.generation import (
    Entry,
    GenerationParams,
    GenerationRequest,
    Paid,
    Requester,
)
from generator_host.core.message import (
    BotStatus,
    ChatMessage,
    MessageDeleted,
    Role,
    UserRemoved,
    Viewer,
)
from generator_host.core.moderation import Blocklist, Moderator
from generator_host.core.replies import Replies, staff_reserved
from generator_host.core.screen import Screen
from generator_host.core.settings import Settings, apply_changes
from obs_script import chat_diffusion_protocol as protocol

__all__ = [  # the events and effects, importable from here as before the split
    "Approve",
    "ApproveEntry",
    "CancelGeneration",
    "CancelRequests",
    "CheckPrompt",
    "Display",
    "GenerationFailed",
    "GenerationFinished",
    "GenerationProgress",
    "GenerationStarted",
    "IgnoreViewer",
    "Log",
    "PromptChecked",
    "Reject",
    "RejectEntry",
    "Reply",
    "SettingsChanged",
    "Show",
    "Shutdown",
    "StartBatch",
    "StartGeneration",
    "Status",
    "StreamerAction",
    "Tick",
    "staff_reserved",
]

STATE_VERSION = 1
STREAMER_ACTIONS = protocol.ACTIONS  # what an OBS button or hotkey may ask
WITHHELD_KEPT = 50  # skipped pictures remembered so the review page can still approve them
REFUNDED = "your points are refunded"  # ends every answer to a refunded redemption


@dataclass
class Ctx:
    """One command being handled: who, what, when, and where answers go."""

    viewer: Viewer
    args: str
    now: float
    msg_id: str = ""
    streamer: bool = False  # from OBS or the review page: answers go to the Status line
    out: list[Effect] = field(default_factory=list)
    paid: Paid | None = None  # a cheer of at least [bits] min_bits, a redemption
    redemption_id: str = ""  # a channel-point redemption: a refusal refunds it


class Show:
    """The state machine; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        state: dict[str, Any] | None = None,
        rng_seed: int = 0,
        *,
        blocklist: Blocklist | None = None,
        moderator: Moderator | None = None,
        prompt_check: bool = False,
    ) -> None:
        """`blocklist` (or a ready `moderator`) is required: the core reads no file.
        `rng_seed`: the app hands in a random one; the show's seeds and ids follow it.
        `prompt_check`: prompts are scored (CheckPrompt) before a request is queued."""
        if moderator is None:
            if blocklist is None:
                raise TypeError("Show needs the blocklist (or a moderator): the core reads no file")
            moderator = Moderator(settings.moderation, blocklist)
        self.settings = settings
        self.moderator = moderator
        self.problems: list[str] = []
        self.rng = random.Random(rng_seed)
        self.queue = FairQueue()
        self.prompt_check = prompt_check
        self.checking: dict[str, tuple[GenerationRequest, cmds.GenerateArgs, Ctx]] = {}
        self.running_run: list[GenerationRequest] = []  # the run (one request or a batch)
        self.progress: tuple[int, int] | None = None
        self.estimates = Estimates(settings.show.first_estimate_seconds)
        self.screen = Screen(0.0, 0.0, settings.show.history_size)
        self.replies = Replies(settings)
        self.withheld: dict[int, tuple[Entry, str]] = {}  # skipped entry -> (it, msg id)
        self.paid_entries: dict[int, str] = {}  # finished paid picture -> redemption id
        self.last: cmds.GenerateArgs | None = None  # what !regenerate repeats, no seed
        self.counter = 0
        self.terminated = False
        self.stopping = False  # the host is stopping: no new run starts
        self._resumed = False
        self._slideshow_setting = -1.0
        self._status = ""
        # The host's peak memory as the engine words it ("peak memory 3.1 GB RAM"), from
        # the last finished or failed run: moderators see it in !params.
        self.memory = ""
        self._reread_settings()
        if state:
            self._restore(state)

    # ---- public API ------------------------------------------------------------------------
    def handle(self, event: Event) -> list[Effect]:
        """Apply one event; return the effects for the app to carry out, in order.

        Raises TypeError for an event type the show does not know (a wiring bug)."""
        handler = self._HANDLERS.get(type(event))
        if handler is None:
            raise TypeError(f"the show has no handler for {type(event).__name__}")
        if self.terminated and not isinstance(event, Stopping):
            return []  # after !terminate only the host's Stopping is heard: it settles
        now = event.now
        out: list[Effect] = []
        if not self._resumed:
            out += self.resume(now)
        self.replies.roll(now, out)
        handler(self, event, out)
        if not self.terminated:
            self._maybe_start(now, out)
            self._status_effect(now, out)
        if self.paid_entries:
            self._settle_shown(now, out)
        return out

    def resume(self, now: float = 0.0) -> list[Effect]:
        """Effects that put a restored show back on air: the screen, then the queue."""
        self._resumed = True
        out: list[Effect] = []
        self.screen.resume(now, out)
        return out

    @property
    def queued(self) -> int:
        """Requests waiting (not running)."""
        return len(self.queue)

    @property
    def waiting(self) -> int:
        """Requests that take a place in the queue: queued, or having their prompt
        checked before they are (what the queue cap counts)."""
        return len(self.queue) + len(self.checking)

    @property
    def running(self) -> GenerationRequest | None:
        """The first request of the run (None when idle); `running_batch` has them all."""
        return self.running_run[0] if self.running_run else None

    @property
    def running_batch(self) -> list[GenerationRequest]:
        return list(self.running_run)

    @property
    def on_deck(self) -> list[int]:
        """Entry ids finished but not yet shown, in the order they will be shown."""
        return list(self.screen.deck)

    @property
    def on_screen(self) -> int | None:
        entry = self.screen.on_screen()
        return entry.id if entry else None

    @property
    def history(self) -> list[Entry]:
        return list(self.screen.history)

    @property
    def prefix(self) -> str:
        return self.settings.show.command_prefix or "!"

    def pending_redemptions(self) -> set[str]:
        """Redemptions the show holds unsettled: queued, running, or a finished picture
        not yet shown clear (or decided)."""
        held = {r.redemption_id for r in self.running_run + self.queue.order()}
        held |= {r.redemption_id for r, _, _ in self.checking.values()}
        return (held | set(self.paid_entries.values())) - {""}

    def queue_order(self) -> list[GenerationRequest]:
        """The queued requests in the order they will run (round-robin across viewers)."""
        return self.queue.order()

    # ---- settings ------------------------------------------------------------------------
    def _reread_settings(self) -> None:
        show = self.settings.show
        self.aliases, problems = cmds.build_aliases(show.aliases)
        self.roles, more = cmds.build_roles(show.command_roles)
        self.problems += [p for p in problems + more if p not in self.problems]
        self.screen.min_display = max(0.0, show.min_display_seconds)
        self.screen.history_size = show.history_size
        if show.slideshow_seconds != self._slideshow_setting:
            self._slideshow_setting = show.slideshow_seconds
            self.screen.slideshow = max(0.0, show.slideshow_seconds)
        model = self.settings.model
        count = max(1, min(show.grid, model.max_images))
        self.limits = cmds.Limits(
            max_steps=model.max_steps, max_size=model.max_size, max_count=count
        )

    def change_setting(self, ctx: Ctx, name: str, value: Any) -> str:
        """A command sets a live setting (`!slideshow`): the same check as a panel's change
        (who may, which values), applied here and announced to every view through the app.
        Returns why it was refused, or ""."""
        view = "obs" if ctx.streamer else "chat"
        changes, refused = apply_changes(self.settings, {name: value}, view, ROLES[ctx.viewer.role])
        if changes:
            self._reread_settings()
            ctx.out.append(SettingsApplied(tuple(changes), ctx.viewer.name))
        return "; ".join(refused)

    def _on_settings(self, event: SettingsChanged, out: list[Effect]) -> None:
        self._reread_settings()
        self.screen.slideshow_next = event.now + self.screen.slideshow
        self.moderator.refresh(event.blocklist)

    # ---- answers -------------------------------------------------------------------------
    def say(self, ctx: Ctx, text: str, courtesy: bool = False) -> None:
        """Answer the viewer who asked (an OBS action's answer goes to the Status line)."""
        if ctx.streamer:
            ctx.out.append(Status(text))
            return
        staff = ctx.viewer.role >= Role.MODERATOR
        self.replies.send(
            ctx.out, ctx.now, text, ctx.viewer.name, ctx.msg_id, staff=staff, courtesy=courtesy
        )

    def refuse(self, ctx: Ctx, text: str, kind: str = "") -> None:
        """Answer a refusal; past the refusal cap it is coalesced by `kind`, except a paid
        one: someone who paid is always told why, by name, and a redemption is refunded."""
        if ctx.streamer:
            ctx.out.append(Status(text))
            return
        if ctx.redemption_id:
            ctx.out.append(Settle(ctx.redemption_id, approval.Settlement.CANCELED.value, text))
            text = f"{text}; {REFUNDED}"
        if ctx.paid is not None:
            self.replies.send(ctx.out, ctx.now, text, ctx.viewer.name, ctx.msg_id)
            return
        self.replies.refuse(ctx.out, ctx.now, text, kind or text, ctx.viewer.name, ctx.msg_id)

    def tell(self, out: list[Effect], now: float, request_or_entry: Any, text: str) -> None:
        """Tell a requester about their picture (threaded to their message when known)."""
        if isinstance(request_or_entry, GenerationRequest):
            name, msg_id = request_or_entry.requester.name, request_or_entry.msg_id
        else:
            name = request_or_entry.requester
            msg_id = self.screen.entry_msg.get(request_or_entry.id, "")
        self.replies.send(out, now, text, name, msg_id)

    # ---- channel points -----------------------------------------------------------------
    def refund(self, out: list[Effect], now: float, request: Any, why: str) -> None:
        """Settle a paid request or picture as CANCELED and tell its viewer why."""
        rid = request.redemption_id if isinstance(request, GenerationRequest) else ""
        if isinstance(request, Entry):
            rid = self.paid_entries.pop(request.id, "")
        if not rid:
            self.tell(out, now, request, why)
            return
        out.append(Settle(rid, approval.Settlement.CANCELED.value, why))
        self.tell(out, now, request, f"{why}; {REFUNDED}")

    def _settle_shown(self, now: float, out: list[Effect]) -> None:
        """A paid picture on screen: FULFILLED once a tile shows clear (approval.settlement)."""
        for effect in list(out):
            if not isinstance(effect, Display) or effect.entry_id not in self.paid_entries:
                continue
            verdict = approval.settlement(effect.tiles)
            if verdict is approval.Settlement.FULFILLED:
                rid = self.paid_entries.pop(effect.entry_id)
                out.append(Settle(rid, verdict.value, f"picture {effect.entry_id} shown"))

    def _on_redemption(self, event: Redemption, out: list[Effect]) -> None:
        if not event.redemption_id or event.redemption_id in self.pending_redemptions():
            return  # the same redemption again (a restart, a repeated notification)
        login = cmds.parse_login(event.login) or event.login.lower()
        viewer = Viewer(login=login, display_name=event.display_name, user_id=event.user_id)
        ctx = Ctx(
            viewer=viewer,
            args=event.prompt,
            now=event.now,
            out=out,
            paid=Paid.POINTS,
            redemption_id=event.redemption_id,
        )
        handlers.redeem(self, ctx)

    def _on_redemptions_settled(self, event: RedemptionsSettled, out: list[Effect]) -> None:
        done = set(event.redemption_ids)
        self.queue.drop(lambda r: r.redemption_id in done)
        for request_id in [i for i, (r, _, _) in self.checking.items() if r.redemption_id in done]:
            del self.checking[request_id]
        for request in [r for r in self.running_run if r.redemption_id in done]:
            out.append(CancelGeneration(request.id))
            self.end_request(request.id)
        self.paid_entries = {e: r for e, r in self.paid_entries.items() if r not in done}

    def _on_stopping(self, event: Stopping, out: list[Effect]) -> None:
        """The host stops (Ctrl-C, end of chat, or after !terminate's Shutdown: the app
        feeds this on every clean stop, so it is the one place redemptions are settled at
        the stop; what it settled is gone from the show, so a second one settles nothing
        again). With on_stop "refund" every unsettled redemption is refunded; with "keep"
        they stay in the saved state (a paid picture that left the history meanwhile is
        refunded either way: nothing could show it any more)."""
        self.stopping = True
        now = event.now
        why = "the painter stopped before your picture could be shown"
        # A redemption still having its prompt checked was never queued, and a request
        # being checked is not saved: refunded whatever on_stop says.
        for request_id in [i for i, (r, _, _) in self.checking.items() if r.redemption_id]:
            self.refund(out, now, self.checking.pop(request_id)[0], why)
        if self.settings.channel_points.on_stop == "refund":
            for request in [r for r in self.running_run + self.queue.order() if r.redemption_id]:
                self.queue.drop(lambda r, rid=request.redemption_id: r.redemption_id == rid)
                self.refund(out, now, request, why)
            self.running_run = [r for r in self.running_run if not r.redemption_id]
            kept: set[int] = set()
        else:  # running ones back to the front of the queue: a late failure is no refund
            for request in reversed([r for r in self.running_run if r.redemption_id]):
                out.append(CancelGeneration(request.id))
                self.end_request(request.id)
                self.queue.add(request, front=True)
            kept = {e.id for e in self.screen.history}
        for entry_id in [e for e in self.paid_entries if e not in kept]:
            entry = self.screen.entry(entry_id)
            if entry is not None:
                self.refund(out, now, entry, why)
            else:
                rid = self.paid_entries.pop(entry_id)
                out.append(Settle(rid, approval.Settlement.CANCELED.value, why))

    # ---- chat events ----------------------------------------------------------------------
    def _on_chat(self, msg: ChatMessage, out: list[Effect]) -> None:
        cmd = cmds.parse_command(msg.text, self.prefix, self.aliases)
        paid = self._cheer(msg)
        if cmd is None and paid and msg.text.strip() and not self.settings.bits.require_command:
            cmd = cmds.Command("generate", msg.text.strip())  # a cheer's text is its prompt
        if cmd is None:
            return
        viewer = msg.viewer
        if self.moderator.is_ignored(viewer.login):
            return
        ctx = Ctx(viewer=viewer, args=cmd.args, now=msg.now, msg_id=msg.msg_id, out=out, paid=paid)
        need = self.roles.get(cmd.name, Role.EVERYONE)
        if viewer.role < need:
            text = f"{self.prefix}{cmd.name} is for {cmds.role_name(need)}s and up"
            self.refuse(ctx, text, kind="that command is not for you")
            return
        handlers.HANDLERS[cmd.name](self, ctx)

    def _cheer(self, msg: ChatMessage) -> Paid | None:
        """A cheer pays for a request when bits are on and it carries at least min_bits."""
        bits = self.settings.bits
        return Paid.BITS if bits.enabled and msg.bits >= bits.min_bits else None

    def streamer_ctx(self, args: str, now: float, out: list[Effect]) -> Ctx:
        """An OBS button, hotkey or review-page click acts as the broadcaster."""
        login = self.settings.twitch.channel.lower() or "streamer"
        viewer = Viewer(login=login, display_name=login, role=Role.BROADCASTER)
        return Ctx(viewer=viewer, args=args, now=now, streamer=True, out=out)

    def _on_action(self, action: StreamerAction, out: list[Effect]) -> None:
        name = action.action.strip().lower()
        if name not in STREAMER_ACTIONS:
            out.append(Status(f"unknown action {name[:30]!r}"))
            return
        handlers.HANDLERS[name](self, self.streamer_ctx(action.arg, action.now, out))

    def _on_deleted(self, event: MessageDeleted, out: list[Effect]) -> None:
        """CLEARMSG: a moderator deleted a message; its request goes, queued, running or shown."""
        if not event.msg_id:
            return
        self.drop(lambda r: r.msg_id == event.msg_id, out, now=event.now)
        for entry_id, msg_id in list(self.screen.entry_msg.items()):
            if msg_id == event.msg_id:
                self.screen.forget(entry_id, out)

    def _on_bot_status(self, event: BotStatus, out: list[Effect]) -> None:
        self.replies.elevated = event.elevated

    def _on_removed(self, event: UserRemoved, out: list[Effect]) -> None:
        """CLEARCHAT (timeout or ban): the user's queued and running requests are dropped."""
        login = event.login.lower()
        self.drop(lambda r: r.requester.login == login, out, now=event.now)

    # ---- review page ----------------------------------------------------------------------
    def _on_approve_entry(self, event: ApproveEntry, out: list[Effect]) -> None:
        ctx = self.streamer_ctx("", event.now, out)
        handlers.approve_entry(self, ctx, event.entry_id, event.tile, event.by)

    def _on_reject_entry(self, event: RejectEntry, out: list[Effect]) -> None:
        ctx = self.streamer_ctx("", event.now, out)
        handlers.reject_entry(self, ctx, event.entry_id, event.by)

    def _on_cancel_requests(self, event: CancelRequests, out: list[Effect]) -> None:
        login = cmds.parse_login(event.login)
        dropped = self.drop(lambda r: r.requester.login == login, out, now=event.now)
        out.append(Log(f"{event.by} cancelled {dropped} request(s) of @{login}"))
        out.append(Status(f"cancelled {dropped} request(s) of @{login}"))

    def _on_ignore_viewer(self, event: IgnoreViewer, out: list[Effect]) -> None:
        ctx = self.streamer_ctx(event.login, event.now, out)
        (handlers.ignore if event.ignore else handlers.unignore)(self, ctx)
        verb = "ignores" if event.ignore else "no longer ignores"
        out.append(Log(f"{event.by} {verb} @{cmds.parse_login(event.login)}"))

    # ---- generation events ---------------------------------------------------------------
    def _on_started(self, event: GenerationStarted, out: list[Effect]) -> None:
        if self._is_running(event.request_id):
            self.estimates.running_since = event.now

    def _on_progress(self, event: GenerationProgress, out: list[Effect]) -> None:
        if self._is_running(event.request_id):
            self.progress = (event.step, event.total)

    def _on_finished(self, event: GenerationFinished, out: list[Effect]) -> None:
        self.memory = event.memory or self.memory
        req = self.end_request(event.request_id)
        if req is None:
            return  # a cancelled request finishing late: not shown
        self.estimates.time_run(event.now)
        entry = event.entry
        tiles = approval.entry_tiles(entry)
        if not approval.visible(tiles):
            self.withheld[entry.id] = (entry, req.msg_id)
            while len(self.withheld) > WITHHELD_KEPT:
                del self.withheld[next(iter(self.withheld))]
            self.refund(out, event.now, req, "your image was withheld by the safety filter")
            return
        if req.redemption_id:
            if approval.settlement(tiles) is approval.Settlement.CANCELED:
                why = "your image could only be shown blurred"
                self.refund(out, event.now, req, why)
            else:  # settled when it goes on screen clear, or when the streamer decides
                self.paid_entries[entry.id] = req.redemption_id
        self.screen.add(entry, req.msg_id, event.now, out)
        if entry.outcome == approval.Outcome.HELD:
            self.tell(out, event.now, req, "your image is held until the streamer approves it")

    def _on_failed(self, event: GenerationFailed, out: list[Effect]) -> None:
        self.memory = event.memory or self.memory
        req = self.end_request(event.request_id)
        if req is None:
            return
        reason = " ".join(str(event.reason).split())[:120] or "unknown error"
        self.refund(out, event.now, req, f"sorry, your image failed: {reason}")

    def _on_prompt_checked(self, event: PromptChecked, out: list[Effect]) -> None:
        """The prompt's category scores are in: refuse, flag or queue (command_handlers)."""
        pending = self.checking.pop(event.request_id, None)
        if pending is None:
            return  # cancelled (or its message deleted) while it was being checked
        request, ask, asked = pending
        ctx = dataclasses.replace(asked, now=event.now, out=out)
        handlers.prompt_checked(self, ctx, request, ask, event.scores, event.error)

    def _on_tick(self, event: Tick, out: list[Effect]) -> None:
        self.screen.tick(event.now, out)

    _HANDLERS: dict[type, Callable[[Show, Any, list[Effect]], None]] = {
        ChatMessage: _on_chat,
        StreamerAction: _on_action,
        ApproveEntry: _on_approve_entry,
        RejectEntry: _on_reject_entry,
        CancelRequests: _on_cancel_requests,
        IgnoreViewer: _on_ignore_viewer,
        MessageDeleted: _on_deleted,
        UserRemoved: _on_removed,
        BotStatus: _on_bot_status,
        SettingsChanged: _on_settings,
        GenerationStarted: _on_started,
        GenerationProgress: _on_progress,
        GenerationFinished: _on_finished,
        GenerationFailed: _on_failed,
        PromptChecked: _on_prompt_checked,
        Tick: _on_tick,
        Redemption: _on_redemption,
        RedemptionsSettled: _on_redemptions_settled,
        Stopping: _on_stopping,
    }

    # ---- requests and runs ---------------------------------------------------------------
    def check_first(self, ctx: Ctx, ask: cmds.GenerateArgs, seed: int | None) -> None:
        """Hold a request back while its prompt is scored (CheckPrompt). The viewer's
        cooldown starts now: a flood of prompts must not flood the checker either."""
        request = self.new_request(ctx, ask, seed)
        self.checking[request.id] = (request, ask, dataclasses.replace(ctx, out=[]))
        self.moderator.note_request(ctx.viewer.login, ctx.now)
        ctx.out.append(CheckPrompt(request))

    def enqueue(self, request: GenerationRequest, ask: cmds.GenerateArgs) -> None:
        """Into the fair queue; the viewer's cooldown starts (again, after a check)."""
        self.queue.add(request)
        self.moderator.note_request(request.requester.login, request.created)
        self.last = ask

    def new_request(self, ctx: Ctx, ask: cmds.GenerateArgs, seed: int | None) -> GenerationRequest:
        """A request for `ask`; its seed is the viewer's or a new random one."""
        model = self.settings.model
        self.counter += 1
        params = GenerationParams(
            prompt=ask.prompt,
            negative_prompt=self.moderator.negative_prompt(ask.negative),
            steps=ask.steps or model.steps,
            guidance=model.guidance,
            width=ask.width or model.width,
            height=ask.height or model.height,
            seed=seed if seed is not None else self.rng.randrange(2**32),
            count=min(ask.count or self.settings.show.grid, self.limits.max_count),
        )
        viewer = ctx.viewer
        request = GenerationRequest(
            id=f"r{self.counter}-{self.rng.getrandbits(32):08x}",
            requester=Requester(viewer.login, viewer.display_name, viewer.user_id),
            params=params,
            created=ctx.now,
            msg_id=ctx.msg_id,
            paid=ctx.paid,
            ahead=self.jumps_ahead(ctx.paid),
            redemption_id=ctx.redemption_id,
        )
        return request

    def jumps_ahead(self, paid: Paid | None) -> bool:
        """Whether a request paid this way waits ahead of free ones (the streamer's choice)."""
        if paid is Paid.POINTS:
            return self.settings.channel_points.priority
        return paid is Paid.BITS and self.settings.bits.priority

    def requests_of(self, login: str) -> list[GenerationRequest]:
        mine = list(self.queue.line(login) or ())
        mine += [r for r, _, _ in self.checking.values() if r.requester.login == login]
        return mine + [r for r in self.running_run if r.requester.login == login]

    def drop(
        self,
        match: Callable[[GenerationRequest], bool],
        out: list[Effect],
        running: bool = True,
        now: float = 0.0,
    ) -> int:
        """Remove matching requests, queued, being checked and (optionally) running;
        returns how many. A paid one is refunded (its viewer told)."""
        gone = [r for r in self.queue.order() if match(r)]
        dropped = self.queue.drop(match)
        for request_id in [i for i, (r, _, _) in self.checking.items() if match(r)]:
            gone.append(self.checking.pop(request_id)[0])
            dropped += 1
        if running:
            for request in [r for r in self.running_run if match(r)]:
                out.append(CancelGeneration(request.id))  # batch-mates keep running
                self.end_request(request.id)
                gone.append(request)
                dropped += 1
        for request in gone:
            if request.redemption_id:
                self.refund(out, now, request, "your request was cancelled")
        return dropped

    def _maybe_start(self, now: float, out: list[Effect]) -> None:
        """Start the next run when nothing runs and no finished picture waits on deck."""
        if self.running_run or not self.queue or self.screen.deck or self.stopping:
            return
        batch = self.queue.next_batch(self.settings.model.max_batch)
        if self.settings.show.cut_to_one_when_waiting and self.queue:
            batch = [_one_image(r) for r in batch]
        self.running_run = batch
        self.estimates.start_run(now)
        self.progress = None
        out.append(StartGeneration(batch[0]) if len(batch) == 1 else StartBatch(tuple(batch)))

    def _is_running(self, request_id: str) -> bool:
        return any(r.id == request_id for r in self.running_run)

    def end_request(self, request_id: str) -> GenerationRequest | None:
        """Take one request out of the run (finished, failed or cancelled)."""
        for i, request in enumerate(self.running_run):
            if request.id == request_id:
                del self.running_run[i]
                if not self.running_run:
                    self.progress = None
                return request
        return None

    def eta(self, position: int, now: float) -> float:
        """Seconds until the request at this queue position is on screen."""
        return self.estimates.eta(
            position,
            now,
            running=len(self.running_run),
            deck=len(self.screen.deck),
            shown_at=self.screen.shown_at,
            hold=self.screen.min_display,
            per_run=self.settings.model.max_batch,
        )

    def terminate(self, out: list[Effect]) -> None:
        """Stop: the running run goes back to the front of the queue for the next start,
        and the host is told to shut down. Redemptions are settled by the `Stopping` the
        host then feeds (as [channel_points] on_stop says), as at any other stop."""
        for request in reversed(self.running_run):
            out.append(CancelGeneration(request.id))
            self.queue.add(request, front=True)
        self.running_run = []
        self.terminated = True
        out.append(Shutdown())

    def _status_effect(self, now: float, out: list[Effect]) -> None:
        """One Status line (only when it changed): what generates, waits and shows next."""
        parts: list[str] = []
        if self.running_run:
            step = f" {self.progress[0]}/{self.progress[1]}" if self.progress else ""
            parts.append(f"generating{step} for {_names(self.running_run)}")
        if self.running_run or self.queue:
            parts.append(f"{self.queued} queued")
        if self.screen.deck:
            left = self.screen.shown_at + self.screen.min_display - now  # -inf: nothing held
            wait = max(1, math.ceil(max(0.0, left)))
            parts.append(f"{len(self.screen.deck)} ready, next picture in {wait} s")
        text = ", ".join(parts) or f"ready for {self.prefix}generate"
        if text != self._status:
            self._status = text
            step, total = self.progress or (0, 0)
            out.append(Status(text, step=step, total=total, queue=self.queued))

    # ---- snapshot / restore --------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """JSON-able state: queue (the running run first), history, deck, cursor, screen."""
        queue = self.running_run + self.queue.order()
        state = self.rng.getstate()
        return {
            "version": STATE_VERSION,
            "queue": [dataclasses.asdict(r) for r in queue],
            **self.screen.snapshot(),
            "withheld": [[dataclasses.asdict(e), m] for e, m in self.withheld.values()],
            "paid_entries": [[e, r] for e, r in self.paid_entries.items()],
            "avg_seconds": self.estimates.avg_seconds,
            "counter": self.counter,
            "rng": [state[0], list(state[1]), state[2]],
            "last": dataclasses.asdict(self.last) if self.last else None,
            "moderation": self.moderator.snapshot(),
        }

    def _restore(self, state: dict[str, Any]) -> None:
        """Best effort: a damaged part of the state is skipped, never fatal."""
        if state.get("version") != STATE_VERSION:
            self.problems.append("saved show state has another version; starting fresh")
            return
        try:
            for raw in state.get("queue", []):
                self.queue.add(_request_from_dict(raw))
            self.screen.restore(state)
            for raw, msg_id in state.get("withheld", []):
                entry = Entry.from_dict(raw)
                self.withheld[entry.id] = (entry, str(msg_id))
            for entry_id, rid in state.get("paid_entries", []):
                self.paid_entries[int(entry_id)] = str(rid)
            self.estimates.avg_seconds = float(state.get("avg_seconds", self.estimates.avg_seconds))
            self.counter = int(state.get("counter", 0))
            rng = state.get("rng")
            if rng:
                self.rng.setstate((rng[0], tuple(rng[1]), rng[2]))
            last = state.get("last")
            self.last = cmds.GenerateArgs(**last) if isinstance(last, dict) else None
            self.moderator.restore(state.get("moderation", {}))
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            self.problems.append(f"saved show state partly unreadable ({exc})")


def _one_image(request: GenerationRequest) -> GenerationRequest:
    """A grid request cut to one image (others are waiting)."""
    if request.params.count <= 1:
        return request
    return dataclasses.replace(request, params=dataclasses.replace(request.params, count=1))


def _names(requests: list[GenerationRequest]) -> str:
    """'@A', '@A, @B' or '@A, @B, @C +2' for the Status line."""
    names = ", ".join(f"@{r.requester.name}" for r in requests[:3])
    return names + (f" +{len(requests) - 3}" if len(requests) > 3 else "")


def _request_from_dict(raw: dict[str, Any]) -> GenerationRequest:
    return GenerationRequest(
        id=str(raw["id"]),
        requester=Requester(**raw["requester"]),
        params=GenerationParams(**raw["params"]),
        created=float(raw["created"]),
        msg_id=str(raw.get("msg_id", "")),
        paid=Paid(raw["paid"]) if raw.get("paid") else None,
        ahead=bool(raw.get("ahead", False)),
        redemption_id=str(raw.get("redemption_id", "")),
        prompt_scores=tuple((str(k), float(v)) for k, v in raw.get("prompt_scores", ())),
        prompt_flagged=tuple(str(n) for n in raw.get("prompt_flagged", ())),
    )
