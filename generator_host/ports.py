"""The shapes the app wires together: a chat adapter, an engine, a gallery.

`typing.Protocol`s, so the app, the bench and the tests name one contract and any object
of that shape fits (the IRC and console adapters, the real Engine, the Gallery, or a
stand-in in a test). No behaviour here; see docs/architecture.md for the contracts.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from generator_host.core.approval import Tile
from generator_host.core.generation import (
    Entry,
    GenerationParams,
    GenerationRequest,
    GenerationResult,
)
from generator_host.core.message import ChatEvent

OnStep = Callable[[int, int], None]


class ChatAdapter(Protocol):
    """Chat in and out: Twitch IRC (edges/chat/irc.py) or the terminal (console.py)."""

    async def run(self, on_event: Callable[[ChatEvent], None]) -> None:
        """Connect, read for ever (reconnecting), hand each chat event to `on_event`."""

    async def say(self, text: str, reply_to: str = "") -> None:
        """Send one message (threaded to `reply_to` when given), within the send limit."""

    async def close(self) -> None: ...


class EngineLike(Protocol):
    """The diffusion engine (engine/pipeline.py), called on the worker thread only."""

    safety: Any  # the SafetyJudge: `safety.offset` applies to the next verdict

    def load(self) -> None:
        """Load the pipeline and the checker; raises EngineError with a clear reason."""

    def generate(
        self,
        params: GenerationParams,
        request: GenerationRequest | None = None,
        *,
        on_step: OnStep | None = None,
        cancelled: threading.Event | None = None,
    ) -> GenerationResult: ...

    def generate_many(
        self,
        params: Sequence[GenerationParams],
        requests: Sequence[GenerationRequest | None] | None = None,
        *,
        on_step: OnStep | None = None,
        cancelled: Sequence[threading.Event | None] | None = None,
    ) -> list[Any]: ...


class GalleryLike(Protocol):
    """The picture store (edges/gallery.py): stores and renders what the core decides."""

    legacy_folder: Path | None

    def add(
        self, result: GenerationResult, approval_mode: str, prompt_action: str = "refuse"
    ) -> Entry: ...

    def get(self, entry_id: int) -> Entry | None: ...

    def screen_png(self, entry_id: int, tiles: Sequence[Tile]) -> bytes | None: ...

    def record(self, entry_id: int, outcome: str, approved: Sequence[int] = ()) -> Entry: ...

    def publish_legacy(self, entry_id: int | None, tiles: Sequence[Tile] = ()) -> None: ...
