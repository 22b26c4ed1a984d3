"""Start-up failures as a newcomer meets them: the real CLI in a subprocess.

Each failure (the OBS link's port taken, a data folder that cannot be written, a model
that is not there, a bad TLS setting) must end in ONE clear line naming the setting or
flag that fixes it, a non-zero exit code and no traceback; and it must come before the
slow model load wherever it can.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest


def _run(tmp_path: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
        "CHAT_DIFFUSION_TWITCH_TOKEN": "sekrit-token-123",
    }
    return subprocess.run(
        [sys.executable, "-m", "generator_host", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def _one_clear_line(result: subprocess.CompletedProcess[str]) -> str:
    """The failure's message: exactly one line on stderr, no traceback, non-zero exit."""
    assert result.returncode != 0, result.stdout + result.stderr
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    problem = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(problem) == 1, result.stderr
    return problem[0]


@pytest.fixture
def taken_port() -> tuple[socket.socket, int]:
    """A port really in use: a listening socket on 127.0.0.1, closed after the test."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    yield sock, sock.getsockname()[1]
    sock.close()


def test_demo_with_the_link_port_taken_says_which_flag_frees_it(tmp_path: Path, taken_port):
    _, port = taken_port
    result = _run(tmp_path, "demo", "--link-port", str(port))
    line = _one_clear_line(result)
    assert f"port {port}" in line and "already in use" in line, line
    assert "--link-port" in line and "[link] port" in line, line
    # found before the model was built or loaded (that takes seconds to minutes)
    assert "Model ready" not in result.stdout
    assert not (tmp_path / "cache" / "chat-diffusion" / "tiny-sd").exists()


def test_run_with_the_link_port_taken_fails_before_loading_the_model(tmp_path: Path, taken_port):
    _, port = taken_port
    config = tmp_path / "config.toml"
    config.write_text(f'[twitch]\nchannel = "streamer"\n[link]\nport = {port}\n')
    line = _one_clear_line(_run(tmp_path, "run", "--config", str(config)))
    assert f"port {port}" in line and "--link-port" in line, line


def test_a_data_folder_that_cannot_be_written_names_data_dir(tmp_path: Path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = _run(tmp_path, "demo", "--link-port", "0", "--data-dir", str(blocker / "data"))
    line = _one_clear_line(result)
    assert str(blocker / "data") in line and "--data-dir" in line, line


def test_a_gallery_folder_that_cannot_be_written_names_the_setting(tmp_path: Path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    config = tmp_path / "config.toml"
    config.write_text(
        f'[twitch]\nchannel = "streamer"\n[gallery]\nfolder = "{blocker / "gallery"}"\n'
    )
    line = _one_clear_line(_run(tmp_path, "run", "--config", str(config), "--link-port", "0"))
    assert "[gallery] folder" in line, line


def test_a_missing_model_names_the_model_setting(tmp_path: Path):
    config = tmp_path / "config.toml"
    missing = tmp_path / "no-such-model"
    config.write_text(f'[twitch]\nchannel = "streamer"\n[model]\nmodel = "{missing}"\n')
    result = _run(tmp_path, "run", "--config", str(config), "--link-port", "0")
    line = _one_clear_line(result)
    assert str(missing) in line and "[model] model" in line and str(config) in line, line
    assert "Model ready" not in result.stdout


def test_a_missing_tls_certificate_names_the_tls_settings(tmp_path: Path):
    config = tmp_path / "config.toml"
    config.write_text(
        '[twitch]\nchannel = "streamer"\n'
        f'[link]\ntls_cert = "{tmp_path / "cert.pem"}"\ntls_key = "{tmp_path / "key.pem"}"\n'
    )
    line = _one_clear_line(_run(tmp_path, "run", "--config", str(config), "--link-port", "0"))
    assert "tls_cert" in line and "tls_key" in line, line


def test_ctrl_c_while_the_host_is_still_importing_is_one_line_and_exit_130(tmp_path: Path):
    """Ctrl-C in the first second (torch and diffusers still importing) is one line."""
    import signal
    import time

    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "data"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "generator_host", "demo", "--link-port", "0"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, out + err
    assert "Traceback" not in out + err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Interrupted"), err
