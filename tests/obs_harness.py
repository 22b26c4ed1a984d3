"""A real, isolated OBS Studio under Xvfb, for end-to-end tests and the benchmark.

    with run_obs(tmp_path, script_settings={"host": url, "token": token}) as obs:
        obs.input_settings("Chat Diffusion Image")["file"]
        obs.screenshot("Chat Diffusion Image")       # PIL image of what OBS renders
        obs.client.trigger_hotkey_by_name("chat_diffusion.approve")
        obs.stop()                                   # SIGINT: script_unload runs

Every run gets fresh HOME/XDG folders with a profile, a scene collection (an image
source, text sources, the script with its settings) and obs-websocket on a free port,
written by this module (facts: shared/notes/obs-headless.md). The script files are
copied beside the collection, so the images it writes stay in the test's folder.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SCRIPT_FILES = ("chat_diffusion.py", "chat_diffusion_link.py", "chat_diffusion_protocol.py")
PROFILE = "ChatDiffusionTest"
COLLECTION = "ChatDiffusionTest"
SCENE = "Scene"
IMAGE = "Chat Diffusion Image"
REQUESTER = "Chat Diffusion Requester"
PROMPT = "Chat Diffusion Prompt"
STATUS = "Chat Diffusion Status"
LEGACY_IMAGE = "Legacy Image"  # a file-watching image source, the original's way
OBS_29_0_2 = 486539266


def obs_missing() -> str:
    """Why a real OBS cannot run here ('' when it can)."""
    for tool in ("obs", "Xvfb"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install obs-studio xvfb)"
    try:
        import obsws_python  # noqa: F401
    except ImportError:
        return "obsws-python is not installed (pip install obsws-python)"
    return ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ObsConfig:
    """What the test OBS looks like; the defaults keep it light on a shared machine."""

    script_settings: dict[str, Any] = field(default_factory=dict)
    fps: int = 10
    width: int = 640
    height: int = 360
    with_script: bool = True
    legacy_file: str = ""  # when set, add LEGACY_IMAGE watching this file
    extra_collections: int = 0  # copies of the collection, for reload-by-switching
    script_file: str = ""  # when set, OBS loads this script (e.g. a probe) instead
    extra_scripts: list[tuple[str, dict[str, Any]]] = field(
        default_factory=list
    )  # (path, settings)
    # OBS 29 runs python timers on its video tick; nothing else to tune here


def _scene_collection(cfg: ObsConfig, name: str, script_path: Path) -> dict[str, Any]:
    inputs: list[dict[str, Any]] = [
        {"id": "image_source", "versioned_id": "image_source", "name": IMAGE,
         "settings": {"file": ""}},
    ]  # fmt: skip
    for text_name in (REQUESTER, PROMPT, STATUS):
        inputs.append(
            {
                "id": "text_ft2_source",
                "versioned_id": "text_ft2_source_v2",
                "name": text_name,
                "settings": {"text": "", "font": {"face": "Sans", "size": 24}},
            }
        )
    if cfg.legacy_file:
        inputs.append(
            {"id": "image_source", "versioned_id": "image_source", "name": LEGACY_IMAGE,
             "settings": {"file": cfg.legacy_file}}
        )  # fmt: skip
    items = []
    for i, src in enumerate(inputs):
        items.append(
            {"name": src["name"], "id": i + 1, "visible": True, "locked": False,
             "pos": {"x": 0.0, "y": 40.0 * i}, "scale": {"x": 1.0, "y": 1.0}, "rot": 0.0,
             "align": 5, "bounds_type": 0, "bounds": {"x": 0.0, "y": 0.0}}
        )  # fmt: skip
    scene = {
        "id": "scene",
        "versioned_id": "scene",
        "name": SCENE,
        "settings": {"items": items, "id_counter": len(items), "custom_size": False},
    }
    scripts = []
    if cfg.with_script:
        path = cfg.script_file or str(script_path)
        scripts.append({"path": path, "settings": dict(cfg.script_settings)})
    scripts += [{"path": path, "settings": dict(values)} for path, values in cfg.extra_scripts]
    return {
        "name": name,
        "current_scene": SCENE,
        "current_program_scene": SCENE,
        "scene_order": [{"name": SCENE}],
        "sources": [scene] + inputs,
        "transitions": [],
        "modules": {"scripts-tool": scripts},
    }


def write_config(root: Path, cfg: ObsConfig, ws_port: int) -> tuple[dict[str, str], Path]:
    """Write an isolated OBS configuration under `root`; returns (env, script path)."""
    home, run = root / "home", root / "run"
    conf = home / ".config" / "obs-studio"
    for d in (conf / "basic" / "profiles" / PROFILE, conf / "basic" / "scenes", run):
        d.mkdir(parents=True, exist_ok=True)
    run.chmod(0o700)
    script_dir = root / "obs_script"
    script_dir.mkdir(exist_ok=True)
    for name in SCRIPT_FILES:
        shutil.copy2(REPO / "obs_script" / name, script_dir / name)
    script_path = script_dir / "chat_diffusion.py"
    (conf / "global.ini").write_text(
        "[General]\nFirstRun=true\n"
        f"LastVersion={OBS_29_0_2}\nEnableAutoUpdates=false\n\n"
        f"[Basic]\nProfile={PROFILE}\nProfileDir={PROFILE}\n"
        f"SceneCollection={COLLECTION}\nSceneCollectionFile={COLLECTION}\n\n"
        "[BasicWindow]\nPreviewEnabled=false\n\n"
        "[OBSWebSocket]\nFirstLoad=false\nServerEnabled=true\n"
        f"ServerPort={ws_port}\nAlertsEnabled=false\nAuthRequired=false\nServerPassword=\n"
    )
    (conf / "basic" / "profiles" / PROFILE / "basic.ini").write_text(
        f"[General]\nName={PROFILE}\n\n[Video]\nBaseCX={cfg.width}\nBaseCY={cfg.height}\n"
        f"OutputCX={cfg.width}\nOutputCY={cfg.height}\nFPSType=0\nFPSCommon={cfg.fps}\n"
    )
    for i in range(cfg.extra_collections + 1):
        name = COLLECTION if i == 0 else f"{COLLECTION}{i + 1}"
        data = _scene_collection(cfg, name, script_path)
        (conf / "basic" / "scenes" / f"{name}.json").write_text(json.dumps(data, indent=1))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "DISPLAY", "WAYLAND"))}
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"), XDG_RUNTIME_DIR=str(run))
    env.pop("PYTHONPATH", None)  # OBS's Python must find websocket-client on its own
    return env, script_path


class ObsInstance:
    """A running OBS; `client` is an obsws-python ReqClient connected to it."""

    def __init__(self, root: Path, cfg: ObsConfig) -> None:
        self.root = root
        self.cfg = cfg
        self.ws_port = free_port()
        self.env, self.script_path = write_config(root, cfg, self.ws_port)
        self.image_dir = self.script_path.parent / "images"
        self.stdout_path = root / "obs-stdout.txt"
        self.xvfb: subprocess.Popen[bytes] | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.client: Any = None
        self.exit_code: int | None = None

    # --- lifecycle --------------------------------------------------------------------
    def start(self, timeout: float = 40.0) -> None:
        read_fd, write_fd = os.pipe()
        self.xvfb = subprocess.Popen(
            ["Xvfb", "-displayfd", str(write_fd), "-screen", "0", "1280x720x24", "-nolisten",
             "tcp"],
            pass_fds=(write_fd,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        os.close(write_fd)
        display = b""
        with os.fdopen(read_fd, "rb") as pipe:
            while not display.endswith(b"\n"):
                chunk = pipe.read(1)
                if not chunk:
                    raise RuntimeError("Xvfb did not report a display")
                display += chunk
        self.env["DISPLAY"] = ":" + display.decode().strip()
        with open(self.stdout_path, "wb") as out:
            self.proc = subprocess.Popen(
                ["obs", "--collection", COLLECTION, "--scene", SCENE, "--profile", PROFILE,
                 "--minimize-to-tray", "--multi", "--disable-updater",
                 "--disable-missing-files-check"],
                env=self.env, stdout=out, stderr=subprocess.STDOUT, cwd=self.root,
            )  # fmt: skip
        self._connect(timeout)

    def _connect(self, timeout: float) -> None:
        import logging

        import obsws_python

        logging.getLogger("obsws_python").setLevel(logging.CRITICAL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"OBS exited early ({self.proc.returncode}):\n{self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.ws_port), timeout=0.5):
                    pass
                self.client = obsws_python.ReqClient(
                    host="127.0.0.1", port=self.ws_port, password="", timeout=10
                )
                return
            except (OSError, ConnectionError, ValueError):
                time.sleep(0.1)
        raise RuntimeError(f"obs-websocket did not answer within {timeout} s:\n{self.log()}")

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGINT, as a user closing OBS: script_unload runs. Returns the exit code."""
        if self.client is not None:
            with contextlib.suppress(Exception):
                self.client.base_client.ws.close()
            self.client = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.exit_code = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.exit_code = self.proc.wait(5)
        elif self.proc is not None:
            self.exit_code = self.proc.returncode
        if self.xvfb is not None and self.xvfb.poll() is None:
            self.xvfb.terminate()
            try:
                self.xvfb.wait(5)
            except subprocess.TimeoutExpired:
                self.xvfb.kill()
                self.xvfb.wait(5)
        return self.exit_code

    # --- looking at it ----------------------------------------------------------------
    def log(self) -> str:
        """OBS's own log of this run (it also echoes it to stdout)."""
        logs = sorted((self.root / "home/.config/obs-studio/logs").glob("*.txt"))
        if logs:
            return logs[-1].read_text(errors="replace")
        try:
            return self.stdout_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_log(self, pattern: str, timeout: float = 10.0, count: int = 1) -> str:
        """Wait until `pattern` (a regex) appears `count` times in the log."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.log()
            if len(re.findall(pattern, text)) >= count:
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"{pattern!r} x{count} not in the OBS log:\n{text[-3000:]}")
            time.sleep(0.1)

    def input_settings(self, name: str) -> dict[str, Any]:
        return dict(self.client.get_input_settings(name).input_settings)

    def screenshot(self, name: str = IMAGE, width: int = 32, height: int = 32) -> Any:
        """What OBS renders for a source now, as a PIL image."""
        from PIL import Image

        data = self.client.get_source_screenshot(name, "png", width, height, -1).image_data
        raw = base64.b64decode(data.split(",", 1)[1])
        return Image.open(io.BytesIO(raw)).convert("RGB")

    def center_pixel(self, name: str = IMAGE) -> tuple[int, int, int]:
        img = self.screenshot(name, 8, 8)
        return img.getpixel((4, 4))


@contextlib.contextmanager
def run_obs(
    root: Path, script_settings: dict[str, Any] | None = None, **options: Any
) -> Iterator[ObsInstance]:
    """Start an isolated OBS under Xvfb; always stopped (SIGINT) on the way out."""
    cfg = ObsConfig(script_settings=dict(script_settings or {}), **options)
    root.mkdir(parents=True, exist_ok=True)
    instance = ObsInstance(root, cfg)
    try:
        instance.start()
        yield instance
    finally:
        instance.stop()


def wait_for(check: Callable[[], Any], timeout: float = 10.0, what: str = "") -> Any:
    """Poll `check` until it returns something truthy; OBS may be between states."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except Exception as exc:  # noqa: BLE001 - OBS may be between states
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or check}: last {last!r}")
