"""The OpenVINO backend ([model] backend = "auto" on the CPU) on the real tiny model: the
pictures, the safety verdicts, the conversion cache, and what a failure looks like."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from generator_host.core.generation import GenerationParams
from generator_host.engine import openvino_backend
from generator_host.engine.pipeline import EngineError
from generator_host.engine.safety import SafetyJudge, is_flagged, load_checker
from generator_host.engine.tiny_model import build_tiny_model
from tests.fixtures_model import make_tiny_engine, plant_on_tile
from tests.requirements import require
from tests.test_safety import _stock_verdicts

pytestmark = pytest.mark.model

PARAMS = GenerationParams("a lighthouse at dusk", seed=3, count=4, steps=2, guidance=0.0)
CLOSE = 8  # of 255: bfloat16 inside OpenVINO moves a random model's pixels by a few levels


@pytest.fixture(autouse=True)
def _openvino() -> None:
    require(openvino_backend.available(), "openvino is installed (pip install -e .)")


def _pixels(result) -> list[np.ndarray]:  # noqa: ANN001
    return [np.asarray(tile.image, dtype=np.int16) for tile in result.images]


def _max_diff(a, b) -> int:  # noqa: ANN001
    return max(int(np.abs(x - y).max()) for x, y in zip(_pixels(a), _pixels(b), strict=True))


def _converted(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("converting")]


def test_auto_paints_on_openvino_what_pytorch_paints(
    tiny_model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The default backend on the CPU is OpenVINO; its pictures are PyTorch's within a few
    levels, the same seed gives the same bytes, and the next start converts nothing."""
    caplog.set_level(logging.INFO)
    torch_result = make_tiny_engine(tiny_model_dir).generate(PARAMS)
    first = make_tiny_engine(tiny_model_dir, backend="auto")
    result = first.generate(PARAMS)
    assert result.extra["backend"] == "openvino"  # written into each picture's metadata
    assert torch_result.extra["backend"] == "torch"
    assert _max_diff(result, torch_result) <= CLOSE
    assert first.generate(PARAMS).images[0].image.tobytes() == result.images[0].image.tobytes()

    caplog.clear()
    again = make_tiny_engine(tiny_model_dir, backend="openvino")
    assert _converted(caplog) == []  # compiled from the cache
    assert again.generate(PARAMS).images[2].image.tobytes() == result.images[2].image.tobytes()
    # Guidance (two prompts per picture), a negative prompt and another size: free shapes.
    wide = GenerationParams(
        "a fox", negative_prompt="blur", seed=5, steps=2, guidance=5.0, width=96, height=64, count=2
    )
    assert [t.image.size for t in again.generate(wide).images] == [(96, 64), (96, 64)]


def test_openvino_checker_flags_what_stock_diffusers_flags(tiny_model_dir: Path) -> None:
    """The checker's tower runs on OpenVINO in float32: at offset 0 its verdicts are stock
    diffusers' on the same pictures, the special-care adjustment's 0.005 margin included."""
    engine = make_tiny_engine(tiny_model_dir, backend="auto")
    images = [tile.image for tile in engine.generate(PARAMS).images]
    plant_on_tile(engine, images[1], kind="concept", index=3)
    plant_on_tile(engine, images[2], kind="concept", index=5, cosine=0.995, threshold=1.0)
    plant_on_tile(engine, images[2], kind="special", index=1)
    plant_on_tile(engine, images[3], kind="concept", index=7, cosine=0.995, threshold=1.0)
    ours = engine.safety.scores(images)

    stock, extractor = load_checker(tiny_model_dir)  # PyTorch, float32
    planted = engine.safety.checker.state_dict()
    for name in ("concept_embeds", "concept_embeds_weights", "special_care_embeds"):
        getattr(stock, name).data.copy_(planted[name])
    stock.special_care_embeds_weights.data.copy_(planted["special_care_embeds_weights"])
    torch_judge = SafetyJudge(stock, extractor)
    verdicts = [is_flagged(s, 0.0) for s in ours]
    assert verdicts == _stock_verdicts(torch_judge, images) == [False, True, True, False]
    for mine, theirs in zip(ours, torch_judge.scores(images), strict=True):
        assert mine.concept == pytest.approx(theirs.concept, abs=1e-5)


def test_a_model_with_other_weights_gets_its_own_conversion(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Fine-tunes share their base model's configs: the cache tells them apart by their
    weights, so each model's pictures stay its own."""
    other = build_tiny_model(tmp_path / "other-sd", seed=7)
    base = make_tiny_engine(tiny_model_dir, backend="auto").generate(PARAMS)
    mine = make_tiny_engine(other, backend="auto").generate(PARAMS)
    assert _max_diff(mine, make_tiny_engine(other).generate(PARAMS)) <= CLOSE
    assert _max_diff(mine, base) > 3 * CLOSE


def test_a_damaged_conversion_is_made_again(
    tiny_model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    make_tiny_engine(tiny_model_dir, backend="auto")  # converted (or already there)
    for xml in openvino_backend.cache_root().glob("text_encoder-*/model.xml"):
        xml.write_text("<net>cut short by a crash", encoding="utf-8")
    caplog.set_level(logging.INFO)
    engine = make_tiny_engine(tiny_model_dir, backend="auto")
    assert any("cannot be read" in r.getMessage() for r in caplog.records)
    assert [m.split(" for ")[0] for m in _converted(caplog)] == ["converting the text encoder"]
    assert engine.generate(PARAMS).extra["backend"] == "openvino"


def test_a_failed_conversion_leaves_auto_on_pytorch_and_stops_an_explicit_openvino(
    tiny_model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The cache folder cannot be written (a file in its way, a full disk): `auto` paints
    on PyTorch after one warning that says why; `openvino` refuses to start, in one line."""
    blocked = tmp_path / "cache"
    blocked.mkdir()
    (blocked / "openvino").write_text("not a folder", encoding="utf-8")
    monkeypatch.setattr(openvino_backend, "cache_root", lambda: blocked / "openvino")
    caplog.set_level(logging.WARNING)
    engine = make_tiny_engine(tiny_model_dir, backend="auto")
    assert engine.generate(PARAMS).extra["backend"] == "torch"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("running on PyTorch instead" in w and "OpenVINO" in w for w in warnings), warnings
    with pytest.raises(EngineError) as error:
        make_tiny_engine(tiny_model_dir, backend="openvino")
    assert "OpenVINO" in str(error.value) and "\n" not in str(error.value)


def test_converting_sends_no_usage_report(tmp_path: Path) -> None:
    """OpenVINO's converter reports usage to Google Analytics unless opted out (it first
    writes a client id under ~/intel): the host's conversions report nothing."""
    import os
    import subprocess
    import sys

    code = (
        "from pathlib import Path; import sys, torch\n"
        "from generator_host.engine import openvino_backend as ob\n"
        "spec = ob.PartSpec(torch.nn.Linear(3, 2), (torch.zeros(1, 3),), ((0,),))\n"
        "ob.convert(spec, Path(sys.argv[1]))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "TF_BUILD", "JENKINS_URL")}
    env["HOME"] = str(tmp_path)
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "linear")], env=env, check=True)
    assert (tmp_path / "linear" / "model.xml").is_file()
    assert not (tmp_path / "intel").exists()
