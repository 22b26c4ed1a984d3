"""Fixtures for the model tests: the tiny real pipeline, built once per test session.

`tiny_model_dir` builds the tiny random-weight SD pipeline (with its safety checker)
into a session temp folder; `tiny_engine` is a loaded Engine on it (fresh per test, ~0.1 s).
`plant_on_tile` makes one tile of a grid trip a concept of an engine's checker.
Nothing here reaches a model hub: HF_HUB_OFFLINE is forced before diffusers is imported.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

__all__ = [
    "tiny_model_dir",
    "tiny_vae_dir",
    "tiny_engine",
    "tiny_settings",
    "make_tiny_engine",
    "plant_on_tile",
    "model_libraries_available",
]


def model_libraries_available() -> bool:
    try:
        import diffusers  # noqa: F401
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


def _quiet() -> None:
    logging.getLogger("transformers").setLevel(logging.ERROR)
    logging.getLogger("diffusers").setLevel(logging.ERROR)
    try:
        import diffusers.utils.logging as dlog
        import transformers.utils.logging as tlog

        dlog.disable_progress_bar()
        dlog.set_verbosity_error()
        tlog.set_verbosity_error()
        tlog.disable_progress_bar()
    except ImportError:
        pass


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the tiny SD 1.x pipeline + safety checker (built once, ~1 s)."""
    from tests.requirements import require

    require(model_libraries_available(), "torch, diffusers and transformers are installed")
    _quiet()
    import torch

    # The tiny model gains nothing from threads, and on a shared 2-core machine extra
    # threads spin against other processes: one thread keeps the tests fast under load.
    torch.set_num_threads(1)
    from generator_host.engine.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.getbasetemp() / "tiny-sd")


@pytest.fixture(scope="session")
def tiny_vae_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """A tiny AutoencoderTiny folder that decodes the tiny model's latents (for vae = tiny)."""
    from generator_host.engine.tiny_model import build_tiny_vae

    return build_tiny_vae(tmp_path_factory.getbasetemp() / "tiny-taesd")


def tiny_settings(folder: Path, **model_overrides: Any) -> tuple[Any, Any]:
    """ModelSettings/SafetySettings for the tiny model: 2 steps, 64x64, no warm-up, one
    CPU thread (see tiny_model_dir), PyTorch (tests/test_openvino.py covers the default
    OpenVINO backend; compiling it for each of the suite's many engines would cost a
    second each)."""
    from generator_host.core.settings import ModelSettings, SafetySettings

    values: dict[str, Any] = {
        "model": str(folder),
        "device": "cpu",
        "steps": 2,
        "guidance": 0.0,
        "warmup": False,
        "cpu_threads": 1,
        "backend": "torch",
    }
    values.update(model_overrides)
    safety = SafetySettings(checker=str(folder))
    return ModelSettings(**values), safety


def make_tiny_engine(folder: Path, **model_overrides: Any) -> Any:
    """A loaded Engine on the tiny model (for other areas' tests too)."""
    from generator_host.engine.pipeline import Engine

    _quiet()
    model, safety = tiny_settings(folder, **model_overrides)
    engine = Engine(model, safety)
    engine.load()
    return engine


@pytest.fixture
def tiny_engine(tiny_model_dir: Path) -> Iterator[Any]:
    """A freshly loaded Engine on the tiny model; each test may plant concepts freely."""
    yield make_tiny_engine(tiny_model_dir)


def plant_on_tile(
    engine: Any,
    image: Any,
    *,
    kind: str = "concept",
    index: int = 0,
    cosine: float = 1.0,
    threshold: float = 0.95,
) -> None:
    """Make `image` (and only images nearly identical to it) trip one concept of the engine."""
    from generator_host.engine.tiny_model import plant_concept

    judge = engine.safety
    plant_concept(
        judge.checker,
        judge.feature_extractor,
        image,
        kind=kind,
        index=index,
        cosine=cosine,
        threshold=threshold,
    )
