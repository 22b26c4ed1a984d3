"""safety-eval: rates, recommendations, plots and gallery mode against known right answers.

The model tests plant concepts in a copy of the tiny real checker so that chosen images
score chosen values; the table must then show the rates those values imply, offset 0
must flag what stock diffusers flags, and the recommended offsets are known in advance.
"""

from __future__ import annotations

import argparse
import csv
import math
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from generator_host.core.generation import SafetyScores
from generator_host.core.settings import Settings
from generator_host.engine.safety import is_flagged
from generator_host.tools import safety_eval as se
from generator_host.tools import safety_report as rep

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FIGURES = ("roc.png", "histograms.png", "flagged_share.png", "concept_hits.png")


def _scores(top_concept: float, top_special: float = -0.3) -> SafetyScores:
    return SafetyScores([-0.3] * 16 + [top_concept], [top_special, -0.3, -0.3])


# --- the flag offset: a sweep without re-running the checker ------------------------------

score = st.floats(-0.6, 0.6, allow_nan=False)


@settings(max_examples=300, deadline=None)
@given(
    concept=st.lists(score, min_size=17, max_size=17),
    special=st.lists(score, min_size=3, max_size=3),
    offsets=st.lists(st.floats(-1, 1, allow_nan=False), min_size=1, max_size=5),
)
def test_flag_offset_agrees_with_the_live_verdict(concept, special, offsets) -> None:  # noqa: ANN001
    sc = SafetyScores(concept, special)
    fo = rep.flag_offset(sc)
    probes = [*offsets, fo, math.nextafter(fo, math.inf), fo - 1e-7, fo + 1e-7, 0.0]
    for o in probes:
        assert is_flagged(sc, o) == rep.flagged_at(fo, o), (o, fo)


def test_flag_offset_minds_the_special_care_rule() -> None:
    # 0.005 under a concept's line, but a special-care hit adds 0.01: flagged from -0.0025
    # (where the special-care score starts to count), not from +0.0055.
    sc = _scores(-0.005, top_special=0.003)
    assert rep.flag_offset(sc) == pytest.approx(-0.0025, abs=1e-6)
    assert is_flagged(sc, 0.0)
    assert rep.flag_offset(_scores(-0.005)) == pytest.approx(0.0055, abs=1e-6)


# --- sweep, recommendations, bounds on hand-made flag offsets ----------------------------


def test_sweep_counts_and_precision() -> None:
    safe = [0.05, 0.15, 0.25, 0.35]
    unsafe = [-0.05, 0.05, 0.10, 0.20]
    rows = rep.sweep(safe, unsafe, [0.0, 0.12, 0.3])
    got = [(r.safe_flagged, r.unsafe_flagged) for r in rows]
    assert got == [(0, 1), (1, 3), (3, 4)]
    assert rows[0].precision == 1.0
    assert rows[1].precision == pytest.approx(3 / 4)
    assert rows[1].miss_rate == pytest.approx(1 / 4)
    assert rep.sweep([], [0.1], [0.0])[0].precision is None  # nothing flagged
    assert rep.sweep([], [0.1], [0.0])[0].safe_rate is None  # empty class


def test_recommendations_are_the_smallest_offsets_reaching_each_miss_rate() -> None:
    unsafe = [round(0.01 * k, 2) for k in range(1, 21)]  # 0.01 .. 0.20
    safe = [0.105, 0.175, 0.185, 0.5]
    recs = {r.target: r for r in rep.recommend(safe, unsafe, [0.10, 0.0], resolution=0.001)}
    ten = recs[0.10]
    assert ten.offset == 0.181  # 2 of 20 may be missed: flag the 18th at 0.18
    assert (ten.missed, ten.unsafe_total) == (2, 20)
    assert (ten.safe_flagged, ten.safe_total) == (2, 4)
    assert not ten.enough and "too few" in ten.note()  # 20 images cannot back 10%
    zero = recs[0.0]
    assert zero.offset == 0.201 and zero.missed == 0
    assert "no sample proves a 0% rate" in zero.note()
    # one image more than the resolution step would not change which images are flagged
    assert rep.count_flagged(sorted(unsafe), zero.offset - 0.001) == 19


def test_a_categorys_tables_are_the_checkers_in_thresholds_and_its_own_words() -> None:
    """safety_categories reuses safety_report's tables: the knob is a threshold (lower is
    stricter, no stock value), the class to catch is the category's examples."""
    from generator_host.tools.safety_categories import CategoryEval, wording

    words = wording("gore", "prompts")
    gore = CategoryEval("gore", 0.26, safe=[0.1, 0.2, 0.3], positive=[0.28, 0.4, 0.5])
    recs = rep.recommendation_table(gore.recommend([0.10], 0.001), words).splitlines()
    assert recs[0] == (
        "| miss at most | threshold | missed gore | flagged safe (false positives) | how sure |"
    )
    assert recs[2].startswith(
        "| 10% | 0.279 | 0.0% (0/3) | 33.3% (1/3) | too few: rests on 3 gore prompts (≥30 needed)"
    )
    table = rep.sweep_table(gore.sweep([0, 0.26]), gore.threshold, words).splitlines()
    assert table[0].startswith("| threshold | flagged safe (false positives) | flagged gore |")
    assert table[2].startswith("| 0 | 100.0% (3/3) | 100.0% (3/3) |")  # no "stock" mark
    assert table[3].startswith("| 0.26 (yours) | 33.3% (1/3) | 100.0% (3/3) | 0.0% (0/3) |")
    none = CategoryEval("gore", 0.26, safe=[0.1], positive=[])
    assert "| no gore prompts: nothing to estimate |" in rep.recommendation_table(
        none.recommend([0.1], 0.001), words
    )
    lost = CategoryEval("gore", 0.26, safe=[0.1], positive=[-1.0])  # no threshold flags it
    assert "not reachable with thresholds down to -1" in rep.recommendation_table(
        lost.recommend([0.0], 0.001), words
    )


def test_miss_rate_upper_bound_is_a_clopper_pearson_bound() -> None:
    assert rep.miss_upper_bound(0, 300) == pytest.approx(0.00994, abs=1e-4)  # rule of three
    u = rep.miss_upper_bound(1, 10)
    p_at_most_one = (1 - u) ** 10 + 10 * u * (1 - u) ** 9
    assert p_at_most_one == pytest.approx(0.05, abs=1e-6)
    assert rep.miss_upper_bound(5, 5) == 1.0


def test_roc_and_auc() -> None:
    assert rep.auc([0.2, 0.3], [-0.1, 0.0]) == 1.0  # every unsafe image flagged first
    assert rep.auc([0.1], [0.1]) == 0.5
    points = rep.roc([0.2, 0.3], [-0.1, 0.0])
    assert (points[0].fpr, points[0].tpr) == (0.0, 0.0)
    assert (points[-1].fpr, points[-1].tpr) == (1.0, 1.0)
    assert (0.0, 1.0) in [(p.fpr, p.tpr) for p in points]


# --- input handling without a model -------------------------------------------------------


def test_csv_dataset_with_header_bad_rows_and_relative_paths(tmp_path: Path) -> None:
    (tmp_path / "imgs").mkdir()
    lines = "path,label\nimgs/a.png,safe\nimgs/b.png,NSFW\nimgs/c.png,maybe\nonly-a-path\n"
    (tmp_path / "set.csv").write_text(lines, encoding="utf-8")
    data = se.load_dataset(tmp_path / "set.csv")
    assert [(it.key, it.label) for it in data.items] == [
        ("imgs/a.png", "safe"),
        ("imgs/b.png", "unsafe"),
    ]
    assert any("line 4" in p and "'maybe'" in p for p in data.problems)
    assert any("line 5" in p for p in data.problems)


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="generator-host")
    se.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["safety-eval", *argv])


def _run(argv: list[str], settings_: Settings, capsys: pytest.CaptureFixture[str]):  # noqa: ANN202
    rc = se.main(_parse(argv), settings_)
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "safe/ and unsafe/"),
        (["{tmp}/nowhere"], "does not exist"),
        (["{tmp}"], "no safe/ or unsafe/ subfolder"),
        (["{tmp}", "--offsets", "0.1:0:0.01"], "--offsets"),
        (["{tmp}", "--targets", "ten"], "--targets"),
        (["--gallery", "{tmp}/none"], "no gallery at"),
    ],
)
def test_bad_input_gives_a_message_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    rc, _, err = _run(argv, Settings(), capsys)
    assert rc == se.EXIT_USAGE
    assert message in err and "Traceback" not in err


def test_help_is_registered_on_the_real_cli(capsys: pytest.CaptureFixture[str]) -> None:
    from generator_host import cli

    with pytest.raises(SystemExit) as stop:
        cli.main(["safety-eval", "--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert "safe/ and unsafe/" in out and "--gallery" in out and "--offsets" in out


# --- gallery mode: stored scores, no model ------------------------------------------------


def test_gallery_mode_counts_past_images_from_stored_scores(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from PIL import Image

    from generator_host.core.generation import (
        GeneratedImage,
        GenerationParams,
        GenerationRequest,
        GenerationResult,
        Requester,
    )
    from generator_host.edges.gallery import Gallery

    tops = [0.02, -0.01, -0.03, -0.05, -0.2]  # flag offsets -0.0195, 0.0105, 0.0305, ...
    gallery = Gallery(tmp_path / "gallery")
    for i, top in enumerate([*tops, None]):
        sc = None if top is None else _scores(top)
        image = Image.new("RGB", (16, 16), (40 * i, 90, 200))
        flagged = sc is not None and is_flagged(sc, 0.0)
        req = GenerationRequest(f"r{i}", Requester("viewer"), GenerationParams("x", seed=i), 0.0)
        result = GenerationResult(
            req, [GeneratedImage(image, i, sc, flagged)], "tiny", "pndm", 0.1,
            extra={"safety_offset": 0.0},
        )  # fmt: skip
        gallery.add(result, "hold")
    gallery.close()
    Image.new("RGB", (8, 8)).save(tmp_path / "gallery" / "stranger.png")
    (tmp_path / "gallery" / "torn.png").write_bytes(PNG_SIGNATURE + b"\x00" * 10)

    s = Settings()
    s.model.model = s.safety.checker = str(tmp_path / "no-such-checker")  # nothing to load
    out = tmp_path / "report"
    argv = ["--gallery", str(tmp_path / "gallery"), "--out", str(out), "--offsets", "0,0.02,0.04"]
    rc, stdout, _ = _run(argv, s, capsys)
    assert rc == se.EXIT_OK, stdout
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "| 0 (stock, yours) | 20.0% (1/5) |" in report
    assert "| +0.02 | 40.0% (2/5) |" in report
    assert "| +0.04 | 60.0% (3/5) |" in report
    assert "flagged when they were made: 20.0% (1/5)" in report
    assert "checker was off" in report and "no Chat Diffusion metadata" in report
    assert "unreadable" in report
    with (out / se.GALLERY_SCORES_CSV).open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert sorted(float(r["concept_16"]) for r in rows) == sorted(tops)  # read back exactly
    for name in ("flagged_share.png", "histograms.png", "concept_hits.png"):
        _assert_png(out / name)


def _assert_png(path: Path) -> None:
    from PIL import Image

    assert path.read_bytes()[:8] == PNG_SIGNATURE, path
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.width >= 300 and im.height >= 200


# --- the labelled set on the real tiny checker --------------------------------------------

# Designed top scores: unsafe image i scores UNSAFE[i] on its own planted concept; "care"
# sits 0.005 under a concept and +0.003 over a special-care concept (flagged by stock
# diffusers through its +0.01 rule). Two safe images are planted as false positives.
UNSAFE = [0.06, 0.04, 0.02, "care", -0.01, -0.02, -0.03, -0.05, -0.07, -0.09]
SAFE_PLANTED = [-0.025, -0.045]
N_SAFE = 8
# Their flag offsets (0.0005 is the 3-decimal rounding stock diffusers applies):
UNSAFE_FLAG = [-0.0595, -0.0395, -0.0195, -0.0025, 0.0105, 0.0205, 0.0305, 0.0505, 0.0705, 0.0905]
SAFE_FLAG = [0.0255, 0.0455]  # the other six safe images flag only above 0.15


@dataclass
class PlantedSet:
    model: Path
    data: Path
    images: dict[str, list]  # label -> PIL images in file order


def _embeddings(checker, extractor, images):  # noqa: ANN001, ANN202
    import torch

    with torch.no_grad():
        pixels = extractor(images, return_tensors="pt").pixel_values
        e = checker.visual_projection(checker.vision_model(pixels)[1])
    return torch.nn.functional.normalize(e, dim=1)


def _distinct_images(checker, extractor, n: int) -> list:  # noqa: ANN001
    """n images whose checker embeddings are far apart, so planting one trips no other."""
    import numpy as np
    from PIL import Image

    pool = [
        Image.fromarray(
            np.random.default_rng(i).integers(0, 256, (8, 8, 3), dtype=np.uint8)
        ).resize((64, 64), Image.NEAREST)
        for i in range(48)
    ]
    cos = _embeddings(checker, extractor, pool) @ _embeddings(checker, extractor, pool).T
    chosen: list[int] = []
    for i in range(len(pool)):
        if all(cos[i, j] < 0.6 for j in chosen):
            chosen.append(i)
    assert len(chosen) >= n, "the tiny model's images are too alike for this test"
    return [pool[i] for i in chosen[:n]]


@pytest.fixture(scope="module")
def planted(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> PlantedSet:
    from generator_host.engine.safety import SafetyJudge, load_checker
    from generator_host.engine.tiny_model import plant_concept

    root = tmp_path_factory.mktemp("planted")
    model = root / "model"
    shutil.copytree(tiny_model_dir, model)
    checker, extractor = load_checker(model)
    images = _distinct_images(checker, extractor, len(UNSAFE) + N_SAFE)
    unsafe, safe = images[: len(UNSAFE)], images[len(UNSAFE) :]
    designed = [*zip(unsafe, UNSAFE, strict=True), *zip(safe[:2], SAFE_PLANTED, strict=True)]
    for concept, (image, top) in enumerate(designed):
        if top == "care":
            plant_concept(checker, extractor, image, index=concept, threshold=1.005)
            plant_concept(checker, extractor, image, kind="special", index=0, threshold=0.997)
        else:
            plant_concept(checker, extractor, image, index=concept, threshold=1.0 - top)
    checker.save_pretrained(model / "safety_checker", safe_serialization=True)

    # The design holds on the saved checker: each image's top scores are the planned ones.
    judge = SafetyJudge(*load_checker(model))
    got = [rep.flag_offset(s) for s in judge.scores(unsafe + safe)]
    assert got[: len(UNSAFE)] == pytest.approx(UNSAFE_FLAG, abs=1e-5)
    assert got[len(UNSAFE) : len(UNSAFE) + 2] == pytest.approx(SAFE_FLAG, abs=1e-5)
    assert min(got[len(UNSAFE) + 2 :]) > 0.15

    data = root / "data"
    for label, group in (("safe", safe), ("unsafe", unsafe)):
        (data / label).mkdir(parents=True)
        for i, image in enumerate(group):
            image.save(data / label / f"{i:02d}.png")
    return PlantedSet(model, data, {"safe": safe, "unsafe": unsafe})


def _model_settings(model: Path) -> Settings:
    s = Settings()
    s.model.model = str(model)
    s.model.device = "cpu"
    return s


def _row_counts(report: str, offset_label: str) -> list[tuple[int, int]]:
    line = next(ln for ln in report.splitlines() if ln.startswith(f"| {offset_label} "))
    return [(int(a), int(b)) for a, b in re.findall(r"\((\d+)/(\d+)\)", line)]


def _truth(flag_offsets: list[float], offset: float) -> int:
    return sum(fo < offset for fo in flag_offsets)


@pytest.mark.model
def test_table_and_recommendations_match_the_planted_truth(
    planted: PlantedSet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report"
    argv = [str(planted.data), "--out", str(out), "--offsets=-0.06:0.1:0.01",
            "--targets", "50,10,0", "--batch-size", "5"]  # fmt: skip
    rc, stdout, err = _run(argv, _model_settings(planted.model), capsys)
    assert rc == se.EXIT_OK, err
    report = (out / "report.md").read_text(encoding="utf-8")

    safe_flag = SAFE_FLAG + [1.0] * (N_SAFE - len(SAFE_FLAG))
    for k in range(17):
        o = round(-0.06 + 0.01 * k, 2)
        label = rep.fmt_offset(o) + (" (stock, yours)" if o == 0 else "")
        fs, fu = _truth(safe_flag, o), _truth(UNSAFE_FLAG, o)
        counts = _row_counts(report, label)
        assert counts[0] == (fs, N_SAFE), (o, counts)
        assert counts[1] == (fu, len(UNSAFE)), (o, counts)
        assert counts[2] == (len(UNSAFE) - fu, len(UNSAFE)), (o, counts)
        if fs + fu:
            assert counts[3] == (fu, fs + fu), (o, counts)

    # Recommended: 50% miss -> flag 5 of 10 -> just above 0.0105; 10% -> 9 -> above 0.0705.
    checker_part = report.split("## Safety categories")[0]  # the categories' come after
    recs = {ln.split("|")[1].strip(): ln for ln in checker_part.splitlines() if "% |" in ln[:12]}
    assert "| +0.011 | 50.0% (5/10) | 0.0% (0/8) |" in recs["50%"]
    assert "| +0.071 | 10.0% (1/10) | 25.0% (2/8) |" in recs["10%"]
    assert "| +0.091 | 0.0% (0/10) | 25.0% (2/8) |" in recs["0%"]
    assert "too few: rests on 10 unsafe images" in recs["10%"]
    assert "+0.071" in stdout  # the summary on the terminal says it too
    for name in FIGURES:
        _assert_png(out / name)


@pytest.mark.model
def test_offset_zero_flags_what_stock_diffusers_flags(
    planted: PlantedSet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import numpy as np

    from generator_host.engine.safety import load_checker

    checker, extractor = load_checker(planted.model)
    images = planted.images["safe"] + planted.images["unsafe"]
    pixels = extractor(images, return_tensors="pt").pixel_values
    _, stock = checker(clip_input=pixels, images=[np.asarray(im) / 255.0 for im in images])
    stock_safe, stock_unsafe = sum(stock[:N_SAFE]), sum(stock[N_SAFE:])
    assert (stock_safe, stock_unsafe) == (0, 4)  # the special-care image included

    out = tmp_path / "report"
    argv = [str(planted.data), "--out", str(out), "--offsets", "0"]
    rc, _, err = _run(argv, _model_settings(planted.model), capsys)
    assert rc == se.EXIT_OK, err
    counts = _row_counts((out / "report.md").read_text(encoding="utf-8"), "0 (stock, yours)")
    assert counts[:2] == [(stock_safe, N_SAFE), (stock_unsafe, len(UNSAFE))]


@pytest.mark.model
def test_bad_images_empty_class_and_resume_keep_partial_results(
    planted: PlantedSet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    shutil.copytree(planted.data / "unsafe", data / "unsafe")  # no safe/ at all
    (data / "unsafe" / "broken.png").write_bytes(b"not an image")
    (data / "unsafe" / "notes.txt").write_text("ignored", encoding="utf-8")
    out = tmp_path / "report"
    s = _model_settings(planted.model)

    rc, _, err = _run([str(data), "--out", str(out), "--limit", "4"], s, capsys)
    assert rc == se.EXIT_OK, err
    assert "no safe images" in err and "Traceback" not in err
    first = len(se.read_scores_csv(out / se.SCORES_CSV))
    assert first in (3, 4)  # 4 picked at random; the broken file may be one of them

    # The full run resumes what was scored and scores the rest; the broken file is named.
    rc, stdout, err = _run([str(data), "--out", str(out), "--offsets", "0"], s, capsys)
    assert rc == se.EXIT_OK, err
    assert f"Resuming: {first} images already scored" in stdout
    assert "broken.png" in err and "Traceback" not in err
    with (out / se.SCORES_CSV).open(encoding="utf-8") as f:
        keys = [r["path"] for r in csv.DictReader(f)]
    assert sorted(keys) == sorted(f"unsafe/{i:02d}.png" for i in range(len(UNSAFE)))
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "| 0 (stock, yours) | – | 40.0% (4/10) |" in report  # empty class: no rate
    assert "unsafe/broken.png" in report
    assert "scoring [" in err  # the progress bar


@pytest.mark.model
def test_missing_checker_keeps_what_was_scored(
    planted: PlantedSet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report"
    s = _model_settings(planted.model)
    missing = str(tmp_path / "no-checker-here")
    rc, _, err = _run([str(planted.data), "--out", str(out), "--checker", missing], s, capsys)
    assert rc == se.EXIT_CHECKER
    assert "no safety checker" in err and "Traceback" not in err

    # Interrupted after the first batch (as by Ctrl-C): the scored rows are on disk.
    from generator_host.engine.safety import SafetyJudge, load_checker

    class CtrlC:
        def __init__(self) -> None:
            self.judge, self.calls = SafetyJudge(*load_checker(planted.model)), 0

        def scores(self, images):  # noqa: ANN001, ANN202
            self.calls += 1
            if self.calls > 1:
                raise KeyboardInterrupt
            return self.judge.scores(images)

    data = se.load_dataset(planted.data)
    result = se.run_scoring(CtrlC, data, out, configured=0.0, batch_size=4,
                            fingerprint={"x": 1})  # fmt: skip
    assert result.interrupted and len(result.scored) == 4
    assert len(se.read_scores_csv(out / se.SCORES_CSV)) == 4
