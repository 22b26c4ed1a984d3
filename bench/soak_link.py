"""Soak the OBS link: hold idle links for an hour and count every reconnect (not in CI).

    python -m bench.soak_link                     # 60 min, system Python + venv clients
    python -m bench.soak_link --minutes 5 --obs   # shorter, plus the script in a real OBS
    python -m bench.soak_link --url ws://127.0.0.1:8765 --token-file PATH  # a running host

Each client is the OBS script's own link client (tests/link_client_probe.py) in its own
process, under each Python given with --python (default: /usr/bin/python3, which OBS on
Linux uses, when it has websocket-client, and this Python). Without --url the host is
the real LinkServer started here, and its log's connect lines are counted too. Prints a
progress line every --every seconds and a summary; exit code 1 when any link was lost.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.fixtures_obs import LINK_TOKEN, RunningLink
from tests.link_probes import SYSTEM_PYTHON, Probe, websocket_version


def default_pythons() -> list[str]:
    pythons = [SYSTEM_PYTHON] if websocket_version(SYSTEM_PYTHON) else []
    return pythons + [sys.executable]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--python", action="append", help="a client Python (repeatable)")
    ap.add_argument("--url", help="an already running host's link, e.g. ws://127.0.0.1:8765")
    ap.add_argument("--token-file", help="with --url: the host's link-token file")
    ap.add_argument("--obs", action="store_true", help="also run the script in a real OBS")
    ap.add_argument("--every", type=float, default=300.0, help="seconds between progress lines")
    args = ap.parse_args(argv)
    pythons = args.python or default_pythons()
    host: RunningLink | None = None
    if args.url:
        url = args.url
        if not args.token_file:
            ap.error("--url needs --token-file (the host prints where its token file is)")
        token = Path(args.token_file).read_text(encoding="utf-8").strip()
    else:
        host = RunningLink()
        url, token = host.url, LINK_TOKEN
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="soak-link-") as tmp, contextlib.ExitStack() as stack:
        probes = [
            Probe(python, url, Path(tmp) / f"client{i}", token) for i, python in enumerate(pythons)
        ]
        for probe in probes:
            stack.callback(probe.close)
        obs: Any = None
        if args.obs:
            from tests.obs_harness import run_obs

            obs = stack.enter_context(run_obs(Path(tmp) / "obs", {"host": url, "token": token}))
        if host is not None:
            stack.callback(host.close)
        for probe in probes:
            probe.wait(lambda e: e["type"] == "link" and e["connected"], timeout=30)
        versions = [p.ready["websocket"] for p in probes]
        extra = " + the script in OBS" if obs else ""
        print(f"soak: clients {versions}{extra} on {url} for {args.minutes:g} min", flush=True)
        deadline = started + args.minutes * 60
        next_report = time.monotonic() + args.every
        while time.monotonic() < deadline:
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
            if time.monotonic() >= next_report or time.monotonic() >= deadline:
                next_report += args.every
                print(report(probes, host, obs, started), flush=True)
        lost = [p.connects() - 1 for p in probes]
        obs_connects = obs.log().count("[Chat Diffusion] connected to") if obs else 1
        host_extra = host.connects - len(probes) - (1 if obs else 0) if host else 0
    ok = not any(lost) and obs_connects == 1 and host_extra == 0
    print(f"soak: {'PASS' if ok else 'FAIL'}: reconnects per client {lost}, "
          f"OBS reconnects {obs_connects - 1 if obs else '-'}, "
          f"host's extra connects {host_extra if host else '-'}")  # fmt: skip
    return 0 if ok else 1


def report(probes: list[Probe], host: RunningLink | None, obs: Any, started: float) -> str:
    minutes = (time.monotonic() - started) / 60
    clients = ", ".join(
        f"{p.ready['websocket']}: {p.connects() - 1} reconnects" for p in probes
    )  # fmt: skip
    line = f"soak: {minutes:5.1f} min  {clients}"
    if obs is not None:
        line += f"  OBS: {obs.log().count('[Chat Diffusion] connected to') - 1} reconnects"
    if host is not None:
        line += f"  host connects: {host.connects}"
    return line


if __name__ == "__main__":
    sys.exit(main())
