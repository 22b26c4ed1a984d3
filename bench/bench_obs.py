"""How fast a finished image reaches the stream, this project's way vs the original's.

In one real OBS (30 fps, under Xvfb) with the script connected to the host's real link
server, each round makes a solid-colour PNG and delivers it both ways in turn (which way
goes first alternates; a random 0-1 s gap after each, so neither phase-locks with OBS's
1 s file check), each time starting the clock ("image ready in the host") and polling
OBS's own render of that way's source (GetSourceScreenshot) until the colour is there
("image source updated and rendered"). The ratio row divides the two medians:

- link: the host broadcasts `show`; the script writes a new file and sets the image
  source's `file` on its OBS timer;
- file watch (the original): the host overwrites stream.png in place; an image source
  watching that file picks it up by itself. Not shown within 5 s counts as missed.

Run: `python -m bench.bench_obs [--quick]`; `run(quick)` returns one dict per method,
then the ratio.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

FPS = 30
TIMEOUT = 5.0


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def _colors(n: int, seed: int) -> list[tuple[int, int, int]]:
    """Distinct colours, far apart from the previous one so a match is unambiguous."""
    rng = random.Random(seed)
    out: list[tuple[int, int, int]] = []
    while len(out) < n:
        c = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        if not out or sum(abs(a - b) for a, b in zip(c, out[-1], strict=True)) > 150:
            out.append(c)
    return out


def _close(pixel: tuple[int, int, int], color: tuple[int, int, int]) -> bool:
    return all(abs(a - b) <= 12 for a, b in zip(pixel, color, strict=True))


def _time_until_shown(obs: Any, source: str, color: tuple[int, int, int], t0: float) -> float:
    """Seconds from t0 until OBS renders `color` on `source`; math.inf when never."""
    while True:
        now = time.perf_counter()
        if now - t0 > TIMEOUT:
            return math.inf
        if _close(obs.center_pixel(source), color):
            return time.perf_counter() - t0


def _summary(method: str, latencies: list[float], extra: dict[str, Any]) -> dict[str, Any]:
    shown = [x * 1000 for x in latencies if math.isfinite(x)]
    return {
        "name": "obs_image_update",
        "method": method,
        "images": len(latencies),
        "shown": len(shown),
        "missed": len(latencies) - len(shown),
        "median_ms": round(statistics.median(shown), 1) if shown else None,
        "p95_ms": round(_percentile(shown, 0.95), 1) if shown else None,
        "max_ms": round(max(shown), 1) if shown else None,
        "fps": FPS,
        **extra,
    }


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Both ways in the same OBS, interleaved per image; 10 images when quick, else 50."""
    repo = Path(__file__).resolve().parent.parent
    if str(repo) not in sys.path:
        sys.path.insert(0, str(repo))
    from obs_script import chat_diffusion_protocol as p
    from tests.fixtures_obs import LINK_TOKEN, RunningLink, make_png
    from tests.obs_harness import IMAGE, LEGACY_IMAGE, obs_missing, run_obs

    missing = obs_missing()
    if missing:
        raise RuntimeError(f"cannot benchmark OBS: {missing}")
    n = 10 if quick else 50
    rng = random.Random(1)
    host = RunningLink()
    with tempfile.TemporaryDirectory(prefix="bench-obs-") as tmp:
        root = Path(tmp)
        legacy = root / "legacy" / "stream.png"
        legacy.parent.mkdir()
        legacy.write_bytes(make_png((0, 0, 0), 64))
        settings = {"host": host.url, "token": LINK_TOKEN}
        try:
            with run_obs(root / "obs", settings, fps=FPS, legacy_file=str(legacy)) as obs:
                host.wait_connected()
                shot = []
                for _ in range(10):
                    t = time.perf_counter()
                    obs.center_pixel(IMAGE)
                    shot.append((time.perf_counter() - t) * 1000)
                poll = {"screenshot_poll_ms": round(statistics.median(shot), 1)}
                link_times: list[float] = []
                file_times: list[float] = []
                for i, color in enumerate(_colors(n, seed=2)):
                    png = make_png(color, 64)  # one image, delivered both ways in turn
                    link_first = i % 2 == 0  # alternate which way goes first
                    for method in ("link", "file") if link_first else ("file", "link"):
                        t0 = time.perf_counter()
                        if method == "link":
                            host.broadcast(p.make_show(i + 1, png, "bench", f"image {i}"))
                            link_times.append(_time_until_shown(obs, IMAGE, color, t0))
                        else:
                            with open(legacy, "wb") as f:  # the original: overwrite in place
                                f.write(png)
                            file_times.append(_time_until_shown(obs, LEGACY_IMAGE, color, t0))
                        # a random gap: no phase-lock to OBS's tick or its 1 s file check
                        time.sleep(rng.uniform(0.0, 1.0))
        finally:
            host.close()
    link = _summary("link: new file + set image source (this project)", link_times, poll)
    watch = _summary("file watch: overwrite stream.png (original)", file_times, poll)
    ratio = None
    if link["median_ms"] and watch["median_ms"] is not None:
        ratio = round(watch["median_ms"] / link["median_ms"], 1)
    return [
        link,
        watch,
        {
            "name": "file watch / link, median time to screen",
            "value": ratio,
            "unit": "x",
            "how": "the same images, each delivered both ways in turn (which way first "
            "alternates), in one OBS session, random 0-1 s gaps",
        },
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10 images per method, not 50")
    args = parser.parse_args(argv)
    results = run(quick=args.quick)
    print(f"Image ready in the host -> rendered by OBS ({FPS} fps, same OBS, one run)")
    print(f"{'method':<52} {'shown':>7} {'median':>9} {'p95':>9} {'max':>9}")
    for r in results[:2]:

        def ms(v: float | None) -> str:
            return "-" if v is None else f"{v:.0f} ms"

        shown = f"{r['shown']}/{r['images']}"
        print(
            f"{r['method']:<52} {shown:>7} {ms(r['median_ms']):>9} "
            f"{ms(r['p95_ms']):>9} {ms(r['max_ms']):>9}"
        )
    print(f"{results[2]['name']}: {results[2]['value']}x ({results[2]['how']})")
    print(f"(polling resolution: one screenshot takes ~{results[0]['screenshot_poll_ms']} ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
