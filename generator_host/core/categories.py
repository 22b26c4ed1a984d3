"""Safety categories beyond the stock checker's sexual concepts: what the streamer configured.

A category (gore, violence, hate symbols, or the streamer's own: a rival's logo, spiders)
is a set of directions in the safety checker's CLIP ViT-L/14 projection space, given as
text phrases (embedded by CLIP's text tower) and/or a file of vectors (learned prompts
such as Q16's), plus a threshold. An image's score for a category is its highest cosine
similarity with any of the category's directions minus the threshold, the same
arithmetic as the stock checker's concepts: above 0 flags. Pure data and parsing, no I/O.

A category that applies to prompts scores a prompt the same way, with the prompt's CLIP
text embedding in place of the image's: best cosine minus `prompt_threshold` (unset: the
category's `threshold`). Text-to-text cosines of CLIP run higher than image-to-text ones,
so a prompt category wants its own, higher threshold (docs/safety.md: tune it with
safety-eval's prompts CSV). The defaults apply to images only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

APPLIES_TO = ("images", "prompts", "both")
DEFAULT_TEXT_MODEL = "openai/clip-vit-large-patch14"
# Unmeasured on real CLIP ViT-L/14 (no hub access where this was written): matched
# image/caption pairs score about 0.25-0.35 there, unrelated ones about 0.10-0.20.
# docs/safety.md says how to tune it with safety-eval.
DEFAULT_THRESHOLD = 0.26

DEFAULTS: dict[str, list[str]] = {
    "gore": [
        "a photo of gore",
        "a bloody wound with exposed flesh",
        "a mutilated body",
        "a severed limb with blood",
        "a corpse covered in blood",
    ],
    "violence": [
        "a photo of a violent attack",
        "a person being shot",
        "a person being stabbed",
        "people beating someone up",
        "a person pointing a gun at someone",
    ],
    "hate_symbols": [
        "a swastika",
        "a nazi flag",
        "a burning cross and klansmen",
        "a white power symbol",
        "nazi propaganda",
    ],
}


@dataclass(frozen=True)
class Category:
    name: str
    phrases: tuple[str, ...] = ()
    vectors: str = ""  # a .npy, .safetensors or .pt file of projection-space vectors
    threshold: float = DEFAULT_THRESHOLD
    applies_to: str = "images"  # images | prompts | both
    enabled: bool = True
    prompt_threshold: float | None = None  # for prompts; None: `threshold`

    @property
    def threshold_for_prompts(self) -> float:
        return self.threshold if self.prompt_threshold is None else self.prompt_threshold

    @property
    def on_images(self) -> bool:
        return self.enabled and self.applies_to in ("images", "both")

    @property
    def on_prompts(self) -> bool:
        return self.enabled and self.applies_to in ("prompts", "both")


_KEYS = {
    "phrases": list,
    "vectors": str,
    "threshold": float,
    "prompt_threshold": float,
    "applies_to": str,
    "enabled": bool,
}


def too_close(scores: Mapping[str, float]) -> tuple[str, ...]:
    """The categories a prompt (or an image) is too close to: score (best cosine minus the
    threshold) above 0, closest first, ties by name. The one place that says what "too
    close" is: the prompt check's refusal, its hold/flag, the log line and safety-eval."""
    close = [(name, score) for name, score in scores.items() if score > 0]
    return tuple(name for name, _ in sorted(close, key=lambda kv: (-kv[1], kv[0])))


def default_categories() -> dict[str, Any]:
    """The categories a fresh config has, as [safety.categories.NAME] tables."""
    return {name: {"phrases": list(phrases)} for name, phrases in DEFAULTS.items()}


def _field(name: str, key: str, value: Any) -> tuple[Any, str]:
    """(value, "") or (None, problem) for one key of one category table."""
    want = _KEYS[key]
    if want is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = float(value)
        if not -1.0 <= value <= 1.0:
            return None, f"[safety.categories.{name}] {key} must be between -1 and 1"
        return value, ""
    if want is list:
        ok = isinstance(value, list) and all(isinstance(v, str) and v.strip() for v in value)
        if not ok:
            return None, f"[safety.categories.{name}] phrases must be a list of non-empty texts"
        return tuple(v.strip() for v in value), ""
    if not isinstance(value, want):
        return None, f"[safety.categories.{name}] {key}: expected {want.__name__}"
    if key == "applies_to" and value not in APPLIES_TO:
        return None, f"[safety.categories.{name}] applies_to must be one of {APPLIES_TO}"
    return value, ""


def valid_name(text: str) -> bool:
    """Whether `text` can name a category ([safety.categories.NAME], a safety-eval folder or
    a prompts CSV label): letters, digits, - and _."""
    return bool(text) and text.replace("_", "").replace("-", "").isalnum()


def parse_categories(raw: Any) -> tuple[list[Category], list[str]]:
    """Categories from the [safety.categories] table, over the defaults; and every problem.

    A table named like a default changes that default (e.g. `enabled = false`, another
    threshold); any other name adds a category. A bad key is reported and its default kept,
    as everywhere in the config.
    """
    tables: dict[str, Any] = default_categories()
    problems: list[str] = []
    if not isinstance(raw, dict):
        return [], ["[safety] categories must be a table of [safety.categories.NAME] tables"]
    for name, table in raw.items():
        if not isinstance(table, dict):
            problems.append(f"[safety.categories.{name}] must be a table; ignored")
            continue
        if not valid_name(name):
            problems.append(f"[safety.categories.{name}]: use letters, digits, - and _; ignored")
            continue
        tables[name] = {**tables.get(name, {}), **table}
    out: list[Category] = []
    for name, table in tables.items():
        kwargs: dict[str, Any] = {}
        for key, value in table.items():
            if key not in _KEYS:
                problems.append(f"[safety.categories.{name}] unknown key {key!r} ignored")
                continue
            parsed, problem = _field(name, key, value)
            if problem:
                problems.append(problem + "; keeping the default")
            else:
                kwargs[key] = parsed
        cat = Category(name=name, **kwargs)
        if cat.enabled and not cat.phrases and not cat.vectors:
            problems.append(f"[safety.categories.{name}] has no phrases and no vectors; off")
            cat = Category(name=name, enabled=False)
        out.append(cat)
    return out, problems


def explicit(raw: Any, name: str) -> bool:
    """Whether the streamer's own config asked for this category: a name of their own, or
    a default's table that sets phrases, vectors or applies_to (the template's tables set
    only thresholds, so a fresh config asks for nothing). Decides what a missing CLIP
    text model does: explicit categories stop the start, built-in ones go off with a
    warning (engine/categories.py)."""
    if name not in DEFAULTS:
        return True
    table = raw.get(name) if isinstance(raw, dict) else None
    return isinstance(table, dict) and any(k in table for k in ("phrases", "vectors", "applies_to"))
