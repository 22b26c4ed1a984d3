"""The script inside a real OBS 29 (under Xvfb), fed by the host's real link server.

What a streamer would see: the picture on the image source changes (OBS's own render,
read back with GetSourceScreenshot), requester and prompt appear, a hotkey reaches the
host, a restarted host brings the picture back, closing OBS unloads the script cleanly,
and reloading the script many times leaves nothing behind. Required in CI.
"""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from obs_script import chat_diffusion_protocol as p
from tests.fixtures_obs import LINK_TOKEN, RunningLink, make_png
from tests.obs_harness import (
    IMAGE,
    PROMPT,
    REQUESTER,
    STATUS,
    ObsInstance,
    obs_missing,
    run_obs,
    wait_for,
)
from tests.requirements import require

pytestmark = pytest.mark.obs

RED, GREEN, BLUE = (230, 20, 20), (20, 200, 40), (30, 40, 220)


def close_to(pixel: tuple[int, int, int], color: tuple[int, int, int]) -> bool:
    return all(abs(a - b) <= 12 for a, b in zip(pixel, color, strict=True))


def leaks(log: str) -> int:
    found = re.findall(r"Number of memory leaks(?: at shutdown)?: (\d+)", log)
    return int(found[-1]) if found else -1


class Stage:
    """One OBS with the script and a fake host (the real LinkServer), shared by tests."""

    def __init__(self, obs: ObsInstance, host: RunningLink) -> None:
        self.obs, self.host = obs, host


@pytest.fixture(scope="module")
def stage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stage]:
    require(not obs_missing(), obs_missing())
    host = RunningLink()
    root = tmp_path_factory.mktemp("obs")
    try:
        with run_obs(root, {"host": host.url, "token": LINK_TOKEN}) as obs:
            s = Stage(obs, host)
            s.host.wait_connected()
            yield s
    finally:
        s.host.close()


def test_an_image_from_the_host_is_rendered_with_its_texts(stage: Stage) -> None:
    obs, host = stage.obs, stage.host
    files = []
    for entry_id, color in ((1, RED), (2, GREEN)):
        before = obs.input_settings(IMAGE).get("file", "")
        host.show(entry_id, make_png(color, 64), f"viewer{entry_id}", f"a {color} square")
        path = wait_for(
            lambda: (
                obs.input_settings(IMAGE).get("file") not in (before, None)  # noqa: B023
                and obs.input_settings(IMAGE)["file"]
            ),
            what="image file to change",
        )
        files.append(path)
        wait_for(lambda: close_to(obs.center_pixel(), color), what=f"{color} on screen")  # noqa: B023
        assert obs.input_settings(REQUESTER)["text"] == f"viewer{entry_id}"
        assert obs.input_settings(PROMPT)["text"] == f"a {color} square"
        assert Path(path).parent == obs.image_dir
    assert files[0] != files[1]
    host.broadcast(p.make_status("generating 1/4, 2 waiting", 1, 4, 2))
    wait_for(lambda: obs.input_settings(STATUS)["text"] == "generating 1/4, 2 waiting")


def test_the_approve_hotkey_reaches_the_host(stage: Stage) -> None:
    while not stage.host.received.empty():
        stage.host.received.get_nowait()
    stage.obs.client.trigger_hotkey_by_name("chat_diffusion.approve")
    assert stage.host.next_message("action", timeout=5)["action"] == "approve"
    stage.obs.client.trigger_hotkey_by_name("chat_diffusion.next")
    assert stage.host.next_message("action", timeout=5)["action"] == "next"


def test_a_restarted_host_brings_the_current_image_back(stage: Stage) -> None:
    obs = stage.obs
    port = stage.host.port
    stage.host.close()
    wait_for(lambda: "waiting for the host" in obs.input_settings(STATUS)["text"])
    stage.host = RunningLink(port=port)
    stage.host.state = [
        p.make_state(p.make_show(9, make_png(BLUE, 64), "carol", "back again"), None)
    ]
    wait_for(lambda: close_to(obs.center_pixel(), BLUE), timeout=15, what="blue after restart")
    assert obs.input_settings(PROMPT)["text"] == "back again"
    stage.host.wait_connected(timeout=5)


def test_closing_obs_unloads_the_script_cleanly(tmp_path: Path) -> None:
    require(not obs_missing(), obs_missing())
    host = RunningLink()
    try:
        with run_obs(tmp_path, {"host": host.url, "token": LINK_TOKEN}) as obs:
            host.wait_connected()
            time.sleep(1.0)  # OBS 29 may hang on exit when closed the instant it loaded
            obs.stop(timeout=30)  # a busy 2-core machine needs more than 15 s to close OBS
            log = obs.log()
    finally:
        host.close()
    assert re.search(r"script unloaded \(link thread stopped after \d+ ms\)", log), log[-2000:]
    # -1 (no leak line) means OBS was killed or its log changed: that must fail too.
    assert 0 <= leaks(log) <= 1, log[-2000:]  # 1 is OBS's own baseline with no script at all


def switch_collections(obs: ObsInstance, times: int, script: bool) -> None:
    for i in range(times):
        target = "ChatDiffusionTest2" if i % 2 == 0 else "ChatDiffusionTest"
        obs.client.set_current_scene_collection(target)
        if script:
            obs.wait_log(r"script loaded", count=i + 2, timeout=20)
        else:
            wait_for(lambda: obs.client.get_scene_collection_list().current_scene_collection_name
                     == target)  # noqa: B023  # fmt: skip


def shutdown_leaks(
    root: Path, settings: dict[str, Any] | None, host: RunningLink | None
) -> tuple[int, str]:
    """Start OBS, reload the script 20 times by switching collections, close it.

    Returns (leak count at shutdown, log). OBS 29.0.2 itself hangs on exit in about one
    run in four when it is closed right after a collection switch (measured with no
    script at all: 2 of 8 hung; with a 1 s pause before closing, 0 of 12). So it is given
    that second, and a run that hangs anyway is retried, since it says nothing about the
    script.
    """
    for attempt in range(3):
        script = settings is not None
        with run_obs(root / f"try{attempt}", settings, extra_collections=1,
                     with_script=script) as obs:  # fmt: skip
            if host is not None:
                host.wait_connected()
            switch_collections(obs, 20, script=script)
            if host is not None:
                host.show(3, make_png(GREEN, 64), "dave", "after reloads")
                wait_for(lambda: close_to(obs.center_pixel(), GREEN), what="image after reloads")  # noqa: B023
            time.sleep(1.0)  # let OBS settle after the last switch (see the docstring)
            code = obs.stop(timeout=10)
            log = obs.log()
        if code != -signal.SIGKILL:
            break
    return leaks(log), log


def test_reloading_twenty_times_leaves_no_thread_or_reference(tmp_path: Path) -> None:
    """Switching scene collections unloads and loads the script, as a reload does."""
    require(not obs_missing(), obs_missing())
    # OBS itself leaks one allocation per collection switch: measure that first.
    baseline, _ = shutdown_leaks(tmp_path / "baseline", None, None)
    assert baseline >= 0, "OBS with no script hung on exit three times: no baseline"
    host = RunningLink()
    try:
        count, log = shutdown_leaks(
            tmp_path / "script", {"host": host.url, "token": LINK_TOKEN}, host
        )
    finally:
        host.close()
    loads = re.findall(r"link threads left from earlier loads: (\d+)", log)
    unloads = re.findall(r"script unloaded \(link thread (\w+)", log)
    assert len(loads) == 21 and set(loads) == {"0"}, loads
    assert len(unloads) == 21 and set(unloads) == {"stopped"}, unloads
    assert 0 <= count <= baseline, (count, baseline)
