"""The streamer's safety categories as unit vectors in the checker's CLIP projection space.

Why this method (plain cosine minus a threshold, best direction of the category): it is
the stock checker's own arithmetic on the same embedding, so a category's threshold
reads like the checker's concept thresholds, imported learned vectors (Q16-style prompt
embeddings) are used exactly as they were trained to be compared, and a score depends on
the image and the category only. The alternative, a CLIP softmax of the category's
phrases against neutral reference phrases, makes every score depend on the reference
list and saturates near 1 for anything nearer the category than the references; see
docs/safety.md. Scoring is one small matrix product per batch (well under a millisecond).

Phrase embeddings come from CLIP's text tower + text_projection and are cached on disk
keyed by model and phrase, so a start with unchanged phrases never loads the text tower.

Prompts (categories that apply to prompts) are scored the same way with the prompt's own
text embedding: `PromptChecker`, which keeps the text tower loaded on the CPU (about
0.5 GB for ViT-L/14's, no VRAM) and is called by the app on a thread of its own, so a
check never waits behind a generation (bench/bench_categories.py measures both).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from generator_host.core.categories import (
    DEFAULT_TEXT_MODEL,
    Category,
    explicit,
    parse_categories,
)
from generator_host.core.settings import SafetySettings, cache_dir

log = logging.getLogger(__name__)

TEXT_FOLDER = "clip_text"  # a text tower kept next to a checker, in its projection space
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class CategoryError(Exception):
    """A category cannot be loaded; the message names the setting to fix."""


class TextModelUnavailable(CategoryError):
    """The CLIP text model cannot be downloaded or loaded (the categories that need it)."""


# --- vectors files -------------------------------------------------------------------------


def load_vectors(path: str | Path) -> np.ndarray:
    """Rows of projection-space vectors from .npy, .safetensors (every tensor) or .pt.

    Pickles are refused (.npy without pickle, .pt with weights_only): a vectors file must
    not be able to run code. Q16's prompts.p is a pickle: convert it once with numpy.
    """
    p = Path(path).expanduser()
    suffix = p.suffix.lower()
    try:
        if suffix == ".npy":
            arrays = [np.load(p, allow_pickle=False)]
        elif suffix == ".safetensors":
            from safetensors.numpy import load_file

            arrays = [load_file(str(p))[k] for k in sorted(load_file(str(p)))]
        elif suffix in (".pt", ".pth"):
            import torch

            obj = torch.load(p, map_location="cpu", weights_only=True)
            tensors = [obj[k] for k in sorted(obj)] if isinstance(obj, dict) else [obj]
            arrays = [t.detach().float().numpy() for t in tensors]
        else:
            raise CategoryError(f"vectors file {str(p)!r}: use .npy, .safetensors or .pt")
    except CategoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - any unreadable file becomes one clear line
        raise CategoryError(f"cannot read vectors file {str(p)!r}: {exc}") from exc
    rows = [np.atleast_2d(np.asarray(a, dtype=np.float32)) for a in arrays]
    if any(r.ndim != 2 for r in rows) or len({r.shape[1] for r in rows}) != 1:
        raise CategoryError(f"vectors file {str(p)!r} must hold rows of one length")
    return np.concatenate(rows)


# --- text embeddings -------------------------------------------------------------------------


def _model_key(source: str) -> str:
    """The cache key of a text model: the hub id, or a folder with its weights' size and time
    (a rebuilt folder must not be served another model's embeddings)."""
    folder = Path(source).expanduser()
    if not folder.is_dir():
        return source
    stamp = [str(folder.resolve())]
    for name in WEIGHT_FILES:
        f = folder / name
        if f.is_file():
            st = f.stat()
            stamp.append(f"{name}:{st.st_size}:{st.st_mtime_ns}")
    return "|".join(stamp)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


class TextEmbeddings:
    """Unit phrase embeddings of one CLIP text model, with an on-disk cache.

    The text tower is loaded only for phrases missing from the cache (or by `embed_now`,
    for the prompt side), once, and kept.
    """

    def __init__(self, source: str, cache_dir: Path) -> None:
        self.source = source
        self.cache_file = Path(cache_dir) / f"{_digest(_model_key(source))}.npz"
        self._model: Any = None
        self._tokenizer: Any = None

    @property
    def loaded(self) -> bool:
        return self._model is not None

    @property
    def dim(self) -> int:
        """The length of its embeddings (loads the model)."""
        self.load_model()
        return int(self._model.config.projection_dim)

    def _read_cache(self) -> dict[str, np.ndarray]:
        try:
            with np.load(self.cache_file, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except (OSError, ValueError):
            return {}

    def _write_cache(self, cache: dict[str, np.ndarray]) -> None:
        try:
            self.cache_file.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.cache_file.parent, suffix=".npz")
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **cache)
            os.replace(tmp, self.cache_file)
        except OSError as exc:  # only later starts get slower
            log.warning("cannot write the category embedding cache %s: %s", self.cache_file, exc)

    def load_model(self) -> None:
        if self._model is not None:
            return
        from transformers import CLIPTextModelWithProjection, CLIPTokenizer

        folder = Path(self.source).expanduser()
        source = str(folder) if folder.is_dir() else self.source
        if not folder.is_dir():  # a hub id: downloaded once, with progress (engine/hub.py)
            from generator_host.engine import hub

            try:
                source = str(hub.fetch(self.source, label="CLIP text model").folder)
            except hub.HubError as exc:
                raise TextModelUnavailable(
                    f"{exc}. Or set [safety] categories_text_model to a downloaded folder, "
                    "or turn the categories off (enabled = false in each "
                    "[safety.categories.NAME])."
                ) from exc
        try:
            self._tokenizer = CLIPTokenizer.from_pretrained(source)
            model = CLIPTextModelWithProjection.from_pretrained(source)
        except Exception as exc:  # noqa: BLE001 - every loader failure becomes one line
            raise TextModelUnavailable(
                f"cannot load the CLIP text model {source!r} for the safety categories: "
                f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}"
                ". Connect once so it downloads, set [safety] categories_text_model to a "
                "downloaded folder, or turn the categories off (enabled = false in each "
                "[safety.categories.NAME])."
            ) from exc
        model.eval()
        self._model = model

    def embed_now(self, texts: Sequence[str]) -> np.ndarray:
        """Unit embeddings of `texts` from the text tower (no cache): the prompt side."""
        import torch

        self.load_model()
        tok = self._tokenizer(
            list(texts), padding=True, truncation=True, max_length=77, return_tensors="pt"
        )
        with torch.inference_mode():
            out = self._model(**tok).text_embeds.float().numpy()
        return out / np.linalg.norm(out, axis=1, keepdims=True).clip(1e-12)

    def embed(self, phrases: Sequence[str]) -> np.ndarray:
        """Unit embeddings of `phrases`, from the cache where it has them."""
        cache = self._read_cache()
        keys = [_digest(p) for p in phrases]
        missing = [p for p, k in zip(phrases, keys, strict=True) if k not in cache]
        if missing:
            fresh = self.embed_now(list(dict.fromkeys(missing)))
            for p, vec in zip(dict.fromkeys(missing), fresh, strict=True):
                cache[_digest(p)] = vec
            self._write_cache(cache)
            log.info("embedded %d category phrases (cached in %s)", len(missing), self.cache_file)
        elif phrases:
            log.info("%d category phrases read from the cache %s", len(phrases), self.cache_file)
        if not phrases:
            return np.zeros((0, 0), np.float32)
        return np.stack([cache[k] for k in keys]).astype(np.float32)


def category_cache_dir() -> Path:
    """Where phrase embeddings are cached (by text model and phrase), for the host and
    safety-eval alike."""
    return cache_dir() / "category-embeddings"


def text_model_source(setting: str, checker_folders: Sequence[str | Path | None]) -> str:
    """`auto`: a clip_text/ folder next to the checker (its own projection space), else
    OpenAI's CLIP ViT-L/14, the space of the Stable Diffusion checker."""
    if setting.strip() and setting.strip() != "auto":
        return setting.strip()
    for folder in checker_folders:
        if folder and (Path(folder) / TEXT_FOLDER / "config.json").is_file():
            return str(Path(folder) / TEXT_FOLDER)
    return DEFAULT_TEXT_MODEL


# --- the index the judge scores with ----------------------------------------------------------


@dataclass
class CategoryIndex:
    """Every direction of every category, as one matrix, so scoring is one product.

    Rows of `matrix` are unit vectors sorted by category; `starts[c]` is category c's
    first row. A category's score is its best cosine minus its threshold.
    """

    names: list[str]
    thresholds: np.ndarray
    matrix: np.ndarray  # (rows, dim) float32, unit rows
    starts: np.ndarray  # (categories,) int

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[1])

    def scores(self, embeds: np.ndarray) -> list[dict[str, float]]:
        """Per image (rows of `embeds`, any norm): {category: best cosine - threshold}."""
        e = np.asarray(embeds, dtype=np.float32)
        e = e / np.linalg.norm(e, axis=1, keepdims=True).clip(1e-12)
        best = np.maximum.reduceat(e @ self.matrix.T, self.starts, axis=1) - self.thresholds
        return [
            {n: float(v) for n, v in zip(self.names, row, strict=True)} for row in best.tolist()
        ]


def build_index(
    categories: Sequence[Category],
    dim: int,
    text: TextEmbeddings | None,
    *,
    prompts: bool = False,
) -> CategoryIndex | None:
    """The index of the enabled image categories (`prompts`: of those that apply to
    prompts, with their prompt thresholds); None when there is none.

    Raises CategoryError naming the category when a file is unreadable, a vector has the
    wrong length (not the checker's projection space) or phrases need a text model.
    """
    names: list[str] = []
    blocks: list[np.ndarray] = []
    thresholds: list[float] = []
    wanted = [c for c in categories if (c.on_prompts if prompts else c.on_images)]
    phrases = [p for c in wanted for p in c.phrases]
    if phrases and text is None:
        raise CategoryError("the safety categories have phrases but no CLIP text model")
    phrase_vecs = text.embed(phrases) if phrases and text is not None else None
    at = 0
    for cat in wanted:
        rows: list[np.ndarray] = []
        if cat.phrases and phrase_vecs is not None:
            rows.append(phrase_vecs[at : at + len(cat.phrases)])
            at += len(cat.phrases)
        if cat.vectors:
            try:
                rows.append(load_vectors(cat.vectors))
            except CategoryError as exc:
                raise CategoryError(f"[safety.categories.{cat.name}] {exc}") from None
        block = np.concatenate(rows) if rows else np.zeros((0, dim), np.float32)
        if block.shape[1] != dim:
            raise CategoryError(
                f"[safety.categories.{cat.name}] has {block.shape[1]}-long vectors but the "
                f"safety checker's embeddings are {dim}-long: they must come from the same "
                "CLIP model (ViT-L/14 for the Stable Diffusion checker)"
            )
        norms = np.linalg.norm(block, axis=1, keepdims=True)
        if (norms < 1e-12).any():
            raise CategoryError(f"[safety.categories.{cat.name}] has an all-zero vector")
        names.append(cat.name)
        blocks.append(block / norms)
        thresholds.append(cat.threshold_for_prompts if prompts else cat.threshold)
    if not names:
        return None
    sizes = [len(b) for b in blocks]
    starts = np.cumsum([0] + sizes[:-1])
    return CategoryIndex(
        names=names,
        thresholds=np.asarray(thresholds, np.float32),
        matrix=np.concatenate(blocks).astype(np.float32),
        starts=starts.astype(np.intp),
    )


class PromptChecker:
    """Scores a prompt against the categories that apply to prompts: the prompt's CLIP
    text embedding (the same tower and projection as the phrases) against each
    category's directions, best cosine minus its prompt threshold; above 0 is too close.

    The text tower stays loaded on the CPU. Thread-safe (one prompt at a time): the app
    calls it on its own thread, never on the loop nor behind a generation.
    """

    def __init__(self, text: TextEmbeddings, index: CategoryIndex) -> None:
        self.text = text
        self.index = index
        self._lock = threading.Lock()

    def scores(self, prompt: str) -> dict[str, float]:
        with self._lock:
            vec = self.text.embed_now([prompt])
        return self.index.scores(vec)[0]


@dataclass
class LoadedCategories:
    """What the engine uses: the image index (the judge's) and the prompt checker."""

    images: CategoryIndex | None = None
    prompts: PromptChecker | None = None


def load_categories(
    settings: SafetySettings,
    dim: int,
    checker_folders: Sequence[str | Path | None],
    cache_dir: Path,
    *,
    prompts: bool = True,
) -> LoadedCategories:
    """The image index and the prompt checker from [safety.categories]; runs at load, on
    the worker.

    Problems in the tables were reported when the config was read. A CLIP text model that
    cannot be downloaded or loaded turns the built-in categories off with a warning (the
    stock checker stays on; vectors-only categories stay on), but stops the start when a
    category the streamer's config asked for needs it (`core.categories.explicit`): a
    safety net the streamer set up must not vanish silently. Any other problem (an
    unreadable vectors file, vectors of another CLIP) is a CategoryError.
    """
    categories, _ = parse_categories(settings.categories)
    raw = settings.categories
    source = text_model_source(settings.categories_text_model, checker_folders)
    text = TextEmbeddings(source, cache_dir)
    loaded = LoadedCategories()
    try:
        loaded.images = build_index(categories, dim, text)
    except TextModelUnavailable as exc:
        needy = [c for c in categories if c.on_images and c.phrases]
        asked = [c.name for c in needy if explicit(raw, c.name)]
        if asked:
            raise
        log.warning(
            "safety categories %s are OFF: %s The stock safety checker is on. The host "
            "starts without them; they come back on the first start that can load the "
            "text model.",
            ", ".join(c.name for c in needy),
            str(exc).rstrip(".") + ".",
        )
        kept = [c for c in categories if not (c.on_images and c.phrases)]
        loaded.images = build_index(kept, dim, None)
    if loaded.images is not None:
        log.info(
            "safety categories on images: %s (text model %s)",
            ", ".join(
                f"{n} > {t:.2f}"
                for n, t in zip(loaded.images.names, loaded.images.thresholds, strict=True)
            ),
            source,
        )
    prompt_index = build_index(categories, dim, text, prompts=True) if prompts else None
    if prompt_index is not None:
        text.load_model()  # the tower is needed for every prompt: now, not at the first one
        loaded.prompts = PromptChecker(text, prompt_index)
        log.info(
            "safety categories on prompts: %s (text model %s, on the CPU)",
            ", ".join(
                f"{n} > {t:.2f}"
                for n, t in zip(prompt_index.names, prompt_index.thresholds, strict=True)
            ),
            source,
        )
    return loaded
