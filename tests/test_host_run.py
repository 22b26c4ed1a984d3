"""`generator-host run` against the local Twitch-dialect server, as a streamer starts it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.twitch_server import TwitchServer

pytestmark = pytest.mark.model

SECRET = "oauth:refused-secret-4711"


def test_refused_login_ends_with_a_clear_message_and_a_nonzero_exit(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    server = TwitchServer("streamer", refuse_login="auth").start()
    try:
        config = tmp_path / "config.toml"
        config.write_text(
            "[twitch]\n"
            'channel = "streamer"\n'
            'host = "127.0.0.1"\n'
            f"port = {server.port}\n"
            "tls = false\n"
            "[model]\n"
            f'model = "{tiny_model_dir}"\n'
            'device = "cpu"\n'
            "warmup = false\n"
        )
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "generator_host",
                "run",
                "--config",
                str(config),
                "--data-dir",
                str(tmp_path / "data"),
                "--link-port",
                "0",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "CHAT_DIFFUSION_TWITCH_TOKEN": SECRET, "HF_HUB_OFFLINE": "1"},
        )
    finally:
        server.stop()
    assert result.returncode == 3, result.stdout + result.stderr
    assert "Twitch login failed" in result.stderr
    assert "token" in result.stderr.lower()
    assert SECRET not in result.stdout + result.stderr
    assert SECRET.removeprefix("oauth:") not in result.stdout + result.stderr
