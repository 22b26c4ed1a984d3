"""`generator-host safety-eval`: how the safety checker treats the streamer's own images.

The streamer's safety categories (a folder per category, a prompts CSV) are reported by
tools/safety_categories.py, in the same report.

Two modes. Over a labelled folder (safe/ and unsafe/, or a CSV of path,label) it scores
every image with the configured checker, in batches, writing each score to a CSV as it
goes, so thousands of images never sit in memory and an interruption keeps what was
done (a second run resumes). Over the gallery it reads the scores stored in the PNGs
and says what each offset would have flagged, without loading a model. Statistics live
in safety_report, figures in safety_plots.
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import math
import random
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TextIO

from generator_host.core.categories import valid_name
from generator_host.core.generation import SafetyScores
from generator_host.core.settings import Settings, data_dir
from generator_host.engine.safety import CONCEPTS, SPECIAL_CARE
from generator_host.exit_codes import EXIT_INTERRUPTED
from generator_host.tools import safety_report as rep

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
SAFE_WORDS = {"safe", "sfw", "0", "false", "no", "ok", "benign"}
UNSAFE_WORDS = {"unsafe", "nsfw", "1", "true", "yes", "bad"}
SCORES_CSV, SKIPPED_CSV, RUN_JSON, REPORT_MD = "scores.csv", "skipped.csv", "run.json", "report.md"
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CHECKER = 0, 1, 2, 4


class InputError(Exception):
    """Bad input the user can fix; the message says how. Never shown as a traceback."""


class Scorer(Protocol):
    def scores(self, images: list[Any]) -> list[SafetyScores]: ...


@dataclass(frozen=True)
class Item:
    path: Path
    label: str  # rep.SAFE | rep.UNSAFE | "" (gallery)
    key: str  # the path as written to the CSV: relative to the dataset when possible


@dataclass
class Dataset:
    source: Path
    items: list[Item]
    problems: list[str] = field(default_factory=list)

    def count(self, label: str) -> int:
        return sum(1 for it in self.items if it.label == label)


@dataclass
class Scored:
    key: str
    label: str
    scores: SafetyScores

    @functools.cached_property
    def flag_offset(self) -> float:  # a search: computed once per image, used by each output
        return rep.flag_offset(self.scores)


# --- dataset -----------------------------------------------------------------------------


def parse_label(text: str) -> str | None:
    word = text.strip().lower()
    if word in SAFE_WORDS:
        return rep.SAFE
    if word in UNSAFE_WORDS:
        return rep.UNSAFE
    return None


def _key(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


def _images_under(folder: Path) -> tuple[list[Path], int]:
    """Image files under `folder` (recursively, sorted) and the count of other files."""
    images, others = [], 0
    for p in sorted(folder.rglob("*")):
        if p.is_file() and not p.name.startswith("."):
            if p.suffix.lower() in IMAGE_SUFFIXES:
                images.append(p)
            else:
                others += 1
    return images, others


def load_dataset(source: Path) -> Dataset:
    """A folder with safe/ and unsafe/ subfolders (and a folder per safety category:
    gore/, violence/ ...), or a CSV of path,label."""
    if not source.exists():
        raise InputError(f"{source} does not exist")
    if source.is_file():
        return _load_csv(source)
    subs = {p.name.lower(): p for p in source.iterdir() if p.is_dir()}
    categories = sorted(n for n in subs if n not in (rep.SAFE, rep.UNSAFE) and valid_name(n))
    if rep.SAFE not in subs and rep.UNSAFE not in subs and not categories:
        raise InputError(
            f"{source} has no safe/ or unsafe/ subfolder. Put labelled images in "
            f"{source}/safe and {source}/unsafe (and a folder per safety category, such as "
            f"{source}/gore), or pass a CSV file of path,label lines."
        )
    data = Dataset(source, [])
    for label in (rep.SAFE, rep.UNSAFE, *categories):
        if label not in subs:
            if label == rep.SAFE or not categories:
                data.problems.append(f"no {label}/ subfolder: no {label} images")
            continue
        images, others = _images_under(subs[label])
        if others:
            data.problems.append(f"{label}/: {others} files that are not images ignored")
        data.items += [Item(p, label, _key(p, source)) for p in images]
    return data


def _load_csv(path: Path) -> Dataset:
    data = Dataset(path, [])
    root = path.parent
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"cannot read {path} as a CSV of path,label: {exc}") from None
    for line, row in enumerate(rows, start=1):
        if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        if len(row) < 2:
            data.problems.append(f"{path.name} line {line}: expected path,label; skipped")
            continue
        label = parse_label(row[1])
        if label is None:
            if line == 1:  # a header such as "path,label"
                continue
            data.problems.append(
                f"{path.name} line {line}: label {row[1].strip()!r} is not safe or unsafe; skipped"
            )
            continue
        p = Path(row[0].strip())
        p = p if p.is_absolute() else root / p
        data.items.append(Item(p, label, _key(p, root)))
    if not data.items and not data.problems:
        raise InputError(f"{path} holds no path,label lines")
    return data


def sample(items: list[Item], limit: int, seed: int = 0) -> list[Item]:
    """At most `limit` images per label, picked at random but reproducibly."""
    out = []
    for label in sorted({it.label for it in items}):
        group = [it for it in items if it.label == label]
        if len(group) > limit:
            group = sorted(random.Random(seed).sample(group, limit), key=lambda it: it.key)
        out += group
    return out


# --- scoring -----------------------------------------------------------------------------


def _open_image(path: Path) -> Any:
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        return im.convert("RGB")


def score_items(
    scorer: Scorer, items: Sequence[Item], batch_size: int
) -> Iterator[tuple[Item, SafetyScores | None, str]]:
    """(item, scores, "") or (item, None, reason) for each item, a batch at a time.

    Only one batch of pixels is alive at a time. A batch the checker rejects is retried
    image by image, so one bad image cannot sink its neighbours.
    """
    for start in range(0, len(items), batch_size):
        batch = items[start : start + batch_size]
        loaded: list[tuple[Item, Any]] = []
        for item in batch:
            try:
                loaded.append((item, _open_image(item.path)))
            except Exception as exc:  # any decoder error is bad input, not a crash
                yield item, None, f"unreadable: {_reason(exc)}"
        if not loaded:
            continue
        try:
            results = scorer.scores([im for _, im in loaded])
            yield from ((it, sc, "") for (it, _), sc in zip(loaded, results, strict=True))
        except Exception:
            for it, im in loaded:
                try:
                    yield it, scorer.scores([im])[0], ""
                except Exception as exc:
                    yield it, None, f"checker failed on it: {_reason(exc)}"
        finally:
            for _, im in loaded:
                im.close()


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Progress:
    """A progress bar on stderr: redrawn in place on a terminal, a line per 10% in a log."""

    def __init__(self, total: int, label: str = "scoring", stream: TextIO | None = None):
        self.total, self.label, self.done = total, label, 0
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.start = time.monotonic()
        self._last_draw = 0.0
        self._last_decile = -1

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        decile = 10 * self.done // max(1, self.total)
        if self.tty and (now - self._last_draw >= 0.2 or self.done >= self.total):
            self.stream.write("\r" + self.line(now))
            self._last_draw = now
        elif not self.tty and decile != self._last_decile:
            self.stream.write(self.line(now) + "\n")
            self._last_decile = decile
        self.stream.flush()

    def line(self, now: float) -> str:
        frac = self.done / self.total if self.total else 1.0
        bar = "#" * int(24 * frac) + "." * (24 - int(24 * frac))
        elapsed = now - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else math.nan
        eta_s = f" ETA {_duration(eta)}" if math.isfinite(eta) and self.done < self.total else ""
        return f"{self.label} [{bar}] {self.done}/{self.total} {rate:.1f} img/s{eta_s}"

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _duration(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


# --- CSV of scores -----------------------------------------------------------------------

SCORE_FIELDS = (
    ["path", "label", "flag_offset", "flagged_at_yours"]
    + [f"concept_{i}" for i in range(CONCEPTS)]
    + [f"special_{i}" for i in range(SPECIAL_CARE)]
)


CATEGORY_PREFIX = "category:"  # a column per safety category: its score for the image


def score_fields(categories: Sequence[str] = ()) -> list[str]:
    return SCORE_FIELDS + [CATEGORY_PREFIX + n for n in categories]


def score_row(s: Scored, configured: float, categories: Sequence[str] = ()) -> list[str]:
    """One CSV row; floats in repr so a resumed run gets the exact same numbers back.
    A category with no score for the image (not loaded) is an empty cell."""
    fo = s.flag_offset
    cats = s.scores.categories
    return [
        s.key,
        s.label,
        repr(fo),
        "yes" if rep.flagged_at(fo, configured) else "no",
        *(repr(float(v)) for v in s.scores.concept),
        *(repr(float(v)) for v in s.scores.special),
        *(repr(float(cats[n])) if n in cats else "" for n in categories),
    ]


def read_scores_csv(path: Path) -> list[Scored]:
    """Rows a previous run wrote; a torn last line (killed mid-write) is dropped."""
    out: list[Scored] = []
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None) or []
        if header[: len(SCORE_FIELDS)] != SCORE_FIELDS:
            return []
        names = [h.removeprefix(CATEGORY_PREFIX) for h in header[len(SCORE_FIELDS) :]]
        for row in reader:
            if len(row) != len(header):
                continue
            try:
                nums = [float(v) for v in row[4 : len(SCORE_FIELDS)]]
                extra = row[len(SCORE_FIELDS) :]
                cats = {n: float(v) for n, v in zip(names, extra, strict=True) if v}
            except ValueError:
                continue
            scores = SafetyScores(nums[:CONCEPTS], nums[CONCEPTS:], cats)
            out.append(Scored(row[0], row[1], scores))
    return out


# --- the run -----------------------------------------------------------------------------


@dataclass
class RunResult:
    scored: list[Scored]
    skipped: list[tuple[str, str, str]]  # key, label, reason
    interrupted: bool = False
    resumed: int = 0
    error: str = ""  # why scoring stopped early, e.g. the checker could not be loaded


def run_scoring(
    scorer_factory: Callable[[], Scorer],
    data: Dataset,
    out: Path,
    *,
    configured: float,
    batch_size: int,
    fingerprint: dict[str, Any],
    resume: bool = True,
    progress_stream: TextIO | None = None,
    say: Callable[[str], None] = print,
    categories: Sequence[str] = (),
) -> RunResult:
    """Score what is not scored yet, appending to scores.csv after every batch.

    `fingerprint` (dataset, checker) is kept in run.json: a second run with the same one
    resumes, any other starts afresh. `scorer_factory` is called only when there is work.
    """
    out.mkdir(parents=True, exist_ok=True)
    scores_path, skipped_path, run_path = out / SCORES_CSV, out / SKIPPED_CSV, out / RUN_JSON
    wanted = {it.key: it for it in data.items}
    previous: list[Scored] = []
    if resume and scores_path.exists() and _read_json(run_path) == fingerprint:
        previous = [s for s in read_scores_csv(scores_path) if s.key in wanted]
    done = {s.key for s in previous}
    todo = [it for it in data.items if it.key not in done]
    result = RunResult(list(previous), [], resumed=len(previous))
    if previous:
        say(f"Resuming: {len(previous)} images already scored in {scores_path}.")
    run_path.write_text(json.dumps(fingerprint, indent=1), encoding="utf-8")
    # Rewritten, not appended: a line torn by a kill never glues onto the next row.
    with (
        scores_path.open("w", newline="", encoding="utf-8") as sf,
        skipped_path.open("w", newline="", encoding="utf-8") as kf,
    ):
        scores_csv, skipped_csv = csv.writer(sf), csv.writer(kf)
        scores_csv.writerow(score_fields(categories))
        for s in previous:
            scores_csv.writerow(score_row(s, configured, categories))
        skipped_csv.writerow(["path", "label", "reason"])
        sf.flush()
        if not todo:
            return result
        try:
            scorer = scorer_factory()
        except InputError as exc:  # what was resumed is on disk and still reported
            result.error = str(exc)
            return result
        bar = Progress(len(todo), stream=progress_stream)
        try:
            for i, (item, scores, reason) in enumerate(score_items(scorer, todo, batch_size)):
                if scores is None:
                    result.skipped.append((item.key, item.label, reason))
                    skipped_csv.writerow([item.key, item.label, reason])
                else:
                    s = Scored(item.key, item.label, scores)
                    result.scored.append(s)
                    scores_csv.writerow(score_row(s, configured, categories))
                bar.update()
                if (i + 1) % batch_size == 0:
                    sf.flush()
                    kf.flush()
        except KeyboardInterrupt:
            result.interrupted = True
        finally:
            bar.close()
    return result


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


# --- outputs -----------------------------------------------------------------------------


@dataclass
class Outputs:
    """What the report is built from, for both modes."""

    title: str
    source: str
    checker: str
    configured: float
    offsets: list[float]
    scored: list[Scored]
    skipped: list[tuple[str, str, str]]
    targets: list[float]
    resolution: float
    notes: list[str] = field(default_factory=list)
    sections: list[str] = field(default_factory=list)  # the categories' (safety_categories)

    def flag_offsets(self, label: str) -> list[float]:
        return [s.flag_offset for s in self.scored if s.label == label]


def write_eval_report(o: Outputs, out: Path, say: Callable[[str], None] = print) -> Path:
    """report.md and the four PNG figures for a labelled set."""
    safe, unsafe = o.flag_offsets(rep.SAFE), o.flag_offsets(rep.UNSAFE)
    rows = rep.sweep(safe, unsafe, o.offsets)
    recs = rep.recommend(safe, unsafe, o.targets, o.resolution)
    at_yours = rep.sweep(safe, unsafe, [o.configured])[0]
    area = rep.auc(safe, unsafe)
    figures = _eval_figures(o, out, safe, unsafe, rows, recs, at_yours, say)
    lines = [
        f"# {o.title}",
        "",
        f"- images: {len(safe)} safe, {len(unsafe)} unsafe scored from `{o.source}`"
        + (f"; {len(o.skipped)} skipped (see `{SKIPPED_CSV}`)" if o.skipped else ""),
        f"- checker: `{o.checker}`; your offset: {rep.fmt_offset(o.configured)} "
        "(0 = stock diffusers, higher = stricter)",
        f"- at your offset: {rep.fmt_rate(at_yours.safe_flagged, at_yours.safe_total)} of safe "
        f"images flagged, {rep.fmt_rate(at_yours.unsafe_flagged, at_yours.unsafe_total)} of "
        "unsafe images flagged",
    ]
    if area is not None:
        lines.append(
            f"- ROC area: {area:.3f} (1 = some offset separates the classes perfectly, "
            "0.5 = no better than chance)"
        )
    lines += [f"- note: {n}" for n in o.notes]
    lines += [
        "",
        "## Recommended offsets",
        "",
        "The smallest offset at which at most the given share of *your* unsafe images gets "
        "through, and the share of your safe images it flags on the way.",
        "",
        rep.recommendation_table(recs),
        "",
        "## Sweep",
        "",
        "An image is flagged at an offset when any concept score, raised by the offset, "
        "is above 0. Precision: the share of flagged images that were unsafe.",
        "",
        rep.sweep_table(rows, o.configured),
        "",
    ]
    lines += _figure_lines(figures)
    lines += o.sections
    lines += _skipped_lines(o.skipped)
    path = out / REPORT_MD
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _eval_figures(
    o: Outputs,
    out: Path,
    safe: list[float],
    unsafe: list[float],
    rows: list[rep.SweepRow],
    recs: list[rep.Recommendation],
    at_yours: rep.SweepRow,
    say: Callable[[str], None],
) -> dict[str, Path]:
    from generator_host.tools import safety_plots as plots

    if not plots.available():
        say("matplotlib is not installed: no figures (pip install matplotlib).")
        return {}
    by_label = {rep.SAFE: safe, rep.UNSAFE: unsafe}
    hits = {
        label: rep.hit_counts((s.scores for s in o.scored if s.label == label), o.configured)
        for label in (rep.SAFE, rep.UNSAFE)
    }
    shares = {
        rep.SAFE: [r.safe_rate or 0.0 for r in rows] if safe else [],
        rep.UNSAFE: [r.unsafe_rate or 0.0 for r in rows] if unsafe else [],
    }
    colours = {rep.SAFE: plots.SAFE_COLOUR, rep.UNSAFE: plots.UNSAFE_COLOUR}
    return {
        "ROC curve": plots.roc_curve(out / "roc.png", rep.roc(safe, unsafe), at_yours, recs),
        "Score histograms by label": plots.histograms(
            out / "histograms.png", by_label, o.configured, colours
        ),
        "Flagged share against offset": plots.flagged_share(
            out / "flagged_share.png",
            o.offsets,
            {k: v for k, v in shares.items() if v},
            o.configured,
        ),  # fmt: skip
        "Per-concept hits": plots.concept_hits(out / "concept_hits.png", hits, o.configured),
    }


def _figure_lines(figures: dict[str, Path]) -> list[str]:
    if not figures:
        return ["No figures: matplotlib is not installed.", ""]
    lines = ["## Figures", ""]
    for title, path in figures.items():
        lines += [f"### {title}", "", f"![{title}]({path.name})", ""]
    return lines


def _skipped_lines(skipped: list[tuple[str, str, str]], show: int = 20) -> list[str]:
    if not skipped:
        return []
    lines = ["## Skipped images", ""]
    lines += [f"- `{k}` ({label or 'gallery'}): {reason}" for k, label, reason in skipped[:show]]
    if len(skipped) > show:
        lines.append(f"- … and {len(skipped) - show} more in `{SKIPPED_CSV}`")
    return lines + [""]


# --- the checker -------------------------------------------------------------------------


def checker_source(settings: Settings, override: str | None = None) -> str:
    """The checker the live host would use: the model folder's own, else [safety] checker."""
    if override:
        return override
    model = Path(settings.model.model).expanduser()
    if (model / "safety_checker").is_dir() and (model / "feature_extractor").is_dir():
        return str(model)
    return settings.safety.checker


def make_scorer_factory(
    source: str, device: str, settings: Settings | None = None
) -> Callable[[], Scorer]:
    """A factory that loads the checker (slow imports) only when there is work to do;
    with `settings`, the judge scores the safety categories on images as the host does
    (a category that cannot be loaded is a warning: the checker's report still comes)."""

    def factory() -> Scorer:
        try:
            from generator_host.engine.pipeline import EngineError, pick_device, pick_dtype
            from generator_host.engine.safety import SafetyError, SafetyJudge, load_checker
        except ImportError as exc:
            raise InputError(f"the model libraries are not installed ({exc})") from None
        _quiet_libraries()
        try:
            dev = pick_device(device)
            checker, extractor = load_checker(source, dev, pick_dtype(dev))
        except (SafetyError, EngineError) as exc:
            raise InputError(f"no safety checker: {exc}") from None
        judge = SafetyJudge(checker, extractor)
        if settings is not None:
            _attach_categories(judge, settings, source)
        return judge

    return factory


def _attach_categories(judge: Any, settings: Settings, source: str) -> None:
    from generator_host.engine.categories import (
        CategoryError,
        category_cache_dir,
        load_categories,
    )

    dim = int(judge.checker.visual_projection.out_features)
    try:
        loaded = load_categories(
            settings.safety, dim, [source], category_cache_dir(), prompts=False
        )
    except CategoryError as exc:
        print(f"warning: the safety categories are not scored: {exc}", file=sys.stderr)
        return
    judge.categories = loaded.images


def _quiet_libraries() -> None:
    """The tool draws its own progress bar; the libraries' bars and notices would garble it."""
    try:
        import diffusers.utils.logging as dlog
        import transformers.utils.logging as tlog
    except ImportError:
        return
    for lib in (dlog, tlog):
        lib.set_verbosity_error()
        lib.disable_progress_bar()


# --- command line ------------------------------------------------------------------------

HELP = "how the safety checker treats your images: rates, plots, recommended offsets"
DESCRIPTION = (
    "Score labelled images (a folder with safe/ and unsafe/ subfolders, or a CSV of "
    "path,label lines) with the configured safety checker, sweep the threshold offset, and "
    "write scores.csv, report.md (flag rates, precision, recommended offsets) and PNG plots. "
    "A folder per safety category beside safe/ (gore/, violence/ ...) and --prompts CSV give "
    "the same per category (thresholds) and the combined false-positive rate. "
    "With --gallery, read the scores stored in your gallery's images instead (no model "
    "needed) and show what each offset would have flagged. Scores are saved as they come: "
    "Ctrl-C keeps them, and running again resumes. See docs/safety.md."
)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `safety-eval` on the CLI's subparsers."""
    p = subparsers.add_parser("safety-eval", help=HELP, description=DESCRIPTION)
    p.add_argument(
        "dataset", nargs="?", type=Path,
        help="folder with safe/ and unsafe/ (and gore/, violence/ ...: a folder per safety "
        "category), or a CSV of path,label",
    )  # fmt: skip
    p.add_argument(
        "--prompts", type=Path, metavar="CSV",
        help="also score prompts (a CSV of prompt,label; label safe or a category name) "
        "against the safety categories, with the CLIP text tower",
    )  # fmt: skip
    p.add_argument(
        "--gallery", nargs="?", const="", default=None, metavar="FOLDER",
        help="evaluate the gallery's stored scores instead (default: the configured gallery)",
    )  # fmt: skip
    p.add_argument("--out", type=Path, help="output folder (default ./safety-report)")
    p.add_argument(
        "--offsets", default="auto", metavar="START:STOP:STEP",
        help="offsets to sweep: --offsets=-0.05:0.05:0.005 (write the = when START is "
        "negative) or a list such as 0,0.01,0.02; default: auto, covering your data",
    )  # fmt: skip
    p.add_argument(
        "--targets", default="10,5,1,0", metavar="PERCENTS",
        help="miss rates on unsafe images to recommend offsets for (default 10,5,1,0)",
    )  # fmt: skip
    p.add_argument(
        "--resolution", type=float, default=0.001,
        help="recommended offsets are multiples of this (default 0.001)",
    )  # fmt: skip
    p.add_argument("--batch-size", type=int, default=16, help="images per checker call")
    p.add_argument("--limit", type=int, help="score at most this many images per label")
    p.add_argument("--fresh", action="store_true", help="ignore earlier scores in --out")
    p.add_argument("--checker", help="checker folder or hub id (default: as the host uses)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], help="default: config")
    p.add_argument("--config", type=Path, default=None, help="config file to read")
    return p


def parse_offsets(text: str) -> list[float] | None:
    """'auto' -> None; 'a:b:c' -> the grid; 'x,y,z' -> those offsets."""
    text = text.strip().lower()
    if text == "auto":
        return None
    try:
        if ":" in text:
            start, stop, step = (float(v) for v in text.split(":"))
            grid = rep.offset_grid(start, stop, step)
        else:
            grid = sorted({float(v) for v in text.split(",") if v.strip()})
    except ValueError as exc:
        raise InputError(
            f"--offsets {text!r}: {exc}; write --offsets=START:STOP:STEP, "
            "such as --offsets=-0.05:0.05:0.005"
        ) from None
    if not grid or grid[0] < rep.OFFSET_MIN or grid[-1] > rep.OFFSET_MAX:
        raise InputError(f"--offsets must lie between {rep.OFFSET_MIN} and {rep.OFFSET_MAX}")
    return grid


def parse_targets(text: str) -> list[float]:
    """'10,5,1,0' (percent miss rates) -> [0.1, 0.05, 0.01, 0.0]."""
    try:
        values = [float(v.strip().rstrip("%")) / 100 for v in text.split(",") if v.strip()]
    except ValueError:
        raise InputError(f"--targets {text!r}: write percentages such as 10,5,1,0") from None
    if not values or any(not 0 <= v < 1 for v in values):
        raise InputError("--targets are miss rates in percent, from 0 up to (not including) 100")
    return sorted(set(values), reverse=True)


def main(args: argparse.Namespace, settings: Settings) -> int:
    """Run the tool; every bad input ends in a plain message and an exit code."""
    try:
        if args.gallery is not None:
            if args.dataset is not None:
                raise InputError("give either a labelled dataset or --gallery, not both")
            return run_gallery(args, settings)
        if args.dataset is None and getattr(args, "prompts", None) is not None:
            return run_prompts_only(args, settings)
        if args.dataset is None:
            raise InputError(
                "give a folder with safe/ and unsafe/ subfolders (or a CSV of path,label), "
                "--prompts CSV, or --gallery to look at your past images"
            )
        return run_dataset(args, settings)
    except InputError as exc:
        print(f"safety-eval: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _check_numbers(args: argparse.Namespace) -> None:
    if args.batch_size < 1:
        raise InputError("--batch-size must be at least 1")
    if args.limit is not None and args.limit < 1:
        raise InputError("--limit must be at least 1")
    if not 0 < args.resolution <= 0.1:
        raise InputError("--resolution must be above 0 and at most 0.1")


def run_dataset(args: argparse.Namespace, settings: Settings) -> int:
    _check_numbers(args)
    offsets = parse_offsets(args.offsets)
    targets = parse_targets(args.targets)
    configured = settings.safety.threshold_offset
    data = load_dataset(args.dataset)
    for problem in data.problems:
        print(f"note: {problem}", file=sys.stderr)
    if args.limit:
        before = len(data.items)
        data.items = sample(data.items, args.limit)
        if len(data.items) < before:
            print(f"--limit {args.limit}: scoring {len(data.items)} of {before} images.")
    n_safe, n_unsafe = data.count(rep.SAFE), data.count(rep.UNSAFE)
    if not data.items:
        raise InputError(f"{data.source}: no images found")
    by_category = {
        label: data.count(label)
        for label in sorted({it.label for it in data.items} - {rep.SAFE, rep.UNSAFE})
    }
    notes = _class_notes(n_safe, n_unsafe if not by_category else max(1, n_unsafe))
    if by_category:
        print("category folders: " + ", ".join(f"{k}/ {v}" for k, v in by_category.items()))
    for note in notes:
        print(f"warning: {note}", file=sys.stderr)
    out: Path = args.out or Path.cwd() / "safety-report"
    source = checker_source(settings, args.checker)
    device = args.device or settings.model.device
    print(
        f"{len(data.items)} images ({n_safe} safe, {n_unsafe} unsafe), checker {source}, "
        f"batches of {args.batch_size}. Scores go to {out / SCORES_CSV} as they come: "
        "Ctrl-C keeps them and a second run resumes."
    )
    categories = _image_categories(settings)
    fingerprint = {
        "dataset": str(data.source.resolve()),
        "checker": source,
        # scores are relative to the thresholds: other settings, other numbers
        "categories": {n: t for n, t in categories.items()},
        "text_model": settings.safety.categories_text_model,
    }
    try:
        result = run_scoring(
            make_scorer_factory(source, device, settings if categories else None),
            data,
            out,
            configured=configured,
            batch_size=args.batch_size,
            fingerprint=fingerprint,
            resume=not args.fresh,
            categories=list(categories),
        )
    except OSError as exc:
        raise InputError(f"cannot write to {out}: {exc}") from None
    return _finish_dataset(
        args, data, out, source, configured, offsets, targets, result, notes, settings
    )


def _image_categories(settings: Settings) -> dict[str, float]:
    """The enabled categories that apply to images, with their thresholds (none when the
    checker is off: the host would not score them either)."""
    from generator_host.core.categories import parse_categories

    if not settings.safety.enabled:
        return {}
    cats, _ = parse_categories(settings.safety.categories)
    return {c.name: c.threshold for c in cats if c.on_images}


def run_prompts_only(args: argparse.Namespace, settings: Settings) -> int:
    """safety-eval --prompts CSV alone: the categories over prompts, no checker needed."""
    from generator_host.tools import safety_categories as sc

    _check_numbers(args)
    targets = parse_targets(args.targets)
    out: Path = args.out or Path.cwd() / "safety-report"
    try:
        out.mkdir(parents=True, exist_ok=True)
        _quiet_libraries()
        lines = sc.prompts_section(
            settings, checker_source(settings, args.checker), args.prompts, out, targets,
            args.resolution,
        )  # fmt: skip
    except OSError as exc:
        raise InputError(f"cannot write to {out}: {exc}") from None
    report = out / REPORT_MD
    text = ["# Safety categories on prompts", "", *lines[2:]]
    report.write_text("\n".join(text) + "\n", encoding="utf-8")
    print(f"\nReport: {report}\nScores: {out / sc.PROMPT_SCORES_CSV}")
    return EXIT_OK


def _category_sections(
    args: argparse.Namespace,
    settings: Settings,
    source: str,
    out: Path,
    result: RunResult,
    configured: float,
) -> list[str]:
    """The report's parts on the safety categories: images, then prompts (--prompts)."""
    from generator_host.tools import safety_categories as sc

    targets = parse_targets(args.targets)
    lines = sc.image_section(result.scored, settings, configured, out, targets, args.resolution)
    if getattr(args, "prompts", None) is not None:
        lines += sc.prompts_section(settings, source, args.prompts, out, targets, args.resolution)
    return lines


def _class_notes(n_safe: int, n_unsafe: int) -> list[str]:
    notes = []
    if not n_unsafe:
        notes.append(
            "no unsafe images: only false positives can be measured; miss rates and "
            "recommended offsets need unsafe images"
        )
    if not n_safe:
        notes.append("no safe images: false positives and precision cannot be measured")
    return notes


def _finish_dataset(
    args: argparse.Namespace,
    data: Dataset,
    out: Path,
    source: str,
    configured: float,
    offsets: list[float] | None,
    targets: list[float],
    result: RunResult,
    notes: list[str],
    settings: Settings | None = None,
) -> int:
    notes = list(notes)
    if result.skipped:
        print(
            f"warning: {len(result.skipped)} images skipped (listed in {out / SKIPPED_CSV}), "
            f"e.g. {result.skipped[0][0]}: {result.skipped[0][2]}",
            file=sys.stderr,
        )
    scored_n = len(result.scored)
    if result.error or result.interrupted:
        why = result.error or "interrupted"
        notes.append(f"partial results: {scored_n} of {len(data.items)} images scored ({why})")
        print(f"safety-eval: {why}", file=sys.stderr)
    if not result.scored:
        print("safety-eval: no image could be scored, so there is no report.", file=sys.stderr)
        return EXIT_CHECKER if result.error else EXIT_FAILED
    flag_offsets = [s.flag_offset for s in result.scored]
    grid = offsets or rep.auto_grid(flag_offsets, include=(0.0, configured))
    outputs = Outputs(
        title="Safety checker evaluation",
        source=str(data.source),
        checker=source,
        configured=configured,
        offsets=grid,
        scored=result.scored,
        skipped=result.skipped,
        targets=targets,
        resolution=args.resolution,
        notes=notes,
    )
    if settings is not None:
        outputs.sections = _category_sections(args, settings, source, out, result, configured)
    report = write_eval_report(outputs, out)
    _print_summary(outputs, report)
    if result.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_CHECKER if result.error else EXIT_OK


def _print_summary(o: Outputs, report: Path) -> None:
    safe, unsafe = o.flag_offsets(rep.SAFE), o.flag_offsets(rep.UNSAFE)
    if unsafe:
        print()
        print(rep.recommendation_table(rep.recommend(safe, unsafe, o.targets, o.resolution)))
    print(f"\nReport: {report}\nScores: {report.parent / SCORES_CSV}")


# --- gallery mode --------------------------------------------------------------------------

GALLERY_SCORES_CSV = "gallery_scores.csv"


def gallery_folder(settings: Settings, given: str) -> Path:
    """--gallery FOLDER, else [gallery] folder, else the host's default gallery."""
    if given:
        return Path(given).expanduser()
    if settings.gallery.folder:
        return Path(settings.gallery.folder).expanduser()
    return data_dir() / "gallery"


def read_stored(path: Path) -> tuple[SafetyScores | None, dict[str, Any], str]:
    """(scores, safety metadata, problem) of one gallery PNG, without decoding its pixels
    (see gallery.read_png_metadata)."""
    from generator_host.edges.gallery import read_png_metadata

    try:
        meta = read_png_metadata(path)["meta"]
    except Exception as exc:  # a broken file is a message, not a crash
        return None, {}, f"unreadable: {_reason(exc)}"
    if not isinstance(meta, dict):
        return None, {}, "no Chat Diffusion metadata (not a gallery image?)"
    safety = meta.get("safety") if isinstance(meta.get("safety"), dict) else {}
    stored = safety.get("scores")
    if not stored:
        return None, safety, "no safety scores stored (the checker was off)"
    try:
        scores = SafetyScores(
            [float(v) for v in stored["concept"]],
            [float(v) for v in stored["special"]],
            {str(k): float(v) for k, v in (stored.get("categories") or {}).items()},
        )
    except (KeyError, TypeError, ValueError):
        return None, safety, "safety scores in the metadata are malformed"
    if not scores.concept:
        return None, safety, "safety scores in the metadata are empty"
    return scores, safety, ""


def run_gallery(args: argparse.Namespace, settings: Settings) -> int:
    """What each offset would have flagged among the gallery's images, from stored scores."""
    offsets = parse_offsets(args.offsets)
    folder = gallery_folder(settings, args.gallery)
    if not folder.is_dir():
        raise InputError(
            f"no gallery at {folder}. Pass --gallery FOLDER (the demo keeps its gallery in "
            f"{data_dir() / 'demo' / 'gallery'})."
        )
    files = sorted(p for p in folder.rglob("*.png") if not p.name.startswith("."))
    if not files:
        raise InputError(f"{folder} holds no PNG images yet")
    out: Path = args.out or Path.cwd() / "safety-report-gallery"
    configured = settings.safety.threshold_offset
    scored: list[Scored] = []
    skipped: list[tuple[str, str, str]] = []
    flagged_then = 0
    try:
        out.mkdir(parents=True, exist_ok=True)
        names = list(_image_categories(settings))  # a column per configured category
        with (out / GALLERY_SCORES_CSV).open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(score_fields(names))
            bar = Progress(len(files), label="reading")
            for path in files:
                scores, safety, problem = read_stored(path)
                key = path.relative_to(folder).as_posix()
                if scores is None:
                    skipped.append((key, "", problem))
                else:
                    verdict = "flagged" if safety.get("flagged") else "shown"
                    flagged_then += verdict == "flagged"
                    s = Scored(key, verdict, scores)
                    scored.append(s)
                    writer.writerow(score_row(s, configured, names))
                bar.update()
            bar.close()
    except OSError as exc:
        raise InputError(f"cannot write to {out}: {exc}") from None
    except KeyboardInterrupt:
        print("safety-eval: interrupted; no report written", file=sys.stderr)
        return EXIT_INTERRUPTED
    if not scored:
        reasons = sorted({r for _, _, r in skipped})
        raise InputError(f"none of the {len(files)} images in {folder} has stored scores: "
                         + "; ".join(reasons))  # fmt: skip
    grid = offsets or rep.auto_grid([s.flag_offset for s in scored], include=(0.0, configured))
    report = write_gallery_report(folder, out, scored, skipped, grid, configured, flagged_then)
    print(f"{len(scored)} images with stored scores ({len(skipped)} without).")
    print(f"\nReport: {report}\nScores: {out / GALLERY_SCORES_CSV}")
    return EXIT_OK


def _category_lines(scored: list[Scored]) -> list[str]:
    """Per safety category (core/categories.py): how many images it flagged when they were
    made (score above 0: best cosine above its threshold) and the highest score seen."""
    by_name: dict[str, list[float]] = {}
    for s in scored:
        for name, value in s.scores.categories.items():
            by_name.setdefault(name, []).append(value)
    if not by_name:
        return []
    lines = [
        "## Safety categories",
        "",
        "Score = best cosine with the category minus its threshold; above 0 flags. "
        "Raise a category's threshold by about the score of the images it wrongly flags.",
        "",
        "| category | images scored | flagged | highest score |",
        "|---|---|---|---|",
    ]
    for name, values in sorted(by_name.items()):
        flagged = sum(v > 0 for v in values)
        rate = rep.fmt_rate(flagged, len(values))
        lines.append(f"| {name} | {len(values)} | {rate} | {max(values):+.3f} |")
    return lines + [""]


def write_gallery_report(
    folder: Path,
    out: Path,
    scored: list[Scored],
    skipped: list[tuple[str, str, str]],
    offsets: list[float],
    configured: float,
    flagged_then: int,
) -> Path:
    """report.md and figures for the gallery: flagged share by offset, no labels needed."""
    from generator_host.tools import safety_plots as plots

    fos = [s.flag_offset for s in scored]
    sorted_fos = sorted(fos)
    now = rep.count_flagged(sorted_fos, configured)
    figures: dict[str, Path] = {}
    if plots.available():
        by_verdict = {
            v: [s.flag_offset for s in scored if s.label == v] for v in ("shown", "flagged")
        }
        colours = {"shown": plots.SAFE_COLOUR, "flagged": plots.UNSAFE_COLOUR}
        shares = [rep.count_flagged(sorted_fos, o) / len(fos) for o in offsets]
        hits = {"gallery": rep.hit_counts((s.scores for s in scored), configured)}
        figures = {
            "Flagged share against offset": plots.flagged_share(
                out / "flagged_share.png", offsets, {"your images": shares}, configured
            ),
            "Score histogram (by the verdict they got)": plots.histograms(
                out / "histograms.png",
                {k: v for k, v in by_verdict.items() if v},
                configured,
                colours,
            ),  # fmt: skip
            "Per-concept hits": plots.concept_hits(out / "concept_hits.png", hits, configured),
        }
    lines = [
        "# Safety checker over your gallery",
        "",
        f"- images: {len(scored)} with stored scores in `{folder}`"
        + (f"; {len(skipped)} without (listed below)" if skipped else ""),
        f"- flagged when they were made: {rep.fmt_rate(flagged_then, len(scored))}",
        f"- at your offset now ({rep.fmt_offset(configured)}): "
        f"{rep.fmt_rate(now, len(scored))} would be flagged",
        "- no labels here: this says how many past images each offset would flag, not "
        "whether they were right to. For that, run safety-eval on a labelled folder.",
        "",
        "## What each offset would have flagged",
        "",
        rep.gallery_table(fos, offsets, configured),
        "",
    ]
    lines += _category_lines(scored)
    lines += _figure_lines(figures)
    lines += _skipped_lines(skipped)
    path = out / REPORT_MD
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
