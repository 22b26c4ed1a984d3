"""The OBS link over a streamer's evening: idle for minutes, a host that dies or freezes,
buttons pressed while the link is down.

The script's own link client runs as OBS would run it: under the system Python with
Debian's websocket-client (python3-websocket, 1.2.3 on Debian 12; what OBS on Linux
uses), under the venv's newest websocket-client, and inside a real OBS. The host is the
real LinkServer. Reconnects are counted where a streamer sees them: the host's
"OBS script connected" lines, the client's status changes, the status text in OBS.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures_obs import LINK_TOKEN, RunningLink
from tests.link_probes import SYSTEM_PYTHON, HostProcess, Probe, require_system_python
from tests.obs_harness import COLLECTION, STATUS, free_port, obs_missing, run_obs, wait_for
from tests.requirements import require

IDLE_SECONDS = 90.0  # the host pings every 20 s: the old client dropped every ~25 s


@pytest.fixture
def probes() -> Iterator[list[Probe]]:
    started: list[Probe] = []
    yield started
    for probe in started:
        probe.close()


# ---- idle: one link held, in every client OBS may use -------------------------------------


@pytest.mark.slow
@pytest.mark.obs
def test_an_idle_link_holds_without_a_reconnect(tmp_path: Path, probes: list[Probe]) -> None:
    """90 s of nothing happening: the system Python's websocket-client, the newest one and
    the script in a real OBS each keep their one link (run side by side: one wait)."""
    system_version = require_system_python()
    require(not obs_missing(), obs_missing())
    host = RunningLink()
    try:
        probes.append(Probe(SYSTEM_PYTHON, host.url, tmp_path / "system"))
        probes.append(Probe(sys.executable, host.url, tmp_path / "venv"))
        with run_obs(tmp_path / "obs", {"host": host.url, "token": LINK_TOKEN}) as obs:
            for probe in probes:
                probe.wait(lambda e: e["type"] == "link" and e["connected"], timeout=20)
            wait_for(lambda: obs.input_settings(STATUS)["text"] == "idle", timeout=20)
            wait_for(lambda: host.connects == 3, what="three links")
            texts: set[str] = set()
            started = time.monotonic()
            while time.monotonic() - started < IDLE_SECONDS:
                texts.add(obs.input_settings(STATUS)["text"])
                time.sleep(0.2)
            log = obs.log()
            connects = host.connects
            links = [probe.links() for probe in probes]  # before the host stops
        # OBS saved the script's settings on exit: the panel's Connection line was live
        scenes = tmp_path / f"obs/home/.config/obs-studio/basic/scenes/{COLLECTION}.json"
        saved = json.loads(scenes.read_text())["modules"]["scripts-tool"][0]["settings"]
    finally:
        host.close()
    versions = [p.ready["websocket"] for p in probes]
    print(f"\nFIGURES idle {IDLE_SECONDS:.0f} s: websocket-client {versions}, "
          f"host connects {connects}, OBS status texts {sorted(texts)}")  # fmt: skip
    assert versions[0] == system_version
    for version, changes in zip(versions, links, strict=True):
        assert [e["connected"] for e in changes] == [True], (version, changes)
    assert connects == 3, f"the host saw {connects} links for 3 clients"
    assert texts == {"idle"}, f"the status text in OBS showed {texts}"
    assert log.count("[Chat Diffusion] connected to") == 1, log[-3000:]
    assert saved.get("connection_info") == f"connected to {host.url}/", saved


# ---- a host that dies or freezes is noticed within a few seconds --------------------------


def dropped_within(probe: Probe, since: float, timeout: float) -> float:
    """Seconds from `since` until the client's status said it lost the host."""
    event = probe.wait(lambda e: e["type"] == "link" and not e["connected"] and e["t"] > since,
                       timeout=timeout)  # fmt: skip
    return float(event["t"]) - since


@pytest.mark.parametrize("how", ["kill -9", "frozen"])
def test_a_dead_host_is_noticed_within_a_few_seconds(
    how: str, tmp_path: Path, probes: list[Probe]
) -> None:
    """kill -9 closes the socket; a frozen host (SIGSTOP) keeps it open and answers
    nothing, which only the script's heartbeat can tell."""
    require_system_python()
    host = HostProcess(free_port())
    try:
        probes.append(Probe(SYSTEM_PYTHON, host.url, tmp_path / "system"))
        probes.append(Probe(sys.executable, host.url, tmp_path / "venv"))
        for probe in probes:
            probe.wait(lambda e: e["type"] == "link" and e["connected"], timeout=20)
        since = time.monotonic()
        host.signal(signal.SIGKILL if how == "kill -9" else signal.SIGSTOP)
        if how == "frozen":  # the worst moment to press: the link still looks up
            for probe in probes:
                probe.press("next")
        seconds = [dropped_within(p, since, timeout=20) for p in probes]
        print(f"\nFIGURES dead host ({how}) noticed after {[round(s, 2) for s in seconds]} s")
        assert max(seconds) < 8.0, seconds
        if how == "frozen":
            for probe in probes:  # never silently lost: reported, not sent twice later
                report = probe.wait(lambda e: e["type"] == "undelivered", timeout=5)
                assert "'next' may not have reached the host" in report["text"], report
            host.signal(signal.SIGCONT)  # and when it thaws, the link comes back by itself
            for probe in probes:
                wait_for(lambda: probe.connects() == 2, timeout=20, what="reconnect")  # noqa: B023
    finally:
        host.close()


# ---- the host's side of the keepalive ------------------------------------------------------


def test_the_host_drops_a_frozen_script_and_keeps_a_quiet_one(
    tmp_path: Path, probes: list[Probe], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The host's keepalive, sped up (20 s + 20 s in production): a frozen OBS (SIGSTOP)
    is dropped, the quiet one beside it answers every ping and stays; the frozen one
    thaws and comes back by itself."""
    from generator_host.edges import link as host_link

    require_system_python()
    monkeypatch.setattr(host_link, "PING_INTERVAL", 0.5)
    monkeypatch.setattr(host_link, "PING_TIMEOUT", 1.0)
    host = RunningLink()
    frozen: Probe | None = None
    try:
        probes.append(Probe(SYSTEM_PYTHON, host.url, tmp_path / "system"))
        probes.append(Probe(sys.executable, host.url, tmp_path / "venv"))
        for probe in probes:
            probe.wait(lambda e: e["type"] == "link" and e["connected"], timeout=20)
        frozen, quiet = probes
        frozen.proc.send_signal(signal.SIGSTOP)
        since = time.monotonic()
        wait_for(lambda: host.server.client_count == 1, timeout=10, what="frozen one dropped")
        print(f"\nFIGURES host dropped a frozen script after {time.monotonic() - since:.2f} s")
        time.sleep(3.0)  # six more host pings for the quiet one
        assert host.server.client_count == 1 and quiet.connects() == 1, quiet.links()
        frozen.proc.send_signal(signal.SIGCONT)
        wait_for(lambda: frozen.connects() == 2, timeout=20, what="the thawed one back")  # noqa: B023
        assert host.connects == 3
    finally:
        if frozen is not None:
            frozen.proc.send_signal(signal.SIGCONT)
        host.close()
