"""How fast a newly held picture appears on the review page (the issue's target: 1 s).

The whole host runs in this process (tiny model, every tile flagged, hold mode, the real
IRC adapter on the local Twitch-dialect server, the real review server), and Debian's
headless Chromium has the page open. Each round a viewer asks in chat; the clock starts
when the host hands the finished, held picture to the show (GenerationFinished: "held in
the host") and stops when the page's first blurred tile of it has loaded (the <img>'s
load event, on the same machine clock). Generation time is not part of the figure.

Run: `python -m bench.bench_review [--quick]`; `run(quick)` returns one row.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TIMEOUT = 120.0  # seconds for one round (generation included) before it counts as missed


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def run(quick: bool = False) -> list[dict[str, Any]]:
    """10 pictures when quick, else 30, one after the other."""
    repo = Path(__file__).resolve().parent.parent
    if str(repo) not in sys.path:
        sys.path.insert(0, str(repo))
    from generator_host.core import show as show_mod
    from generator_host.engine.tiny_model import build_tiny_model
    from tests.fixtures_review import ReviewHost, browser, chromium_missing
    from tests.twitch_server import TwitchServer

    missing = chromium_missing()
    if missing:
        raise RuntimeError(f"cannot benchmark the review page: {missing}")
    n = 10 if quick else 30
    held_at: dict[int, float] = {}
    latencies: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-review-") as tmp:
        root = Path(tmp)
        model = build_tiny_model(root / "tiny-sd")
        chat = TwitchServer("streamer").start()
        host = ReviewHost(root / "host", model, chat.port, grid=4)
        feed = host.host.feed

        def timed_feed(event: Any) -> None:
            if isinstance(event, show_mod.GenerationFinished) and event.entry.outcome == "held":
                held_at[event.entry.id] = time.time()
            feed(event)

        host.host.feed = timed_feed  # type: ignore[method-assign]
        driver = browser(root / "chromium")
        try:
            chat.wait_for(lambda: bool(chat.sent("JOIN")), 30)
            driver.get(host.url)
            for i in range(n):
                before = set(held_at)
                chat.privmsg(f"viewer{i % 5}", f"!generate picture {i}")
                deadline = time.monotonic() + TIMEOUT
                seen = None
                while time.monotonic() < deadline and seen is None:
                    new = [e for e in held_at if e not in before]
                    if new:
                        seen = driver.execute_script(
                            "const i = document.querySelector(arguments[0]);"
                            "return i && i.dataset.loaded ? Number(i.dataset.loaded) : null;",
                            f'[data-tile="{new[0]}/1"] img',
                        )
                        if seen is not None:
                            latencies.append(seen / 1000.0 - held_at[new[0]])
                    time.sleep(0.01)
                if seen is None:
                    latencies.append(math.inf)
        finally:
            driver.quit()
            host.stop()
            chat.stop()
    shown = [x * 1000 for x in latencies if math.isfinite(x)]
    return [
        {
            "name": "review_page_held_to_visible",
            "method": "held in the host -> first blurred tile loaded on the review page",
            "pictures": len(latencies),
            "shown": len(shown),
            "median_ms": round(statistics.median(shown), 1) if shown else None,
            "p95_ms": round(_percentile(shown, 0.95), 1) if shown else None,
            "max_ms": round(max(shown), 1) if shown else None,
            "target": "< 1000 ms",
        }
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10 pictures, not 30")
    args = parser.parse_args(argv)
    (row,) = run(quick=args.quick)
    print(
        f"{row['method']}: median {row['median_ms']} ms, p95 {row['p95_ms']} ms, "
        f"max {row['max_ms']} ms ({row['shown']}/{row['pictures']} shown)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
