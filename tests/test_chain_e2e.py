"""The whole way, as on stream: a viewer's `!generate a red fox` in Twitch chat ends as a
new picture in a real OBS, with the requester and the prompt in their text sources.

Real parts throughout: the local Twitch-dialect IRC server, the real `generator-host run`
program with the tiny model, the real websocket link, and OBS 29 under Xvfb running the
script. Required in CI.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.obs_harness import IMAGE, PROMPT, REQUESTER, obs_missing, run_obs, wait_for
from tests.reliability_helpers import LINK_TOKEN, HostProcess, free_port, host_config
from tests.requirements import require
from tests.twitch_server import TwitchServer

pytestmark = [pytest.mark.obs, pytest.mark.model]


def test_generate_from_twitch_chat_reaches_obs(tmp_path: Path, tiny_model_dir: Path) -> None:
    require(not obs_missing(), obs_missing())
    server = TwitchServer("streamer").start()
    link_port = free_port()
    config = host_config(
        tmp_path / "config.toml",
        model_dir=tiny_model_dir,
        twitch_port=server.port,
        link_token=LINK_TOKEN,
    )
    host = HostProcess(config, tmp_path / "data", link_port)
    try:
        host.start()
        settings = {"host": f"ws://127.0.0.1:{link_port}", "token": LINK_TOKEN}
        with run_obs(tmp_path / "obs", settings) as obs:
            wait_for(lambda: "OBS script connected" in host.output, 30, "the script to connect")
            before_file = obs.input_settings(IMAGE).get("file", "")
            before_pixels = obs.screenshot().tobytes()

            server.privmsg("Viewer_Fox", "!generate a red fox", badges="subscriber/1")

            new_file = wait_for(
                lambda: (f := obs.input_settings(IMAGE).get("file", "")) != before_file and f,
                60,
                "the image source to get a new file",
            )
            assert Path(new_file).is_file()
            wait_for(
                lambda: obs.screenshot().tobytes() != before_pixels,
                10,
                "the new picture to be rendered",
            )
            assert obs.input_settings(REQUESTER)["text"].lower().endswith("viewer_fox")
            assert "a red fox" in obs.input_settings(PROMPT)["text"]
    finally:
        host.stop()
        server.stop()
    assert host.proc is not None and host.proc.returncode == 0, host.output[-3000:]
