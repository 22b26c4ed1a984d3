"""`generator-host demo` as a newcomer meets it: type a command, get a picture.

The real program runs in a subprocess with the tiny model; a websocket client plays the
OBS script, so this proves chat -> show -> engine -> gallery -> link without OBS.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import websocket
from PIL import Image

from obs_script import chat_diffusion_protocol as protocol

pytestmark = pytest.mark.model


def start_demo(tmp_path: Path, cache: Path) -> tuple[subprocess.Popen, list[str]]:
    env = {
        **os.environ,
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "XDG_CACHE_HOME": str(cache),
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "generator_host", "demo", "--link-port", "0", "--review-port", "0"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    lines: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))

    threading.Thread(target=pump, daemon=True).start()
    return proc, lines


def wait_for(lines: list[str], pattern: str, timeout: float) -> re.Match:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in list(lines):
            match = re.search(pattern, line)
            if match:
                return match
        time.sleep(0.05)
    raise AssertionError(f"no line matching {pattern!r} within {timeout}s:\n" + "\n".join(lines))


@pytest.fixture(scope="module")
def demo_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


def test_demo_types_a_command_and_the_picture_reaches_obs_and_the_gallery(
    tmp_path: Path, demo_cache: Path
) -> None:
    proc, lines = start_demo(tmp_path, demo_cache)
    try:
        port = int(wait_for(lines, r"OBS link listening on port (\d+)", 120).group(1))
        wait_for(lines, r"^Ready\.", 30)
        token_file = tmp_path / "data" / "chat-diffusion" / "link-token"
        token = token_file.read_text().strip()
        assert token and token not in "\n".join(lines), "the link token must not be printed"
        review = wait_for(lines, r"^Review page: (http://127\.0\.0\.1:\d+/)\?key=(\S+)$", 5)
        secret_file = tmp_path / "data" / "chat-diffusion" / "review-token"
        assert review.group(2) == secret_file.read_text().strip()
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(review.group(1), timeout=30)
        assert refused.value.code == 401
        with urllib.request.urlopen(review.group(0).split(" ", 2)[2], timeout=30) as page:
            assert b"Chat Diffusion review" in page.read()

        ws = websocket.create_connection(f"ws://127.0.0.1:{port}", timeout=30, suppress_origin=True)
        ws.send(json.dumps({"v": 1, "type": "hello", "token": token, "client": "test"}))
        first = protocol.decode(ws.recv(), "host")  # the host's live settings come first
        assert first.error == "" and first.message["type"] == "settings"
        state = protocol.decode(ws.recv(), "host")
        assert state.error == "" and state.message["type"] == "state"

        assert proc.stdin is not None
        proc.stdin.write("!generate a red fox\n")
        proc.stdin.flush()
        shown = None
        deadline = time.monotonic() + 60
        while shown is None and time.monotonic() < deadline:
            msg = protocol.decode(ws.recv(), "host").message
            if msg and msg["type"] == "show":
                shown = msg
        assert shown is not None, "\n".join(lines)
        assert shown["prompt"] == "a red fox"
        assert shown["requester"] == "streamer"
        assert shown["image"].startswith(b"\x89PNG")
        ws.close()

        # the terminal shows what the accepted command did, even without OBS
        wait_for(lines, r"^\[status\] generating for @streamer", 30)
        wait_for(lines, r"^\[screen\] picture \d+ by @streamer: a red fox$", 30)
        proc.stdin.write("!params\n")
        proc.stdin.flush()
        # the streamer (a moderator or more) also reads the host's peak memory
        wait_for(lines, r"\[bot\].*seed \d+.*; host peak memory \d+\.\d GB RAM\b", 30)
        proc.stdin.close()  # end of input: the demo finishes its queue and exits
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()

    pngs = sorted((tmp_path / "data" / "chat-diffusion" / "demo" / "gallery").rglob("*.png"))
    assert pngs, "the demo must save the picture in its gallery"
    with Image.open(pngs[-1]) as img:
        assert "a red fox" in img.info["parameters"]
        assert "Seed: " in img.info["parameters"]
    assert any("Gallery folder:" in line for line in lines), "the demo says where files go"
    # "Model ready" comes when it is: after the pipeline was loaded (and warmed up)
    loaded = next(i for i, line in enumerate(lines) if "model tiny-sd loaded" in line)
    ready = next(i for i, line in enumerate(lines) if line.startswith("Model ready in"))
    assert ready > loaded, "\n".join(lines)


def test_demo_second_start_is_quick(tmp_path: Path, demo_cache: Path) -> None:
    """The tiny model is built once into the cache; the next start reuses it."""
    for _ in range(2):
        started = time.monotonic()
        proc, lines = start_demo(tmp_path, demo_cache)
        try:
            wait_for(lines, r"^Ready\.", 120)
            ready = time.monotonic() - started
        finally:
            assert proc.stdin is not None
            proc.stdin.close()
            proc.wait(timeout=60)
    assert ready < 15, f"second start took {ready:.1f}s"
    assert any("Model ready" in line for line in lines)


@pytest.mark.parametrize("how", ["!terminate", "Ctrl-C"])
def test_demo_stops_at_once_while_the_terminal_is_still_open(
    tmp_path: Path, demo_cache: Path, how: str
) -> None:
    """Nobody presses Enter after !terminate or Ctrl-C: the demo must not wait for a line."""
    proc, lines = start_demo(tmp_path, demo_cache)
    try:
        wait_for(lines, r"^Ready\.", 120)
        assert proc.stdin is not None
        if how == "!terminate":
            proc.stdin.write("!terminate\n")
            proc.stdin.flush()
        else:
            proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=60)  # stdin stays open all the while (before: forever)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 0, "\n".join(lines)


def test_demo_shows_the_safety_filter_on_the_seed_the_readme_names(
    tmp_path: Path, demo_cache: Path
) -> None:
    """The README's `!generate a red fox seed=13` comes out blurred; seed 14 does not."""
    proc, lines = start_demo(tmp_path, demo_cache)
    try:
        port = int(wait_for(lines, r"OBS link listening on port (\d+)", 120).group(1))
        wait_for(lines, r"^Ready\.", 30)
        token = (tmp_path / "data" / "chat-diffusion" / "link-token").read_text().strip()
        ws = websocket.create_connection(f"ws://127.0.0.1:{port}", timeout=30, suppress_origin=True)
        ws.send(json.dumps({"v": 1, "type": "hello", "token": token, "client": "test"}))
        assert proc.stdin is not None
        proc.stdin.write("!generate a red fox seed=13\n!generate a red fox seed=14\n")
        proc.stdin.flush()
        shown: dict[int, dict] = {}
        deadline = time.monotonic() + 90
        while len(shown) < 2 and time.monotonic() < deadline:
            msg = protocol.decode(ws.recv(), "host").message
            if msg and msg["type"] == "show":
                shown[msg["entry_id"]] = msg
        ws.close()
        assert len(shown) == 2, "\n".join(lines)
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    screens = [line for line in lines if line.startswith("[screen] picture")]
    assert len(screens) == 2, "\n".join(lines)
    assert "BLURRED" in screens[0], "\n".join(lines)
    assert "BLURRED" not in screens[1], "\n".join(lines)
    # OBS got a blurred picture for seed 13 and the picture itself for seed 14
    gallery = tmp_path / "data" / "chat-diffusion" / "demo" / "gallery"
    originals = {}
    for png in gallery.rglob("*.png"):
        with Image.open(png) as img:
            seed = re.search(r"Seed: (\d+)", img.info["parameters"]).group(1)
            originals[seed] = np.asarray(img.convert("RGB"), dtype=np.int16)
    first, second = (shown[k] for k in sorted(shown))
    assert first["blurred"] and not second["blurred"]
    on_screen = []
    for msg in (first, second):
        with Image.open(io.BytesIO(msg["image"])) as img:
            on_screen.append(np.asarray(img.convert("RGB"), dtype=np.int16))
    assert set(originals) == {"13", "14"}
    assert np.abs(on_screen[0] - originals["13"]).mean() > 5, "seed 13 is shown unblurred"
    assert np.abs(on_screen[1] - originals["14"]).mean() < 1, "seed 14 is shown altered"
