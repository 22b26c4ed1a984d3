"""Safety categories on prompts: a prompt too close to a category is refused before any
generation (or flagged, as the streamer chooses), the negative prompt never is, and the
check runs on its own thread. The show's rules without a model first, then the real host
on the tiny model with a planted phrase in its tiny CLIP text tower."""

from __future__ import annotations

import logging
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from generator_host.core.categories import DEFAULT_TEXT_MODEL
from generator_host.core.events import CheckPrompt, PromptChecked, Reply, StartGeneration
from generator_host.core.message import ChatMessage, Role, Viewer
from generator_host.core.moderation import Blocklist, Moderator
from generator_host.core.settings import Settings
from generator_host.core.show import Show
from generator_host.edges.gallery import Gallery, read_png_metadata
from generator_host.engine.pipeline import Engine, EngineError
from generator_host.engine.tiny_model import PROJECTION_DIM, plant_phrase
from tests.test_categories import _engine

PLANTED = "a man cut in half"
OTHERS = ["a lighthouse", "a red fox", "a cat", "a man"]


# ---- the show (no model) ----------------------------------------------------------------


def _show(action: str = "refuse", per_user: int = 1) -> Show:
    s = Settings()
    s.moderation.user_cooldown_seconds = 0.0
    s.moderation.max_queued_per_user = per_user
    s.safety.prompt_action = action
    block, _ = Blocklist.from_lines([])
    return Show(s, rng_seed=3, moderator=Moderator(s.moderation, block), prompt_check=True)


def _chat(show: Show, login: str, text: str, now: float = 0.0) -> list[Any]:
    viewer = Viewer(login, login.capitalize(), role=Role.EVERYONE)
    return show.handle(ChatMessage(viewer, text, f"m-{login}-{now}", now))


def _said(effects: list[Any]) -> list[str]:
    return [e.text for e in effects if isinstance(e, Reply)]


def test_a_prompt_is_checked_before_it_is_queued_and_refused_naming_the_category() -> None:
    show = _show()
    out = _chat(show, "ann", "!generate a man cut in half ### blood")
    checks = [e for e in out if isinstance(e, CheckPrompt)]
    assert len(checks) == 1 and checks[0].request.params.prompt == "a man cut in half"
    assert not any(isinstance(e, StartGeneration) for e in out) and not _said(out)
    # a second request of the same viewer waits for the first (per-user limit)
    assert any("already have" in t for t in _said(_chat(show, "ann", "!generate a cat", 1)))
    out = show.handle(PromptChecked(checks[0].request.id, {"gore": 0.04, "spiders": -0.2}, now=2))
    assert not any(isinstance(e, StartGeneration) for e in out)
    assert any("refused the prompt: too close to gore" in t for t in _said(out))
    assert show.queued == 0 and not show.checking


def test_too_close_means_above_zero_and_the_refusal_names_the_closest_three() -> None:
    """One rule (core/categories.too_close) for the refusal, the hold/flag and safety-eval."""
    mod = _show().moderator
    assert mod.check_prompt_scores({"gore": 0.0, "violence": -0.1}) is None  # 0 is not above
    scores = {"gore": 0.01, "violence": 0.2, "spiders": 0.05, "hate_symbols": 0.05, "x": -1}
    refusal = mod.check_prompt_scores(scores)
    assert refusal is not None
    assert refusal.text == (
        "the safety filter refused the prompt: too close to violence, hate_symbols, spiders"
    )


def test_a_clean_prompt_starts_and_a_cancelled_check_is_forgotten() -> None:
    show = _show()
    first = next(
        e for e in _chat(show, "bob", "!generate a lighthouse") if isinstance(e, CheckPrompt)
    )
    out = show.handle(PromptChecked(first.request.id, {"gore": -0.3}, now=1))
    started = [e for e in out if isinstance(e, StartGeneration)]
    assert started and started[0].request.prompt_scores == (("gore", -0.3),)
    assert any("starting now" in t for t in _said(out))
    check = next(e for e in _chat(show, "cy", "!generate a cat", 2) if isinstance(e, CheckPrompt))
    assert "cancelled" in _said(_chat(show, "cy", "!cancel", 3))[0]
    assert show.handle(PromptChecked(check.request.id, {}, now=4)) == [] or show.queued == 0


def test_flag_queues_it_with_every_tile_to_be_flagged_and_a_failed_check_refuses() -> None:
    show = _show("flag")
    check = next(
        e for e in _chat(show, "dee", "!generate a man cut in half") if isinstance(e, CheckPrompt)
    )
    out = show.handle(PromptChecked(check.request.id, {"gore": 0.1}, now=1))
    started = [e for e in out if isinstance(e, StartGeneration)]
    assert started[0].request.prompt_flagged == ("gore",)
    check = next(e for e in _chat(show, "eve", "!generate a cat", 2) if isinstance(e, CheckPrompt))
    out = show.handle(PromptChecked(check.request.id, {}, error="RuntimeError: boom", now=3))
    assert any("could not check the prompt" in t for t in _said(out))
    assert show.queued == 0


# ---- the real host on the tiny model ------------------------------------------------------


def _planted_tower(tiny_model_dir: Path, tmp: Path) -> tuple[Path, np.ndarray]:
    """A copy of the tiny text tower where PLANTED embeds along a random direction and
    OTHERS (the test's other prompts) keep their embeddings."""
    text = tmp / "clip_text"
    shutil.copytree(tiny_model_dir / "clip_text", text)
    vec = np.random.default_rng(5).standard_normal(PROJECTION_DIM).astype(np.float32)
    vec /= np.linalg.norm(vec)
    plant_phrase(text, PLANTED, vec, OTHERS)
    return text, vec


def _prompt_engine(tiny_model_dir: Path, tmp: Path, **safety: Any) -> Engine:
    text, _ = _planted_tower(tiny_model_dir, tmp)
    cats = {"gore": {"phrases": [PLANTED], "applies_to": "both", "prompt_threshold": 0.9}}
    return _engine(tiny_model_dir, tmp, cats, categories_text_model=str(text), **safety)


def _host(engine: Engine, tmp_path: Path, grid: int = 1) -> Any:
    """The real Host (test_app's recording one) on `engine`, no cooldown, a free link port."""
    from tests.test_app import RecordingHost, StandInChat

    settings = Settings()
    settings.model, settings.safety = engine.model_settings, engine.safety_settings
    settings.moderation.user_cooldown_seconds = 0.0
    settings.show.grid = grid
    settings.link.port = 0
    return RecordingHost(
        settings, tmp_path, StandInChat(), engine, Gallery(tmp_path / "gallery"), "t" * 32
    )


@pytest.mark.model
def test_a_planted_prompt_is_refused_in_chat_and_the_engine_is_never_called(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from tests.test_app import PipelineCalls, run_scenario, say, until

    engine = _prompt_engine(tiny_model_dir, tmp_path)
    assert engine.prompt_checker is not None
    pipeline = PipelineCalls(engine)
    host = _host(engine, tmp_path)

    async def scenario() -> None:
        say(host, "ann", f"!generate {PLANTED}")
        await until(lambda: any("too close to gore" in t for t in host.chat.said), 30)
        assert pipeline.sizes == [] and not host.show.queued and not host.show.running
        # the negative prompt names the category: asking the model to avoid it is fine
        say(host, "bob", f"!generate a lighthouse ### {PLANTED}")
        await until(lambda: len(host.shown()) == 1 and not host.show.running, 30)
        # the scores, where the checker's are: !params for moderators (not for viewers)
        say(host, "cy", "!params")
        mod = Viewer("mo", "Mo", role=Role.MODERATOR)
        host.on_chat(ChatMessage(mod, "!params", "mo-1", time.monotonic()))
        await until(lambda: sum("seed" in t for t in host.chat.said) == 2, 10)

    try:
        run_scenario(host, scenario)
    finally:
        host.gallery.close()
    assert pipeline.sizes == [1]  # only bob's picture was made
    assert [p for _, p in host.shown()] == ["a lighthouse"]
    viewer_params, mod_params = [t for t in host.chat.said if "seed" in t]
    assert "safety" not in viewer_params
    assert "; safety checker " in mod_params and " gore " in mod_params
    assert "; prompt gore -" in mod_params
    refusals = [t for t in host.chat.said if "too close" in t]
    assert len(refusals) == 1 and PLANTED not in refusals[0]
    meta = read_png_metadata(Gallery(tmp_path / "gallery").tile_path(1, 0))["meta"]
    assert meta["safety"]["prompt_scores"]["gore"] < 0  # stored with the picture
    assert meta["safety"]["prompt_flagged"] == []


@pytest.mark.model
def test_the_prompt_check_answers_while_a_generation_is_running(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """The check has its own thread: a long generation does not delay a refusal."""
    from tests.test_app import run_scenario, say, until

    engine = _prompt_engine(tiny_model_dir, tmp_path)
    gate, entered = threading.Event(), threading.Event()
    original = engine.call_pipeline

    def slow(**kwargs: Any) -> Any:
        entered.set()
        gate.wait(20)
        return original(**kwargs)

    engine.call_pipeline = slow
    host = _host(engine, tmp_path)

    async def scenario() -> None:
        say(host, "bob", "!generate a red fox")
        await until(entered.is_set, 30)
        say(host, "ann", f"!generate {PLANTED}")
        await until(lambda: any("too close" in t for t in host.chat.said), 10)
        assert not gate.is_set()  # answered while bob's picture was still generating
        gate.set()
        await until(lambda: len(host.shown()) == 1, 30)

    try:
        run_scenario(host, scenario)
    finally:
        gate.set()
        host.gallery.close()


@pytest.mark.model
def test_hold_makes_the_picture_and_holds_every_tile_for_review_whatever_the_mode(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from tests.test_app import run_scenario, say, until

    engine = _prompt_engine(tiny_model_dir, tmp_path, prompt_action="hold", approval_mode="blur")
    host = _host(engine, tmp_path, grid=4)

    async def scenario() -> None:
        say(host, "ann", f"!generate {PLANTED}")
        await until(lambda: len(host.shown()) == 1 and not host.show.running, 30)

    try:
        run_scenario(host, scenario)
        entry = host.gallery.recent(1)[0]
        assert entry.outcome == "held" and entry.flagged == (True,) * 4
        assert any("held until the streamer approves" in t for t in host.chat.said)
        meta = read_png_metadata(host.gallery.tile_path(entry.id, 0))["meta"]
        assert meta["safety"]["prompt_flagged"] == ["gore"]
    finally:
        host.gallery.close()


@pytest.mark.model
def test_flag_blurs_every_tile_on_stream_and_the_review_page_names_the_prompts_category(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """prompt_action = "flag", approval_mode = "blur": the images themselves are clean, the
    picture goes on stream with every tile blurred, and the review page says why: the
    prompt came too close to gore (not a threshold the images' scores never passed)."""
    import io

    from PIL import Image

    from generator_host.core.approval import Tile
    from generator_host.edges.review import state
    from tests.test_app import run_scenario, say, until

    engine = _prompt_engine(tiny_model_dir, tmp_path, prompt_action="flag", approval_mode="blur")
    host = _host(engine, tmp_path, grid=4)
    page: dict[str, Any] = {}

    async def scenario() -> None:
        say(host, "ann", f"!generate {PLANTED}")
        await until(lambda: len(host.shown()) == 1 and not host.show.running, 30)
        page.update(state.gallery_part(host.gallery, state.show_part(host, time.monotonic())))

    def pixels(png: bytes | None) -> np.ndarray:
        assert png is not None
        return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=float)

    try:
        run_scenario(host, scenario)
        entry = host.gallery.recent(1)[0]
        frame = next(f for _, f in host.frames if f["type"] == "show")
        assert frame["blurred"] and not frame["held"]
        on_stream = pixels(frame["image"])
        blurred = pixels(host.gallery.screen_png(entry.id, (Tile.BLURRED,) * 4))
        clear = pixels(host.gallery.screen_png(entry.id, (Tile.CLEAR,) * 4))
        assert np.abs(on_stream - blurred).mean() < 1 < np.abs(on_stream - clear).mean()
        card = next(e for e in page["held"] if e["id"] == entry.id)
        lines = [t["safety"]["why"] for t in card["tiles"]]
        assert len(lines) == 4
        for line in lines:
            assert line.startswith("flagged: the prompt was too close to gore (the image itself")
            assert "threshold" not in line
        meta = read_png_metadata(host.gallery.tile_path(entry.id, 0))["meta"]["safety"]
        assert (meta["verdict"], meta["prompt_flagged"]) == ("ok", ["gore"])
    finally:
        host.gallery.close()


@pytest.mark.model
def test_a_missing_text_model_turns_the_built_in_categories_off_with_a_warning(
    tiny_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Only the built-in phrases need it: the host starts, the stock checker on. A
    category the streamer wrote stops the start instead (test_categories)."""
    caplog.set_level(logging.WARNING, logger="generator_host.engine.categories")
    missing = str(tmp_path / "no-such-text-model")
    template_like = {"gore": {"threshold": 0.3}}
    engine = _engine(tiny_model_dir, tmp_path, template_like, categories_text_model=missing)
    assert engine.safety.categories is None and engine.safety.enabled
    warning = " ".join(r.getMessage() for r in caplog.records)
    assert (
        "gore, violence, hate_symbols are OFF" in warning
        and "stock safety checker is on" in warning
    )
    caplog.clear()  # the default hub id, unreachable (tests run offline): the same
    hub = _engine(tiny_model_dir, tmp_path, {}, categories_text_model=DEFAULT_TEXT_MODEL)
    assert hub.safety.categories is None and hub.safety.enabled
    assert any("are OFF" in r.getMessage() for r in caplog.records)
    own = {"spiders": {"phrases": ["a spider"]}}
    with pytest.raises(EngineError, match="categories_text_model"):
        _engine(tiny_model_dir, tmp_path, own, categories_text_model=missing)
    prompts = {"gore": {"applies_to": "both"}}
    with pytest.raises(EngineError, match="categories_text_model"):
        _engine(tiny_model_dir, tmp_path, prompts, categories_text_model=missing)


def test_the_review_page_and_params_lines_carry_every_category_score() -> None:
    from generator_host.core.generation import SafetyScores, safety_line
    from generator_host.edges.review.state import summarize

    safety = {
        "scores": {"concept": [-0.2], "special": [-0.3], "categories": {"gore": 0.02, "x": -0.1}},
        "flagged": True,
        "offset": 0.0,
        "prompt_scores": {"gore": -0.25},
        "prompt_flagged": [],
    }
    summary = summarize(safety)
    assert summary["tripped"] == ["gore"] and summary["worst"] == "gore"
    assert summary["why"] == "flagged: gore (+0.020 past the threshold)"
    # a clean image whose prompt was too close: the prompt is the reason, no threshold
    clean = {"concept": [-0.2], "special": [-0.3], "categories": {"gore": -0.1}}
    by_prompt = {**safety, "scores": clean, "flagged": False, "prompt_flagged": ["gore", "x"]}
    assert summarize(by_prompt)["why"] == (
        "flagged: the prompt was too close to gore, x (the image itself: closest gore (-0.100))"
    )
    both = summarize({**safety, "prompt_flagged": ["gore"]})
    assert both["why"] == (
        "flagged: gore (+0.020 past the threshold); the prompt was too close to gore"
    )
    assert [c["name"] for c in summary["categories"]] == ["gore", "x"]
    assert summary["prompt"] == [{"name": "gore", "score": -0.25}]
    tiles = [
        SafetyScores([-0.2], [-0.3], {"gore": -0.1}),
        SafetyScores([-0.1], [-0.4], {"gore": 0.02}),
    ]
    line = safety_line(tiles, 0.01, [("gore", -0.25)])
    assert line == "checker -0.090, gore +0.020; prompt gore -0.250"
    assert safety_line([None], 0.0) == ""


# ---- safety-eval per category ---------------------------------------------------------------


@pytest.mark.model
def test_safety_eval_reports_each_category_on_images_and_prompts(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """gore/ beside safe/, and a prompts CSV: per category the sweep, recommendations and
    plots, plus the combined false-positive rate on the safe set, from the planted truth."""
    import csv

    from generator_host.cli import main as cli_main
    from generator_host.engine.safety import load_checker
    from generator_host.engine.tiny_model import image_embedding
    from tests.test_safety_eval import _assert_png, _distinct_images

    checker, extractor = load_checker(tiny_model_dir)
    images = _distinct_images(checker, extractor, 6)
    gore, safe = images[:2], images[2:]
    data = tmp_path / "set"
    for label, group in (("gore", gore), ("safe", safe)):
        (data / label).mkdir(parents=True)
        for i, image in enumerate(group):
            image.save(data / label / f"{i}.png")
    vectors = tmp_path / "gore.npy"
    np.save(vectors, np.stack([image_embedding(checker, extractor, im).numpy() for im in gore]))
    text, _ = _planted_tower(tiny_model_dir, tmp_path)
    prompts = tmp_path / "prompts.csv"
    prompts.write_text(
        f"prompt,label\n{PLANTED},gore\na lighthouse,safe\na red fox,safe\na cat,safe\n",
        encoding="utf-8",
    )
    config = tmp_path / "config.toml"
    config.write_text(
        f"""[model]
model = "{tiny_model_dir.as_posix()}"
device = "cpu"

[safety]
categories_text_model = "{text.as_posix()}"

[safety.categories.gore]
phrases = ["{PLANTED}"]
vectors = "{vectors.as_posix()}"
threshold = 0.95
prompt_threshold = 0.9
applies_to = "both"

[safety.categories.violence]
enabled = false

[safety.categories.hate_symbols]
enabled = false
""",
        encoding="utf-8",
    )
    out = tmp_path / "report"
    argv = ["safety-eval", str(data), "--prompts", str(prompts), "--out", str(out)]
    code = cli_main([*argv, "--config", str(config), "--targets", "0"])
    err = capsys.readouterr().err
    assert code == 0, err
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "## Safety categories on images" in report
    assert "combined false-positive rate on safe images" in report
    assert "OR any category): 0.0% (0/4)" in report
    assert "### gore (images)" in report
    assert "| 0.95 (yours) | 0.0% (0/4) | 100.0% (2/2) | 0.0% (0/2) |" in report
    assert "### gore (prompts)" in report
    assert "| 0.9 (yours) | 0.0% (0/3) | 100.0% (1/1) | 0.0% (0/1) |" in report
    assert "apply to prompts now): 0.0% (0/3)" in report
    for name in ("roc_gore.png", "histograms_gore.png", "prompt_roc_gore.png"):
        _assert_png(out / name)
    with (out / "scores.csv").open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    by_path = {r["path"]: float(r["category:gore"]) for r in rows}
    assert by_path["gore/0.png"] > 0 > by_path["safe/0.png"]  # the stored category score
    with (out / "prompt_scores.csv").open(encoding="utf-8") as f:
        prompt_rows = {r["prompt"]: float(r["category:gore"]) for r in csv.DictReader(f)}
    assert prompt_rows[PLANTED] == pytest.approx(0.1, abs=1e-4) and prompt_rows["a cat"] < 0


@pytest.mark.model
def test_categories_off_leave_the_stock_checker_bit_exact(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Every category off (images and prompts): the verdicts are stock diffusers' at offset
    0, and the checker's scores are exactly those of an engine with categories on."""
    from generator_host.core.categories import DEFAULTS
    from generator_host.core.generation import GenerationParams
    from tests.fixtures_model import plant_on_tile
    from tests.test_safety import _stock_verdicts

    off = _engine(tiny_model_dir, tmp_path, {n: {"enabled": False} for n in DEFAULTS})
    on = _prompt_engine(tiny_model_dir, tmp_path)
    assert off.safety.categories is None and off.prompt_checker is None
    params = GenerationParams("a cat", seed=11, count=4)
    images = [i.image for i in off.generate(params).images]
    for engine in (off, on):
        plant_on_tile(engine, images[1], kind="concept", index=3)
    result = off.generate(params)
    assert [i.flagged for i in result.images] == _stock_verdicts(off.safety, images)
    assert [i.flagged for i in result.images] == [False, True, False, False]
    with_categories = on.generate(params)
    for a, b in zip(result.images, with_categories.images, strict=True):
        assert (a.scores.concept, a.scores.special) == (b.scores.concept, b.scores.special)
        assert a.scores.categories == {} and set(b.scores.categories) == set(DEFAULTS)


def test_the_approval_mode_of_a_picture_whose_prompt_came_too_close() -> None:
    from generator_host.core.approval import mode_for

    assert mode_for("blur", True, "hold") == "hold"  # held for review, whatever the mode
    assert mode_for("off", True, "hold") == "hold"
    assert mode_for("blur", True, "flag") == "blur"  # flagged tiles, the mode decides
    assert mode_for("skip", False, "hold") == "skip"  # a clean prompt: the streamer's mode


def test_a_redemption_refused_by_the_prompt_check_is_refunded_once() -> None:
    """Channel points: a refusal after the check (or a stop during it) settles CANCELED."""
    from generator_host.core.events import Redemption, Settle, Stopping

    show = _show()
    out = show.handle(Redemption("red-1", "ann", "Ann", "", PLANTED, 0.0))
    check = next(e for e in out if isinstance(e, CheckPrompt))
    assert "red-1" in show.pending_redemptions()  # a repeated notification is not a second
    out = show.handle(PromptChecked(check.request.id, {"gore": 0.2}, now=1))
    assert [(e.redemption_id, e.status) for e in out if isinstance(e, Settle)] == [
        ("red-1", "CANCELED")
    ]
    assert any("too close to gore; your points are refunded" in t for t in _said(out))
    out = show.handle(Redemption("red-2", "bob", "Bob", "", "a cat", 2.0))
    assert any(isinstance(e, CheckPrompt) for e in out)
    out = show.handle(Stopping(now=3.0))
    assert [(e.redemption_id, e.status) for e in out if isinstance(e, Settle)] == [
        ("red-2", "CANCELED")
    ]
