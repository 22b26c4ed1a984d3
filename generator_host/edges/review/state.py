"""What the review page shows, as one JSON-able dict built from the show and the gallery.

Two halves: `show_part` reads the show on the loop thread (it is not thread-safe, and it
is cheap): its entries and, per tile, what the stream shows (`approval.entry_tiles`, the
same policy that makes `Display`); `gallery_part` then reads the safety scores from the
PNG metadata on a worker thread (disk). The page gets image URLs, never image bytes, in
this state; the URLs only answer to an authenticated page (server.py).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from generator_host.core import approval
from generator_host.core import settings as settings_mod
from generator_host.core.approval import APPROVABLE, Tile

HELD_SHOWN = 12  # pictures waiting for review on the page, newest first
HISTORY_SHOWN = 12


def _entry(entry: Any) -> dict[str, Any]:
    tiles = approval.entry_tiles(entry)
    filtered = [t is not Tile.CLEAR for t in tiles]
    return {
        "id": entry.id,
        "requester": entry.requester,
        "prompt": entry.prompt,
        "negative_prompt": entry.negative_prompt,
        "seed": entry.seed,
        "count": entry.count,
        "outcome": str(entry.outcome),
        "filtered": filtered,
        # changes whenever a decision changes what the stream shows (image URLs carry it)
        "version": "".join(t.value[0] for t in tiles),
    }


def show_part(host: Any, now: float) -> dict[str, Any]:
    """The show's side (on the loop thread): screen, waiting pictures, queue, settings."""
    show, s = host.show, host.settings
    history = show.history
    queue = [
        {
            "position": position,
            "requester": r.requester.name,
            "login": r.requester.login,
            "prompt": r.params.prompt,
            "eta": round(show.eta(position, now)),
        }
        for position, r in enumerate(show.queue_order(), 1)
    ]
    running = [
        {"requester": r.requester.name, "login": r.requester.login, "prompt": r.params.prompt}
        for r in show.running_batch
    ]
    status = (host.status_frame or {}).get("text", "")
    return {
        "on_screen": show.on_screen,
        "held": [_entry(e) for e in waiting(show)][:HELD_SHOWN],
        "history": [_entry(e) for e in reversed(history)][:HISTORY_SHOWN],
        "queue": queue,
        "running": running,
        "status": status,
        "settings": live_settings(s),
    }


def waiting(show: Any) -> list[Any]:
    """Pictures waiting for review, newest first: blurred and held ones in the history and
    the skipped ones the show still remembers (never on screen, so not in the history)."""
    found = [e for e in show.history if e.outcome in APPROVABLE]
    found += [e for e, _msg in show.withheld.values() if e.outcome in APPROVABLE]
    return sorted(found, key=lambda e: e.id, reverse=True)


def find(show: Any, entry_id: int) -> Any:
    """The show's entry with this id (history or skipped), or None."""
    entry = show.screen.entry(entry_id)
    if entry is None and entry_id in show.withheld:
        entry = show.withheld[entry_id][0]
    return entry


def live_settings(s: Any) -> dict[str, Any]:
    """The host's live values the review page may change (declared in core/settings.py),
    by key: threshold_offset, approval_mode, grid, slideshow_seconds, save_images."""
    return {name.split(".", 1)[1]: v for name, v in settings_mod.live_values(s, "review").items()}


def may_change(role: str) -> list[str]:
    """The live settings this role may change from the page (the declarations say)."""
    found = settings_mod.live_declarations("review")
    return [d.key for d in found if d.spec.live.allows("review", role)]


@functools.lru_cache(maxsize=256)
def _safety_of(path: str, _stamp: float) -> dict[str, Any] | None:
    from generator_host.edges.gallery import read_png_metadata

    try:
        meta = read_png_metadata(Path(path))["meta"] or {}
    except (OSError, ValueError, SyntaxError):
        return None
    return meta.get("safety")


def summarize(safety: dict[str, Any] | None) -> dict[str, Any] | None:
    """Why a tile is flagged (or not), from its PNG metadata's `safety`: the line the
    page shows (`why`), then which concept or category came closest to (or past) its
    threshold, and by how much.

    `flagged` is the image's own verdict; `prompt_flagged` the categories its prompt came
    too close to (under prompt_action "hold" or "flag" every tile then counts as flagged,
    approval.tile_flags), so `why` names those and no threshold line for a clean image.
    `score` is the margin the verdict used: the checker's score minus its threshold plus
    the streamer's offset at the time, or a category's best cosine minus its threshold
    (positive: past the threshold). `categories` and `prompt` list every category's
    score for the tile and for the prompt (when it was checked), highest first.
    """
    if not safety:
        return None
    by_prompt = [str(n) for n in safety.get("prompt_flagged") or []]
    scores = safety.get("scores") or {}
    offset = float(safety.get("offset") or 0.0)
    named = [(f"concept {i + 1}", v + offset) for i, v in enumerate(scores.get("concept") or [])]
    named += [(f"special {i + 1}", v + offset) for i, v in enumerate(scores.get("special") or [])]
    if not named and not by_prompt:
        return None
    # The streamer's categories (core/categories.py): their own thresholds, no offset.
    categories = {str(k): float(v) for k, v in (scores.get("categories") or {}).items()}
    named += list(categories.items())
    worst, score = max(named, key=lambda kv: kv[1]) if named else ("", 0.0)
    tripped = [n for n, v in sorted(named, key=lambda kv: -kv[1]) if v > 0]
    prompt = {str(k): float(v) for k, v in (safety.get("prompt_scores") or {}).items()}
    flagged = bool(safety.get("flagged"))
    return {
        "flagged": flagged,
        "why": _why(flagged, worst, float(score), tripped, by_prompt),
        "worst": worst,
        "score": round(float(score), 4),
        "tripped": tripped[:5],
        "offset": offset,
        "categories": [
            {"name": n, "score": round(v, 4)}
            for n, v in sorted(categories.items(), key=lambda kv: -kv[1])
        ],
        "prompt": [
            {"name": n, "score": round(v, 4)}
            for n, v in sorted(prompt.items(), key=lambda kv: -kv[1])
        ],
        "prompt_flagged": by_prompt,
    }


def _why(flagged: bool, worst: str, score: float, tripped: list[str], by_prompt: list[str]) -> str:
    """The tile's verdict in words: the image's own first, or the prompt's when only the
    prompt was too close (a clean image's scores are then context, not the reason)."""
    prompt = f"the prompt was too close to {', '.join(by_prompt)}" if by_prompt else ""
    if flagged:
        image = f"flagged: {', '.join(tripped[:5]) or worst} ({score:+.3f} past the threshold)"
        return f"{image}; {prompt}" if prompt else image
    image = f"closest {worst} ({score:+.3f})" if worst else "not checked"
    return f"flagged: {prompt} (the image itself: {image})" if prompt else f"ok: {image}"


def gallery_part(gallery: Any, part: dict[str, Any]) -> dict[str, Any]:
    """Add each waiting picture's tiles (filtered now? safety scores) from the gallery."""
    for entry in part["held"]:
        filtered = entry.pop("filtered")
        tiles = []
        for k, is_filtered in enumerate(filtered):
            path = gallery.tile_path(entry["id"], k)
            safety = None
            if path is not None:
                try:
                    safety = _safety_of(str(path), path.stat().st_mtime)
                except OSError:
                    safety = None
            tiles.append({"n": k + 1, "filtered": is_filtered, "safety": summarize(safety)})
        entry["tiles"] = tiles
    for entry in part["history"]:
        entry.pop("filtered", None)
    return part
