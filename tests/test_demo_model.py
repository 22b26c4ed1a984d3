"""The demo's checker flags the picture the README names, and no other, at any thread count.

The demo build plants one concept on the picture `!generate a red fox seed=13` makes at
the demo's defaults; float32 sums differ with torch's thread count, so both are checked.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from generator_host.core.generation import GenerationParams
from generator_host.engine.demo_model import (
    DEMO_PROMPT,
    DEMO_SEED,
    build_demo_model,
    demo_engine,
)
from generator_host.engine.pipeline import Engine
from generator_host.engine.tiny_model import build_tiny_model, is_complete
from tests.fixtures_model import model_libraries_available

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def demo_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.requirements import require

    require(model_libraries_available(), "torch, diffusers and transformers are installed")
    return build_demo_model(tmp_path_factory.mktemp("demo") / "tiny-sd")


@pytest.fixture(params=[1, 2], ids=["1-thread", "2-threads"])
def threads(request: pytest.FixtureRequest) -> Iterator[int]:
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


def flags(engine: Engine, prompt: str, seed: int, count: int = 1) -> list[bool]:
    params = GenerationParams(
        prompt=prompt, steps=0, guidance=-1.0, width=0, height=0, seed=seed, count=count
    )
    return [img.flagged for img in engine.generate(params).images]


def test_the_planted_seed_is_flagged_and_its_neighbours_are_not(
    demo_model: Path, threads: int
) -> None:
    engine = demo_engine(demo_model)
    assert engine.safety.offset == 0.0
    assert flags(engine, DEMO_PROMPT, DEMO_SEED) == [True]
    # a grid from seed 13 holds seeds 13..16: only the first tile is flagged
    assert flags(engine, DEMO_PROMPT, DEMO_SEED, count=4) == [True, False, False, False]
    assert flags(engine, DEMO_PROMPT, DEMO_SEED + 1) == [False]
    assert flags(engine, "a blue cat", 7) == [False]


def test_the_plain_tiny_model_is_not_the_demo_model(demo_model: Path, tmp_path: Path) -> None:
    """The tests' plain build is neither reused for the demo nor the demo's build for it."""
    assert is_complete(demo_model, variant="") is False
    plain = build_tiny_model(tmp_path / "plain")
    assert is_complete(plain) and not is_complete(demo_model)
    engine = demo_engine(plain)
    assert flags(engine, DEMO_PROMPT, DEMO_SEED) == [False]
