"""The safety judge on the real (tiny) checker: raw scores, stock verdicts at offset 0, offsets."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from generator_host.core.generation import GenerationParams, SafetyScores
from generator_host.engine.pipeline import Engine, EngineError
from generator_host.engine.safety import SafetyJudge, is_flagged
from generator_host.engine.tiny_model import image_embedding, plant_concept
from tests.fixtures_model import plant_on_tile, tiny_settings

pytestmark = pytest.mark.model


def _grid(engine, seed: int = 11, count: int = 4):  # noqa: ANN001, ANN202
    return engine.generate(GenerationParams("a cat", seed=seed, count=count))


def _stock_verdicts(judge: SafetyJudge, images) -> list[bool]:  # noqa: ANN001
    """What diffusers' own StableDiffusionSafetyChecker.forward flags for these images."""
    pixels = judge.feature_extractor(images, return_tensors="pt").pixel_values
    arrays = [np.asarray(im, dtype=np.float32) / 255.0 for im in images]
    _, flags = judge.checker(clip_input=pixels, images=arrays)
    return [bool(f) for f in flags]


def test_raw_scores_are_cosine_minus_threshold_unrounded(tiny_engine: Engine) -> None:
    images = [img.image for img in _grid(tiny_engine).images]
    judge = tiny_engine.safety
    scores = judge.scores(images)
    assert [(len(s.concept), len(s.special)) for s in scores] == [(17, 3)] * 4
    checker = judge.checker
    for image, s in zip(images, scores, strict=True):
        e = image_embedding(checker, judge.feature_extractor, image)
        cos = torch.nn.functional.cosine_similarity(e[None], checker.concept_embeds.float())
        want = (cos - checker.concept_embeds_weights.float()).tolist()
        assert s.concept == pytest.approx(want, abs=1e-5)
    flat = [v for s in scores for v in s.concept + s.special]
    assert any(round(v, 3) != v for v in flat), "scores must be kept unrounded"


def test_offset_zero_matches_stock_diffusers_with_planted_concepts(tiny_engine: Engine) -> None:
    result = _grid(tiny_engine)
    images = [img.image for img in result.images]
    judge = tiny_engine.safety
    # Tile 1 trips a concept outright.
    plant_on_tile(tiny_engine, images[1], kind="concept", index=3)
    # Tile 2 sits 0.005 under a concept's threshold but trips a special-care concept:
    # only diffusers' +0.01 special-care adjustment flags it.
    plant_on_tile(tiny_engine, images[2], kind="concept", index=5, cosine=0.995, threshold=1.0)
    plant_on_tile(tiny_engine, images[2], kind="special", index=1)
    # Tile 3 is just as close to a concept, with no special-care score: not flagged.
    plant_on_tile(tiny_engine, images[3], kind="concept", index=7, cosine=0.995, threshold=1.0)
    scores = judge.scores(images)
    ours = [is_flagged(s, 0.0) for s in scores]
    assert ours == _stock_verdicts(judge, images)
    assert ours == [False, True, True, False]
    assert scores[2].concept[5] == pytest.approx(-0.005, abs=1e-4)


def test_offset_zero_matches_stock_on_random_thresholds(tiny_engine: Engine) -> None:
    """Thresholds drawn around the real cosines, so verdicts sit on both sides of the line.

    After the drawn examples the verdicts seen must include both a flagged and a clean
    tile: otherwise the thresholds never crossed the line and the comparison proved nothing.
    """
    judge = tiny_engine.safety
    checker = judge.checker
    images = [i.image for i in _grid(tiny_engine, 3).images]
    embeds = torch.nn.functional.normalize(
        torch.stack([image_embedding(checker, judge.feature_extractor, im) for im in images])
    )
    cos_c = embeds @ torch.nn.functional.normalize(checker.concept_embeds.float()).T
    cos_s = embeds @ torch.nn.functional.normalize(checker.special_care_embeds.float()).T
    jitter = st.floats(-0.02, 0.02, allow_nan=False)
    seen: set[bool] = set()

    @settings(max_examples=15, deadline=None)
    @given(data=st.data())
    def verdicts_match(data) -> None:  # noqa: ANN001
        with torch.no_grad():
            for k in range(17):
                base = cos_c[data.draw(st.integers(0, 3)), k].item()
                checker.concept_embeds_weights[k] = base + data.draw(jitter)
            for k in range(3):
                base = cos_s[data.draw(st.integers(0, 3)), k].item()
                checker.special_care_embeds_weights[k] = base + data.draw(jitter)
        ours = [is_flagged(s, 0.0) for s in judge.scores(images)]
        assert ours == _stock_verdicts(judge, images)
        seen.update(ours)

    verdicts_match()
    assert seen == {True, False}, f"the random thresholds only ever gave {seen}"


@given(
    concept=st.lists(st.floats(-1, 1), min_size=17, max_size=17),
    special=st.lists(st.floats(-1, 1), min_size=3, max_size=3),
    offset=st.floats(-0.5, 0.5),
    more=st.floats(0, 0.5),
)
def test_a_higher_offset_is_never_less_strict(concept, special, offset, more) -> None:  # noqa: ANN001
    s = SafetyScores(concept=concept, special=special)
    if is_flagged(s, offset):
        assert is_flagged(s, offset + more)


def test_offset_change_applies_to_the_next_verdict_without_reload(tiny_engine: Engine) -> None:
    checker = tiny_engine.safety.checker
    params = GenerationParams("a dog", seed=1, count=4)
    assert not any(i.flagged for i in tiny_engine.generate(params).images)
    tiny_engine.safety.offset = 0.9  # a streamer sliding the threshold all the way up
    strict = tiny_engine.generate(params)
    assert all(i.flagged for i in strict.images)
    assert strict.extra["safety_offset"] == 0.9
    tiny_engine.safety.offset = 0.0
    assert not any(i.flagged for i in tiny_engine.generate(params).images)
    assert tiny_engine.safety.checker is checker
    with pytest.raises(ValueError, match="between -1 and 1"):
        tiny_engine.safety.offset = 5


def test_turning_the_checker_off_needs_the_setting_and_warns(
    tiny_model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model, safety = tiny_settings(tiny_model_dir)
    safety.enabled = False
    engine = Engine(model, safety)
    with caplog.at_level(logging.WARNING, logger="generator_host.engine.pipeline"):
        engine.load()
    assert "SAFETY CHECKER OFF" in caplog.text
    engine.safety.offset = 0.9  # would flag everything if the checker ran
    result = engine.generate(GenerationParams("x", count=2))
    assert [(i.flagged, i.scores) for i in result.images] == [(False, None)] * 2


def _model_without_checker(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    shutil.rmtree(dest / "safety_checker")
    data = json.loads((dest / "model_index.json").read_text())
    data["safety_checker"] = [None, None]
    data["requires_safety_checker"] = False
    (dest / "model_index.json").write_text(json.dumps(data))
    return dest


def test_a_model_without_checker_gets_the_configured_one(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    bare = _model_without_checker(tiny_model_dir, tmp_path / "bare")
    model, safety = tiny_settings(bare)
    safety.checker = str(tiny_model_dir)  # stands in for CompVis/stable-diffusion-safety-checker
    engine = Engine(model, safety)
    engine.load()
    images = [i.image for i in engine.generate(GenerationParams("x", seed=2, count=2)).images]
    plant_concept(engine.safety.checker, engine.safety.feature_extractor, images[0])
    flags = [i.flagged for i in engine.generate(GenerationParams("x", seed=2, count=2)).images]
    assert flags == [True, False]


def test_a_checker_that_cannot_be_found_stops_loading_with_a_reason(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    bare = _model_without_checker(tiny_model_dir, tmp_path / "bare")
    model, safety = tiny_settings(bare)
    safety.checker = "CompVis/stable-diffusion-safety-checker"  # offline: not downloadable
    with pytest.raises(EngineError, match=r"enabled = false"):
        Engine(model, safety).load()


def test_a_concept_planted_in_a_model_folder_trips_stock_diffusers_too(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from diffusers import AutoPipelineForText2Image

    from generator_host.engine.tiny_model import plant_concept_in_folder

    folder = tmp_path / "planted"
    shutil.copytree(tiny_model_dir, folder)
    pipe = AutoPipelineForText2Image.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)

    def run():  # noqa: ANN202
        gens = [torch.Generator().manual_seed(s) for s in (8, 9)]
        return pipe(["a tree"] * 2, num_inference_steps=2, guidance_scale=0.0, generator=gens)

    before = run()
    assert before.nsfw_content_detected == [False, False]
    plant_concept_in_folder(folder, before.images[1], kind="concept", index=2)
    pipe = AutoPipelineForText2Image.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    assert run().nsfw_content_detected == [False, True]
