"""The host's edges, wired on one asyncio loop: chat, show, engine worker, gallery, link.

The show decides; this module only carries out its effects and turns the outside world
(chat lines, finished generations, OBS buttons, the clock) into the show's events. The
loop never waits on the GPU or the disk: generation, saving and PNG encoding run on a
single worker thread, file I/O on the default executor.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from generator_host.core import show as show_mod
from generator_host.core.generation import Entry, GenerationRequest
from generator_host.core.message import ChatEvent
from generator_host.core.settings import Settings
from generator_host.edges.chat.irc import LoginFailed
from generator_host.edges.files import write_atomic
from generator_host.engine.pipeline import EngineError
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
        chat: Any,
        engine: Any,
        gallery: Any,
        link_token: str,
    ) -> None:
        self.settings = settings
        self.home = home
        self.chat = chat
        self.engine = engine
        self.gallery = gallery
        self.link_token = link_token
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")
        self.show = show_mod.Show(settings, self._load_state())
        for problem in self.show.problems:
            log.warning("settings: %s", problem)
        self.link: Any = None
        self.stopped = asyncio.Event()
        self.exit_code = 0
        self.on_screen: dict[str, Any] | None = None  # last `show` frame, resent on connect
        self.status_frame: dict[str, Any] | None = None
        self._cancel_flags: dict[str, threading.Event] = {}
        self._state_dirty = False
        self._display_lock = asyncio.Lock()
        self._stop_reason = "host is shutting down"
        self._state_save_failing = False
        self._state_saved = b""
        self._loop: asyncio.AbstractEventLoop | None = None

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

    async def _save_state_soon(self) -> None:
        if self._state_dirty:
            return
        self._state_dirty = True
        await asyncio.sleep(0.2)
        self._state_dirty = False
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
        """Hand one event to the show and carry out what it decides (on the loop thread)."""
        try:
            effects = self.show.handle(event)
        except Exception:  # the show is pure; a bug there must not kill the stream
            log.exception("the show failed on %r", type(event).__name__)
            return
        for effect in effects:
            asyncio.ensure_future(self._execute(effect))
        asyncio.ensure_future(self._save_state_soon())

    def on_chat(self, event: ChatEvent) -> None:
        self.feed(event)

    def on_link_message(self, msg: dict[str, Any]) -> None:
        """A message from an OBS script: settings or a button/hotkey action."""
        now = time.monotonic()
        kind = msg.get("type")
        if kind == "action":
            action = str(msg.get("action", ""))
            arg = str(msg.get("arg", "") or "")
            self.feed(show_mod.StreamerAction(action=action, arg=arg, now=now))
        elif kind == "settings":
            self._apply_obs_settings(msg)
            self.feed(show_mod.SettingsChanged(now=now))

    def _apply_obs_settings(self, values: dict[str, Any]) -> None:
        """Apply the script's panel settings (already validated by the protocol module)."""
        s = self.settings
        s.safety.threshold_offset = float(values["threshold_offset"])
        if self.engine is not None and getattr(self.engine, "safety", None) is not None:
            self.engine.safety.offset = s.safety.threshold_offset
        s.show.grid = int(values["grid"])
        s.safety.approval_mode = values["approval_mode"]
        s.show.slideshow_seconds = float(values["slideshow_seconds"])
        s.gallery.save_images = bool(values["save_images"])
        log.info(
            "OBS settings: offset %+.4f, grid %d, approval %s, slideshow %gs, save %s",
            s.safety.threshold_offset,
            s.show.grid,
            s.safety.approval_mode,
            s.show.slideshow_seconds,
            s.gallery.save_images,
        )

    # ---- effects out --------------------------------------------------------------------
    async def _execute(self, effect: Any) -> None:
        try:
            if isinstance(effect, show_mod.StartGeneration):
                await self._generate([effect.request])
            elif isinstance(effect, show_mod.StartBatch):
                await self._generate(list(effect.requests))
            elif isinstance(effect, show_mod.CancelGeneration):
                flag = self._cancel_flags.get(effect.request_id)
                if flag is not None:
                    flag.set()
            elif isinstance(effect, show_mod.Display):
                await self._display(effect.entry_id, effect.reveal)
            elif isinstance(effect, show_mod.Approve):
                # under the display lock: the Display(reveal) that follows must see it approved
                async with self._display_lock:
                    loop = asyncio.get_running_loop()
                    await loop.run_in_executor(None, self.gallery.approve, effect.entry_id)
            elif isinstance(effect, show_mod.Reply):
                await self.chat.say(effect.text, effect.reply_to)
            elif isinstance(effect, show_mod.Status):
                await self._status(effect.text)
            elif isinstance(effect, show_mod.Shutdown):
                self._stop_reason = "the host was terminated from chat"  # link.stop says bye
                self.stopped.set()
            else:
                log.warning("unknown effect %r", effect)
        except Exception:
            log.exception("carrying out %s failed", type(effect).__name__)

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
            tell(show_mod.GenerationProgress(live, step, total, now=time.monotonic()))

        def work() -> list[Any]:
            tell(show_mod.GenerationStarted(requests[0].id, now=time.monotonic()))
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

    def _store(self, result: Any) -> Any:
        """On the worker: a finished result into the gallery (an error passes through)."""
        if isinstance(result, BaseException):
            return result
        try:
            return self.gallery.add(result, self.settings.safety.approval_mode)
        except Exception as exc:  # noqa: BLE001 - one unsaved result must not sink its batch
            return exc

    def _outcome_event(self, request: GenerationRequest, outcome: Any) -> Any:
        """GenerationFinished for a stored entry, else GenerationFailed with a chat-fit reason."""
        if isinstance(outcome, BaseException):
            if not isinstance(outcome, EngineError):  # Cancelled, OutOfMemory: expected
                log.error("generation %s failed", request.id, exc_info=outcome)
            reason = str(outcome) or type(outcome).__name__
            return show_mod.GenerationFailed(request.id, reason=reason, now=time.monotonic())
        entry: Entry = outcome
        log.info(
            "image %d for @%s ready (%s): %s",
            entry.id,
            entry.requester,
            entry.outcome,
            entry.prompt[:80],
        )
        return show_mod.GenerationFinished(request.id, entry=entry, now=time.monotonic())

    async def _display(self, entry_id: int | None, reveal: bool) -> None:
        # Each Display runs as its own task and awaits the disk; the lock (FIFO) keeps the
        # frames reaching OBS in the order the show decided, so the screen never ends up
        # on an older picture.
        async with self._display_lock:
            await self._display_now(entry_id, reveal)
            if self.gallery.legacy_folder is not None:
                # for set-ups without the script: stream.png and texts, after OBS's frame
                loop = asyncio.get_running_loop()
                await loop.run_in_executor(None, self.gallery.publish_legacy, entry_id, reveal)

    async def _display_now(self, entry_id: int | None, reveal: bool) -> None:
        loop = asyncio.get_running_loop()
        if entry_id is None:
            self.on_screen = None
            await self._broadcast(protocol.make_clear())
            return
        entry = await loop.run_in_executor(None, self.gallery.get, entry_id)
        png = await loop.run_in_executor(None, self.gallery.screen_png, entry_id, reveal)
        if entry is None or png is None:
            log.warning("entry %s has no image to show", entry_id)
            return
        frame = protocol.make_show(
            entry.id,
            png,
            requester=entry.requester,
            prompt=entry.prompt,
            held=entry.outcome == "held" and not reveal,
            blurred=entry.outcome == "blurred" and not reveal,
        )
        self.on_screen = frame
        await self._broadcast(frame)

    async def _status(self, text: str) -> None:
        progress = getattr(self.show, "_progress", None) or (0, 0)
        self.status_frame = protocol.make_status(
            text, step=progress[0], total=progress[1], queue=self.show.queued
        )
        await self._broadcast(self.status_frame)

    async def _broadcast(self, frame: dict[str, Any]) -> None:
        if self.link is not None:
            await self.link.broadcast(frame)

    def initial_state(self) -> list[dict[str, Any]]:
        """What a newly connected OBS needs: what is on screen now and the status."""
        return [protocol.make_state(self.on_screen, self.status_frame)]

    # ---- the loop -----------------------------------------------------------------------
    async def _ticker(self) -> None:
        while not self.stopped.is_set():
            await asyncio.sleep(TICK_SECONDS)
            self.feed(show_mod.Tick(now=time.monotonic()))

    async def run(self, on_ready: Callable[[Any], None] | None = None) -> int:
        from generator_host.edges.link import LinkServer

        self._loop = asyncio.get_running_loop()
        # What was on screen before a restart is ready before the first OBS connects.
        for effect in self.show.resume(time.monotonic()):
            await self._execute(effect)
        self.link = LinkServer(
            self.settings.link, self.link_token, self.on_link_message, self.initial_state
        )
        await self.link.start()
        with contextlib.suppress(NotImplementedError, RuntimeError):
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._loop.add_signal_handler(sig, self.stopped.set)
        # Resume the queue.
        self.feed(show_mod.SettingsChanged(now=time.monotonic()))
        if on_ready is not None:
            on_ready(self)
        chat_task = asyncio.ensure_future(self.chat.run(self.on_chat))
        ticker = asyncio.ensure_future(self._ticker())
        stop_task = asyncio.ensure_future(self.stopped.wait())
        done, _ = await asyncio.wait({chat_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
        if chat_task in done and not self.stopped.is_set():
            exc = chat_task.exception()
            if exc is not None:
                self.exit_code = _exit_code_for(exc)
            else:
                await self._drain()
        ticker.cancel()
        for cancel in self._cancel_flags.values():
            cancel.set()
        chat_task.cancel()
        with contextlib.suppress(Exception):
            await self.chat.close()
        await self.link.stop(self._stop_reason)
        self.worker.shutdown(wait=True, cancel_futures=True)
        await self._write_state()  # last, after every task that could change the show
        return self.exit_code

    async def _drain(self) -> None:
        """End of input (a piped demo): finish what is queued, then stop."""
        while not self.stopped.is_set() and (
            self.show.running or self.show.queued or self.show.on_deck
        ):
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.3)  # let the last image reach OBS


def _exit_code_for(exc: BaseException) -> int:
    from generator_host.cli import EXIT_ENGINE, EXIT_LOGIN

    if isinstance(exc, LoginFailed):
        print(f"Twitch login failed: {exc}", file=sys.stderr)
        return EXIT_LOGIN
    log.error("chat connection ended: %s", exc)
    return EXIT_ENGINE


def _load_engine(settings: Settings) -> Any:
    from generator_host.engine.pipeline import Engine, EngineError

    engine = Engine(settings.model, settings.safety)
    try:
        engine.load()
    except EngineError as exc:
        print(f"Cannot load the model: {exc}", file=sys.stderr)
        return None
    return engine


def _prepare(settings: Settings, home: Path, token_dir: Path) -> tuple[Any, Any, str]:
    from generator_host.edges.gallery import Gallery
    from generator_host.edges.link import load_or_create_token

    home.mkdir(parents=True, exist_ok=True)
    gallery = Gallery.from_settings(settings.gallery, home / "gallery")
    gallery_dir = gallery.folder
    token_path = token_dir / "link-token"
    token = settings.link.token or load_or_create_token(token_path)
    print(f"Gallery folder: {gallery_dir}")
    if settings.link.token:
        print("OBS link token: from the config file (give it to the OBS script)")
    else:
        print(f"OBS link token file: {token_path} (the OBS script on this computer reads it)")
    engine = _load_engine(settings)
    return engine, gallery, token


def _serve(settings: Settings, home: Path, token_dir: Path, chat: Any) -> int:
    from generator_host.cli import EXIT_ENGINE

    engine, gallery, token = _prepare(settings, home, token_dir)
    if engine is None:
        return EXIT_ENGINE

    async def main() -> int:
        host = Host(settings, home, chat, engine, gallery, token)

        def ready(h: Host) -> None:
            print(
                f"OBS link listening on port {h.link.port} "
                f"(script address {'wss' if settings.link.tls_cert else 'ws'}://"
                f"{settings.link.host}:{h.link.port})",
                flush=True,
            )
            print("Ready.", flush=True)

        return await host.run(on_ready=ready)

    try:
        return asyncio.run(main())
    except KeyboardInterrupt:
        return 0


def run_demo(settings: Settings, home: Path) -> int:
    """The demo: tiny built-in model, the terminal as the broadcaster's chat."""
    from generator_host.edges.chat.console import ConsoleAdapter
    from generator_host.engine.tiny_model import build_tiny_model, default_tiny_model_dir

    folder = default_tiny_model_dir()
    print(f"Chat Diffusion demo. Tiny random-weight model (builds once): {folder}", flush=True)
    started = time.monotonic()
    build_tiny_model(folder)
    print(f"Model ready in {time.monotonic() - started:.1f} s.", flush=True)
    settings.model.model = str(folder)
    settings.model.device = "cpu"
    settings.moderation.user_cooldown_seconds = 0.0
    print(
        "Type chat commands as the broadcaster, e.g.  !generate a red fox   (!help lists all; "
        "Ctrl-C quits).",
        flush=True,
    )
    return _serve(settings, home, home.parent, ConsoleAdapter())


def run_twitch(settings: Settings, home: Path) -> int:
    from generator_host.edges.chat.irc import TwitchAdapter

    print(f"Joining #{settings.twitch.channel} on {settings.twitch.host}:{settings.twitch.port}")
    return _serve(settings, home, home, TwitchAdapter(settings.twitch))
