"""The demo's model: the tiny random-weight pipeline, with one planted checker concept.

Why: a random checker never flags a generated picture at the panel's offsets, so a
newcomer could never see the safety filter at work. A random tiny model barely listens to
the prompt (a prompt word cannot be made to trip it robustly), but its pictures depend
strongly and deterministically on the seed. So the demo build points one concept at the
picture `!generate a red fox seed=13` makes at the demo's default settings, with a
threshold in the measured gap between that picture and other seeds' pictures. Only the
demo's folder carries it: the plain tiny model the tests build is untouched.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from generator_host.engine.tiny_model import build_tiny_model, plant_concept_in_folder

DEMO_PROMPT = "a red fox"
DEMO_SEED = 13
# Cosine with the planted picture's embedding at the demo's defaults (25 steps, 64x64),
# measured over seeds 0..200 (tests/test_demo_model.py checks the verdicts): the planted
# picture 1.0 (also in a grid, and with 2 torch threads); other seeds mean 0.26, sd 0.22,
# at most 0.79 (seed 99). The threshold sits in that gap, so the planted picture scores
# +0.1 and is flagged at every panel offset (-0.05..+0.05) while others stay >= 0.06 below.
DEMO_THRESHOLD = 0.9
# bfloat16 (chosen by timing on some CPUs) would change the pictures; the tiny model gains
# nothing from it, so the demo and its build both run in float32.
DEMO_DTYPE = "float32"
# OpenVINO's pictures differ a little too (it runs bfloat16 where it can), and converting
# the tiny model would only add seconds to the first start: the demo runs on PyTorch.
DEMO_BACKEND = "torch"
DEMO_VARIANT = f"+demo-seed{DEMO_SEED}-{DEMO_THRESHOLD}"


def build_demo_model(folder: Path) -> Path:
    """Build (once) the demo's tiny model into `folder`, its concept planted."""
    return build_tiny_model(folder, finish=plant_demo_concept, variant=DEMO_VARIANT)


def demo_model_settings(folder: Path, settings: Any = None) -> Any:
    """The [model] settings the demo runs with (`settings`, else the defaults without a
    warm-up): the demo's folder, on the CPU, in the format its planted concept fits."""
    from generator_host.core.settings import ModelSettings

    settings = settings if settings is not None else ModelSettings(warmup=False)
    settings.model = str(folder)
    settings.device = "cpu"
    settings.dtype = DEMO_DTYPE
    settings.backend = DEMO_BACKEND
    return settings


def demo_engine(folder: Path) -> Any:
    """The engine as the demo makes it, loaded."""
    from generator_host.core.settings import SafetySettings
    from generator_host.engine.pipeline import Engine

    engine = Engine(demo_model_settings(folder), SafetySettings())
    engine.load()
    return engine


def demo_picture(folder: Path):  # noqa: ANN201 - a PIL image; Pillow is imported lazily
    """The picture the demo makes for DEMO_PROMPT at DEMO_SEED with its default settings."""
    from generator_host.core.generation import GenerationParams

    params = GenerationParams(
        prompt=DEMO_PROMPT, steps=0, guidance=-1.0, width=0, height=0, seed=DEMO_SEED
    )
    return demo_engine(folder).generate(params).images[0].image


def plant_demo_concept(folder: Path) -> None:
    """Point concept 0 of the checker in `folder` at the demo's planted picture."""
    plant_concept_in_folder(folder, demo_picture(folder), threshold=DEMO_THRESHOLD)
