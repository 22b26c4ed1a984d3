"""Grid composition, heavy blur and the "awaiting approval" placeholder: pure Pillow.

Why here and not in the gallery: what a flagged tile looks like on stream is a rule a
streamer relies on, so it lives in one small place with no I/O. Every function returns a
new image; the originals are never modified.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFilter, ImageFont

from generator_host.core.approval import Tile

BLUR_LABEL = "flagged by the safety filter"
HOLD_LABEL = "awaiting approval"
BACKGROUND = (16, 16, 16)


def grid_shape(count: int) -> tuple[int, int]:
    """(rows, cols): ceil(sqrt n) columns and as few rows as fit, as GenerationParams does."""
    if count < 1:
        raise ValueError(f"a grid needs at least one image, not {count}")
    cols = math.ceil(math.sqrt(count))
    return math.ceil(count / cols), cols


def compose(tiles: Sequence[Image.Image]) -> Image.Image:
    """Tiles left to right, top to bottom, each cell the size of the largest tile."""
    if not tiles:
        raise ValueError("a grid needs at least one image")
    rows, cols = grid_shape(len(tiles))
    w = max(t.width for t in tiles)
    h = max(t.height for t in tiles)
    canvas = Image.new("RGB", (cols * w, rows * h), BACKGROUND)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        canvas.paste(tile.convert("RGB"), (c * w, r * h))
    return canvas


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow built without FreeType
        return ImageFont.load_default()


def _label(image: Image.Image, text: str) -> Image.Image:
    """Write `text` on a dark band across the middle, wrapped to fit the width."""
    draw = ImageDraw.Draw(image)
    size = max(8, min(image.width // 12, 28))
    font = _font(size)
    words, lines, line = text.split(), [], ""
    for word in words:
        trial = f"{line} {word}".strip()
        if line and draw.textlength(trial, font=font) > image.width * 0.9:
            lines.append(line)
            line = word
        else:
            line = trial
    lines.append(line)
    band_h = (size + 4) * len(lines) + 8
    top = (image.height - band_h) // 2
    draw.rectangle((0, top, image.width, top + band_h), fill=(0, 0, 0))
    for n, text_line in enumerate(lines):
        tw = draw.textlength(text_line, font=font)
        draw.text(
            ((image.width - tw) / 2, top + 4 + n * (size + 4)),
            text_line,
            fill=(255, 255, 255),
            font=font,
        )
    return image


def blur(image: Image.Image, label: str = BLUR_LABEL) -> Image.Image:
    """A heavily blurred copy with a label: colours survive, shapes do not.

    The image is first shrunk to at most 8 pixels a side (which no Gaussian radius can
    undo), then blurred back up, so the result is the same however large the image is.
    """
    small = image.convert("RGB").copy()
    small.thumbnail((8, 8), Image.Resampling.BOX)
    out = small.resize(image.size, Image.Resampling.BILINEAR)
    out = out.filter(ImageFilter.GaussianBlur(radius=max(4, max(image.size) // 16)))
    return _label(out, label) if label else out


def placeholder(size: tuple[int, int], label: str = HOLD_LABEL) -> Image.Image:
    """A plain tile saying the image waits for the streamer's approval; no pixel of it."""
    return _label(Image.new("RGB", size, (40, 40, 48)), label)


def render(images: Sequence[Image.Image], tiles: Sequence[Tile]) -> Image.Image:
    """The grid as the approval policy (`core.approval.screen`) says it appears on stream:
    each image clear, blurred, replaced by the placeholder, or an empty cell."""
    if len(images) != len(tiles):
        raise ValueError("one tile decision per image is needed")
    looks = {
        Tile.CLEAR: lambda t: t,
        Tile.BLURRED: blur,
        Tile.PLACEHOLDER: lambda t: placeholder(t.size),
        Tile.NOTHING: lambda t: Image.new("RGB", t.size, BACKGROUND),
    }
    return compose([looks[Tile(k)](t) for t, k in zip(images, tiles, strict=True)])
