"""The gallery: every image as a PNG with metadata, a SQLite history, held images kept private.

Layout under the gallery folder:
    images/YYYY-MM/<id>-<n>.png   public: shown images (and flagged ones once approved)
    held/<id>-<n>.png             private: flagged images until approved (or for ever)
    history.sqlite3               the index: survives restarts, instant at 10,000 entries
File names come from the entry id only, never from chat text. Disk trouble (a full disk,
a read-only folder) is logged once and never stops an image being shown: the tiles of
recent entries are kept in memory and the screen image is composed from them.
"""

from __future__ import annotations

import io
import json
import logging
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin

from generator_host.core import approval
from generator_host.core.approval import Tile
from generator_host.core.generation import Entry, GenerationResult, safety_line
from generator_host.core.settings import GallerySettings
from generator_host.edges.files import replace_retrying, write_atomic
from generator_host.engine import grid

log = logging.getLogger(__name__)

METADATA_KEY = "chat-diffusion"  # iTXt chunk holding the JSON metadata
MEMORY_ENTRIES = 16  # recent entries whose tiles stay in memory

SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL,
    requester TEXT NOT NULL,
    prompt TEXT NOT NULL,
    negative_prompt TEXT NOT NULL,
    seed INTEGER NOT NULL,
    steps INTEGER NOT NULL,
    guidance REAL NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    count INTEGER NOT NULL,
    model TEXT NOT NULL,
    outcome TEXT NOT NULL,
    created REAL NOT NULL,
    mode TEXT NOT NULL,
    flagged TEXT NOT NULL,
    files TEXT NOT NULL,
    requester_login TEXT NOT NULL DEFAULT '',
    approved TEXT NOT NULL DEFAULT '[]',
    safety TEXT NOT NULL DEFAULT ''
);
"""
# Columns added after the first release: an older history file gets them on open.
ADDED_COLUMNS = {
    "requester_login": "TEXT NOT NULL DEFAULT ''",
    "approved": "TEXT NOT NULL DEFAULT '[]'",
    "safety": "TEXT NOT NULL DEFAULT ''",
}
COLUMNS = (
    "id",
    "request_id",
    "requester",
    "prompt",
    "negative_prompt",
    "seed",
    "steps",
    "guidance",
    "width",
    "height",
    "count",
    "model",
    "outcome",
    "created",
    "mode",
    "flagged",
    "files",
    "requester_login",
    "approved",
    "safety",
)


def _clean(text: str) -> str:
    """Chat text for metadata: control characters become spaces (a newline would forge keys)."""
    return "".join(c if c.isprintable() else " " for c in text).strip()


def parameters_text(result: GenerationResult, index: int) -> str:
    """AUTOMATIC1111's `parameters` text for one tile, so common PNG-info tools read it."""
    p = result.used_params
    img = result.images[index]
    return (
        f"{_clean(p.prompt)}\n"
        f"Negative prompt: {_clean(p.negative_prompt)}\n"
        f"Steps: {p.steps}, Sampler: {result.sampler}, CFG scale: {float(p.guidance)}, "
        f"Seed: {img.seed}, Size: {img.image.width}x{img.image.height}, "
        f"Model: {_clean(result.model)}"
    )


class Gallery:
    """PNG files + SQLite history; thread-safe, so saving can run off the event loop."""

    def __init__(
        self,
        folder: Path,
        *,
        save_images: bool = True,
        legacy_folder: Path | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.public_dir = self.folder / "images"
        self.held_dir = self.folder / "held"
        self.save_images = save_images
        self.legacy_folder = Path(legacy_folder) if legacy_folder else None
        self._lock = threading.RLock()
        self._tiles: OrderedDict[int, list[Image.Image]] = OrderedDict()
        self._memory_rows: dict[int, dict[str, Any]] = {}  # entries the DB could not take
        self._reported: set[str] = set()
        self._db = self._open_db()
        self._settings: GallerySettings | None = None

    @classmethod
    def from_settings(cls, settings: GallerySettings, default_folder: Path) -> Gallery:
        """A gallery that follows [gallery] live: turning save_images off applies at once."""
        folder = Path(settings.folder).expanduser() if settings.folder else Path(default_folder)
        legacy = None
        if settings.legacy_files:
            legacy = Path(settings.legacy_folder).expanduser() if settings.legacy_folder else None
            legacy = legacy or folder / "stream"
        gallery = cls(folder, save_images=settings.save_images, legacy_folder=legacy)
        gallery._settings = settings
        return gallery

    @property
    def saving(self) -> bool:
        return self._settings.save_images if self._settings is not None else self.save_images

    # ----- storage helpers -------------------------------------------------------------
    def _open_db(self) -> sqlite3.Connection:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.folder / "history.sqlite3", check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(SCHEMA)
            have = {r[1] for r in db.execute("PRAGMA table_info(entries)")}
            with db:
                for name, kind in ADDED_COLUMNS.items():
                    if name not in have:
                        db.execute(f"ALTER TABLE entries ADD COLUMN {name} {kind}")
            return db
        except (OSError, sqlite3.Error) as exc:
            self._report(
                "db",
                f"cannot open the history in {self.folder}: {exc}; "
                "history is kept in memory until restart",
            )
            db = sqlite3.connect(":memory:", check_same_thread=False)
            db.executescript(SCHEMA)
            return db

    def _report(self, kind: str, message: str) -> None:
        """Log a disk problem once per kind, so a full disk does not flood the log."""
        if kind not in self._reported:
            self._reported.add(kind)
            log.error("gallery: %s", message)

    def _save(self, path: Path, data: bytes) -> bool:
        try:
            write_atomic(path, data)
            return True
        except OSError as exc:
            self._report("write", f"cannot write {path} ({exc}); images are still shown")
            return False

    # ----- adding ------------------------------------------------------------------------
    def add(
        self, result: GenerationResult, approval_mode: str, prompt_action: str = "refuse"
    ) -> Entry:
        """Store a finished request as the approval policy judges it (`approval.judge`:
        its mode, the tiles that count as flagged and the outcome), from the images'
        verdicts, the streamer's approval mode and [safety] prompt_action."""
        if not result.images:
            raise ValueError("a result without images cannot be added to the gallery")
        req = result.request
        judged = approval.judge(
            [bool(img.flagged) for img in result.images],
            approval_mode,
            req.prompt_flagged,
            prompt_action,
        )
        mode, flagged, outcome = judged.mode, list(judged.flagged), judged.outcome
        p = result.used_params
        created = time.time()
        row = {
            "request_id": req.id,
            "requester": _clean(req.requester.name),
            "prompt": _clean(p.prompt),
            "negative_prompt": _clean(p.negative_prompt),
            "seed": int(result.images[0].seed),
            "steps": p.steps,
            "guidance": float(p.guidance),
            "width": result.images[0].image.width,
            "height": result.images[0].image.height,
            "count": len(result.images),
            "model": _clean(result.model),
            "outcome": outcome.value,
            "created": created,
            "mode": mode,
            "flagged": json.dumps(flagged),
            "files": "[]",
            "requester_login": _clean(req.requester.login),
            "approved": "[]",
            "safety": safety_line(
                [img.scores for img in result.images],
                float(result.extra.get("safety_offset") or 0.0),
                req.prompt_scores,
            ),
        }
        with self._lock:
            entry_id = self._insert(row)
            self._remember(entry_id, [img.image for img in result.images])
            files = self._save_tiles(entry_id, result, mode, flagged, created)
            self._update(entry_id, files=json.dumps(files))
            entry = self.get(entry_id)
        assert entry is not None
        return entry

    def _insert(self, row: dict[str, Any]) -> int:
        names = ", ".join(row)
        sql = f"INSERT INTO entries ({names}) VALUES ({','.join('?' * len(row))})"
        try:
            with self._db:
                cur = self._db.execute(sql, tuple(row.values()))
            return int(cur.lastrowid)
        except sqlite3.Error as exc:
            self._report("db-write", f"cannot write the history ({exc}); kept in memory")
            top = self._db.execute("SELECT COALESCE(MAX(id), 0) FROM entries").fetchone()[0]
            entry_id = max([int(top), *self._memory_rows]) + 1
            self._memory_rows[entry_id] = {"id": entry_id, **row}
            return entry_id

    def _update(self, entry_id: int, **values: Any) -> None:
        if entry_id in self._memory_rows:
            self._memory_rows[entry_id].update(values)
            return
        sets = ", ".join(f"{k} = ?" for k in values)
        try:
            with self._db:
                self._db.execute(
                    f"UPDATE entries SET {sets} WHERE id = ?", (*values.values(), entry_id)
                )
        except sqlite3.Error as exc:
            self._report("db-write", f"cannot write the history ({exc})")

    def _remember(self, entry_id: int, tiles: list[Image.Image]) -> None:
        self._tiles[entry_id] = tiles
        self._tiles.move_to_end(entry_id)
        while len(self._tiles) > MEMORY_ENTRIES:
            self._tiles.popitem(last=False)

    def _tile_path(self, entry_id: int, index: int, public: bool, created: float) -> Path:
        name = f"{entry_id:06d}-{index + 1}.png"
        if not public:
            return self.held_dir / name
        month = datetime.fromtimestamp(created, tz=timezone.utc).strftime("%Y-%m")
        return self.public_dir / month / name

    def _save_tiles(
        self,
        entry_id: int,
        result: GenerationResult,
        mode: str,
        flagged: list[bool],
        created: float,
    ) -> list[str]:
        """Write each tile as PNG + metadata; flagged tiles go to the private folder."""
        files: list[str] = []
        if not self.saving:
            return files
        checked = mode != "off" and bool(result.extra.get("safety_enabled", True))
        for k in range(len(result.images)):
            public = not flagged[k] or mode == "off"
            path = self._tile_path(entry_id, k, public, created)
            data = self._png_bytes(result, k, entry_id, mode, checked, created)
            files.append(str(path.relative_to(self.folder)) if self._save(path, data) else "")
        return files

    def _png_bytes(
        self,
        result: GenerationResult,
        k: int,
        entry_id: int,
        mode: str,
        checked: bool,
        created: float,
    ) -> bytes:
        img = result.images[k]
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", parameters_text(result, k))
        scores = img.scores.to_dict() if img.scores is not None else None
        meta = {
            "entry": entry_id,
            "tile": k + 1,
            "request_id": result.request.id,
            "requester": _clean(result.request.requester.name),
            "requester_login": _clean(result.request.requester.login),
            "time": datetime.fromtimestamp(created, tz=timezone.utc).isoformat(),
            "safety": {
                "scores": scores,
                # the image's own verdict (the engine's); the approval mode also counts it
                # flagged when its prompt was (`prompt_flagged`, approval.tile_flags)
                "flagged": bool(img.flagged),
                # the streamer's categories that flagged it (the checker's own verdict is
                # the rest of `flagged`)
                "categories_flagged": img.scores.flagged_categories if img.scores else [],
                # the prompt's scores against the categories that apply to prompts (when
                # checked) and those it came too close to (prompt_action = "hold"/"flag")
                "prompt_scores": dict(result.request.prompt_scores),
                "prompt_flagged": list(result.request.prompt_flagged),
                "verdict": ("flagged" if img.flagged else "ok")
                if scores is not None
                else "unchecked",
                "offset": result.extra.get("safety_offset"),
                "approval_mode": mode,
                "checked": checked,
            },
            # how the picture was made: which decoder and number format (issue 16)
            "decoder": result.extra.get("decoder", "full"),
            "decoder_source": result.extra.get("decoder_source", ""),
            "precision": result.extra.get("dtype"),
        }
        info.add_itxt(METADATA_KEY, json.dumps(meta))
        buf = io.BytesIO()
        img.image.convert("RGB").save(buf, format="PNG", pnginfo=info)
        return buf.getvalue()

    # ----- reading -------------------------------------------------------------------------
    def _row(self, entry_id: int) -> dict[str, Any] | None:
        if entry_id in self._memory_rows:
            return self._memory_rows[entry_id]
        cur = self._db.execute(
            f"SELECT {', '.join(COLUMNS)} FROM entries WHERE id = ?", (entry_id,)
        )
        found = cur.fetchone()
        return dict(zip(COLUMNS, found, strict=True)) if found else None

    @staticmethod
    def _entry(row: dict[str, Any]) -> Entry:
        return Entry(
            **{k: row[k] for k in COLUMNS if k not in ("flagged", "approved", "files")},
            flagged=tuple(bool(f) for f in json.loads(row["flagged"] or "[]")),
            approved=tuple(int(k) for k in json.loads(row["approved"] or "[]")),
        )

    def get(self, entry_id: int) -> Entry | None:
        """The entry with this id, or None."""
        with self._lock:
            row = self._row(int(entry_id))
        return self._entry(row) if row else None

    def recent(self, n: int) -> list[Entry]:
        """The n newest entries, newest first (what was stored; the show keeps the history
        that !prev, !next and the slideshow walk)."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {', '.join(COLUMNS)} FROM entries ORDER BY id DESC LIMIT ?",
                (max(0, int(n)),),
            ).fetchall()
            found = [dict(zip(COLUMNS, r, strict=True)) for r in rows]
            found += list(self._memory_rows.values())
        entries = [self._entry(r) for r in found]
        return sorted(entries, key=lambda e: e.id, reverse=True)[: max(0, int(n))]

    def _load_tiles(self, entry_id: int, row: dict[str, Any]) -> list[Image.Image] | None:
        if entry_id in self._tiles:
            return self._tiles[entry_id]
        files = json.loads(row["files"] or "[]")
        if not files or not all(files):
            return None
        tiles = []
        try:
            for rel in files:
                with Image.open(self.folder / rel) as im:
                    tiles.append(im.convert("RGB"))
        except OSError as exc:
            self._report("read", f"cannot read entry {entry_id}'s images ({exc})")
            return None
        self._remember(entry_id, tiles)
        return tiles

    def screen_image(self, entry_id: int, tiles: Sequence[Tile]) -> Image.Image | None:
        """The grid as the approval policy says it appears on stream (`Display.tiles`);
        None when nothing may be shown or the images are gone."""
        if not approval.visible(tiles):
            return None
        with self._lock:
            row = self._row(int(entry_id))
            if row is None:
                return None
            images = self._load_tiles(int(entry_id), row)
        if images is None or len(images) != len(tiles):
            return None
        return grid.render(images, tiles)

    def screen_png(self, entry_id: int, tiles: Sequence[Tile]) -> bytes | None:
        """`screen_image` as PNG bytes, ready for the OBS link; None when nothing is shown."""
        image = self.screen_image(entry_id, tiles)
        if image is None:
            return None
        buf = io.BytesIO()
        image.save(buf, format="PNG", compress_level=1)
        return buf.getvalue()

    def tile_image(self, entry_id: int, index: int) -> Image.Image | None:
        """One tile as generated (unfiltered), for the private review page only; None when
        the entry or its files are gone (a rejected entry has none)."""
        with self._lock:
            row = self._row(int(entry_id))
            if row is None or row["outcome"] == approval.Outcome.REJECTED:
                return None
            tiles = self._load_tiles(int(entry_id), row)
        if tiles is None or not 0 <= index < len(tiles):
            return None
        return tiles[index]

    def tile_path(self, entry_id: int, index: int) -> Path | None:
        """Where a tile's PNG is on disk (public or held), or None when it was not saved."""
        with self._lock:
            row = self._row(int(entry_id))
        if row is None:
            return None
        files = json.loads(row["files"] or "[]")
        if not 0 <= index < len(files) or not files[index]:
            return None
        return self.folder / files[index]

    # ----- approval ------------------------------------------------------------------------
    def record(self, entry_id: int, outcome: str, approved: Sequence[int] = ()) -> Entry:
        """Store an approval decision (`approval.approve` / `approval.reject` made it).

        The files follow what the stream may show: a held tile that is now clear moves to
        the public folder; a rejected picture's held tiles are deleted. Raises LookupError
        for an unknown id.
        """
        with self._lock:
            row = self._row(int(entry_id))
            if row is None:
                raise LookupError(f"no gallery entry {entry_id}")
            entry = self._entry(row)
            outcome = approval.Outcome(outcome)
            plan = approval.screen(outcome, entry.mode, approval.flags(entry), approved)
            files = []
            for k, rel in enumerate(json.loads(row["files"] or "[]")):
                if rel and (self.folder / rel).parent == self.held_dir:
                    rel = self._release(entry, k, rel, plan[k] if k < len(plan) else None)
                files.append(rel)
            self._update(
                entry.id,
                outcome=outcome.value,
                approved=json.dumps(sorted(set(approved))),
                files=json.dumps(files),
            )
            if outcome is approval.Outcome.REJECTED:
                self._tiles.pop(entry.id, None)
            stored = self.get(entry.id)
        assert stored is not None
        return stored

    def _release(self, entry: Entry, k: int, rel: str, tile: Tile | None) -> str:
        """A held tile after a decision: public when clear, deleted when not shown at all."""
        try:
            if tile is Tile.CLEAR:
                dest = self._tile_path(entry.id, k, True, entry.created)
                dest.parent.mkdir(parents=True, exist_ok=True)
                replace_retrying(self.folder / rel, dest)
                return str(dest.relative_to(self.folder))
            if tile is Tile.NOTHING:
                (self.folder / rel).unlink(missing_ok=True)
                return ""
        except OSError as exc:
            self._report("move", f"cannot move or delete a held image ({exc})")
        return rel

    # ----- legacy outputs ------------------------------------------------------------------
    def publish_legacy(self, entry_id: int | None, tiles: Sequence[Tile] = ()) -> None:
        """For OBS set-ups without the script: stream.png, requester.txt and prompt.txt.

        Each is written atomically (temporary file, then rename), so OBS never reads half a
        file. None clears the screen. Nothing happens when no legacy folder is configured.
        """
        if self.legacy_folder is None:
            return
        entry = self.get(entry_id) if entry_id is not None else None
        png = self.screen_png(entry_id, tiles) if entry is not None else None
        if png is None:
            png = _blank_png()
            entry = None
        folder = self.legacy_folder
        self._save(folder / "stream.png", png)
        self._save(folder / "requester.txt", (entry.requester if entry else "").encode("utf-8"))
        self._save(folder / "prompt.txt", (entry.prompt if entry else "").encode("utf-8"))

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _blank_png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(buf, format="PNG")
    return buf.getvalue()


def read_png_metadata(path_or_bytes: Path | bytes) -> dict[str, Any]:
    """The `parameters` text and the JSON metadata of a gallery PNG (for tools and !params).

    The gallery writes its chunks before the image data, where Pillow reads them on open
    (`info`): no pixels are decoded. Only a file written otherwise is decoded (`text`).
    """
    src = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes) else path_or_bytes
    with Image.open(src) as im:
        text = im.info if METADATA_KEY in im.info else dict(getattr(im, "text", {}) or {})
    meta = text.get(METADATA_KEY)
    return {"parameters": text.get("parameters"), "meta": json.loads(meta) if meta else None}
