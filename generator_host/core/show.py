"""The show: what is queued, generating, on screen and waiting for approval. No I/O.

Events in, effects out, time passed in (`now` on every event): `Show.handle(event)`
returns a list of effects that app.py carries out. Every chat command's behaviour is a
`_cmd_<word>` method here (grep `!generate`, `!queue` ...); who may use it comes from
commands.py, whether a request may be queued from moderation.py.

Rules kept here:
- One run at a time: the next StartGeneration (one request) or StartBatch (up to
  [model] max_batch requests with the same steps, guidance and size) only after every
  request of the previous run finished, failed or was cancelled (a cancelled request is
  forgotten at once and a late result for it is ignored).
- A fair queue: round-robin across viewers, so one viewer's many requests do not block
  everyone else. A batch is the next request in that order plus the compatible ones
  behind it; a viewer's later request never runs before their earlier one.
- Minimum time on screen ([show] min_display_seconds): a finished image waits on deck
  until the one on screen has been up that long (Tick events move it up); the next run
  starts only when the deck is empty, so generation stays at most one batch ahead of
  the screen. !clear/!prev/!next/!approve act at once.
- While others wait, a grid request is cut to 1 image to keep the line moving.
- Replies stay under the chat send limit: refusals beyond `refusal_replies` per window are
  coalesced into one line per reason; other replies beyond the budget are dropped (the
  Status line still shows the queue).
- `snapshot()` is JSON-able; `Show(settings, state)` restores queue, history, cursor and
  screen; the first handled event re-shows the screen and restarts the queue.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from generator_host.core import commands as cmds
from generator_host.core.generation import Entry, GenerationParams, GenerationRequest, Requester
from generator_host.core.message import (
    BotStatus,
    ChatMessage,
    MessageDeleted,
    Role,
    UserRemoved,
    Viewer,
)
from generator_host.core.moderation import MODE_NAMES, Moderator, parse_mode
from generator_host.core.settings import Settings
from obs_script import chat_diffusion_protocol as protocol

# ---- events (besides the chat events from chat/message.py) ----


@dataclass(frozen=True)
class StreamerAction:
    """An OBS button or hotkey: approve, clear, prev, next, slideshow, terminate, cancel."""

    action: str
    arg: str = ""
    now: float = 0.0


@dataclass(frozen=True)
class SettingsChanged:
    """The app changed the settings object in place; re-read what the show caches."""

    now: float = 0.0


@dataclass(frozen=True)
class GenerationStarted:
    request_id: str
    now: float = 0.0


@dataclass(frozen=True)
class GenerationProgress:
    request_id: str
    step: int
    total: int
    now: float = 0.0


@dataclass(frozen=True)
class GenerationFinished:
    request_id: str
    entry: Entry
    now: float = 0.0


@dataclass(frozen=True)
class GenerationFailed:
    request_id: str
    reason: str
    now: float = 0.0


@dataclass(frozen=True)
class Tick:
    now: float = 0.0


Event = (
    ChatMessage
    | MessageDeleted
    | UserRemoved
    | BotStatus
    | StreamerAction
    | SettingsChanged
    | GenerationStarted
    | GenerationProgress
    | GenerationFinished
    | GenerationFailed
    | Tick
)

# ---- effects ------------------------------------------------------------------------------


@dataclass(frozen=True)
class StartGeneration:
    request: GenerationRequest


@dataclass(frozen=True)
class StartBatch:
    """Several waiting requests with the same steps, guidance and size: one pipeline call.

    Each request still ends with its own GenerationFinished or GenerationFailed.
    """

    requests: tuple[GenerationRequest, ...]


@dataclass(frozen=True)
class CancelGeneration:
    request_id: str


@dataclass(frozen=True)
class Display:
    """Show this entry on screen (None clears it); reveal shows a flagged one unfiltered."""

    entry_id: int | None
    reveal: bool = False


@dataclass(frozen=True)
class Approve:
    entry_id: int


@dataclass(frozen=True)
class Reply:
    text: str
    reply_to: str = ""


@dataclass(frozen=True)
class Status:
    text: str


@dataclass(frozen=True)
class Shutdown:
    pass


Effect = (
    StartGeneration | StartBatch | CancelGeneration | Display | Approve | Reply | Status | Shutdown
)

APPROVABLE = ("held", "blurred")


def staff_reserved(budget: int) -> int:
    """Replies of each send window kept for moderators and the broadcaster (a third)."""
    return budget // 3


STATE_VERSION = 1
_STREAMER_ACTIONS = protocol.ACTIONS  # what an OBS button or hotkey may ask


@dataclass
class _Ctx:
    """One command being handled: who, what, when, and where answers go."""

    viewer: Viewer
    args: str
    now: float
    msg_id: str = ""
    streamer: bool = False  # from OBS: answers go to the Status line, not chat
    out: list[Effect] = field(default_factory=list)


class Show:
    """The state machine; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        state: dict[str, Any] | None = None,
        rng_seed: int | None = None,
        *,
        moderator: Moderator | None = None,
    ) -> None:
        self.settings = settings
        self.moderator = moderator or Moderator(settings.moderation)
        self.problems: list[str] = list(self.moderator.problems)
        self._rng = random.Random(rng_seed)
        self._queues: dict[str, deque[GenerationRequest]] = {}
        self._turns: deque[str] = deque()  # round-robin order of viewers with queued requests
        self._running: list[GenerationRequest] = []  # the run (one request or a batch)
        self._running_since = 0.0
        self._run_timed = False  # the run's time went into the average already
        self._deck: deque[int] = deque()  # finished entries waiting for their screen time
        self._shown_at = -math.inf  # when the screen last changed (min_display_seconds)
        self._progress: tuple[int, int] | None = None
        self._history: list[Entry] = []
        self._entry_msg: dict[int, str] = {}  # entry id -> chat message that asked for it
        self._cursor: int | None = None  # index in history of what is on screen
        self._browse = -1  # where !prev/!next continue after !clear
        self._slideshow = 0.0
        self._slideshow_setting = -1.0
        self._slideshow_next = 0.0
        self._avg_seconds = settings.show.first_estimate_seconds
        self._last: cmds.GenerateArgs | None = None  # what !regenerate repeats, no seed
        self._counter = 0
        self._terminated = False
        self._resumed = False
        self._window_start: float | None = None
        self._sent = 0
        self._refused = 0
        self._bot_elevated = False  # the chat said the bot moderates: a bigger reply budget
        self._coalesced: dict[str, list[str]] = {}
        self._coalesced_count: dict[str, int] = {}
        self._status = ""
        self._reread_settings()
        if state:
            self._restore(state)

    # ---- public API ------------------------------------------------------------------------
    def handle(self, event: Event) -> list[Effect]:
        """Apply one event; return the effects for the app to carry out, in order."""
        if self._terminated:
            return []
        now = getattr(event, "now", 0.0)
        out: list[Effect] = []
        if not self._resumed:
            out += self.resume(now)
        self._roll_window(now, out)
        handler = self._HANDLERS.get(type(event))
        if handler is not None:
            handler(self, event, out)
        if not self._terminated:
            self._maybe_start(now, out)
            self._status_effect(now, out)
        return out

    def resume(self, now: float = 0.0) -> list[Effect]:
        """Effects that put a restored show back on air: the screen, then the queue."""
        self._resumed = True
        out: list[Effect] = []
        entry = self._on_screen()
        if entry is not None:
            out.append(Display(entry.id, reveal=entry.outcome == "approved"))
            self._slideshow_next = now + self._slideshow
            self._shown_at = now
        return out

    @property
    def queued(self) -> int:
        """Requests waiting (not running): counted from the queues, never kept by hand."""
        return sum(map(len, self._queues.values()))

    @property
    def running(self) -> GenerationRequest | None:
        """The first request of the run (None when idle); `running_batch` has them all."""
        return self._running[0] if self._running else None

    @property
    def running_batch(self) -> list[GenerationRequest]:
        return list(self._running)

    @property
    def on_deck(self) -> list[int]:
        """Entry ids finished but not yet shown, in the order they will be shown."""
        return list(self._deck)

    @property
    def on_screen(self) -> int | None:
        entry = self._on_screen()
        return entry.id if entry else None

    @property
    def history(self) -> list[Entry]:
        return list(self._history)

    def queue_order(self) -> list[GenerationRequest]:
        """The queued requests in the order they will run (round-robin across viewers)."""
        rounds = [list(self._queues[login]) for login in self._turns]
        out: list[GenerationRequest] = []
        depth, total = 0, sum(map(len, rounds))
        while len(out) < total:
            out += [reqs[depth] for reqs in rounds if len(reqs) > depth]
            depth += 1
        return out

    # ---- settings ------------------------------------------------------------------------
    def _reread_settings(self) -> None:
        show = self.settings.show
        self._prefix = show.command_prefix or "!"
        self._aliases, problems = cmds.build_aliases(show.aliases)
        self._roles, more = cmds.build_roles(show.command_roles)
        self.problems += [p for p in problems + more if p not in self.problems]
        self._min_display = max(0.0, show.min_display_seconds)
        if show.slideshow_seconds != self._slideshow_setting:
            self._slideshow_setting = show.slideshow_seconds
            self._slideshow = max(0.0, show.slideshow_seconds)
        model = self.settings.model
        count = max(1, min(show.grid, model.max_images))
        self._limits = cmds.Limits(
            max_steps=model.max_steps, max_size=model.max_size, max_count=count
        )

    def _on_settings(self, event: SettingsChanged, out: list[Effect]) -> None:
        self._reread_settings()
        self._slideshow_next = event.now + self._slideshow
        self.problems += self.moderator.refresh()

    # ---- replies within the send budget ----------------------------------------------------
    def _roll_window(self, now: float, out: list[Effect]) -> None:
        window = self.settings.twitch.send_window
        if self._window_start is not None and now - self._window_start < window:
            return
        self._window_start = now
        self._sent = self._refused = 0
        for key, names in list(self._coalesced.items()):
            extra = self._coalesced_count[key] - len(names)
            who = " ".join(f"@{n}" for n in names) + (f" (+{extra} more)" if extra > 0 else "")
            self._send(out, f"{who}: {key}", "", refusal=True)
        self._coalesced.clear()
        self._coalesced_count.clear()

    def _budget(self, staff: bool = False) -> int:
        """Replies per send window: a margin below Twitch's limit, and the last few kept
        for moderators and the broadcaster so a flood of viewers never mutes the streamer."""
        total = max(1, self.settings.twitch.send_limit_for(self._bot_elevated) - 2)
        return total if staff else max(1, total - staff_reserved(total))

    def _send(
        self,
        out: list[Effect],
        text: str,
        reply_to: str,
        refusal: bool = False,
        coalesce_key: str = "",
        name: str = "",
        staff: bool = False,
    ) -> None:
        """One chat message within the send budget; a refusal past its cap is coalesced."""
        refusal_cap = min(self.settings.show.refusal_replies, self._budget())
        if self._sent < self._budget(staff) and (not refusal or self._refused < refusal_cap):
            self._sent += 1
            self._refused += refusal
            out.append(Reply(text[:500], reply_to=reply_to))
        elif refusal and coalesce_key:
            if coalesce_key not in self._coalesced and len(self._coalesced) >= 8:
                coalesce_key = "request refused"  # keeps the summary (and memory) small
            names = self._coalesced.setdefault(coalesce_key, [])
            self._coalesced_count[coalesce_key] = self._coalesced_count.get(coalesce_key, 0) + 1
            if len(names) < 15 and name not in names:
                names.append(name)

    def _say(self, ctx: _Ctx, text: str) -> None:
        """Answer the viewer who asked (an OBS action's answer goes to the Status line)."""
        if ctx.streamer:
            ctx.out.append(Status(text))
            return
        staff = ctx.viewer.role >= Role.MODERATOR
        self._reply(ctx.out, ctx.viewer.name, text, ctx.msg_id, staff=staff)

    def _refuse(self, ctx: _Ctx, reason: str, key: str = "") -> None:
        """Answer a refusal with its reason; past the budget it is coalesced by `key`."""
        if ctx.streamer:
            ctx.out.append(Status(reason))
            return
        key = key or _coalesce_key(reason)
        name = ctx.viewer.name
        self._reply(ctx.out, name, reason, ctx.msg_id, refusal=True, coalesce_key=key, name=name)

    def _reply(self, out: list[Effect], to: str, text: str, reply_to: str, **how: Any) -> None:
        """An answer to viewer `to`: threaded to their message when there is one, else @to."""
        self._send(out, text if reply_to else f"@{to} {text}", reply_to, **how)

    # ---- chat events ----------------------------------------------------------------------
    def _on_chat(self, msg: ChatMessage, out: list[Effect]) -> None:
        cmd = cmds.parse_command(msg.text, self._prefix, self._aliases)
        if cmd is None:
            return
        viewer = msg.viewer
        if self.moderator.is_ignored(viewer.login):
            return
        ctx = _Ctx(viewer=viewer, args=cmd.args, now=msg.now, msg_id=msg.msg_id, out=out)
        self._run_command(cmd.name, ctx)

    def _run_command(self, name: str, ctx: _Ctx) -> None:
        need = self._roles.get(name, Role.EVERYONE)
        if ctx.viewer.role < need:
            self._refuse(
                ctx,
                f"{self._prefix}{name} is for {cmds.role_name(need)}s and up",
                key="that command is not for you",
            )
            return
        self._COMMANDS[name](self, ctx)

    def _on_action(self, action: StreamerAction, out: list[Effect]) -> None:
        name = action.action.strip().lower()
        if name not in _STREAMER_ACTIONS:
            out.append(Status(f"unknown action {name[:30]!r}"))
            return
        login = self.settings.twitch.channel.lower() or "streamer"
        viewer = Viewer(login=login, display_name=login, role=Role.BROADCASTER)
        ctx = _Ctx(viewer=viewer, args=action.arg, now=action.now, streamer=True, out=out)
        self._COMMANDS[name](self, ctx)

    def _on_deleted(self, event: MessageDeleted, out: list[Effect]) -> None:
        """CLEARMSG: a moderator deleted a message; its request goes, queued, running or shown."""
        if not event.msg_id:
            return
        self._drop(lambda r: r.msg_id == event.msg_id, out)
        for entry_id, msg_id in list(self._entry_msg.items()):
            if msg_id == event.msg_id:
                self._forget_entry(entry_id, out)

    def _on_bot_status(self, event: BotStatus, out: list[Effect]) -> None:
        self._bot_elevated = event.elevated

    def _on_removed(self, event: UserRemoved, out: list[Effect]) -> None:
        """CLEARCHAT (timeout or ban): the user's queued and running requests are dropped."""
        login = event.login.lower()
        self._drop(lambda r: r.requester.login == login, out)

    # ---- generation events ---------------------------------------------------------------
    def _on_started(self, event: GenerationStarted, out: list[Effect]) -> None:
        if self._is_running(event.request_id):
            self._running_since = event.now

    def _on_progress(self, event: GenerationProgress, out: list[Effect]) -> None:
        if self._is_running(event.request_id):
            self._progress = (event.step, event.total)

    def _on_finished(self, event: GenerationFinished, out: list[Effect]) -> None:
        req = self._end_request(event.request_id)
        if req is None:
            return  # a cancelled request finishing late: not shown
        self._time_run(event.now)
        entry = event.entry
        if entry.outcome == "skipped":
            self._reply(
                out, req.requester.name, "your image was withheld by the safety filter", req.msg_id
            )
            return
        self._history.append(entry)
        if req.msg_id:
            self._entry_msg[entry.id] = req.msg_id
        self._trim_history()
        if self._deck or self._holding(event.now):
            self._deck.append(entry.id)  # the picture on screen keeps its minimum time
        else:
            self._show_index(len(self._history) - 1, event.now, out)
        if entry.outcome == "held":
            self._reply(
                out,
                req.requester.name,
                "your image is held until the streamer approves it",
                req.msg_id,
            )

    def _on_failed(self, event: GenerationFailed, out: list[Effect]) -> None:
        req = self._end_request(event.request_id)
        if req is None:
            return
        reason = " ".join(str(event.reason).split())[:120] or "unknown error"
        self._reply(out, req.requester.name, f"sorry, your image failed: {reason}", req.msg_id)

    def _on_tick(self, event: Tick, out: list[Effect]) -> None:
        """Waiting images go up first; else the slideshow advances (held images skipped)."""
        if self._deck:
            self._show_from_deck(event.now, out)
            return  # the slideshow waits while new pictures do
        if self._slideshow <= 0 or event.now < self._slideshow_next:
            return
        self._slideshow_next = event.now + self._slideshow
        shown = [i for i, e in enumerate(self._history) if e.outcome != "held"]
        if len(shown) < 2:
            return
        current = self._cursor if self._cursor is not None else self._browse
        following = [i for i in shown if i > current]
        self._show_index(following[0] if following else shown[0], event.now, out, restart=False)

    _HANDLERS: dict[type, Callable[[Show, Any, list[Effect]], None]] = {
        ChatMessage: _on_chat,
        StreamerAction: _on_action,
        MessageDeleted: _on_deleted,
        UserRemoved: _on_removed,
        BotStatus: _on_bot_status,
        SettingsChanged: _on_settings,
        GenerationStarted: _on_started,
        GenerationProgress: _on_progress,
        GenerationFinished: _on_finished,
        GenerationFailed: _on_failed,
        Tick: _on_tick,
    }

    # ---- commands: one method per command word --------------------------------------------
    def _cmd_generate(self, ctx: _Ctx) -> None:
        """!generate <prompt> [### negative] [steps=N size=WxH count=N seed=N]"""
        refusal = self._admission(ctx)
        if refusal:
            return
        parsed = cmds.parse_generate(ctx.args, self._limits)
        if isinstance(parsed, str):
            self._refuse(ctx, parsed, key=f"usage: {self._prefix}generate <prompt> ### <negative>")
            return
        self._submit(ctx, dataclasses.replace(parsed, seed=None), parsed.seed)

    def _cmd_regenerate(self, ctx: _Ctx) -> None:
        """!regenerate: the last requested prompt again, with a new seed."""
        if self._last is None:
            self._refuse(ctx, f"nothing to regenerate yet; try {self._prefix}generate <prompt>")
            return
        if self._admission(ctx):
            return
        self._submit(ctx, self._last, None)

    def _admission(self, ctx: _Ctx) -> bool:
        """Mode, cooldown, per-user and global limits; True when refused (and answered)."""
        mine = sum(1 for _ in self._requests_of(ctx.viewer.login))
        refusal = self.moderator.check_request(ctx.viewer, ctx.now, mine, self.queued)
        if refusal:
            self._refuse(ctx, refusal)
            return True
        return False

    def _submit(self, ctx: _Ctx, ask: cmds.GenerateArgs, seed: int | None) -> None:
        refusal = self.moderator.check_prompt(ask.prompt)
        if refusal:
            self._refuse(ctx, refusal)
            return
        model = self.settings.model
        self._counter += 1
        params = GenerationParams(
            prompt=ask.prompt,
            negative_prompt=self.moderator.negative_prompt(ask.negative),
            steps=ask.steps or model.steps,
            guidance=model.guidance,
            width=ask.width or model.width,
            height=ask.height or model.height,
            seed=seed if seed is not None else self._rng.randrange(2**32),
            count=min(ask.count or self.settings.show.grid, self._limits.max_count),
        )
        viewer = ctx.viewer
        request = GenerationRequest(
            id=f"r{self._counter}-{self._rng.getrandbits(32):08x}",
            requester=Requester(viewer.login, viewer.display_name, viewer.user_id),
            params=params,
            created=ctx.now,
            msg_id=ctx.msg_id,
        )
        self._enqueue(request)
        self.moderator.note_request(viewer.login, ctx.now)
        self._last = ask
        if not self._running and not self._deck and self.queued == 1:
            return  # starts right away; the Status line says so
        position = self._position(request)
        self._say(ctx, f"queued #{position}, about {self._eta(position, ctx.now):.0f} s")

    def _cmd_clear(self, ctx: _Ctx) -> None:
        """!clear: wipe the screen and stop the slideshow."""
        self._blank(ctx.out)
        self._slideshow = 0.0
        self._shown_at = ctx.now  # the empty screen counts as shown: the deck waits too

    def _blank(self, out: list[Effect]) -> None:
        """An empty screen; !prev/!next go on from the picture that was up."""
        if self._cursor is not None:
            self._browse = self._cursor
        self._cursor = None
        out.append(Display(None))

    def _cmd_approve(self, ctx: _Ctx) -> None:
        """!approve: show the held or blurred image (on screen, else the newest held) unfiltered."""
        index = self._cursor
        if index is None or self._history[index].outcome not in APPROVABLE:
            held = [i for i, e in enumerate(self._history) if e.outcome == "held"]
            index = held[-1] if held else None
        if index is None:
            self._say(ctx, "nothing is waiting for approval")
            return
        entry = dataclasses.replace(self._history[index], outcome="approved")
        self._history[index] = entry
        ctx.out.append(Approve(entry.id))
        self._show_index(index, ctx.now, ctx.out)

    def _cmd_terminate(self, ctx: _Ctx) -> None:
        """!terminate: tell OBS, cancel the running job (kept for the next start), exit 0."""
        ctx.out.append(Status(f"stopped by {ctx.viewer.name}"))
        self._blank(ctx.out)
        for request in reversed(self._running):
            ctx.out.append(CancelGeneration(request.id))
            self._enqueue(request, front=True)
        self._running = []
        self._send(ctx.out, "Chat Diffusion is stopping. Bye!", ctx.msg_id)
        self._terminated = True
        ctx.out.append(Shutdown())

    def _cmd_prev(self, ctx: _Ctx) -> None:
        """!prev: the image before the one on screen."""
        if not self._history:
            self._say(ctx, "no images yet")
            return
        current = self._cursor
        if current is None:  # screen cleared: step back from where it was
            current = self._browse + 1 if self._browse >= 0 else len(self._history)
        if current <= 0:
            self._say(ctx, "this is the oldest image")
            return
        self._show_index(current - 1, ctx.now, ctx.out)

    def _cmd_next(self, ctx: _Ctx) -> None:
        """!next: the image after the one on screen."""
        current = self._cursor if self._cursor is not None else self._browse
        if current + 1 >= len(self._history):
            self._say(ctx, "this is the newest image" if self._history else "no images yet")
            return
        self._show_index(current + 1, ctx.now, ctx.out)

    def _cmd_slideshow(self, ctx: _Ctx) -> None:
        """!slideshow [seconds|off]: cycle through the history; no argument toggles."""
        value = cmds.parse_slideshow(ctx.args, self._prefix)
        if isinstance(value, str):
            self._refuse(ctx, value)
            return
        if value is None:
            value = 0.0 if self._slideshow > 0 else (self.settings.show.slideshow_seconds or 15.0)
        self._slideshow = value
        self._slideshow_next = ctx.now + value
        self._say(ctx, f"slideshow every {value:g} s" if value else "slideshow off")

    def _cmd_queue(self, ctx: _Ctx) -> None:
        """!queue: your position and the estimated wait."""
        login = ctx.viewer.login
        if any(r.requester.login == login for r in self._running):
            self._say(ctx, f"yours is generating now; {self.queued} waiting")
            return
        order = self.queue_order()
        for position, req in enumerate(order, 1):
            if req.requester.login == login:
                wait = self._eta(position, ctx.now)
                self._say(ctx, f"you are #{position} of {len(order)}, about {wait:.0f} s")
                return
        deck = self._deck_wait(login, ctx.now)
        if deck is not None:
            self._say(ctx, f"yours is ready and goes on screen in about {deck:.0f} s")
            return
        wait = self._eta(len(order) + 1, ctx.now)
        self._say(ctx, f"{len(order)} waiting; a new request would take about {wait:.0f} s")

    def _cmd_cancel(self, ctx: _Ctx) -> None:
        """!cancel: drop your own request (queued or running); moderators: !cancel @user."""
        target = cmds.parse_login(ctx.args) if ctx.args else ctx.viewer.login
        if target != ctx.viewer.login and ctx.viewer.role < Role.MODERATOR:
            self._refuse(ctx, "you can only cancel your own request")
            return
        queue = self._queues.get(target)
        if queue and target == ctx.viewer.login:
            dropped = queue[-1]
            self._drop(lambda r: r.id == dropped.id, ctx.out)
        elif not self._drop(lambda r: r.requester.login == target, ctx.out):
            self._say(ctx, "there is no request to cancel")
            return
        self._say(ctx, "cancelled")

    def _cmd_params(self, ctx: _Ctx) -> None:
        """!params: everything needed to make the image on screen again."""
        entry = self._described(ctx)
        if entry:
            size = f"{entry.width}x{entry.height}"
            self._say(
                ctx,
                f"by @{entry.requester}: seed {entry.seed}, {entry.steps} steps, "
                f"guidance {entry.guidance:g}, {size}, {entry.count} image(s), model {entry.model}",
            )

    def _cmd_seed(self, ctx: _Ctx) -> None:
        """!seed: the seed of the image on screen."""
        entry = self._described(ctx)
        if entry:
            self._say(ctx, f"seed {entry.seed} (use seed={entry.seed} in {self._prefix}generate)")

    def _cmd_prompt(self, ctx: _Ctx) -> None:
        """!prompt: the prompt (and negative prompt) of the image on screen."""
        entry = self._described(ctx)
        if entry:
            negative = f" ### {entry.negative_prompt}" if entry.negative_prompt else ""
            self._say(ctx, f"@{entry.requester}: {entry.prompt}{negative}")

    def _cmd_help(self, ctx: _Ctx) -> None:
        """!help: the commands this viewer may use."""
        p = self._prefix
        usable = [n for n in cmds.COMMANDS if ctx.viewer.role >= self._roles.get(n, Role.EVERYONE)]
        names = " ".join(p + n for n in usable if n != "generate")
        self._say(ctx, f"{p}generate <prompt> ### <negative prompt>; also {names}")

    def _cmd_mode(self, ctx: _Ctx) -> None:
        """!mode [everyone|subscribers|moderators]: who may request images."""
        if not ctx.args:
            self._say(
                ctx, f"requests are open to {MODE_NAMES.get(self.moderator.mode, 'everyone')}"
            )
            return
        mode = parse_mode(ctx.args.split()[0])
        if mode is None:
            self._refuse(ctx, f"use {self._prefix}mode everyone, subscribers or moderators")
            return
        self.moderator.mode = mode
        self._say(ctx, f"requests are now open to {MODE_NAMES[mode]}")

    def _cmd_ignore(self, ctx: _Ctx) -> None:
        """!ignore @user: the show no longer answers them; their queued requests go."""
        login = cmds.parse_login(ctx.args)
        if not login:
            self._refuse(ctx, f"use {self._prefix}ignore @user")
            return
        self.moderator.ignore(login, True)
        self._drop(lambda r: r.requester.login == login, ctx.out, running=False)
        self._say(ctx, f"ignoring @{login}")

    def _cmd_unignore(self, ctx: _Ctx) -> None:
        """!unignore @user"""
        login = cmds.parse_login(ctx.args)
        if not login:
            self._refuse(ctx, f"use {self._prefix}unignore @user")
            return
        self.moderator.ignore(login, False)
        self._say(ctx, f"no longer ignoring @{login}")

    _COMMANDS: dict[str, Callable[[Show, _Ctx], None]] = {}  # filled below the class

    # ---- queue helpers -------------------------------------------------------------------
    def _enqueue(self, request: GenerationRequest, front: bool = False) -> None:
        login = request.requester.login
        queue = self._queues.get(login)
        if queue is None:
            queue = self._queues[login] = deque()
            if front:
                self._turns.appendleft(login)
            else:
                self._turns.append(login)
        elif front and login in self._turns:
            self._turns.remove(login)
            self._turns.appendleft(login)
        (queue.appendleft if front else queue.append)(request)

    def _requests_of(self, login: str) -> list[GenerationRequest]:
        mine = list(self._queues.get(login, ()))
        return mine + [r for r in self._running if r.requester.login == login]

    def _drop(
        self, match: Callable[[GenerationRequest], bool], out: list[Effect], running: bool = True
    ) -> int:
        """Remove matching requests, queued and (optionally) running; returns how many."""
        dropped = 0
        for login in list(self._turns):
            queue = self._queues[login]
            keep = deque(r for r in queue if not match(r))
            dropped += len(queue) - len(keep)
            if keep:
                self._queues[login] = keep
            else:
                del self._queues[login]
                self._turns.remove(login)
        if running:
            for request in [r for r in self._running if match(r)]:
                out.append(CancelGeneration(request.id))  # batch-mates keep running
                self._end_request(request.id)
                dropped += 1
        return dropped

    def _maybe_start(self, now: float, out: list[Effect]) -> None:
        """Start the next run when nothing runs and no finished picture waits on deck."""
        if self._running or not self._queues or self._deck:
            return
        batch = [self._take(r) for r in self._next_batch()]
        if self.settings.show.cut_to_one_when_waiting and self._queues:
            batch = [_one_image(r) for r in batch]
        self._running = batch
        self._running_since = now
        self._run_timed = False
        self._progress = None
        out.append(StartGeneration(batch[0]) if len(batch) == 1 else StartBatch(tuple(batch)))

    def _next_batch(self) -> list[GenerationRequest]:
        """The next request in fair order plus compatible ones behind it, up to max_batch.

        A viewer whose earlier request is skipped (other settings) is skipped entirely, so
        nobody's own requests run out of order.
        """
        order = self.queue_order()
        batch = [order[0]]
        key = _batch_key(batch[0])
        blocked: set[str] = set()
        for request in order[1:]:
            if len(batch) >= max(1, self.settings.model.max_batch):
                break
            login = request.requester.login
            if login in blocked:
                continue
            if _batch_key(request) == key:
                batch.append(request)
            else:
                blocked.add(login)
        return batch

    def _take(self, request: GenerationRequest) -> GenerationRequest:
        """Remove the head of its viewer's queue (a batch only takes heads, see
        _next_batch); that viewer's turn moves to the back."""
        login = request.requester.login
        queue = self._queues[login]
        queue.popleft()
        self._turns.remove(login)
        if queue:
            self._turns.append(login)
        else:
            del self._queues[login]
        return request

    def _is_running(self, request_id: str) -> bool:
        return any(r.id == request_id for r in self._running)

    def _end_request(self, request_id: str) -> GenerationRequest | None:
        """Take one request out of the run (finished, failed or cancelled)."""
        for i, request in enumerate(self._running):
            if request.id == request_id:
                del self._running[i]
                if not self._running:
                    self._progress = None
                return request
        return None

    def _time_run(self, now: float) -> None:
        """The first result of a run times it (a batch's results arrive together)."""
        if not self._run_timed and now > self._running_since:
            self._avg_seconds = 0.7 * self._avg_seconds + 0.3 * (now - self._running_since)
        self._run_timed = True

    def _position(self, request: GenerationRequest) -> int:
        for position, req in enumerate(self.queue_order(), 1):
            if req.id == request.id:
                return position
        return 0

    def _eta(self, position: int, now: float) -> float:
        """Seconds until the request at this queue position is on screen.

        Runs of up to max_batch take the moving average each; every picture then holds
        the screen min_display_seconds, and a run starts only once the deck is empty.
        """
        hold = self._min_display
        free = max(now, self._shown_at + hold) if hold else now  # screen takes the next one

        def show(ready: float, pictures: int) -> float:
            nonlocal free
            last = ready
            for _ in range(pictures):
                last = max(free, ready)
                free = last + hold
            return last

        last = show(now, len(self._deck))
        done = now
        if self._running:
            done = now + max(self._avg_seconds - (now - self._running_since), 0.0)
            last = show(done, len(self._running))
        per_run = max(1, self.settings.model.max_batch)
        left = position
        while True:
            done = max(done, last) + self._avg_seconds
            last = show(done, min(per_run, left))
            left -= per_run
            if left <= 0:
                return last - now

    def _deck_wait(self, login: str, now: float) -> float | None:
        """Seconds until this viewer's finished picture on deck is shown, if they have one."""
        for place, entry_id in enumerate(self._deck):
            entry = self._entry(entry_id)
            if entry is not None and entry.requester == login:
                return max(self._shown_at + self._min_display - now, 0.0) + (
                    place * self._min_display
                )
        return None

    # ---- screen helpers ------------------------------------------------------------------
    def _on_screen(self) -> Entry | None:
        if self._cursor is None or not 0 <= self._cursor < len(self._history):
            return None
        return self._history[self._cursor]

    def _show_index(self, index: int, now: float, out: list[Effect], restart: bool = True) -> None:
        self._cursor = self._browse = index
        entry = self._history[index]
        out.append(Display(entry.id, reveal=entry.outcome == "approved"))
        self._shown_at = now
        if entry.id in self._deck:
            self._deck.remove(entry.id)  # shown by hand (!next, !approve): no second time
        if restart:
            self._slideshow_next = now + self._slideshow

    def _show_from_deck(self, now: float, out: list[Effect]) -> None:
        """Put the oldest waiting picture up once the one on screen had its minimum time."""
        if self._holding(now):
            return
        while self._deck:
            index = self._index_of(self._deck[0])
            if index is None:
                self._deck.popleft()  # gone from the history meanwhile
                continue
            self._show_index(index, now, out)
            return

    def _holding(self, now: float) -> bool:
        """The picture on screen (or a cleared screen) has not had its minimum time yet."""
        return self._min_display > 0 and now < self._shown_at + self._min_display

    def _index_of(self, entry_id: int) -> int | None:
        return next((i for i, e in enumerate(self._history) if e.id == entry_id), None)

    def _entry(self, entry_id: int) -> Entry | None:
        index = self._index_of(entry_id)
        return None if index is None else self._history[index]

    def _described(self, ctx: _Ctx) -> Entry | None:
        entry = self._on_screen()
        if entry is None:
            self._say(ctx, "nothing is on screen")
        return entry

    def _trim_history(self) -> None:
        extra = len(self._history) - max(1, self.settings.show.history_size)
        if extra <= 0:
            return
        for entry in self._history[:extra]:
            self._entry_msg.pop(entry.id, None)
            if entry.id in self._deck:
                self._deck.remove(entry.id)
        del self._history[:extra]
        if self._cursor is not None:
            self._cursor = max(0, self._cursor - extra)
        self._browse = max(-1, self._browse - extra)

    def _forget_entry(self, entry_id: int, out: list[Effect]) -> None:
        """Remove a history entry (its message was deleted); clear the screen if it is up."""
        index = self._index_of(entry_id)
        self._entry_msg.pop(entry_id, None)
        if entry_id in self._deck:
            self._deck.remove(entry_id)
        if index is None:
            return
        del self._history[index]
        if self._cursor == index:
            self._cursor = None
            self._browse = index - 1
            self._shown_at = -math.inf  # nothing to hold: a waiting picture may go up
            out.append(Display(None))
        elif self._cursor is not None and self._cursor > index:
            self._cursor -= 1
        if self._browse >= index and self._cursor is None:
            self._browse = max(-1, self._browse - 1)

    def _status_effect(self, now: float, out: list[Effect]) -> None:
        """One Status line (only when it changed): what generates, waits and shows next."""
        parts: list[str] = []
        if self._running:
            step = f" {self._progress[0]}/{self._progress[1]}" if self._progress else ""
            parts.append(f"generating{step} for {_names(self._running)}")
        if self._running or self._queues:  # a viewer's queue is dropped when it empties
            parts.append(f"{self.queued} queued")
        if self._deck:
            wait = max(1, math.ceil(self._shown_at + self._min_display - now))
            ready = f"{len(self._deck)} ready"
            parts.append(f"{ready}, next picture in {wait} s")
        text = ", ".join(parts) or f"ready for {self._prefix}generate"
        if text != self._status:
            self._status = text
            out.append(Status(text))

    # ---- snapshot / restore --------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """JSON-able state: queue (the running run first), history, deck, cursor, screen."""
        queue = self._running + self.queue_order()
        state = self._rng.getstate()
        return {
            "version": STATE_VERSION,
            "queue": [_request_to_dict(r) for r in queue],
            "history": [dataclasses.asdict(e) for e in self._history],
            "entry_msg": {str(k): v for k, v in self._entry_msg.items()},
            "deck": list(self._deck),
            "cursor": self._cursor,
            "browse": self._browse,
            "slideshow": self._slideshow,
            "avg_seconds": self._avg_seconds,
            "counter": self._counter,
            "rng": [state[0], list(state[1]), state[2]],
            "last": dataclasses.asdict(self._last) if self._last else None,
            "moderation": self.moderator.snapshot(),
        }

    def _restore(self, state: dict[str, Any]) -> None:
        """Best effort: a damaged part of the state is skipped, never fatal."""
        if state.get("version") != STATE_VERSION:
            self.problems.append("saved show state has another version; starting fresh")
            return
        try:
            for raw in state.get("queue", []):
                self._enqueue(_request_from_dict(raw))
            fields = {f.name for f in dataclasses.fields(Entry)}
            self._history = [
                Entry(**{k: v for k, v in e.items() if k in fields})
                for e in state.get("history", [])
            ]
            self._entry_msg = {int(k): str(v) for k, v in state.get("entry_msg", {}).items()}
            known = {e.id for e in self._history}
            self._deck = deque(int(i) for i in state.get("deck", []) if int(i) in known)
            cursor = state.get("cursor")
            self._cursor = (
                cursor if isinstance(cursor, int) and 0 <= cursor < len(self._history) else None
            )
            browse = int(state.get("browse", -1))
            self._browse = browse if -1 <= browse < len(self._history) else -1
            self._slideshow = float(state.get("slideshow", self._slideshow))
            self._avg_seconds = float(state.get("avg_seconds", self._avg_seconds))
            self._counter = int(state.get("counter", 0))
            rng = state.get("rng")
            if rng:
                self._rng.setstate((rng[0], tuple(rng[1]), rng[2]))
            last = state.get("last")
            self._last = cmds.GenerateArgs(**last) if isinstance(last, dict) else None
            self.moderator.restore(state.get("moderation", {}))
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            self.problems.append(f"saved show state partly unreadable ({exc})")


Show._COMMANDS = {name: getattr(Show, f"_cmd_{name}") for name in cmds.COMMANDS}


def _coalesce_key(reason: str) -> str:
    """One summary line per kind of refusal: drop the parts that differ between viewers."""
    if reason.startswith("cooldown"):
        return "please wait for your cooldown"
    if reason.startswith("the prompt is"):
        return "prompt too long"
    if reason.startswith("you already have"):
        return "you already have a request waiting"
    return reason


def _batch_key(request: GenerationRequest) -> tuple[int, float, int, int]:
    """What Engine.generate_many needs equal to share one pipeline call (count and
    prompts may differ; the engine clamps equal values to equal values)."""
    p = request.params
    return (p.steps, p.guidance, p.width, p.height)


def _one_image(request: GenerationRequest) -> GenerationRequest:
    """A grid request cut to one image (others are waiting)."""
    if request.params.count <= 1:
        return request
    return dataclasses.replace(request, params=dataclasses.replace(request.params, count=1))


def _names(requests: list[GenerationRequest]) -> str:
    """'@A', '@A, @B' or '@A, @B, @C +2' for the Status line."""
    names = ", ".join(f"@{r.requester.name}" for r in requests[:3])
    return names + (f" +{len(requests) - 3}" if len(requests) > 3 else "")


def _request_to_dict(request: GenerationRequest) -> dict[str, Any]:
    return dataclasses.asdict(request)


def _request_from_dict(raw: dict[str, Any]) -> GenerationRequest:
    return GenerationRequest(
        id=str(raw["id"]),
        requester=Requester(**raw["requester"]),
        params=GenerationParams(**raw["params"]),
        created=float(raw["created"]),
        msg_id=str(raw.get("msg_id", "")),
    )
