"""The host owns live settings, in a real OBS: the streamer's config wins over the panel.

A streamer sets `approval_mode = "hold"` and a strict `threshold_offset` in the config and
never touches the OBS panel. The real `generator-host run` (tiny model, local Twitch
server) and OBS 29 under Xvfb with an untouched script: once the script connects, a
flagged picture still arrives held (OBS renders the placeholder, not the picture), and
the panel's own settings now say hold (what OBS saved for the script). Then a change in
the panel (made by a probe script exactly as OBS's properties view makes it) goes to the
host, is checked and logged there, and comes back: a refused value snaps back. Required
in CI.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.obs_harness import COLLECTION, IMAGE, obs_missing, run_obs, wait_for
from tests.reliability_helpers import LINK_TOKEN, HostProcess, free_port, host_config
from tests.requirements import require
from tests.twitch_server import TwitchServer

pytestmark = [pytest.mark.obs, pytest.mark.model]

PLACEHOLDER = (40, 40, 48)  # engine/grid.py's "awaiting approval" tile
PROBE = str(Path(__file__).resolve().parent / "obs_probe_panel.py")
PANEL_CHANGE = {"safety.approval_mode": "skip", "show.slideshow_seconds": 1.0}  # 1 s: refused


def near(pixel: tuple[int, int, int], color: tuple[int, int, int], tolerance: int = 10) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, color, strict=True))


def saved_script_settings(obs_root: Path) -> dict:
    scenes = obs_root / "home/.config/obs-studio/basic/scenes" / f"{COLLECTION}.json"
    return json.loads(scenes.read_text())["modules"]["scripts-tool"][0]["settings"]


def test_a_config_hold_survives_an_untouched_script_connecting(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    require(not obs_missing(), obs_missing())
    server = TwitchServer("streamer").start()
    link_port = free_port()
    config = host_config(
        tmp_path / "config.toml",
        model_dir=tiny_model_dir,
        twitch_port=server.port,
        link_token=LINK_TOKEN,
        safety={"approval_mode": "hold", "threshold_offset": 1.0},  # strictest: all flagged
    )
    host = HostProcess(config, tmp_path / "data", link_port)
    try:
        host.start()
        untouched = {"host": f"ws://127.0.0.1:{link_port}", "token": LINK_TOKEN}
        probe = [(PROBE, {"change": json.dumps(PANEL_CHANGE)})]
        with run_obs(tmp_path / "obs", untouched, extra_scripts=probe) as obs:
            wait_for(lambda: "OBS script connected" in host.output, 30, "the script to connect")
            obs.wait_log(r"the panel shows the host's live settings: .*approval_mode=hold")
            before = obs.input_settings(IMAGE).get("file", "")

            server.privmsg("Viewer_Fox", "!generate a red fox", badges="subscriber/1")

            wait_for(
                lambda: (f := obs.input_settings(IMAGE).get("file", "")) != before and f,
                90,
                "the held picture to reach OBS",
            )
            shot = wait_for(
                lambda: (
                    (s := obs.screenshot(width=32, height=32))
                    and all(near(s.getpixel(xy), PLACEHOLDER) for xy in ((1, 1), (30, 1), (1, 30)))
                    and s
                ),
                10,
                "OBS to render the placeholder",
            )
            corners = [shot.getpixel(xy) for xy in ((1, 1), (30, 1), (1, 30), (30, 30))]
            assert all(near(c, PLACEHOLDER) for c in corners), corners
            assert "held" in host.output
            assert "settings: approval_mode" not in host.output  # connecting changed nothing

            # The streamer changes the panel: the host decides, every panel follows.
            obs.client.trigger_hotkey_by_name("chat_diffusion_probe.panel_change")
            wait_for(
                lambda: "settings: approval_mode 'hold' -> 'skip' (from OBS panel)" in host.output,
                20,
                "the host to apply and log the panel's change",
            )
            assert "refused slideshow_seconds = 1.0 must be 0 (off) or 3 to 3600" in host.output
            obs.wait_log(r"host settings: approval_mode 'hold' -> 'skip' \(from OBS panel\)")
            obs.stop()
        panel = saved_script_settings(tmp_path / "obs")
        assert panel["safety.approval_mode"] == "skip"  # the host's answer
        assert panel["show.slideshow_seconds"] == 0.0  # refused: back to the host's value
        assert panel["safety.threshold_offset"] == 1.0  # the config's, untouched
    finally:
        host.stop()
        server.stop()
