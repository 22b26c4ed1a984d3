"""A tiny Stable Diffusion 1.x pipeline with random weights, built locally from configs.

Why: tests, the demo and CI must run the real diffusers loading and generation code
without ever downloading weights. The folder this writes loads with
`AutoPipelineForText2Image.from_pretrained(folder)`, safety checker included, in well
under a second. Images are noise, but deterministic noise: the same seed gives the same
bytes. `plant_concept` rewrites the checker so a chosen image trips a concept or a
special-care concept, so safety behaviour can be tested on real checker code.
`clip_text/` holds a tiny CLIP text tower in the checker's projection space, for the
safety categories' phrases (engine/categories.py).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from generator_host.core import settings
from generator_host.engine.safety import CONCEPTS, SPECIAL_CARE

log = logging.getLogger(__name__)

COMPLETE_MARKER = ".tiny-complete"
BUILD_VERSION = 2  # bump when the layout changes so cached folders are rebuilt
PROJECTION_DIM = 64
CONCEPT_THRESHOLD = 0.6  # per-concept threshold: random directions never reach it
PLANT_THRESHOLD = 0.95  # a planted concept trips its own image, not the neighbours


def default_tiny_model_dir() -> Path:
    """Where the demo and tools keep the tiny model: the user's cache folder."""
    return settings.cache_dir() / "tiny-sd"


def is_complete(folder: Path, variant: str = "") -> bool:
    """True when `folder` holds a finished build of this BUILD_VERSION and `variant`."""
    marker = folder / COMPLETE_MARKER
    try:
        return marker.read_text(encoding="utf-8").strip() == f"{BUILD_VERSION}{variant}"
    except OSError:
        return False


def build_tiny_model(
    folder: Path,
    seed: int = 0,
    *,
    finish: Callable[[Path], None] | None = None,
    variant: str = "",
) -> Path:
    """Build the tiny pipeline into `folder`, or reuse it when a complete build is there.

    The build goes to a temporary sibling folder that is renamed into place at the end,
    so a crash or a concurrent builder never leaves a half-written model behind.
    `finish(tmp_folder)` may change the built model before it is marked complete (the
    demo plants a concept); `variant` tags such a build, so a plain build is not reused
    for it, nor it for a plain one. The random draws of the plain build never change.
    """
    folder = Path(folder)
    if is_complete(folder, variant):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-build-", dir=folder.parent))
    try:
        _write_pipeline(tmp, seed)
        if finish is not None:
            finish(tmp)
        (tmp / COMPLETE_MARKER).write_text(f"{BUILD_VERSION}{variant}", encoding="utf-8")
        if folder.exists():
            if is_complete(folder, variant):  # another process finished first
                return folder
            shutil.rmtree(folder)  # an old or broken build
        try:
            os.replace(tmp, folder)
        except OSError:
            if not is_complete(folder, variant):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("tiny model built in %s", folder)
    return folder


def build_tiny_vae(folder: Path, seed: int = 0) -> Path:
    """A tiny `AutoencoderTiny` (TAESD's architecture, 8 channels, random weights) that
    decodes the tiny model's latents (4 channels, 2x), saved where `[model] tiny_vae` can
    point: the tiny decoder's loading code runs for real without a download."""
    import torch
    from diffusers import AutoencoderTiny

    folder = Path(folder)
    if (folder / "config.json").is_file():
        return folder
    torch.manual_seed(seed)
    vae = AutoencoderTiny(
        encoder_block_out_channels=(8, 8),
        decoder_block_out_channels=(8, 8),
        num_encoder_blocks=(1, 1),
        num_decoder_blocks=(1, 1),
        latent_channels=4,
    )
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-vae-", dir=_parent(folder)))
    try:
        vae.save_pretrained(tmp, safe_serialization=True)
        try:
            os.replace(tmp, folder)
        except OSError:
            if not (folder / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _parent(folder: Path) -> Path:
    folder.parent.mkdir(parents=True, exist_ok=True)
    return folder.parent


def _byte_symbols() -> list[str]:
    """GPT-2/CLIP's reversible byte-to-unicode table, in its usual order."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    keep += list(range(ord("®"), ord("ÿ") + 1))
    chars = list(keep)
    extra = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return [chr(c) for c in chars]


def _write_vocab(folder: Path) -> None:
    """A minimal CLIP BPE vocabulary: every byte symbol alone and word-final, a few merges."""
    symbols = _byte_symbols()
    vocab_list = symbols + [s + "</w>" for s in symbols]
    merges = ["t h", "th e</w>", "a n", "i n"]
    vocab_list += [m.replace(" ", "") for m in merges]
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(vocab_list))}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", "utf-8")


def _write_pipeline(folder: Path, seed: int) -> None:
    import torch
    from diffusers import (
        AutoencoderKL,
        PNDMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTokenizer,
    )

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(4, 8),
        layers_per_block=1,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        norm_num_groups=2,
    )
    vae = AutoencoderKL(
        block_out_channels=[4, 8],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        norm_num_groups=2,
    )
    scheduler = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        skip_prk_steps=True,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=0,
            eos_token_id=2,
            hidden_size=32,
            intermediate_size=37,
            layer_norm_eps=1e-05,
            num_attention_heads=4,
            num_hidden_layers=5,
            pad_token_id=1,
            vocab_size=1000,
        )
    )
    _write_vocab(folder / "_vocab")
    tokenizer = CLIPTokenizer.from_pretrained(folder / "_vocab", model_max_length=77)
    shutil.rmtree(folder / "_vocab")
    # Token ids must fit the tiny text encoder's embedding table.
    text_encoder.resize_token_embeddings(len(tokenizer))
    text_encoder.config.bos_token_id = tokenizer.bos_token_id
    text_encoder.config.eos_token_id = tokenizer.eos_token_id
    text_encoder.config.pad_token_id = tokenizer.pad_token_id
    checker = StableDiffusionSafetyChecker(_checker_config(CLIPConfig))
    _randomise_concepts(checker, seed)
    feature_extractor = CLIPImageProcessor(
        crop_size={"height": 224, "width": 224},
        size={"shortest_edge": 224},
        do_center_crop=True,
        do_normalize=True,
        do_resize=True,
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
        resample=3,
    )
    pipe = StableDiffusionPipeline(
        unet=unet,
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        safety_checker=checker,
        feature_extractor=feature_extractor,
        image_encoder=None,
        requires_safety_checker=True,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    _write_text_tower(folder / "clip_text", checker, tokenizer, seed)


def _write_text_tower(folder: Path, checker: Any, tokenizer: Any, seed: int) -> None:
    """A tiny CLIPTextModelWithProjection whose embeddings live in the checker's space.

    Its projection is made orthogonal to every image embedding the checker can produce
    (the visual projection's column space), so the default category phrases never match
    a tiny image by chance; tests make a phrase match an image with `plant_phrase`.
    """
    import torch
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    torch.manual_seed(seed + 2)
    model = CLIPTextModelWithProjection(
        CLIPTextConfig(
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            vocab_size=len(tokenizer),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            projection_dim=PROJECTION_DIM,
        )
    )
    with torch.no_grad():
        q, _ = torch.linalg.qr(checker.visual_projection.weight)  # image space basis
        w = model.text_projection.weight  # (projection, hidden)
        w.copy_(w - q @ (q.T @ w))
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


def _checker_config(config_cls: Any) -> Any:
    return config_cls(
        text_config={
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
            "vocab_size": 1000,
            "bos_token_id": 0,
            "eos_token_id": 2,
            "pad_token_id": 1,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
            "image_size": 224,
            "patch_size": 32,
        },
        projection_dim=PROJECTION_DIM,
    )


def _randomise_concepts(checker: Any, seed: int) -> None:
    """Random concept directions and a uniform threshold: nothing trips at offset 0.

    A random tiny CLIP maps every image to nearly the same embedding (cosine ~0.99), as
    the class token dominates. Zeroing it and sharpening attention spreads generated
    images apart (cosine ~0.5 on average, below ~0.9 at most), so a concept planted on one
    tile of a grid trips that tile alone.
    """
    import torch

    gen = torch.Generator().manual_seed(seed + 1)
    vision = checker.vision_model
    with torch.no_grad():
        vision.embeddings.class_embedding.zero_()
        vision.embeddings.position_embedding.weight.zero_()
        for layer in vision.encoder.layers:
            layer.self_attn.q_proj.weight.mul_(27.0)
            layer.self_attn.k_proj.weight.mul_(27.0)
        checker.concept_embeds.copy_(torch.randn(CONCEPTS, PROJECTION_DIM, generator=gen))
        checker.special_care_embeds.copy_(torch.randn(SPECIAL_CARE, PROJECTION_DIM, generator=gen))
        checker.concept_embeds_weights.fill_(CONCEPT_THRESHOLD)
        checker.special_care_embeds_weights.fill_(CONCEPT_THRESHOLD)


def image_embedding(checker: Any, feature_extractor: Any, image: Any) -> Any:
    """The checker's projected CLIP embedding of one PIL image (1-D float32 tensor),
    computed exactly as the verdict computes it."""
    from generator_host.engine.safety import embeddings

    return embeddings(checker, feature_extractor, [image])[0].float().cpu()


def plant_concept(
    checker: Any,
    feature_extractor: Any,
    image: Any,
    *,
    kind: str = "concept",
    index: int = 0,
    cosine: float = 1.0,
    threshold: float | None = PLANT_THRESHOLD,
) -> None:
    """Point one concept of a loaded checker at `image`, in place.

    The concept embedding is set so its cosine with the image's embedding is `cosine`
    (1.0: the image's own embedding) and its threshold to `threshold` (None: keep it).
    The image then scores `cosine - threshold` on that concept; the default threshold is
    high enough that other generated images do not trip it. Works on any
    StableDiffusionSafetyChecker, e.g. `pipe.safety_checker` or `engine.safety.checker`.
    """
    import torch

    if kind not in ("concept", "special"):
        raise ValueError(f"kind must be 'concept' or 'special', not {kind!r}")
    if not -1.0 <= cosine <= 1.0:
        raise ValueError(f"cosine must be between -1 and 1, not {cosine}")
    embeds = checker.concept_embeds if kind == "concept" else checker.special_care_embeds
    weights = (
        checker.concept_embeds_weights if kind == "concept" else checker.special_care_embeds_weights
    )
    if not 0 <= index < embeds.shape[0]:
        raise ValueError(f"{kind} index must be below {embeds.shape[0]}, not {index}")
    e = image_embedding(checker, feature_extractor, image)
    e = e / e.norm()
    # A unit vector orthogonal to e, so any cosine can be dialled in exactly.
    other = torch.randn(e.shape[0], generator=torch.Generator().manual_seed(index + 7))
    other = other - (other @ e) * e
    other = other / other.norm()
    vec = cosine * e + math.sqrt(max(0.0, 1.0 - cosine * cosine)) * other
    with torch.no_grad():
        embeds[index] = vec.to(embeds.dtype).to(embeds.device)
        if threshold is not None:
            weights[index] = threshold


def plant_concept_in_folder(folder: Path, image: Any, **kwargs: Any) -> None:
    """Like `plant_concept`, but rewrites the checker saved in a model folder."""
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPImageProcessor

    folder = Path(folder)
    checker = StableDiffusionSafetyChecker.from_pretrained(folder / "safety_checker")
    extractor = CLIPImageProcessor.from_pretrained(folder / "feature_extractor")
    plant_concept(checker, extractor, image, **kwargs)
    checker.save_pretrained(folder / "safety_checker", safe_serialization=True)


def plant_phrase(folder: Path, phrase: str, vector: Any, others: Sequence[str] = ()) -> None:
    """Rewrite the text tower saved in `folder` so `phrase` embeds exactly along `vector`
    (e.g. an image's embedding), leaving the embeddings of `others` unchanged.

    A rank-one change of the text projection along the part of the phrase's pooled output
    that is orthogonal to the others' (a random tiny tower pools all texts alike).
    """
    import torch
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer

    folder = Path(folder)
    tokenizer = CLIPTokenizer.from_pretrained(folder)
    model = CLIPTextModelWithProjection.from_pretrained(folder).eval()
    texts = [phrase, *others]
    with torch.no_grad():
        tok = tokenizer(texts, padding=True, truncation=True, max_length=77, return_tensors="pt")
        pooled = model.text_model(**tok).pooler_output
        h = pooled[0]
        u = h.clone()
        if len(texts) > 1:
            q, _ = torch.linalg.qr(pooled[1:].T)
            u = u - q @ (q.T @ u)
        target = torch.as_tensor(vector, dtype=torch.float32).flatten()
        w = model.text_projection.weight
        w.add_(torch.outer(target - w @ h, u) / (u @ h))
    model.save_pretrained(folder, safe_serialization=True)


if __name__ == "__main__":  # pragma: no cover - a convenience for the demo
    from generator_host.engine.demo_model import build_demo_model

    logging.basicConfig(level=logging.INFO)
    print(build_demo_model(default_tiny_model_dir()))
