"""Grid composition, blur and the hold placeholder (pure Pillow, no model)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from generator_host.core.approval import Tile
from generator_host.engine import grid


def _noise(seed: int, size: int = 64) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


@pytest.mark.parametrize(
    ("n", "shape"), [(1, (1, 1)), (2, (1, 2)), (4, (2, 2)), (5, (2, 3)), (9, (3, 3)), (10, (3, 4))]
)
def test_grid_has_ceil_sqrt_columns(n: int, shape: tuple[int, int]) -> None:
    assert grid.grid_shape(n) == shape
    tiles = [_noise(i, 32) for i in range(n)]
    canvas = grid.compose(tiles)
    rows, cols = shape
    assert canvas.size == (cols * 32, rows * 32)
    last_r, last_c = divmod(n - 1, cols)
    box = (last_c * 32, last_r * 32, last_c * 32 + 32, last_r * 32 + 32)
    assert np.array_equal(np.asarray(canvas.crop(box)), np.asarray(tiles[-1]))


def test_blur_leaves_no_shape_and_says_why() -> None:
    for size in (64, 512):
        original = _noise(1, size)
        blurred = grid.blur(original)
        a = np.asarray(original, dtype=float)
        b = np.asarray(blurred, dtype=float)
        assert blurred.size == original.size
        # Away from the label band the blurred tile is nearly flat: no detail survives.
        top = b[: size // 4]
        assert top.std(axis=(0, 1)).max() < 8
        assert np.abs(a - b).mean() > 40
        # The label band has white text on black.
        band = b[size // 2 - size // 16 : size // 2 + size // 16]
        assert band.max() > 150 and band.min() < 30


def test_blur_of_a_picture_keeps_only_its_colours() -> None:
    half = np.zeros((128, 128, 3), np.uint8)
    half[:, :64] = (255, 0, 0)
    blurred = np.asarray(grid.blur(Image.fromarray(half), label=""), dtype=float)
    assert blurred[..., 0].mean() == pytest.approx(127, abs=20)
    assert np.abs(np.diff(blurred[:, :, 0], axis=1)).max() < 20  # no sharp edge left


def test_placeholder_shows_no_pixels_and_says_awaiting_approval() -> None:
    tile = grid.placeholder((64, 64))
    assert tile.size == (64, 64)
    assert grid.HOLD_LABEL == "awaiting approval"
    assert len(np.unique(np.asarray(tile).reshape(-1, 3), axis=0)) > 1  # label drawn


def test_render_draws_each_tile_as_the_policy_says() -> None:
    tiles = [_noise(i) for i in range(4)]
    plan = [Tile.CLEAR, Tile.BLURRED, Tile.PLACEHOLDER, Tile.NOTHING]
    canvas = np.asarray(grid.render(tiles, plan))
    cells = [canvas[r * 64 : r * 64 + 64, c * 64 : c * 64 + 64] for r in (0, 1) for c in (0, 1)]
    assert np.array_equal(cells[0], np.asarray(tiles[0]))
    assert np.array_equal(cells[1], np.asarray(grid.blur(tiles[1])))
    assert np.array_equal(cells[2], np.asarray(grid.placeholder((64, 64))))
    assert (cells[3] == grid.BACKGROUND).all()


def test_bad_input_gives_clear_messages() -> None:
    with pytest.raises(ValueError, match="at least one image"):
        grid.compose([])
    with pytest.raises(ValueError, match="one tile decision per image"):
        grid.render([_noise(0)], [])
