"""The Stable Diffusion safety checker, split into raw scores and a verdict at an offset.

Why split: stock diffusers rounds, adds its adjustment and blacks the image out in one
step, with no knob. Here `SafetyJudge.scores` returns the raw per-concept numbers (kept
with every image, so a streamer can pick a level from data) and the pure `is_flagged`
turns them into a verdict at the streamer's offset. At offset 0 `is_flagged` flags exactly
what diffusers' `StableDiffusionSafetyChecker.forward` flags, float32 rounding included.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np

from generator_host.core.generation import SafetyScores

log = logging.getLogger(__name__)

CONCEPTS = 17
SPECIAL_CARE = 3
SPECIAL_CARE_ADJUSTMENT = 0.01  # diffusers' extra strictness once a special-care score is > 0


class SafetyError(Exception):
    """The checker cannot be loaded or run; the message says why in plain words."""


def is_flagged(scores: SafetyScores, offset: float = 0.0) -> bool:
    """True when the image must not be shown as is, at threshold offset `offset`.

    Mirrors diffusers: each score is (cosine - threshold) + adjustment, rounded to 3
    decimals in float32; the adjustment starts at `offset` and becomes offset + 0.01 for
    the concept pass once any special-care score is above 0. Positive offsets are stricter.
    """
    adjustment = float(offset)
    for score in scores.special:
        if np.round(np.float32(score) + adjustment, 3) > 0:
            adjustment = float(offset) + SPECIAL_CARE_ADJUSTMENT
            break
    return any(np.round(np.float32(score) + adjustment, 3) > 0 for score in scores.concept)


def embeddings(checker: Any, feature_extractor: Any, images: list[Any]) -> Any:
    """The checker's projected CLIP embeddings of PIL images, one row each: what every
    verdict compares with the concepts (and what the tests plant concepts from)."""
    import torch

    with torch.no_grad():
        pixels = feature_extractor(
            [img.convert("RGB") for img in images], return_tensors="pt"
        ).pixel_values
        pixels = pixels.to(checker.device, checker.dtype)
        return checker.visual_projection(checker.vision_model(pixels)[1])


class SafetyJudge:
    """Scores and verdicts for images; `offset` may be changed from any thread at any time.

    Holds a loaded `StableDiffusionSafetyChecker` and its `CLIPImageProcessor`. A judge
    without a checker (`enabled=False`) scores nothing and flags nothing.
    """

    def __init__(
        self,
        checker: Any = None,
        feature_extractor: Any = None,
        *,
        offset: float = 0.0,
        enabled: bool = True,
    ) -> None:
        self.checker = checker
        self.feature_extractor = feature_extractor
        self.enabled = enabled
        # The streamer's categories (engine/categories.py), scored on the same embedding.
        self.categories: Any = None
        self._offset = float(offset)
        self._lock = threading.Lock()

    @property
    def offset(self) -> float:
        return self._offset

    @offset.setter
    def offset(self, value: float) -> None:
        value = float(value)
        if not -1.0 <= value <= 1.0:
            raise ValueError(f"threshold offset must be between -1 and 1, not {value}")
        self._offset = value

    @property
    def ready(self) -> bool:
        return self.checker is not None and self.feature_extractor is not None

    def scores(self, images: list[Any]) -> list[SafetyScores]:
        """Raw scores (cosine similarity - concept threshold, unrounded) for each image."""
        if not images:
            return []
        if not self.ready:
            raise SafetyError("the safety checker is not loaded")
        import torch
        from diffusers.pipelines.stable_diffusion.safety_checker import cosine_distance

        checker = self.checker
        with self._lock, torch.no_grad():
            embeds = embeddings(checker, self.feature_extractor, images)
            special_cos = cosine_distance(embeds, checker.special_care_embeds).cpu().float().numpy()
            concept_cos = cosine_distance(embeds, checker.concept_embeds).cpu().float().numpy()
            special_thr = [w.item() for w in checker.special_care_embeds_weights]
            concept_thr = [w.item() for w in checker.concept_embeds_weights]
            index = self.categories
            categories = (
                index.scores(embeds.cpu().float().numpy())
                if index is not None
                else [{} for _ in images]
            )
        # Same arithmetic as diffusers: a float32 cosine minus a Python float stays float32.
        return [
            SafetyScores(
                concept=[
                    float(concept_cos[i][k] - concept_thr[k]) for k in range(len(concept_thr))
                ],
                special=[
                    float(special_cos[i][k] - special_thr[k]) for k in range(len(special_thr))
                ],
                categories=categories[i],
            )
            for i in range(len(images))
        ]

    def judge(self, images: list[Any]) -> tuple[list[SafetyScores | None], list[bool], float]:
        """Scores and one verdict per image, each image judged alone, at the current offset.

        An image is flagged when the stock checker flags it at the offset OR any of the
        streamer's categories scores above 0 (its own threshold; the offset is the
        checker's). Returns (scores, flagged, offset used). Disabled: no scores, nothing
        flagged.
        """
        offset = self._offset  # read once: one request's verdicts share one threshold
        if not self.enabled:
            return [None] * len(images), [False] * len(images), offset
        scores = self.scores(images)
        flagged = [is_flagged(s, offset) or bool(s.flagged_categories) for s in scores]
        return list(scores), flagged, offset


def load_checker(source: str | Path, device: str = "cpu", dtype: Any = None) -> tuple[Any, Any]:
    """Load a checker and its image processor from a model folder, a checker folder or a hub id.

    A model folder has them in `safety_checker/` and `feature_extractor/`; a checker folder
    or the CompVis repo has both at the top.
    """
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPImageProcessor

    source_str = str(source)
    local = Path(source_str).expanduser()
    checker_kwargs: dict[str, Any] = {}
    extractor_kwargs: dict[str, Any] = {}
    if (local / "safety_checker").is_dir():
        checker_kwargs["subfolder"] = "safety_checker"
        extractor_kwargs["subfolder"] = "feature_extractor"
    if local.exists():
        source_str = str(local)
    try:
        checker = StableDiffusionSafetyChecker.from_pretrained(source_str, **checker_kwargs)
        extractor = CLIPImageProcessor.from_pretrained(source_str, **extractor_kwargs)
    except (OSError, ValueError, RuntimeError) as exc:
        raise SafetyError(
            f"cannot load the safety checker from {source_str!r}: {exc}. Set [safety] checker "
            "to a downloaded checker, or turn the check off with [safety] enabled = false."
        ) from exc
    checker = checker.to(device=device, dtype=dtype) if dtype is not None else checker.to(device)
    checker.eval()
    return checker, extractor
