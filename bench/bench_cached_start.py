"""Time to "Ready." of `generator-host run` from a complete model cache, per network state.

    python -m bench.bench_cached_start [--repeats N]

A first start downloads the tiny sd-turbo-shaped model and the checker from the local hub
(tests/fake_hub.py) into a temp HF_HOME; then starts from that cache are timed, from
process start to the "Ready." line, with HF_ENDPOINT pointing at: nothing (connection
refused: the network is down), a black hole (connects never complete: packets dropped),
a hub that accepts and never answers, and with HF_HUB_OFFLINE=1 (no network by request:
the reference). The states are interleaved, so a busy machine slows all alike. Then, in
this process, the part of the start that could depend on the network, `hub.fetch` of the
model and the checker from that cache, is timed per network state (the rest of a start
is imports, loading and warm-up, the same with or without a network). Prints Markdown
tables (docs/benchmarks.md, "Start from a complete cache"). `--fetch-only` skips the
process starts.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from tests.fake_hub import BlackHole, FakeHub, HostRun, build_repos
from tests.twitch_server import TwitchServer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--fetch-only", action="store_true", help="only the in-process part")
    args = parser.parse_args()

    from generator_host.engine.tiny_model import build_tiny_model

    with tempfile.TemporaryDirectory(prefix="bench-cached-start-") as tmp:
        root = Path(tmp)
        repos = build_repos(build_tiny_model(root / "tiny"), root / "repos")
        hub = FakeHub(repos).start()
        hanging = FakeHub({}).start()
        hanging.mode = "hang"
        hole = BlackHole()
        twitch = TwitchServer("streamer").start()
        home = root / "home"
        home.mkdir()
        states = {
            "network down (connection refused)": ("http://127.0.0.1:9", {}),
            "packets dropped (connect never completes)": (hole.url, {}),
            "hub hangs (accepts, never answers)": (hanging.url, {}),
            "HF_HUB_OFFLINE=1 (reference)": (hub.url, {"HF_HUB_OFFLINE": "1"}),
        }
        times: dict[str, list[float]] = {name: [] for name in states}
        first_ready = 0.0
        try:
            first = HostRun(home, hub.url, twitch)
            first_ready = first.wait_ready(600)
            first.stop()
            for _ in range(0 if args.fetch_only else args.repeats):
                for name, (endpoint, env) in states.items():
                    run = HostRun(home, endpoint, twitch, env=env)
                    times[name].append(run.wait_ready(600))
                    run.stop()
            fetch_ms = _time_fetches(home, states)
            calls = len(hanging.requests)
        finally:
            twitch.stop()
            hole.close()
            hanging.stop()
            hub.stop()

    if not args.fetch_only:
        _print_starts(first_ready, times)
    print("\n| network at start | hub.fetch of model + checker from the cache, median | runs |")
    print("|---|---|---|")
    for name, values in fetch_ms.items():
        print(f"| {name} | {statistics.median(values):.2f} ms | {len(values)} |")
    print(f"\nrequests the hanging hub received: {calls}")


def _time_fetches(
    home: Path, states: dict[str, tuple[str, dict[str, str]]]
) -> dict[str, list[float]]:
    """hub.fetch as Engine.load calls it (default settings), against each network state."""
    import os
    import time

    from huggingface_hub import constants

    from generator_host.engine import hub
    from tests.fake_hub import CHECKER, SD_TURBO

    os.environ["XDG_CACHE_HOME"] = str(home / "xdg-cache")  # where the host keeps its records
    out: dict[str, list[float]] = {}
    for name, (endpoint, env) in states.items():
        constants.HF_HUB_OFFLINE = env.get("HF_HUB_OFFLINE") == "1"
        hub.configure(hub.HubOptions(endpoint=endpoint, cache=str(home / "hf" / "hub")))
        out[name] = []
        for _ in range(20):
            started = time.perf_counter()
            hub.fetch(SD_TURBO)
            hub.fetch(CHECKER, label="safety checker")
            out[name].append((time.perf_counter() - started) * 1000)
    return out


def _print_starts(first_ready: float, times: dict[str, list[float]]) -> None:
    print("| network at start | time to Ready., median | runs |")
    print("|---|---|---|")
    print(f"| first start (download from the local hub) | {first_ready:.1f} s | 1 |")
    for name, values in times.items():
        runs = ", ".join(f"{v:.1f}" for v in values)
        print(f"| {name} | {statistics.median(values):.1f} s | {runs} |")


if __name__ == "__main__":
    main()
