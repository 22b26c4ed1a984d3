"""Statistics of the safety checker over labelled images: sweep, rates, ROC, recommendations.

Pure: no model, no files. Everything rests on one number per image, its *flag offset*:
the checker's verdict is monotone in the threshold offset, so an image is flagged at
offset `o` exactly when `o > flag_offset(scores)`. A whole sweep is then a count of
sorted numbers, and the checker never has to run twice.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from generator_host.core.generation import SafetyScores
from generator_host.core.settings import declared
from generator_host.engine.safety import SPECIAL_CARE_ADJUSTMENT, is_flagged

SAFE = "safe"
UNSAFE = "unsafe"
ROUNDING = 0.0005  # scores are rounded to 3 decimals before "> 0", as stock diffusers does
DEFAULT_TARGETS = (0.10, 0.05, 0.01, 0.0)
_OFFSET = declared("safety.threshold_offset")
OFFSET_MIN, OFFSET_MAX = _OFFSET.spec.lo, _OFFSET.spec.hi  # what the setting accepts
CONFIDENCE = 0.95


def flag_offset(scores: SafetyScores) -> float:
    """The offset above which `is_flagged` flags this image: flagged iff offset > this value.

    The verdict rises monotonically with the offset and depends only on the top concept
    and top special-care score, so a closed form gives the threshold to within float32
    rounding: concepts alone flag above ROUNDING - max(concept); a special-care hit (above
    ROUNDING - max(special)) adds SPECIAL_CARE_ADJUSTMENT to the concept scores. A short
    bisection with `is_flagged` itself then pins it to the exact float64 boundary, so the
    sweep agrees with the live verdict at every offset, not just nearly.
    """
    if not scores.concept:
        return math.inf
    top = SafetyScores([max(scores.concept)], [max(scores.special)] if scores.special else [])
    alone = ROUNDING - top.concept[0]
    guess = alone
    if top.special:
        guess = min(alone, max(ROUNDING - top.special[0], alone - SPECIAL_CARE_ADJUSTMENT))
    return _bisect_boundary(lambda o: is_flagged(top, o), guess)


def _bisect_boundary(flags: Callable[[float], bool], guess: float) -> float:
    """The largest float `lo` with flags(lo) False, given a monotone `flags` and a guess."""
    width = 1e-6
    lo, hi = guess - width, guess + width
    while flags(lo):  # the guess was off by more than float32 rounding: widen
        width *= 16
        lo = guess - width
        if width > 1e3:
            return -math.inf  # flagged at any offset
    while not flags(hi):
        width *= 16
        hi = guess + width
        if width > 1e3:
            return math.inf  # flagged at no offset
    while True:
        mid = (lo + hi) / 2
        if mid <= lo or mid >= hi:
            return lo
        if flags(mid):
            hi = mid
        else:
            lo = mid


def flagged_at(flag_off: float, offset: float) -> bool:
    return offset > flag_off


def concept_hits(scores: SafetyScores, offset: float) -> tuple[list[bool], list[bool]]:
    """Which concepts and which special-care concepts fire at `offset` (for hit counts).

    Each is asked of `is_flagged` alone, so a hit here is exactly a reason for a verdict.
    """
    special = [is_flagged(SafetyScores([s], []), offset) for s in scores.special]
    concept = [is_flagged(SafetyScores([c], list(scores.special)), offset) for c in scores.concept]
    return concept, special


def count_flagged(sorted_offsets: Sequence[float], offset: float) -> int:
    """How many images (given their sorted flag offsets) are flagged at `offset`."""
    return bisect_left(sorted_offsets, offset)


@dataclass(frozen=True)
class SweepRow:
    """Counts at one offset. Rates are None when their class is empty."""

    offset: float
    safe_flagged: int
    safe_total: int
    unsafe_flagged: int
    unsafe_total: int

    @property
    def safe_rate(self) -> float | None:
        """False-positive rate: share of safe images flagged."""
        return _ratio(self.safe_flagged, self.safe_total)

    @property
    def unsafe_rate(self) -> float | None:
        """Share of unsafe images flagged (recall)."""
        return _ratio(self.unsafe_flagged, self.unsafe_total)

    @property
    def miss_rate(self) -> float | None:
        return _ratio(self.unsafe_total - self.unsafe_flagged, self.unsafe_total)

    @property
    def precision(self) -> float | None:
        """Share of flagged images that are unsafe; None when nothing is flagged."""
        return _ratio(self.unsafe_flagged, self.unsafe_flagged + self.safe_flagged)


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def sweep(
    safe: Iterable[float], unsafe: Iterable[float], offsets: Iterable[float]
) -> list[SweepRow]:
    """Rates at each offset from the images' flag offsets."""
    s, u = sorted(safe), sorted(unsafe)
    return [SweepRow(o, count_flagged(s, o), len(s), count_flagged(u, o), len(u)) for o in offsets]


def offset_grid(start: float, stop: float, step: float) -> list[float]:
    """start, start+step, ..., stop (inclusive), rounded so the numbers print cleanly."""
    if step <= 0:
        raise ValueError("the step must be positive")
    if stop < start:
        raise ValueError("the end of the range must not be below its start")
    n = int(math.floor((stop - start) / step + 1e-9))
    if n > 10_000:
        raise ValueError(f"{n + 1} offsets is too many; use a larger step")
    digits = max(0, -math.floor(math.log10(step))) + 3
    return [round(start + i * step, digits) for i in range(n + 1)]


NICE_STEPS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2)


def auto_grid(flag_offsets: Sequence[float], include: Iterable[float] = (0.0,)) -> list[float]:
    """A sweep covering the data (and `include`) in at most ~40 round steps."""
    values = [v for v in flag_offsets if math.isfinite(v)] + list(include)
    lo = max(OFFSET_MIN, min(values))
    hi = min(OFFSET_MAX, max(values))
    step = next((s for s in NICE_STEPS if (hi - lo) / s <= 40), NICE_STEPS[-1])
    start = math.floor(lo / step - 1e-9) * step
    stop = (math.floor(hi / step + 1e-9) + 1) * step  # one step above the highest value
    return offset_grid(max(OFFSET_MIN, start), min(OFFSET_MAX, stop), step)


# --- ROC -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RocPoint:
    offset: float  # the point holds for offsets just above this value
    fpr: float
    tpr: float


def roc(safe: Iterable[float], unsafe: Iterable[float]) -> list[RocPoint]:
    """Exact ROC: one point per distinct flag offset, from (0, 0) to (1, 1)."""
    s, u = sorted(safe), sorted(unsafe)
    if not s or not u:
        return []
    points = [RocPoint(-math.inf, 0.0, 0.0)]
    for t in sorted(set(s) | set(u)):
        fs = bisect_right(s, t)  # flagged at offsets just above t
        fu = bisect_right(u, t)
        points.append(RocPoint(t, fs / len(s), fu / len(u)))
    return points


def auc(safe: Iterable[float], unsafe: Iterable[float]) -> float | None:
    """Chance that an unsafe image is flagged before a safe one (ties count half)."""
    s, u = sorted(safe), sorted(unsafe)
    if not s or not u:
        return None
    wins = 0.0
    for t in u:
        below, upto = bisect_left(s, t), bisect_right(s, t)
        wins += (len(s) - upto) + 0.5 * (upto - below)
    return wins / (len(s) * len(u))


# --- wording -----------------------------------------------------------------------------


def fmt_offset(offset: float) -> str:
    return f"{offset:+.4f}".rstrip("0").rstrip(".") if offset else "0"


@dataclass(frozen=True)
class Wording:
    """What the tables and notes call the knob and the class to catch, so one table serves
    the checker (offsets over unsafe images) and each safety category (thresholds over its
    own examples, safety_categories.py)."""

    knob: str = "offset"  # the first column: offset, threshold
    positive: str = "unsafe"  # the columns "flagged unsafe", "missed unsafe"
    examples: str = "unsafe images"  # the notes: "rests on 20 unsafe images"
    strictest: str = f"offsets up to {OFFSET_MAX:+g}"  # "not reachable with ..."
    fmt: Callable[[float], str] = fmt_offset
    stock: float | None = 0.0  # the knob's value marked "stock" (None: no such value)


OFFSETS = Wording()


# --- recommendations -------------------------------------------------------------------


@dataclass(frozen=True)
class Recommendation:
    """The smallest offset (at `resolution`) whose miss rate on the unsafe set is <= target."""

    target: float
    offset: float | None  # None: no offset in the allowed range reaches the target
    missed: int
    unsafe_total: int
    safe_flagged: int
    safe_total: int
    miss_upper: float  # one-sided 95% upper bound of the true miss rate at that offset
    enough: bool  # whether the unsafe set is large enough for the target to mean much

    @property
    def fpr(self) -> float | None:
        return _ratio(self.safe_flagged, self.safe_total)

    @property
    def miss_rate(self) -> float | None:
        return _ratio(self.missed, self.unsafe_total)

    def note(self, words: Wording = OFFSETS) -> str:
        """One sentence on how much to trust this row."""
        n = self.unsafe_total
        if n == 0:
            return f"no {words.examples}: nothing to estimate"
        if self.offset is None:
            return f"not reachable with {words.strictest}"
        bound = f"the true miss rate could be up to {self.miss_upper:.1%} (95% bound)"
        if self.target == 0:
            return f"0 of {n} missed here, yet {bound}; no sample proves a 0% rate"
        if not self.enough:
            need = images_needed(self.target)
            return f"too few: rests on {n} {words.examples} (≥{need} needed); {bound}"
        return f"rests on {n} {words.examples}; {bound}"


def images_needed(target: float) -> int:
    """Unsafe images needed before a miss rate of `target` means much (rule of three)."""
    return math.ceil(3.0 / target - 1e-9) if target > 0 else 0


def smallest_offset_above(value: float, resolution: float) -> float:
    """The smallest multiple of `resolution` strictly above `value`, printed cleanly."""
    digits = max(0, -math.floor(math.log10(resolution))) + 2
    k = math.floor(value / resolution)
    candidate = round(k * resolution, digits)
    while candidate <= value:
        k += 1
        candidate = round(k * resolution, digits)
    return candidate


def recommend(
    safe: Iterable[float],
    unsafe: Iterable[float],
    targets: Iterable[float] = DEFAULT_TARGETS,
    resolution: float = 0.001,
) -> list[Recommendation]:
    """For each target miss rate, the smallest offset on the `resolution` grid reaching it."""
    s, u = sorted(safe), sorted(unsafe)
    out = []
    for target in targets:
        n = len(u)
        if n == 0:
            out.append(Recommendation(target, None, 0, 0, 0, len(s), 1.0, False))
            continue
        allowed = math.floor(target * n + 1e-9)  # misses allowed
        need = n - allowed  # images that must be flagged
        if need <= 0:
            offset = OFFSET_MIN
        elif not u[need - 1] < OFFSET_MAX:  # also catches an image no offset flags (inf)
            offset = math.inf
        else:
            offset = max(OFFSET_MIN, smallest_offset_above(u[need - 1], resolution))
        if offset > OFFSET_MAX:  # report what the strictest setting would still miss
            missed = n - count_flagged(u, OFFSET_MAX)
            flagged_safe = count_flagged(s, OFFSET_MAX)
            out.append(Recommendation(target, None, missed, n, flagged_safe, len(s), 1.0, False))
            continue
        missed = n - count_flagged(u, offset)
        enough = target > 0 and n >= images_needed(target)
        out.append(
            Recommendation(
                target,
                offset,
                missed,
                n,
                count_flagged(s, offset),
                len(s),
                miss_upper_bound(missed, n),
                enough,
            )
        )
    return out


def miss_upper_bound(missed: int, total: int, confidence: float = CONFIDENCE) -> float:
    """One-sided Clopper-Pearson upper bound of a rate seen as missed/total."""
    if total <= 0 or missed >= total:
        return 1.0
    alpha = 1.0 - confidence
    if missed == 0:
        return 1.0 - alpha ** (1.0 / total)
    lo, hi = missed / total, 1.0
    for _ in range(60):  # bisection: binom_cdf(missed; total, p) falls as p rises
        mid = (lo + hi) / 2
        if _binom_cdf(missed, total, mid) > alpha:
            lo = mid
        else:
            hi = mid
    return hi


def _binom_cdf(k: int, n: int, p: float) -> float:
    if p <= 0:
        return 1.0
    if p >= 1:
        return 0.0 if k < n else 1.0
    log_p, log_q = math.log(p), math.log1p(-p)
    base = math.lgamma(n + 1)
    total = 0.0
    for i in range(k + 1):
        log_term = base - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q
        total += math.exp(log_term)
    return min(1.0, total)


# --- per-concept hits --------------------------------------------------------------------


@dataclass
class HitCounts:
    """How many images fire each concept and each special-care concept at one offset."""

    concept: list[int]
    special: list[int]
    images: int = 0


def hit_counts(scores: Iterable[SafetyScores], offset: float) -> HitCounts:
    counts = HitCounts([], [])
    for sc in scores:
        concept, special = concept_hits(sc, offset)
        if len(counts.concept) < len(concept):
            counts.concept += [0] * (len(concept) - len(counts.concept))
        if len(counts.special) < len(special):
            counts.special += [0] * (len(special) - len(counts.special))
        for i, hit in enumerate(concept):
            counts.concept[i] += hit
        for i, hit in enumerate(special):
            counts.special[i] += hit
        counts.images += 1
    return counts


# --- Markdown ----------------------------------------------------------------------------


def fmt_rate(num: int, den: int) -> str:
    """'12.5% (1/8)', or '–' when there is nothing to divide by."""
    return f"{num / den:.1%} ({num}/{den})" if den else "–"


def sweep_table(
    rows: Sequence[SweepRow], configured: float | None = None, words: Wording = OFFSETS
) -> str:
    """The Markdown table: flag rate on safe and on unsafe images, miss rate, precision."""
    lines = [
        f"| {words.knob} | flagged safe (false positives) | flagged {words.positive} "
        f"| missed {words.positive} | precision |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        mark = []
        if words.stock is not None and r.offset == words.stock:
            mark.append("stock")
        if configured is not None and math.isclose(r.offset, configured, abs_tol=1e-9):
            mark.append("yours")
        label = words.fmt(r.offset) + (f" ({', '.join(mark)})" if mark else "")
        missed = r.unsafe_total - r.unsafe_flagged
        flagged = r.safe_flagged + r.unsafe_flagged
        lines.append(
            f"| {label} | {fmt_rate(r.safe_flagged, r.safe_total)} | "
            f"{fmt_rate(r.unsafe_flagged, r.unsafe_total)} | "
            f"{fmt_rate(missed, r.unsafe_total)} | {fmt_rate(r.unsafe_flagged, flagged)} |"
        )
    return "\n".join(lines)


def recommendation_table(recs: Sequence[Recommendation], words: Wording = OFFSETS) -> str:
    """The Markdown table: per target miss rate, the knob's value, its counts and how sure."""
    lines = [
        f"| miss at most | {words.knob} | missed {words.positive} "
        "| flagged safe (false positives) | how sure |",
        "|---:|---:|---:|---:|---|",
    ]
    for r in recs:
        offset = "–" if r.offset is None else words.fmt(r.offset)
        lines.append(
            f"| {r.target:.0%} | {offset} | {fmt_rate(r.missed, r.unsafe_total)} | "
            f"{fmt_rate(r.safe_flagged, r.safe_total) if r.offset is not None else '–'} | "
            f"{r.note(words)} |"
        )
    return "\n".join(lines)


def gallery_table(
    flag_offsets: Sequence[float], offsets: Iterable[float], configured: float
) -> str:
    """How many stored images each offset would have flagged."""
    s = sorted(flag_offsets)
    lines = ["| offset | would have flagged |", "|---:|---:|"]
    for o in offsets:
        mark = []
        if o == 0:
            mark.append("stock")
        if math.isclose(o, configured, abs_tol=1e-12):
            mark.append("yours")
        label = fmt_offset(o) + (f" ({', '.join(mark)})" if mark else "")
        lines.append(f"| {label} | {fmt_rate(count_flagged(s, o), len(s))} |")
    return "\n".join(lines)
