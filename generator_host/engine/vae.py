"""Which VAE decoder turns latents into the picture: the model's own, or the tiny one.

Why: on a CPU the model's full VAE decoder is most of an SD-Turbo picture's time (about
14 s of 20 s on 2 busy cores), while the tiny decoder (TAESD, loaded as diffusers'
`AutoencoderTiny`) decodes the same latents in under a second at stream quality. So
`[model] vae = "auto"` picks the tiny decoder where the device is slow (CPU, Apple MPS)
and keeps the full one on CUDA, where decoding is cheap. The decoder only changes how the
latents become pixels: the safety checker judges the decoded image that goes on stream,
whichever decoder made it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from generator_host.core.settings import VAE_CHOICES, ModelSettings

log = logging.getLogger(__name__)


class VaeError(Exception):
    """The tiny decoder cannot be loaded or does not fit the model; says what to do."""


@dataclass(frozen=True)
class Decoder:
    """What decodes this engine's pictures (recorded with every picture)."""

    kind: str  # "full" or "tiny"
    source: str  # the tiny decoder's hub id or folder name; "" for the model's own VAE

    def describe(self) -> str:
        return f"tiny VAE decoder {self.source}" if self.kind == "tiny" else "full VAE decoder"


FULL = Decoder("full", "")


def wants_tiny(choice: str, device: str, fits: bool = True) -> bool:
    """`auto`: tiny on the CPU and Apple MPS (decoding dominates there) for models whose
    latents TAESD decodes (`fits`); full on CUDA and for other models."""
    if choice not in VAE_CHOICES:
        raise VaeError(f"[model] vae must be one of {VAE_CHOICES}, not {choice!r}")
    if choice == "auto":
        return fits and device in ("cpu", "mps")
    return choice == "tiny"


def taesd_fits(pipe: Any) -> bool:
    """TAESD/TAESDXL decode SD 1.x/2.x/SDXL latents: 4 channels, 8x smaller than the image
    (not, for example, SD3's 16 channels or the test model's 2x)."""
    vae = getattr(pipe, "vae", None)
    channels = getattr(getattr(vae, "config", None), "latent_channels", None)
    return channels == 4 and int(getattr(pipe, "vae_scale_factor", 0)) == 8


def tiny_source(settings: ModelSettings, family: str) -> str:
    """TAESD matches SD 1.x/2.x and the Turbo models' latents; SDXL's need TAESDXL."""
    return settings.tiny_vae_xl if family.startswith("sdxl") else settings.tiny_vae


def load_tiny(source: str, device: str, dtype: Any) -> Any:
    """`AutoencoderTiny` from a folder or a hub id (downloaded once, ~10 MB), ready to run.

    A hub id is fetched by engine/hub.py (progress, timeouts, no hub call once complete).
    """
    from diffusers import AutoencoderTiny

    text = source.strip()
    if not text:
        raise VaeError("[model] tiny_vae is empty: set it to madebyollin/taesd or a folder")
    path = Path(text).expanduser()
    where = str(path)
    if not path.exists():  # a hub id: downloaded once, with progress and timeouts
        from generator_host.engine import hub

        try:
            where = str(hub.fetch(text, label="tiny VAE decoder").folder)
        except hub.HubError as exc:
            raise VaeError(f'{exc}; or set [model] vae = "full"') from exc
    try:
        vae = AutoencoderTiny.from_pretrained(where, dtype=dtype)
    except Exception as exc:  # noqa: BLE001 - every loader failure becomes one clear reason
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise VaeError(
            f"cannot load the tiny VAE decoder {text!r}: {first}. Set [model] tiny_vae to "
            'a downloaded AutoencoderTiny folder, or [model] vae = "full"'
        ) from exc
    return vae.to(device).eval()


def install(pipe: Any, vae: Any) -> None:
    """Put `vae` in the pipeline in place of its own; the latent scale must be the same."""
    from diffusers.image_processor import VaeImageProcessor

    own = int(getattr(pipe, "vae_scale_factor", 8))
    new = 2 ** (len(vae.config.block_out_channels) - 1)
    if new != own:
        raise VaeError(
            f"the tiny VAE decoder scales latents by {new}, the model by {own}: it does not "
            'fit this model; set [model] tiny_vae to a matching one, or [model] vae = "full"'
        )
    pipe.vae = vae  # DiffusionPipeline records the swap in its config too
    pipe.image_processor = VaeImageProcessor(vae_scale_factor=own)


def choose(pipe: Any, settings: ModelSettings, family: str, device: str, dtype: Any) -> Decoder:
    """Swap the tiny decoder in when the settings and the device ask for it."""
    if not wants_tiny(settings.vae, device, taesd_fits(pipe)):
        if settings.vae == "auto" and device in ("cpu", "mps"):
            log.info("the full VAE decoder: the tiny one does not decode this model's latents")
        return FULL
    source = tiny_source(settings, family)
    install(pipe, load_tiny(source, device, dtype))
    name = Path(source).name if Path(source).expanduser().exists() else source
    log.info("using the tiny VAE decoder %s ([model] vae = %r on %s)", name, settings.vae, device)
    return Decoder("tiny", name)
