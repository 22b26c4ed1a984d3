"""The OBS script finds the host's link token on the same computer by itself."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from generator_host.core.settings import data_dir
from generator_host.edges.link import load_or_create_token

SCRIPT_DIR = Path(__file__).resolve().parent.parent / "obs_script"


@pytest.fixture
def link_mod(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(SCRIPT_DIR))
    import chat_diffusion_link

    yield chat_diffusion_link
    sys.modules.pop("chat_diffusion_link", None)


def test_script_and_host_agree_on_the_token_file(
    link_mod, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert Path(link_mod.default_token_path()) == data_dir() / "link-token"
    token = load_or_create_token(data_dir() / "link-token")
    assert link_mod.read_local_token() == token


def test_token_paths_per_platform(link_mod) -> None:
    win = link_mod.default_token_path("win32", {"LOCALAPPDATA": r"C:\Users\a\AppData\Local"}, "h")
    assert win.endswith(os.path.join("chat-diffusion", "link-token"))
    assert win.startswith(r"C:\Users\a\AppData\Local")
    mac = link_mod.default_token_path("darwin", {}, "/Users/a")
    assert mac == "/Users/a/Library/Application Support/chat-diffusion/link-token"
    linux = link_mod.default_token_path("linux", {}, "/home/a")
    assert linux == "/home/a/.local/share/chat-diffusion/link-token"


def test_only_local_hosts_use_the_token_file(link_mod) -> None:
    assert link_mod.is_local_address("ws://127.0.0.1:8765")
    assert link_mod.is_local_address("localhost:9000")
    assert not link_mod.is_local_address("ws://192.0.2.7:8765")
    assert not link_mod.is_local_address("")


def test_a_missing_or_unreadable_token_file_gives_no_token(link_mod, tmp_path: Path) -> None:
    assert link_mod.read_local_token(str(tmp_path / "absent")) == ""
    bad = tmp_path / "bad"
    bad.write_bytes(b"\xff\xfe\x00garbage")
    assert link_mod.read_local_token(str(bad)) == ""


def test_a_flatpak_obs_finds_the_token_the_host_wrote_outside_the_sandbox(
    link_mod, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Flatpak OBS sets its own XDG_DATA_HOME (~/.var/app/<id>/data); the host, started
    from a shell, writes under ~/.local/share: the script tries both."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    host_file = data_dir() / "link-token"
    token = load_or_create_token(host_file)
    assert host_file.parent == tmp_path / ".local" / "share" / "chat-diffusion"
    sandbox = tmp_path / ".var" / "app" / "com.obsproject.Studio" / "data"
    monkeypatch.setenv("XDG_DATA_HOME", str(sandbox))
    assert link_mod.read_local_token() == token
    assert link_mod.default_token_path() == str(host_file)


def test_on_macos_the_host_ignores_xdg_so_obs_from_the_dock_finds_the_token(
    link_mod, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.setattr(sys, "platform", "darwin")
    from generator_host.core.settings import config_dir

    support = tmp_path / "Library" / "Application Support" / "chat-diffusion"
    assert data_dir() == support and config_dir() == support
    # what the script computes inside OBS, which has no XDG variables at all
    assert link_mod.token_paths("darwin", {}, str(tmp_path)) == [str(support / "link-token")]


def test_token_files_with_a_byte_order_mark_are_read(link_mod, tmp_path: Path) -> None:
    """Notepad's "UTF-8 with BOM" and PowerShell 5 start the file with U+FEFF."""
    path = tmp_path / "link-token"
    path.write_text("\ufeffsecret-token-123\r\n", encoding="utf-8")
    assert link_mod.read_local_token(str(path)) == "secret-token-123"
    assert load_or_create_token(path) == "secret-token-123"


def test_token_paths_try_the_environment_then_the_default(link_mod) -> None:
    env = {"XDG_DATA_HOME": "/x"}
    assert link_mod.token_paths("linux", env, "/home/a") == [
        "/x/chat-diffusion/link-token",
        "/home/a/.local/share/chat-diffusion/link-token",
    ]
    assert len(link_mod.token_paths("linux", {}, "/home/a")) == 1
