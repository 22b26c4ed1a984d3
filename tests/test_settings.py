"""The config file: a streamer's typo is reported by name and never stops the host."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from generator_host.core.config_template import TEMPLATE
from generator_host.core.settings import Settings, load_settings, settings_from_dict


def test_template_written_by_init_loads_without_problems(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(TEMPLATE)
    settings, problems = load_settings(path)
    assert problems == []
    assert settings.safety.approval_mode == "blur"
    assert settings.link.host == "127.0.0.1"


def test_template_mentions_every_setting() -> None:
    for section, values in Settings().__dict__.items():
        assert f"[{section}]" in TEMPLATE
        for key in values.__dict__:
            table = f"[{section}.{key}."  # a table of tables, e.g. [safety.categories.gore]
            assert f"{key} =" in TEMPLATE or table in TEMPLATE, f"[{section}] {key} missing"


def test_wrong_types_and_ranges_are_named_and_defaults_kept() -> None:
    raw = {
        "safety": {"threshold_offset": "high", "approval_mode": "explode"},
        "show": {"grid": 5},
        "model": {"max_steps": True},
        "nonsense": {"x": 1},
        "link": "not a table",
    }
    settings, problems = settings_from_dict(raw)
    text = "\n".join(problems)
    assert "[safety] threshold_offset" in text
    assert "[safety] approval_mode" in text
    assert "[show] grid" in text
    assert "[model] max_steps" in text
    assert "unknown section [nonsense]" in text
    assert "[link] must be a section" in text
    assert settings.safety.threshold_offset == 0.0
    assert settings.safety.approval_mode == "blur"
    assert settings.show.grid == 1
    assert settings.model.max_steps == 50


def test_broken_toml_gives_defaults_and_a_message(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes(b"[twitch\nchannel = \xff\xfe")
    settings, problems = load_settings(path)
    assert settings == Settings()
    assert len(problems) == 1 and "cannot read config" in problems[0]


def test_token_from_environment_wins(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[twitch]\ntoken = "oauth:fromfile"\n')
    monkeypatch.setenv("CHAT_DIFFUSION_TWITCH_TOKEN", "oauth:fromenv")
    settings, _ = load_settings(path)
    assert settings.twitch.token == "oauth:fromenv"


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "generator_host", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_every_subcommand_has_help() -> None:
    for sub in ("demo", "run", "init"):
        result = _cli(sub, "--help")
        assert result.returncode == 0, result.stderr
        assert "usage: generator-host" in result.stdout


def test_init_writes_a_private_commented_config(tmp_path: Path) -> None:
    path = tmp_path / "cfg" / "config.toml"
    result = _cli("init", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert str(path) in result.stdout
    assert path.read_text() == TEMPLATE
    if os.name == "posix":
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = _cli("init", "--config", str(path))
    assert "already exists" in again.stdout


def test_run_without_channel_explains_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(TEMPLATE)
    result = _cli("run", "--config", str(path), env={"CHAT_DIFFUSION_TWITCH_TOKEN": ""})
    assert result.returncode == 2
    assert "No Twitch channel configured" in result.stderr


def test_tokens_never_show_in_a_repr_of_the_settings() -> None:
    """A settings object in a log line or a traceback must not carry the secrets along."""
    settings = Settings()
    settings.twitch.token = "twitch-secret-123"
    settings.link.token = "link-secret-456"
    shown = repr(settings)
    assert "twitch-secret-123" not in shown and "link-secret-456" not in shown
    assert "channel=" in shown  # the rest still shows


def test_a_config_saved_with_a_byte_order_mark_loads(tmp_path: Path) -> None:
    """Notepad's "UTF-8 with BOM" and PowerShell 5's Out-File start the file with U+FEFF,
    which TOML does not allow: it must not cost the streamer their settings."""
    path = tmp_path / "config.toml"
    path.write_text('\ufeff[twitch]\r\nchannel = "rita"\r\n', encoding="utf-8")
    settings, problems = load_settings(path)
    assert problems == []
    assert settings.twitch.channel == "rita"


def test_emoji_never_break_a_windows_console_redirected_to_a_file(tmp_path: Path) -> None:
    """Redirected, a Windows console writes cp1252; chat prompts carry emoji. Simulated
    with PYTHONIOENCODING=cp1252: no "Logging error", no UnicodeEncodeError."""
    code = (
        "import logging; from generator_host import cli; cli._setup_logging('INFO'); "
        "logging.getLogger('generator_host.x').warning('prompt: a fox \\U0001f98a'); "
        "print('reply: a fox \\U0001f98a')"
    )
    repo = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ, PYTHONIOENCODING="cp1252", PYTHONPATH=repo)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, env=env, timeout=60, cwd=tmp_path
    )
    err = out.stderr.decode("cp1252")
    assert out.returncode == 0, err
    assert "Logging error" not in err and "UnicodeEncodeError" not in err
    assert "prompt: a fox \\U0001f98a" in err
    assert out.stdout.decode("cp1252").strip() == "reply: a fox \\U0001f98a"
