"""Time to "Ready." of `generator-host run` from a complete model cache, per network state.

    python -m bench.bench_cached_start [--repeats N]

A first start downloads the tiny sd-turbo-shaped model and the checker from the local hub
(tests/fake_hub.py) into a temp HF_HOME; then starts from that cache are timed, from
process start to the "Ready." line, with HF_ENDPOINT pointing at: nothing (connection
refused: the network is down), a black hole (connects never complete: packets dropped),
a hub that accepts and never answers, and with HF_HUB_OFFLINE=1 (no network by request:
the reference). The states are interleaved, so a busy machine slows all alike. Prints a
Markdown table (docs/benchmarks.md, "Start from a complete cache").
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
        try:
            first = HostRun(home, hub.url, twitch)
            first_ready = first.wait_ready(600)
            first.stop()
            states = {
                "network down (connection refused)": ("http://127.0.0.1:9", {}),
                "packets dropped (connect never completes)": (hole.url, {}),
                "hub hangs (accepts, never answers)": (hanging.url, {}),
                "HF_HUB_OFFLINE=1 (reference)": (hub.url, {"HF_HUB_OFFLINE": "1"}),
            }
            times: dict[str, list[float]] = {name: [] for name in states}
            for _ in range(args.repeats):
                for name, (endpoint, env) in states.items():
                    run = HostRun(home, endpoint, twitch, env=env)
                    times[name].append(run.wait_ready(600))
                    run.stop()
            calls = len(hanging.requests)
        finally:
            twitch.stop()
            hole.close()
            hanging.stop()
            hub.stop()

    print("| network at start | time to Ready., median | runs |")
    print("|---|---|---|")
    print(f"| first start (download from the local hub) | {first_ready:.1f} s | 1 |")
    for name, values in times.items():
        runs = ", ".join(f"{v:.1f}" for v in values)
        print(f"| {name} | {statistics.median(values):.1f} s | {runs} |")
    print(f"\nrequests the hanging hub received: {calls}")


if __name__ == "__main__":
    main()
