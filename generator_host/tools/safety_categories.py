"""safety-eval for the streamer's safety categories: per category, the threshold sweep,
rates, recommended thresholds with counts, ROC and histogram plots, over images (a folder
per category beside safe/) and over prompts (a CSV of prompt,label); plus the combined
false-positive rate on the safe set.

A category's verdict is `cosine > threshold` (core/categories.py), so each image or prompt
needs one number, its best cosine with the category, and any threshold can be tried
without scoring again. The statistics are safety_report's: a cosine `c` becomes the flag
offset `-c` (flagged at "offset" `-t` exactly when `c > t`), so sweep, recommendations,
ROC and bounds are the checker's own code, read back as thresholds.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from generator_host.core.categories import Category, parse_categories, too_close, valid_name
from generator_host.core.settings import Settings
from generator_host.tools import safety_report as rep

PROMPT_SCORES_CSV = "prompt_scores.csv"
ANY = "unsafe"  # a prompt label that counts against the combined catch rate only


@dataclass(frozen=True)
class CategoryEval:
    """One category over one kind of input: the cosines of the safe items and of the items
    labelled with the category, against the threshold in the config."""

    name: str
    threshold: float
    safe: list[float]
    positive: list[float]

    def sweep(self, thresholds: Sequence[float]) -> list[rep.SweepRow]:
        rows = rep.sweep(_fo(self.safe), _fo(self.positive), [-t for t in thresholds])
        return [replace(r, offset=-r.offset) for r in rows]  # offset column = threshold

    def recommend(self, targets: Sequence[float], resolution: float) -> list[rep.Recommendation]:
        recs = rep.recommend(_fo(self.safe), _fo(self.positive), targets, resolution)
        return [replace(r, offset=None if r.offset is None else -r.offset) for r in recs]

    def grid(self) -> list[float]:
        """Thresholds covering the data and the configured one, at most ~40 round steps."""
        offsets = rep.auto_grid(_fo(self.safe + self.positive), include=(-self.threshold,))
        return sorted({round(-o, 6) for o in offsets} | {self.threshold})


def _fo(cosines: Sequence[float]) -> list[float]:
    return [-c for c in cosines]


def configured(settings: Settings, prompts: bool) -> dict[str, float]:
    """Enabled categories and their thresholds (for prompts: their prompt thresholds)."""
    cats, _ = parse_categories(settings.safety.categories)
    return {
        c.name: (c.threshold_for_prompts if prompts else c.threshold) for c in cats if c.enabled
    }


def evals(
    items: Sequence[tuple[str, dict[str, float]]], thresholds: dict[str, float]
) -> list[CategoryEval]:
    """Per configured category, from (label, {category: score}) items: score + threshold is
    the cosine. Categories without any scored item are left out."""
    out = []
    for name, t in thresholds.items():
        safe = [sc[name] + t for label, sc in items if label == rep.SAFE and name in sc]
        pos = [sc[name] + t for label, sc in items if label == name and name in sc]
        if safe or pos:
            out.append(CategoryEval(name, t, safe, pos))
    return out


def fmt_threshold(t: float) -> str:
    return f"{t:.4f}".rstrip("0").rstrip(".") if t else "0"


def wording(name: str, kind: str) -> rep.Wording:
    """safety_report's tables in a category's words: thresholds (no stock value, lower is
    stricter) over the items labelled with the category ("gore prompts")."""
    return rep.Wording(
        knob="threshold",
        positive=name,
        examples=f"{name} {kind}",
        strictest=f"thresholds down to {-rep.OFFSET_MAX:+g}",
        fmt=fmt_threshold,
        stock=None,
    )


def section(
    evaluations: Sequence[CategoryEval],
    out: Path,
    *,
    kind: str,
    targets: Sequence[float],
    resolution: float,
    say: Callable[[str], None] = print,
) -> list[str]:
    """The report's lines for every category over `kind` ("images" or "prompts"), with a
    ROC and a histogram figure per category."""
    from generator_host.tools import safety_plots as plots

    draw = plots.available()
    lines: list[str] = []
    prefix = "" if kind == "images" else "prompt_"
    for e in evaluations:
        grid = e.grid()
        rows = e.sweep(grid)
        recs = e.recommend(targets, resolution)
        yours = e.sweep([e.threshold])[0]
        words = wording(e.name, kind)
        area = rep.auc(_fo(e.safe), _fo(e.positive))
        lines += [
            f"### {e.name} ({kind})",
            "",
            f"- {len(e.safe)} safe and {len(e.positive)} {e.name} {kind}; your threshold "
            f"{fmt_threshold(e.threshold)}: {rep.fmt_rate(yours.safe_flagged, yours.safe_total)} "
            f"of safe {kind} flagged, {rep.fmt_rate(yours.unsafe_flagged, yours.unsafe_total)} "
            f"of {e.name} {kind} flagged",
        ]
        if area is not None:
            lines.append(f"- ROC area: {area:.3f}")
        if not e.positive:
            where = f"a {e.name}/ folder" if kind == "images" else f"the CSV, label {e.name}"
            lines.append(
                f"- no {e.name} {kind}: only false positives can be measured; put examples "
                f"in {where}"
            )
        lines += [
            "",
            "Recommended thresholds: the highest threshold at which at most the given share "
            f"of your {e.name} {kind} gets through (lower = stricter), and what it costs.",
            "",
            rep.recommendation_table(recs, words),
            "",
            rep.sweep_table(rows, e.threshold, words),
            "",
        ]
        if draw:
            safe_name = e.name.replace("/", "_")
            roc = plots.roc_curve(
                out / f"{prefix}roc_{safe_name}.png",
                [replace(p, offset=-p.offset) for p in rep.roc(_fo(e.safe), _fo(e.positive))],
                replace(yours, offset=e.threshold),
                [r for r in recs if r.offset is not None],
                what=f"{e.name}, all thresholds",
                yours=f"your threshold {fmt_threshold(e.threshold)}",
                unsafe=f"{e.name} {kind} flagged",
                title=f"ROC of {e.name} on {kind}",
            )
            hist = plots.histograms(
                out / f"{prefix}histograms_{safe_name}.png",
                {k: v for k, v in ((rep.SAFE, e.safe), (e.name, e.positive)) if v},
                e.threshold,
                {rep.SAFE: plots.SAFE_COLOUR, e.name: plots.UNSAFE_COLOUR},
                mark=f"your threshold {fmt_threshold(e.threshold)}",
                xlabel=f"best cosine with {e.name} (flagged above the threshold)",
                title=f"{e.name} on {kind} (right of your line = flagged)",
            )
            lines += [f"![ROC of {e.name} on {kind}]({roc.name})", ""]
            lines += [f"![{e.name} on {kind}]({hist.name})", ""]
    if evaluations and not draw:
        say("matplotlib is not installed: no category figures (pip install matplotlib).")
    return lines


def combined_lines(items: Sequence[tuple[str, bool]], what: str, rule: str) -> list[str]:
    """The combined false-positive rate on the safe set and catch rate on the rest:
    (label, flagged by anything) per item."""
    safe = [f for label, f in items if label == rep.SAFE]
    bad = [f for label, f in items if label != rep.SAFE]
    lines = [
        f"- combined false-positive rate on safe {what} ({rule}): "
        f"{rep.fmt_rate(sum(safe), len(safe))}"
    ]
    if bad:
        lines.append(
            f"- combined catch rate on the other {what}: {rep.fmt_rate(sum(bad), len(bad))}"
        )
    return lines


# --- prompts -----------------------------------------------------------------------------


def load_prompts(path: Path) -> tuple[list[tuple[str, str]], list[str]]:
    """(prompt, label) rows of a CSV of prompt,label (a header line is fine); problems."""
    from generator_host.tools.safety_eval import InputError, parse_label

    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"cannot read {path} as a CSV of prompt,label: {exc}") from None
    out: list[tuple[str, str]] = []
    problems: list[str] = []
    for line, row in enumerate(rows, start=1):
        if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        if len(row) < 2 or not row[0].strip():
            problems.append(f"{path.name} line {line}: expected prompt,label; skipped")
            continue
        word = row[1].strip().lower()
        label = parse_label(word) or (word if valid_name(word) else None)
        if line == 1 and row[0].strip().lower() == "prompt":
            continue  # the header
        if label is None:
            problems.append(f"{path.name} line {line}: label {row[1].strip()!r} unknown; skipped")
            continue
        out.append((row[0].strip(), label))
    if not out:
        raise InputError(f"{path} holds no prompt,label lines")
    return out, problems


def prompt_scorer(
    settings: Settings, checker: str
) -> tuple[Callable[[list[str]], list[dict[str, float]]], list[Category]]:
    """Scores prompts against every enabled category (as if each applied to prompts, so a
    threshold can be chosen before turning the prompt side on), with the text tower the
    host would use. Raises InputError when it cannot be loaded."""
    from generator_host.engine.categories import (
        CategoryError,
        TextEmbeddings,
        build_index,
        category_cache_dir,
        text_model_source,
    )
    from generator_host.tools.safety_eval import InputError

    cats, _ = parse_categories(settings.safety.categories)
    cats = [replace(c, applies_to="both") for c in cats if c.enabled]
    source = text_model_source(settings.safety.categories_text_model, [checker])
    text = TextEmbeddings(source, category_cache_dir())
    try:
        text.load_model()
        index = build_index(cats, text.dim, text, prompts=True)
    except CategoryError as exc:
        raise InputError(f"cannot score prompts: {exc}") from None
    if index is None:
        raise InputError("no enabled safety category to score prompts against")

    def score(prompts: list[str]) -> list[dict[str, float]]:
        return index.scores(text.embed_now(prompts))

    return score, cats


def score_prompts(
    rows: Sequence[tuple[str, str]],
    scorer: Callable[[list[str]], list[dict[str, float]]],
    out: Path,
    batch: int = 32,
) -> list[tuple[str, dict[str, float]]]:
    """(label, scores) per prompt, in batches; written to prompt_scores.csv as well."""
    scored: list[tuple[str, dict[str, float]]] = []
    names: list[str] = []
    with (out / PROMPT_SCORES_CSV).open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        for start in range(0, len(rows), batch):
            chunk = rows[start : start + batch]
            results = scorer([p for p, _ in chunk])
            if not names:
                names = list(results[0]) if results else []
                writer.writerow(["prompt", "label", *(f"category:{n}" for n in names)])
            for (prompt, label), sc in zip(chunk, results, strict=True):
                scored.append((label, sc))
                writer.writerow([prompt, label, *(repr(float(sc[n])) for n in names)])
    return scored


def prompts_section(
    settings: Settings,
    checker: str,
    path: Path,
    out: Path,
    targets: Sequence[float],
    resolution: float,
    say: Callable[[str], None] = print,
) -> list[str]:
    """The report's part on prompts: per category and combined."""
    rows, problems = load_prompts(path)
    for p in problems:
        say(f"note: {p}")
    scorer, cats = prompt_scorer(settings, checker)
    say(f"{len(rows)} prompts, {len(cats)} categories: scoring with the CLIP text tower ...")
    scored = score_prompts(rows, scorer, out)
    thresholds = configured(settings, prompts=True)
    applied = {c.name for c in parse_categories(settings.safety.categories)[0] if c.on_prompts}
    unknown = sorted({label for label, _ in scored} - set(thresholds) - {rep.SAFE, ANY})
    lines = [
        "## Safety categories on prompts",
        "",
        f"- prompts: {len(scored)} from `{path}` (scores in `{PROMPT_SCORES_CSV}`); every "
        "enabled category is scored, also those that do not apply to prompts yet "
        f"(applying now: {', '.join(sorted(applied)) or 'none'})",
        "- a prompt is too close to a category when its best cosine with it is above the "
        "category's prompt_threshold (unset: threshold); text-to-text cosines run higher "
        "than image-to-text ones, so prompt thresholds are higher",
    ]
    if unknown:
        lines.append(
            f"- labels that are no enabled category (counted as unsafe): {', '.join(unknown)}"
        )
    refused_now = [(label, bool(applied.intersection(too_close(sc)))) for label, sc in scored]
    refused_all = [(label, bool(too_close(sc))) for label, sc in scored]
    lines += combined_lines(refused_now, "prompts", "the categories that apply to prompts now")
    lines += combined_lines(refused_all, "prompts", "if every enabled category applied")
    lines.append("")
    lines += section(
        evals(scored, thresholds), out, kind="prompts", targets=targets,
        resolution=resolution, say=say,
    )  # fmt: skip
    return lines


def image_section(
    scored: Sequence[Any], settings: Settings, configured_offset: float, out: Path,
    targets: Sequence[float], resolution: float, say: Callable[[str], None] = print,
) -> list[str]:  # fmt: skip
    """The report's part on images (safety_eval.Scored items with category scores)."""
    items = [(s.label, s.scores.categories) for s in scored]
    if not any(sc for _, sc in items):
        return []
    thresholds = configured(settings, prompts=False)
    lines = [
        "## Safety categories on images",
        "",
        "Each category against the safe images and the images in its own folder (gore/, "
        "violence/ ...). An image is flagged by a category when its best cosine with the "
        "category's phrases and vectors is above the threshold.",
        "",
    ]
    flagged = [
        (
            s.label,
            rep.flagged_at(s.flag_offset, configured_offset) or bool(s.scores.flagged_categories),
        )
        for s in scored
    ]
    lines += combined_lines(
        flagged, "images", "flagged by the checker at your offset OR any category"
    )
    lines.append("")
    lines += section(
        evals(items, thresholds), out, kind="images", targets=targets,
        resolution=resolution, say=say,
    )  # fmt: skip
    return lines
