"""The safety report's figures as PNG files (matplotlib, Agg, no window).

Figures are built with `matplotlib.figure.Figure` directly, never pyplot: no global
state, no GUI backend, safe on a machine without a display. Import of matplotlib
happens here only, so the rest of the tool works (and says so) without it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from generator_host.tools.safety_report import (
    HitCounts,
    Recommendation,
    RocPoint,
    SweepRow,
    fmt_offset,
)

SAFE_COLOUR, UNSAFE_COLOUR, ALL_COLOUR = "#2a9d8f", "#e76f51", "#264653"


def available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _figure(width: float = 6.4, height: float = 4.2):  # -> matplotlib.figure.Figure
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, format="png")
    tmp.replace(path)  # a half-written PNG never replaces a good one
    return path


def _mark_offset(ax, offset: float, label: str) -> None:
    ax.axvline(offset, color="0.35", linestyle="--", linewidth=1)
    ax.annotate(
        label,
        (offset, 1),
        xycoords=("data", "axes fraction"),
        xytext=(3, -12),
        textcoords="offset points",
        fontsize=8,
        color="0.3",
    )


def roc_curve(
    path: Path,
    points: Sequence[RocPoint],
    at_configured: SweepRow | None,
    recs: Sequence[Recommendation] = (),
    *,
    what: str = "checker, all offsets",
    yours: str = "",
    unsafe: str = "unsafe images flagged",
    title: str = "ROC: every threshold offset at once",
) -> Path:
    """False-positive rate (safe flagged) against share of unsafe flagged, over all offsets
    (a safety category's thresholds: `what`, `yours`, `unsafe` and `title` say so)."""
    fig = _figure(5.2, 5.0)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="0.8", linewidth=1, label="chance")
    if points:
        ax.step(
            [p.fpr for p in points],
            [p.tpr for p in points],
            where="post",
            color=ALL_COLOUR,
            label=what,
        )
    if at_configured and at_configured.safe_total and at_configured.unsafe_total:
        ax.plot(
            [at_configured.safe_rate],
            [at_configured.unsafe_rate],
            "o",
            color=UNSAFE_COLOUR,
            label=yours or f"your offset {fmt_offset(at_configured.offset)}",
        )
    labels: dict[tuple[float, float], list[str]] = {}
    for r in recs:
        if r.offset is not None and r.fpr is not None and r.miss_rate is not None:
            labels.setdefault((r.fpr, 1 - r.miss_rate), []).append(f"{r.target:.0%}")
    for (x, y), targets in labels.items():  # one label per point, even when targets share it
        ax.plot([x], [y], "x", color="0.2")
        ax.annotate(f"miss ≤ {', '.join(targets)}", (x, y), fontsize=7, xytext=(4, -10),
                    textcoords="offset points")  # fmt: skip
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("safe images flagged (false-positive rate)")
    ax.set_ylabel(unsafe)
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def histograms(
    path: Path,
    by_label: dict[str, Sequence[float]],
    configured: float,
    colours: dict[str, str],
    *,
    mark: str = "",
    xlabel: str = "flag offset: the image is flagged at any offset above this",
    title: str = "Score distribution by label (left of your line = flagged)",
) -> Path:
    """Where each class's images become flagged: one histogram per label (a category's
    cosines against its threshold: `mark`, `xlabel` and `title` say so)."""
    fig = _figure()
    ax = fig.add_subplot()
    values = [v for vs in by_label.values() for v in vs if math.isfinite(v)]
    if values:
        lo, hi = min(values + [configured]), max(values + [configured])
        span = (hi - lo) or 0.02
        bins = [lo - span * 0.02 + i * span * 1.04 / 40 for i in range(41)]
        for label, vs in by_label.items():
            finite = [v for v in vs if math.isfinite(v)]
            if finite:
                ax.hist(
                    finite,
                    bins=bins,
                    alpha=0.6,
                    color=colours.get(label, ALL_COLOUR),
                    label=f"{label} ({len(finite)})",
                )
        ax.legend(fontsize=8)
    _mark_offset(ax, configured, mark or f"your offset {fmt_offset(configured)}")
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("images")
    ax.set_title(title)
    return _save(fig, path)


def flagged_share(
    path: Path, offsets: Sequence[float], series: dict[str, Sequence[float]], configured: float
) -> Path:
    """Share of each class flagged at each offset of the sweep."""
    fig = _figure()
    ax = fig.add_subplot()
    colours = {"safe": SAFE_COLOUR, "unsafe": UNSAFE_COLOUR}
    for label, shares in series.items():
        ax.plot(
            offsets,
            [100 * s for s in shares],
            marker=".",
            color=colours.get(label, ALL_COLOUR),
            label=label,
        )
    _mark_offset(ax, configured, f"your offset {fmt_offset(configured)}")
    if offsets and offsets[0] <= 0 <= offsets[-1] and configured != 0:
        ax.axvline(0, color="0.7", linestyle=":", linewidth=1)
    ax.set_ylim(-2, 102)
    ax.set_xlabel("threshold offset (0 = stock diffusers, higher = stricter)")
    ax.set_ylabel("images flagged (%)")
    ax.set_title("Flagged share against offset")
    ax.legend(fontsize=8)
    return _save(fig, path)


def concept_hits(path: Path, by_label: dict[str, HitCounts], offset: float) -> Path:
    """How often each of the checker's concepts fires at the configured offset."""
    fig = _figure(7.5, 4.2)
    ax = fig.add_subplot()
    n_concept = max((len(h.concept) for h in by_label.values()), default=0)
    n_special = max((len(h.special) for h in by_label.values()), default=0)
    names = [f"c{i}" for i in range(n_concept)] + [f"s{i}" for i in range(n_special)]
    width = 0.8 / max(1, len(by_label))
    colours = {"safe": SAFE_COLOUR, "unsafe": UNSAFE_COLOUR}
    for j, (label, hits) in enumerate(by_label.items()):
        counts = hits.concept + [0] * (n_concept - len(hits.concept))
        counts += hits.special + [0] * (n_special - len(hits.special))
        xs = [i - 0.4 + width * (j + 0.5) for i in range(len(names))]
        ax.bar(
            xs, counts, width=width, color=colours.get(label, ALL_COLOUR), label=f"{label} images"
        )
    ax.set_xticks(range(len(names)), names, fontsize=7)
    ax.set_xlabel("concept (c0-c16: the 17 concepts; s0-s2: special care)")
    ax.set_ylabel("images hitting it")
    ax.set_title(f"Per-concept hits at your offset {fmt_offset(offset)}")
    ax.set_ylim(bottom=0)
    ax.yaxis.get_major_locator().set_params(integer=True)
    if not any(c for h in by_label.values() for c in h.concept + h.special):
        ax.set_ylim(0, 1)
        ax.text(0.5, 0.5, "no concept fires at this offset", transform=ax.transAxes,
                ha="center", color="0.4")  # fmt: skip
    if by_label:
        ax.legend(fontsize=8)
    return _save(fig, path)
