"""Safety categories beyond the checker's (gore, violence, hate symbols, the streamer's own)
on the real tiny checker: planted through the public configuration, judged per tile, never
shown unfiltered, stored in the PNG metadata and read back by safety-eval."""

from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from generator_host.core.categories import DEFAULTS, parse_categories
from generator_host.core.config_template import TEMPLATE
from generator_host.core.generation import GenerationParams
from generator_host.core.settings import settings_from_dict
from generator_host.edges.gallery import Gallery, read_png_metadata
from generator_host.engine.pipeline import Engine, EngineError
from generator_host.engine.safety import is_flagged
from generator_host.engine.tiny_model import image_embedding, plant_phrase
from tests.test_gallery import (
    MODES_THAT_FILTER,
    _looks_like,
    _public_pixels,
    _request,
    _tiles_of,
    approve,
    on_stream,
)

pytestmark = pytest.mark.model

PARAMS = {4: GenerationParams("a lighthouse", seed=21, count=4)}


def _engine(folder: Path, tmp: Path, categories: dict[str, Any], **safety: Any) -> Engine:
    """An Engine loaded from settings parsed like the config file's."""
    raw = {
        "model": {
            "model": str(folder),
            "device": "cpu",
            "steps": 2,
            "guidance": 0.0,
            "warmup": False,
        },
        "safety": {"checker": str(folder), "categories": categories, **safety},
    }
    settings, problems = settings_from_dict(raw)
    assert problems == []
    engine = Engine(settings.model, settings.safety)
    engine.category_cache_dir = tmp / "cache"
    engine.load()
    return engine


def _vectors_file(path: Path, embeds: list[Any]) -> Path:
    np.save(path, np.stack([np.asarray(e, np.float32) for e in embeds]))
    return path


def _embedding(engine: Engine, image: Any) -> np.ndarray:
    return image_embedding(engine.safety.checker, engine.safety.feature_extractor, image).numpy()


def test_defaults_name_gore_violence_hate_symbols_and_the_template_shows_them() -> None:
    cats, problems = parse_categories({})
    assert problems == []
    assert [c.name for c in cats] == ["gore", "violence", "hate_symbols"]
    assert all(c.on_images and not c.on_prompts and c.phrases for c in cats)
    for name in DEFAULTS:
        assert f"[safety.categories.{name}]" in TEMPLATE
    assert "categories_text_model" in TEMPLATE


def test_category_tables_override_defaults_and_bad_values_are_reported() -> None:
    cats, problems = parse_categories(
        {
            "gore": {"enabled": False},
            "spiders": {"phrases": ["a spider"], "threshold": 0.3, "applies_to": "both"},
            "violence": {"threshold": 7, "colour": "red"},
            "empty": {"vectors": ""},
        }
    )
    by = {c.name: c for c in cats}
    assert not by["gore"].enabled
    assert by["spiders"].on_images and by["spiders"].on_prompts and by["spiders"].threshold == 0.3
    assert by["violence"].threshold == 0.26 and by["violence"].enabled
    assert any("threshold must be between -1 and 1" in p for p in problems)
    assert any("unknown key 'colour'" in p for p in problems)
    assert any("[safety.categories.empty] has no phrases and no vectors" in p for p in problems)
    _, problems = settings_from_dict({"safety": {"categories": {"x": {"applies_to": "chat"}}}})
    assert any("applies_to must be one of" in p for p in problems)


@pytest.mark.parametrize("count", [4, 9])
def test_a_category_planted_on_one_tile_flags_it_at_every_position_and_never_leaks(
    tiny_model_dir: Path, tmp_path: Path, count: int
) -> None:
    """The stock checker flags nothing here: every flag comes from the category."""
    params = GenerationParams("a lighthouse", seed=21, count=count)
    plain = _engine(tiny_model_dir, tmp_path, {})
    first = plain.generate(params, _request(params))
    assert not first.any_flagged
    for position in range(count):
        vectors = _vectors_file(
            tmp_path / f"spiders-{position}.npy", [_embedding(plain, first.images[position].image)]
        )
        engine = _engine(
            tiny_model_dir, tmp_path, {"spiders": {"vectors": str(vectors), "threshold": 0.95}}
        )
        result = engine.generate(params, _request(params))
        assert [i.flagged for i in result.images] == [k == position for k in range(count)]
        tile = result.images[position]
        assert tile.scores.flagged_categories == ["spiders"]
        assert not is_flagged(tile.scores, 0.0)  # the stock verdict alone would show it
        originals = [np.asarray(i.image) for i in result.images]
        for mode in MODES_THAT_FILTER:
            gallery = Gallery(tmp_path / f"g{count}-{position}-{mode}")
            entry = gallery.add(result, mode)
            png = gallery.screen_png(entry.id, on_stream(entry))
            if mode == "skip":
                assert png is None
            else:
                shown = _tiles_of(png, count)
                for k in range(count):
                    if k == position:
                        assert not _looks_like(shown[k], originals[k]), (position, mode)
                    else:
                        assert np.array_equal(shown[k], originals[k]), (position, mode)
            public = _public_pixels(gallery)
            flagged = originals[position]
            assert not any(p.shape == flagged.shape and np.array_equal(p, flagged) for p in public)
            gallery.close()


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_vectors_load_from_safetensors_and_torch_files(
    tiny_model_dir: Path, tmp_path: Path, suffix: str
) -> None:
    import torch
    from safetensors.torch import save_file

    params = PARAMS[4]
    plain = _engine(tiny_model_dir, tmp_path, {})
    first = plain.generate(params, _request(params))
    vec = torch.from_numpy(_embedding(plain, first.images[2].image))[None]
    path = tmp_path / f"q16{suffix}"
    if suffix == ".pt":
        torch.save(vec, path)
    else:
        save_file({"embeds": vec.contiguous()}, str(path))
    engine = _engine(tiny_model_dir, tmp_path, {"logo": {"vectors": str(path), "threshold": 0.95}})
    assert [i.flagged for i in engine.generate(params).images] == [False, False, True, False]


def test_a_planted_phrase_flags_its_tile_and_later_starts_read_the_cache(
    tiny_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    params = PARAMS[4]
    plain = _engine(tiny_model_dir, tmp_path, {})
    first = plain.generate(params, _request(params))
    text = tmp_path / "clip_text"
    shutil.copytree(tiny_model_dir / "clip_text", text)
    others = [p for phrases in DEFAULTS.values() for p in phrases] + ["a web", "a daddy longlegs"]
    plant_phrase(text, "a tarantula", _embedding(plain, first.images[1].image), others)
    cats = {"spiders": {"phrases": ["a tarantula", "a web"], "threshold": 0.95}}
    caplog.set_level(logging.INFO, logger="generator_host.engine.categories")
    engine = _engine(tiny_model_dir, tmp_path, cats, categories_text_model=str(text))
    assert any("embedded 17 category phrases" in r.getMessage() for r in caplog.records)
    result = engine.generate(params)
    assert [i.flagged for i in result.images] == [False, True, False, False]
    assert result.images[1].scores.categories["spiders"] == pytest.approx(0.05, abs=1e-4)
    caplog.clear()
    _engine(tiny_model_dir, tmp_path, cats, categories_text_model=str(text))
    messages = [r.getMessage() for r in caplog.records]
    assert not any("embedded" in m for m in messages)
    assert any("17 category phrases read from the cache" in m for m in messages)
    caplog.clear()
    cats["spiders"]["phrases"].append("a daddy longlegs")
    _engine(tiny_model_dir, tmp_path, cats, categories_text_model=str(text))
    assert any("embedded 1 category phrases" in r.getMessage() for r in caplog.records)


def test_default_phrases_never_flag_a_tiny_image(tiny_model_dir: Path, tmp_path: Path) -> None:
    engine = _engine(tiny_model_dir, tmp_path, {})
    result = engine.generate(GenerationParams("gore", seed=5, count=9))
    assert not result.any_flagged
    assert set(result.images[0].scores.categories) == {"gore", "violence", "hate_symbols"}


def test_checker_off_turns_the_categories_off_with_the_warning(
    tiny_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The logger's own level: an in-process bench run earlier may have quieted its parent.
    caplog.set_level(logging.WARNING, logger="generator_host.engine.pipeline")
    engine = _engine(tiny_model_dir, tmp_path, {}, enabled=False)
    assert engine.safety.categories is None
    assert any("safety categories are off too" in r.getMessage() for r in caplog.records)
    assert engine.generate(PARAMS[4]).images[0].scores is None


def test_vectors_from_another_clip_and_a_missing_text_model_stop_loading_with_a_reason(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    wrong = _vectors_file(tmp_path / "vitb.npy", [np.ones(512)])
    with pytest.raises(EngineError, match=r"\[safety.categories.logo\] has 512-long vectors"):
        _engine(tiny_model_dir, tmp_path, {"logo": {"vectors": str(wrong)}})
    with pytest.raises(EngineError, match="categories_text_model"):  # the streamer's own
        own = {"spiders": {"phrases": ["a spider"]}}
        _engine(tiny_model_dir, tmp_path, own, categories_text_model=str(tmp_path / "nothing"))
    with pytest.raises(EngineError, match="cannot read vectors file"):
        _engine(tiny_model_dir, tmp_path, {"x": {"vectors": str(tmp_path / "none.npy")}})


def test_category_scores_survive_in_the_png_and_in_safety_eval(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from generator_host.cli import main as cli_main

    params = PARAMS[4]
    plain = _engine(tiny_model_dir, tmp_path, {})
    first = plain.generate(params, _request(params))
    vectors = _vectors_file(tmp_path / "v.npy", [_embedding(plain, first.images[3].image)])
    engine = _engine(
        tiny_model_dir, tmp_path, {"spiders": {"vectors": str(vectors), "threshold": 0.95}}
    )
    result = engine.generate(params, _request(params))
    gallery = Gallery(tmp_path / "gallery")
    entry = gallery.add(result, "blur")
    approve(gallery, entry)
    meta = read_png_metadata(gallery.tile_path(entry.id, 3))["meta"]
    stored = meta["safety"]["scores"]["categories"]
    assert stored == pytest.approx(result.images[3].scores.categories)
    assert stored["spiders"] > 0 and meta["safety"]["categories_flagged"] == ["spiders"]
    assert json.loads(json.dumps(meta))["safety"]["flagged"] is True
    gallery.close()
    out = tmp_path / "report"
    code = cli_main(
        ["safety-eval", "--gallery", str(tmp_path / "gallery"), "--out", str(out)]
        + ["--config", str(tmp_path / "none.toml")]
    )
    assert code == 0
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "## Safety categories" in report
    assert "| spiders | 4 | 25.0% (1/4) |" in report
    assert "| gore | 4 | 0.0% (0/4) |" in report
    with (out / "gallery_scores.csv").open(encoding="utf-8") as f:
        rows = {r["path"].split("/")[-1]: r for r in csv.DictReader(f)}
    assert float(rows["000001-4.png"]["category:gore"]) < 0  # a column per category


def test_with_every_category_off_the_scores_and_metadata_are_the_checkers_alone(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    off = {name: {"enabled": False} for name in DEFAULTS}
    engine = _engine(tiny_model_dir, tmp_path, off)
    assert engine.safety.categories is None
    scores = engine.generate(PARAMS[4]).images[0].scores
    assert scores.categories == {} and set(scores.to_dict()) == {"concept", "special"}
