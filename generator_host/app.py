"""The host's edges, wired on one asyncio loop: chat, show, engine worker, gallery, link.

The show decides; this module only carries out its effects and turns the outside world
(chat lines, finished generations, OBS buttons, the clock) into the show's events. The
loop never waits on the GPU or the disk: generation, saving and PNG encoding run on a
single worker thread, file I/O on the default executor.

Effects are carried out in the order the show returned them by one consumer task that
drains an asyncio queue (so a Display never overtakes the Approve before it, and two
Displays reach OBS in order without a lock); a generation run is the exception: it
becomes a tracked task of its own, since it lasts seconds, and reports back as events.
The host reads the files the core may not: the state, the blocklist, and a random seed.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import secrets
import signal
import socket
import sqlite3
import ssl
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from generator_host import exit_codes
from generator_host.core import events as ev
from generator_host.core import settings as settings_mod
from generator_host.core.categories import too_close
from generator_host.core.generation import Entry, GenerationRequest
from generator_host.core.message import ChatEvent
from generator_host.core.settings import LinkSettings, Settings
from generator_host.core.show import Show
from generator_host.edges.blocklist import load_blocklist
from generator_host.edges.chat.irc import LoginFailed
from generator_host.edges.files import write_atomic
from generator_host.engine import memory
from generator_host.engine.pipeline import EngineError
from generator_host.ports import ChatAdapter, EngineLike, GalleryLike
from obs_script import chat_diffusion_protocol as protocol

log = logging.getLogger("generator_host.app")

TICK_SECONDS = 0.25
STATE_FILE = "state.json"


class Host:
    """One running host: owns the show and executes its effects."""

    def __init__(
        self,
        settings: Settings,
        home: Path,
        chat: ChatAdapter,
        engine: EngineLike | None,
        gallery: GalleryLike,
        link_token: str,
        *,
        review_folder: Path | None = None,
        review_secret: str = "",
        points: Any = None,
    ) -> None:
        """`review_secret`: the streamer's key to the review page (edges/review); empty:
        no page. `review_folder` holds its secret and the moderators' file. `points`: the
        channel-point reward (edges/twitch/channel_points), when enabled."""
        self.settings = settings
        self.home = home
        self.chat = chat
        self.engine = engine
        self.gallery = gallery
        self.link_token = link_token
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")
        # Prompts are scored against the safety categories on a thread of their own: a
        # check must neither block the loop nor wait behind a generation on `worker`.
        self.prompt_checker = getattr(engine, "prompt_checker", None)
        self.prompt_worker = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="prompt-check")
            if self.prompt_checker is not None
            else None
        )
        self._blocklist_file = settings.moderation.blocklist_file
        blocklist, problems = load_blocklist(self._blocklist_file)
        self.show = Show(
            settings,
            self._load_state(),
            secrets.randbits(64),
            blocklist=blocklist,
            prompt_check=self.prompt_checker is not None,
        )
        for problem in problems + self.show.problems:
            log.warning("settings: %s", problem)
        self.link: Any = None
        self.points = points
        self.review: Any = None  # the review page's server (edges/review), when enabled
        self.review_folder = review_folder
        self.review_secret = review_secret
        self.stopped = asyncio.Event()
        self.exit_code = 0
        self.on_screen: dict[str, Any] | None = None  # last `show` frame, resent on connect
        self.status_frame: dict[str, Any] | None = None
        self._cancel_flags: dict[str, threading.Event] = {}
        self._effects: asyncio.Queue[Any] = asyncio.Queue()
        self._runs: set[asyncio.Task[None]] = set()  # generation runs under way
        self._save_task: asyncio.Task[None] | None = None
        self._consumer: asyncio.Task[None] | None = None
        self._stop_reason = "host is shutting down"
        self._state_save_failing = False
        self._state_saved = b""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task] = set()  # referenced until done (else GC may drop one)

    # ---- state that survives a restart -------------------------------------------------
    def _load_state(self) -> dict | None:
        path = self.home / STATE_FILE
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("cannot read %s (%s); starting with an empty queue", path, exc)
            return None

    def _save_state_soon(self) -> None:
        """One pending save at a time, 0.2 s after the first change (bursts coalesce)."""
        if self._save_task is None or self._save_task.done():
            self._save_task = asyncio.get_running_loop().create_task(self._save_after_pause())

    async def _save_after_pause(self) -> None:
        await asyncio.sleep(0.2)
        await self._write_state()

    async def _write_state(self) -> None:
        data = json.dumps(self.show.snapshot()).encode()
        if data == self._state_saved:
            return  # ticks change nothing most of the time: spare the disk
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, write_atomic, self.home / STATE_FILE, data)
        except OSError as exc:
            if not self._state_save_failing:  # once per outage, not once per event
                log.error("cannot save the queue state (%s); the stream goes on", exc)
            self._state_save_failing = True
        else:
            self._state_saved = data
            if self._state_save_failing:
                log.info("the queue state is saved again")
            self._state_save_failing = False

    # ---- events in ----------------------------------------------------------------------
    def feed(self, event: Any) -> None:
        """Hand one event to the show and queue what it decides (on the loop thread)."""
        try:
            effects = self.show.handle(event)
        except Exception:  # the show is pure; a bug there must not kill the stream
            log.exception("the show failed on %r", type(event).__name__)
            return
        for effect in effects:
            if isinstance(effect, ev.Settle) and not self._intend(effect):
                continue
            self._effects.put_nowait(effect)
        if self.points is not None:
            self.points.queue_full(self.show.moderator.queue_full(self.show.waiting))
        self._save_state_soon()
        self._notify_review()

    def _intend(self, settle: ev.Settle) -> bool:
        """A redemption's status, stored before anything else happens (before the show's
        state is saved): a kill -9 never loses it nor sends it twice."""
        if self.points is None:
            log.warning("redemption %s ends %s, but channel points are off: not sent",
                        settle.redemption_id[:12], settle.status)  # fmt: skip
            return False
        try:
            return bool(self.points.intend(settle))
        except Exception:  # the store failing must not stop the show
            log.exception("cannot store the status of redemption %s", settle.redemption_id[:12])
            return False

    def _notify_review(self) -> None:
        """The review page re-reads the show and gallery (debounced there)."""
        if self.review is not None:
            self.review.notify()

    async def _consume(self) -> None:
        """The one consumer: effects in the show's order, each finished before the next."""
        while True:
            effect = await self._effects.get()
            try:
                await self._execute(effect)
            finally:
                self._effects.task_done()
                self._notify_review()  # e.g. a decision now stored in the gallery

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def on_chat(self, event: ChatEvent) -> None:
        self.feed(event)

    def on_link_message(self, msg: dict[str, Any]) -> None:
        """A message from an OBS script: a proposed settings change or a button/hotkey."""
        kind = msg.get("type")
        if kind == "action":
            action = str(msg.get("action", ""))
            arg = str(msg.get("arg", "") or "")
            self.feed(ev.StreamerAction(action=action, arg=arg, now=time.monotonic()))
        elif kind == "change":
            self.change_settings(msg["values"], "obs")

    def settings_changed(self, now: float) -> ev.SettingsChanged:
        """The event for changed settings; reads the blocklist again when its file changed."""
        blocklist = None
        if self.settings.moderation.blocklist_file != self._blocklist_file:
            self._blocklist_file = self.settings.moderation.blocklist_file
            blocklist, problems = load_blocklist(self._blocklist_file)
            for problem in problems:
                log.warning("settings: %s", problem)
        return ev.SettingsChanged(now=now, blocklist=blocklist)

    def change_settings(
        self, values: dict[str, Any], view: str, role: str = "broadcaster"
    ) -> tuple[list[settings_mod.Change], list[str]]:
        """A view proposes live settings: validate once, apply to the next image, log who
        changed what, and send the live values to every connected panel (the proposer's
        too, so a refused value snaps back). Returns (changes, refusals) for the view."""
        changes, refused = settings_mod.apply_changes(self.settings, values, view, role)
        for reason in refused:
            log.warning("settings: refused %s", reason)
        if changes:
            self.feed(self.settings_changed(time.monotonic()))
        self._announce_settings(changes, [f"refused {r}" for r in refused])
        return changes, refused

    def _announce_settings(
        self, changes: list[settings_mod.Change], notes: list[str], by: str = ""
    ) -> None:
        """Log each applied change (and who made it), let the parts that copy a setting
        follow, and send the live values to every connected panel."""
        said = [c.describe() + (f" by {by}" if by else "") for c in changes]
        for line in said:
            log.info("settings: %s", line)
        if changes:
            self._follow_settings()
        self._spawn(self._broadcast(self.settings_message("; ".join(said + notes))))

    def _follow_settings(self) -> None:
        """The parts holding a copy of a live setting take the current value (the show
        and the gallery read the settings object itself)."""
        if self.engine is not None and getattr(self.engine, "safety", None) is not None:
            self.engine.safety.offset = self.settings.safety.threshold_offset

    def settings_message(self, note: str = "") -> dict[str, Any]:
        """The live settings as the OBS panel shows them: values, ranges, choices."""
        return protocol.make_settings(
            settings_mod.live_values(self.settings, "obs"), settings_mod.live_schema("obs"), note
        )

    # ---- effects out --------------------------------------------------------------------
    async def _execute(self, effect: Any) -> None:
        loop = asyncio.get_running_loop()
        try:
            if isinstance(effect, ev.StartGeneration | ev.StartBatch):
                requests = [effect.request] if isinstance(effect, ev.StartGeneration) else []
                run = loop.create_task(self._run(requests or list(effect.requests)))
                self._runs.add(run)
                run.add_done_callback(self._runs.discard)
            elif isinstance(effect, ev.CheckPrompt):
                self._spawn(self._check_prompt(effect.request))
            elif isinstance(effect, ev.CancelGeneration):
                flag = self._cancel_flags.get(effect.request_id)
                if flag is not None:
                    flag.set()
            elif isinstance(effect, ev.Display):
                await self._display(effect)
            elif isinstance(effect, ev.Approve):
                await loop.run_in_executor(
                    None, self.gallery.record, effect.entry_id, effect.outcome, effect.approved
                )
            elif isinstance(effect, ev.Reject):
                await loop.run_in_executor(None, self.gallery.record, effect.entry_id, "rejected")
            elif isinstance(effect, ev.Reply):
                await self.chat.say(effect.text, effect.reply_to)
            elif isinstance(effect, ev.SettingsApplied):
                self._announce_settings(list(effect.changes), [], effect.by)
            elif isinstance(effect, ev.Status):
                await self._status(effect)
            elif isinstance(effect, ev.Log):
                log.info("%s", effect.text)
            elif isinstance(effect, ev.Settle):
                self.points.settle(effect)
            elif isinstance(effect, ev.Shutdown):
                self._stop_reason = "the host was terminated from chat"  # link.stop says bye
                self.stopped.set()
            else:
                log.warning("unknown effect %r", effect)
        except Exception:
            log.exception("carrying out %s failed", type(effect).__name__)

    async def _run(self, requests: list[GenerationRequest]) -> None:
        """A generation run as a task: an unexpected error fails its requests (logged),
        so the show never waits for a run that died."""
        try:
            await self._generate(requests)
        except Exception as exc:  # noqa: BLE001
            log.exception("the generation run failed")
            for request in requests:
                self.feed(ev.GenerationFailed(request.id, str(exc) or "internal error",
                                              now=time.monotonic()))  # fmt: skip

    async def _generate(self, requests: list[GenerationRequest]) -> None:
        """One run on the worker: one request, or a micro-batch in one pipeline call.

        Every request has its own cancel flag (a batch-mate's !cancel drops only its
        images) and ends as its own GenerationFinished or GenerationFailed, in order.
        """
        flags = {r.id: threading.Event() for r in requests}
        self._cancel_flags.update(flags)
        loop = asyncio.get_running_loop()

        def tell(event: Any) -> None:
            loop.call_soon_threadsafe(self.feed, event)

        def on_step(step: int, total: int) -> None:
            live = next((r.id for r in requests if not flags[r.id].is_set()), requests[0].id)
            tell(ev.GenerationProgress(live, step, total, now=time.monotonic()))

        def work() -> list[Any]:
            tell(ev.GenerationStarted(requests[0].id, now=time.monotonic()))
            if len(requests) == 1:  # engine.generate: what max_batch = 1 always did
                request = requests[0]
                flag = flags[request.id]
                try:
                    results: list[Any] = [
                        self.engine.generate(
                            request.params, request, on_step=on_step, cancelled=flag
                        )
                    ]
                except Exception as exc:  # noqa: BLE001 - becomes GenerationFailed below
                    results = [exc]
            else:
                results = self.engine.generate_many(
                    [r.params for r in requests],
                    requests,
                    on_step=on_step,
                    cancelled=[flags[r.id] for r in requests],
                )
            return [self._store(result) for result in results]

        try:
            outcomes = await loop.run_in_executor(self.worker, work)
        except Exception as exc:  # noqa: BLE001 - the whole run failed (engine not loaded ...)
            outcomes = [exc] * len(requests)
        finally:
            for request in requests:
                self._cancel_flags.pop(request.id, None)
        for request, outcome in zip(requests, outcomes, strict=True):
            self.feed(self._outcome_event(request, outcome))

    async def _check_prompt(self, request: GenerationRequest) -> None:
        """Score the prompt (never the negative prompt) on the prompt-check thread, then
        tell the show; a failed check is reported as such (the show refuses it)."""
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        scores: dict[str, float] = {}
        error = ""
        try:
            assert self.prompt_checker is not None and self.prompt_worker is not None
            scores = await loop.run_in_executor(
                self.prompt_worker, self.prompt_checker.scores, request.params.prompt
            )
        except Exception as exc:  # noqa: BLE001 - bad input never kills the host
            log.exception("the prompt check failed")
            error = f"{type(exc).__name__}: {exc}"[:200]
        close = too_close(scores)
        log.log(
            logging.INFO if close or error else logging.DEBUG,
            "prompt of @%s checked in %.0f ms%s",
            request.requester.login,
            (time.perf_counter() - started) * 1000,
            f": too close to {', '.join(close)}" if close else "",
        )
        self.feed(ev.PromptChecked(request.id, scores, error, now=time.monotonic()))

    def _store(self, result: Any) -> Any:
        """On the worker: a finished result into the gallery (an error passes through)."""
        if isinstance(result, BaseException):
            return result
        try:
            safety = self.settings.safety
            return self.gallery.add(result, safety.approval_mode, safety.prompt_action)
        except Exception as exc:  # noqa: BLE001 - one unsaved result must not sink its batch
            return exc

    def _outcome_event(self, request: GenerationRequest, outcome: Any) -> Any:
        """GenerationFinished for a stored entry, else GenerationFailed with a chat-fit reason;
        both carry the host's peak memory so far (for moderators' !params)."""
        peak = memory.describe(getattr(self.engine, "device", "cpu"))
        if isinstance(outcome, BaseException):
            if not isinstance(outcome, EngineError):  # Cancelled, OutOfMemory: expected
                log.error("generation %s failed", request.id, exc_info=outcome)
            reason = str(outcome) or type(outcome).__name__
            return ev.GenerationFailed(request.id, reason=reason, now=time.monotonic(), memory=peak)
        entry: Entry = outcome
        log.info(
            "image %d for @%s ready (%s): %s",
            entry.id,
            entry.requester,
            entry.outcome,
            entry.prompt[:80],
        )
        return ev.GenerationFinished(request.id, entry=entry, now=time.monotonic(), memory=peak)

    async def _display(self, effect: ev.Display) -> None:
        """The picture as the show says (its tiles), to OBS, then the legacy files."""
        await self._display_now(effect)
        if self.gallery.legacy_folder is not None:
            # for set-ups without the script: stream.png and texts, after OBS's frame
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(
                None, self.gallery.publish_legacy, effect.entry_id, effect.tiles
            )

    async def _display_now(self, effect: ev.Display) -> None:
        loop = asyncio.get_running_loop()
        if effect.entry_id is None:
            self.on_screen = None
            await self._broadcast(protocol.make_clear())
            self._tell_terminal("screen", None)
            return
        entry = await loop.run_in_executor(None, self.gallery.get, effect.entry_id)
        png = await loop.run_in_executor(
            None, self.gallery.screen_png, effect.entry_id, effect.tiles
        )
        if entry is None or png is None:
            log.warning("entry %s has no image to show", effect.entry_id)
            return
        frame = protocol.make_show(
            entry.id,
            png,
            requester=entry.requester,
            prompt=entry.prompt,
            held=effect.held,
            blurred=effect.blurred,
        )
        self.on_screen = frame
        await self._broadcast(frame)
        self._tell_terminal("screen", entry, effect.held, effect.blurred)

    async def _status(self, status: ev.Status) -> None:
        self.status_frame = protocol.make_status(
            status.text, step=status.step, total=status.total, queue=status.queue
        )
        await self._broadcast(self.status_frame)
        self._tell_terminal("status", status.text)

    def _tell_terminal(self, what: str, *args: Any) -> None:
        """The demo's terminal stands in for OBS too: a chat adapter with a `screen` or
        `status` method (the console) is told what OBS shows; Twitch's is not."""
        show = getattr(self.chat, what, None)
        if show is not None:
            show(*args)

    def notice(self, text: str) -> None:
        """A line for OBS's status from outside the show (e.g. "log in again")."""
        if self._loop is not None:
            self._loop.create_task(self._status(ev.Status(text=text)))

    async def _broadcast(self, frame: dict[str, Any]) -> None:
        if self.link is not None:
            await self.link.broadcast(frame)

    def initial_state(self) -> list[dict[str, Any]]:
        """What a newly connected OBS needs: the live settings (before it may propose a
        change), what is on screen now and the status."""
        return [self.settings_message(), protocol.make_state(self.on_screen, self.status_frame)]

    # ---- the loop -----------------------------------------------------------------------
    async def _ticker(self) -> None:
        while not self.stopped.is_set():
            await asyncio.sleep(TICK_SECONDS)
            self.feed(ev.Tick(now=time.monotonic()))

    async def run(self, on_ready: Callable[[Any], None] | None = None) -> int:
        from generator_host.edges.link import LinkServer

        self._loop = asyncio.get_running_loop()
        self._follow_settings()
        live = settings_mod.live_values(self.settings, "obs")
        log.info(
            "live settings (from the config; OBS panels show these and may propose changes): %s",
            ", ".join(f"{name.split('.', 1)[1]}={value!r}" for name, value in live.items()),
        )
        # What was on screen before a restart is ready before the first OBS connects.
        for effect in self.show.resume(time.monotonic()):
            await self._execute(effect)
        self._consumer = self._loop.create_task(self._consume())
        self.link = LinkServer(
            self.settings.link, self.link_token, self.on_link_message, self.initial_state
        )
        try:
            await self.link.start()
        except OSError as exc:  # port taken, bad TLS files: the streamer fixes a setting
            self.worker.shutdown(wait=False)
            raise StartupError(_link_problem(self.settings.link, exc)) from None
        await self._start_review()
        if self.points is not None:
            self.points.attach(self.feed, self.notice, self.show.pending_redemptions)
            self.points.begin()
        with contextlib.suppress(NotImplementedError, RuntimeError):
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._loop.add_signal_handler(sig, self.stopped.set)
        # Resume the queue.
        self.feed(self.settings_changed(time.monotonic()))
        if on_ready is not None:
            on_ready(self)
        chat_task = self._loop.create_task(self.chat.run(self.on_chat))
        ticker = self._loop.create_task(self._ticker())
        stop_task = self._loop.create_task(self.stopped.wait())
        done, _ = await asyncio.wait({chat_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
        if chat_task in done and not self.stopped.is_set():
            exc = chat_task.exception()
            if exc is not None:
                self.exit_code = _exit_code_for(exc)
            else:
                await self._drain()
        ticker.cancel()
        stop_task.cancel()
        if self.points is not None:
            await self.points.stop_events()
        self.feed(ev.Stopping(now=time.monotonic()))  # redemptions: refund or keep
        for cancel in self._cancel_flags.values():
            cancel.set()
        with contextlib.suppress(asyncio.TimeoutError):  # the bye and the last frames
            await asyncio.wait_for(self._effects.join(), timeout=2.0)
        chat_task.cancel()
        with contextlib.suppress(Exception):
            await self.chat.close()
        await self.link.stop(self._stop_reason)
        if self.review is not None:
            await self.review.stop()
        if self.points is not None:
            await self.points.stop()  # statuses being sent, then the reward paused
        self.worker.shutdown(wait=True, cancel_futures=True)
        if self.prompt_worker is not None:
            self.prompt_worker.shutdown(wait=True, cancel_futures=True)
        if self._runs:
            await asyncio.gather(*self._runs, return_exceptions=True)
        self._consumer.cancel()
        if self._save_task is not None:
            self._save_task.cancel()
        await self._write_state()  # last, after every task that could change the show
        return self.exit_code

    async def _start_review(self) -> None:
        """The review page, when enabled; a port in use is one error line, the stream goes on."""
        if not (self.review_secret and self.settings.review.enabled):
            return
        from generator_host.edges.review.auth import ReviewAuth
        from generator_host.edges.review.server import ReviewServer

        auth = ReviewAuth(self.review_folder or self.home, self.review_secret)
        review = ReviewServer(self.settings.review, auth, self)
        try:
            await review.start()
        except OSError as exc:
            log.error(
                "review page: cannot listen on %s:%d (%s); set [review] port (or enabled = false)",
                self.settings.review.host,
                self.settings.review.port,
                exc.strerror or exc,
            )
            return
        self.review = review

    async def _drain(self) -> None:
        """End of input (a piped demo): finish what is queued, then stop."""
        while not self.stopped.is_set() and (
            self.show.running or self.show.waiting or self.show.on_deck or self._runs
        ):
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.3)  # let the last image reach OBS


def _exit_code_for(exc: BaseException) -> int:
    if isinstance(exc, LoginFailed):
        print(f"Twitch login failed: {exc}", file=sys.stderr)
        return exit_codes.EXIT_LOGIN
    log.error("chat connection ended: %s", exc)
    return exit_codes.EXIT_ENGINE


class StartupError(Exception):
    """A start-up failure the streamer fixes with a setting or flag; the message is one
    line that names it. `_serve` prints it (no traceback) and exits non-zero."""


def _port_taken(link: LinkSettings) -> str:
    return (
        f"port {link.port} on {link.host} is already in use (another generator-host, or "
        "another program); choose a free port with --link-port N or [link] port in the config"
    )


def _tls_problem(link: LinkSettings, exc: OSError) -> str:
    return (
        f"cannot use the OBS link's TLS certificate {link.tls_cert!r} / key {link.tls_key!r} "
        f"({exc.strerror or exc}); fix [link] tls_cert and tls_key in the config"
    )


def _link_problem(link: LinkSettings, exc: OSError) -> str:
    """One line for an OSError from opening the OBS link's socket."""
    if exc.errno == errno.EADDRINUSE:
        return _port_taken(link)
    if link.tls_cert and (isinstance(exc, ssl.SSLError) or exc.filename):
        return _tls_problem(link, exc)
    return (
        f"cannot listen for OBS on {link.host}:{link.port} ({exc.strerror or exc}); "
        "check [link] host and --link-port (or [link] port) in the config"
    )


def _check_port(link: LinkSettings) -> None:
    """Fail at once, before the slow model load, when the OBS link's port is taken.
    (The link server's own bind is checked again when it starts: this is only early.)"""
    if not link.port:
        return
    try:
        infos = socket.getaddrinfo(link.host, link.port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise StartupError(_link_problem(link, exc)) from None
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as probe:
            if os.name == "posix":  # as asyncio's server does: TIME_WAIT is no conflict
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                raise StartupError(_link_problem(link, exc)) from None


def _check_folder(folder: Path, fix: str) -> None:
    """The folder exists (created if needed) and takes a new file; else a StartupError."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise StartupError(f"cannot write to {folder} ({exc.strerror or exc}); {fix}") from None


def _preflight(settings: Settings, home: Path) -> None:
    """The quick checks before anything slow: folders writable, the link's port free."""
    _check_folder(home, "choose another folder with --data-dir PATH")
    if settings.gallery.folder:
        _check_folder(
            Path(settings.gallery.folder).expanduser(), "fix [gallery] folder in the config"
        )
    _check_port(settings.link)
    if settings.link.tls_cert:
        from generator_host.edges.link import _ssl_context

        try:
            _ssl_context(settings.link)
        except OSError as exc:  # ssl.SSLError and a missing file are both OSErrors
            raise StartupError(_tls_problem(settings.link, exc)) from None


def _load_engine(settings: Settings, fix: str) -> Any:
    from generator_host.engine.pipeline import Engine, EngineError

    engine = Engine(settings.model, settings.safety)
    try:
        engine.load()
    except EngineError as exc:
        print(f"Cannot load the model: {exc}; {fix}", file=sys.stderr)
        return None
    except KeyboardInterrupt:  # Ctrl-C while downloading or loading: one line, no traceback
        print(
            "\nInterrupted while loading the model; run again to continue "
            "(files already downloaded are kept).",
            file=sys.stderr,
        )
        raise SystemExit(exit_codes.EXIT_INTERRUPTED) from None
    return engine


def _prepare(
    settings: Settings, home: Path, token_dir: Path, model_fix: str, started: float
) -> tuple[Any, Any, str]:
    from generator_host.edges.gallery import Gallery
    from generator_host.edges.link import load_or_create_token

    gallery = Gallery.from_settings(settings.gallery, home / "gallery")
    gallery_dir = gallery.folder
    token_path = token_dir / "link-token"
    try:
        token = settings.link.token or load_or_create_token(token_path)
    except OSError as exc:
        fix = "choose another folder with --data-dir PATH"
        raise StartupError(f"cannot write {token_path} ({exc.strerror or exc}); {fix}") from None
    print(f"Gallery folder: {gallery_dir}")
    if settings.link.token:
        print("OBS link token: from the config file (give it to the OBS script)")
    else:
        print(f"OBS link token file: {token_path} (the OBS script on this computer reads it)")
    engine = _load_engine(settings, model_fix)
    if engine is not None:
        print(f"Model ready in {time.monotonic() - started:.1f} s.", flush=True)
    return engine, gallery, token


def _serve(
    settings: Settings,
    home: Path,
    token_dir: Path,
    chat: ChatAdapter,
    *,
    model_fix: str,
    started: float,
    on_ready: Callable[[], None] | None = None,
    on_host: Callable[[Host], None] | None = None,
    points: Any = None,
) -> int:
    engine, gallery, token = _prepare(settings, home, token_dir, model_fix, started)
    if engine is None:
        return exit_codes.EXIT_ENGINE
    review_secret = ""
    if settings.review.enabled:
        from generator_host.edges.review.auth import load_or_create_secret

        review_secret = load_or_create_secret(token_dir)

    async def main() -> int:
        host = Host(
            settings,
            home,
            chat,
            engine,
            gallery,
            token,
            review_folder=token_dir,
            review_secret=review_secret,
            points=points,
        )

        def ready(h: Host) -> None:
            print(
                f"OBS link listening on port {h.link.port} "
                f"(script address {'wss' if settings.link.tls_cert else 'ws'}://"
                f"{settings.link.host}:{h.link.port})",
                flush=True,
            )
            if h.review is not None:
                # the one line with the streamer's secret: printed for them, never logged
                print(f"Review page: {h.review.url(review_secret)}", flush=True)
            if on_ready is not None:
                on_ready()
            print("Ready.", flush=True)
            if on_host is not None:
                on_host(h)

        return await host.run(on_ready=ready)

    try:
        return asyncio.run(main())
    except KeyboardInterrupt:
        return 0


def _startup(run: Callable[[], int]) -> int:
    """Run a host; a StartupError becomes its one line on stderr and a non-zero exit."""
    try:
        return run()
    except StartupError as exc:
        print(f"Cannot start: {exc}", file=sys.stderr)
        return exit_codes.EXIT_USAGE


def run_demo(settings: Settings, home: Path) -> int:
    """The demo: tiny built-in model, the terminal as the broadcaster's chat."""
    return _startup(lambda: _run_demo(settings, home))


def _run_demo(settings: Settings, home: Path) -> int:
    from generator_host.edges.chat.console import ConsoleAdapter
    from generator_host.engine.demo_model import build_demo_model, demo_model_settings
    from generator_host.engine.tiny_model import default_tiny_model_dir

    folder = default_tiny_model_dir()
    print(f"Chat Diffusion demo. Tiny random-weight model (builds once): {folder}", flush=True)
    _preflight(settings, home)
    started = time.monotonic()
    try:
        build_demo_model(folder)
    except OSError as exc:
        raise StartupError(
            f"cannot build the demo model in {folder} ({exc.strerror or exc}); "
            "free some disk space there or point XDG_CACHE_HOME at a writable folder"
        ) from None
    demo_model_settings(folder, settings.model)  # the format its planted concept fits
    settings.moderation.user_cooldown_seconds = 0.0

    def hint() -> None:
        print(
            "Type chat commands as the broadcaster, e.g.  !generate a red fox   "
            "(!help lists all; Ctrl-C quits).",
            flush=True,
        )

    return _serve(
        settings,
        home,
        home.parent,
        ConsoleAdapter(),
        model_fix=f"delete {folder} and start the demo again to rebuild it",
        started=started,
        on_ready=hint,
    )


def run_twitch(settings: Settings, home: Path, config_path: Path | None = None) -> int:
    return _startup(lambda: _run_twitch(settings, home, config_path))


def _run_twitch(settings: Settings, home: Path, config_path: Path | None) -> int:
    from generator_host.edges.chat.irc import TwitchAdapter

    keeper, hosts = _chat_login(settings, home)
    adapter = TwitchAdapter(settings.twitch, tokens=keeper)
    points = _channel_points(settings, home, keeper, hosts)
    print(f"Joining #{settings.twitch.channel} on {settings.twitch.host}:{settings.twitch.port}")
    _preflight(settings, home)
    where = f" in {config_path}" if config_path is not None else ""
    fix = f"set [model] model{where} to a model id or a folder with a diffusers model"
    return _serve(
        settings,
        home,
        home,
        adapter,
        model_fix=fix,
        started=time.monotonic(),
        on_host=hosts.append,
        points=points,
    )


def _channel_points(settings: Settings, home: Path, chat_keeper: Any, hosts: list[Host]) -> Any:
    """The channel-point reward when enabled and the broadcaster is logged in (else one
    line, and the stream goes on with chat commands). Shares the chat's TokenKeeper when
    the chat uses the broadcaster's login: one keeper per token file, since each refresh
    uses up the stored refresh token."""
    if not settings.channel_points.enabled:
        return None
    from generator_host.edges.twitch import auth
    from generator_host.edges.twitch.channel_points import ChannelPoints

    own = chat_keeper is None or chat_keeper.account != "broadcaster"
    keeper = chat_keeper
    if own:
        path = auth.token_path(home, "broadcaster")
        tokens = auth.load_tokens(path)
        if tokens is None or not settings.twitch.client_id.strip():
            print("Channel points: off for now: they need [twitch] client_id and the "
                  "broadcaster's login (run 'generator-host login'); chat commands work as "
                  "usual")  # fmt: skip
            return None
        keeper = _keeper(settings, path, tokens, "broadcaster", hosts)
    try:
        return ChannelPoints(settings, keeper, home, run_keeper=own)
    except (OSError, sqlite3.Error) as exc:
        print(f"Channel points: off for now: cannot open their store in {home} ({exc}); "
              "chat commands work as usual")  # fmt: skip
        return None


def _chat_login(settings: Settings, home: Path) -> tuple[Any, list[Host]]:
    """The stored login the chat uses, kept alive (None: the pasted token, as before).

    A dead login is told in OBS's status through the host, once it runs (`hosts`)."""
    from generator_host.edges.twitch import auth

    hosts: list[Host] = []
    if settings.twitch.token:
        print("Twitch: using the pasted token ([twitch] token or CHAT_DIFFUSION_TWITCH_TOKEN)")
        return None, hosts
    found = auth.stored_chat_login(home)
    if found is None:
        return None, hosts
    account, path, tokens = found
    print(f"Twitch: chat as the {account} account {tokens.login!r} (login stored in {path})")
    if not settings.twitch.client_id.strip():
        log.warning("Twitch: [twitch] client_id is empty, so the login cannot be refreshed; "
                    "set it to the Client ID you logged in with")  # fmt: skip
    return _keeper(settings, path, tokens, account, hosts), hosts


def _keeper(settings: Settings, path: Path, tokens: Any, account: str, hosts: list[Host]) -> Any:
    """A TokenKeeper for one stored login; a dead login is told in OBS's status through
    the host, once it runs (`hosts`)."""
    from generator_host.edges.twitch import auth

    def problem(text: str) -> None:
        for host in hosts:
            host.notice(text)

    client = auth.IdClient(settings.twitch.client_id.strip(), settings.twitch.id_url)
    return auth.TokenKeeper(client, path, tokens, account=account, on_problem=problem)
