"""The config file: a streamer's typo is reported by name and never stops the host."""

from __future__ import annotations

import dataclasses
import os
import stat
import subprocess
import sys
from pathlib import Path

import tomllib

from generator_host.core.config_template import TEMPLATE
from generator_host.core.settings import (
    Settings,
    apply_changes,
    declarations,
    declared,
    load_settings,
    settings_from_dict,
)


def test_template_written_by_init_loads_without_problems(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(TEMPLATE)
    settings, problems = load_settings(path)
    assert problems == []
    assert settings.safety.approval_mode == "blur"
    assert settings.link.host == "127.0.0.1"


def test_template_holds_every_setting_once_with_its_default_and_help() -> None:
    """Parsed as TOML, so a key hidden inside a longer one (steps in max_steps) or in a
    comment does not count; each key has its default and a help comment above it."""
    parsed = tomllib.loads(TEMPLATE)
    tables = {(d.section, d.key) for d in declarations() if d.kind == "table"}
    for section, values in dataclasses.asdict(Settings()).items():
        for key in tables:  # a table of tables shows examples, not its (empty) default
            if key[0] == section:
                assert decl_problems(key, parsed[section].pop(key[1])) == [], key
                values.pop(key[1])
        assert parsed[section] == values, section
    assert set(parsed) == set(dataclasses.asdict(Settings()))
    helps = template_help()
    for decl in declarations():
        assert helps[decl.section, decl.key].startswith(decl.spec.help), decl.name
        if decl.spec.choices or decl.spec.lo is not None:
            assert decl.allowed() in helps[decl.section, decl.key], decl.name


def decl_problems(key: tuple[str, str], value: object) -> list[str]:
    problems = declared(".".join(key)).spec.problems
    return problems(value) if problems else []


def template_help() -> dict[tuple[str, str], str]:
    """(section, key) -> the comment lines right above that key, joined."""
    out, section, comment = {}, "", []
    for line in TEMPLATE.splitlines():
        if line.startswith("[") and line.count(".") >= 2:  # [section.key.NAME]: a table
            table = tuple(line.strip("[]").split(".")[:2])
            out.setdefault(table, " ".join(comment))
            comment = []
        elif line.startswith("["):
            section, comment = line.strip("[]"), []
        elif line.startswith("# "):
            comment.append(line[2:])
        elif " = " in line:
            out[section, line.split(" = ")[0]] = " ".join(comment)
            comment = []
    return out


def test_every_declared_setting_has_help_and_a_sane_declaration() -> None:
    for decl in declarations():
        s = decl.spec
        assert s.help and len(s.help) <= (600 if decl.kind == "table" else 200), decl.name
        assert decl.check(decl.default) == (decl.default, ""), f"{decl.name}: bad default"
        if s.lo is not None:
            assert s.hi is not None and s.lo <= s.hi and decl.type in (int, float), decl.name
        for choice in s.choices:
            assert isinstance(choice, decl.type), decl.name


def test_ranges_and_choices_come_from_the_declaration() -> None:
    """One check for the loader: below, inside, above a range; the off value; choices."""
    slideshow = declared("show.slideshow_seconds")
    assert [slideshow.check(v)[1] == "" for v in (0, 1, 2.9, 3, 3600, 3600.5)] == [
        True, False, False, True, True, False,
    ]  # fmt: skip
    assert slideshow.check(float("nan"))[1] and slideshow.check("5")[1]
    raw = {"show": {"slideshow_seconds": 2}, "safety": {"approval_mode": "hold"}}
    settings, problems = settings_from_dict(raw)
    assert problems == ["[show] slideshow_seconds = 2 must be 0 (off) or 3 to 3600; using 0.0"]
    assert settings.safety.approval_mode == "hold" and settings.show.slideshow_seconds == 0.0
    assert declared("show.grid").check(True)[1] == "must be one of 1, 4, 9"


def test_secrets_are_not_repeated_in_problems() -> None:
    _, problems = settings_from_dict({"twitch": {"token": 12345678}})
    assert problems == ["[twitch] token = (hidden) must be text; using ''"]


def test_a_live_change_is_checked_once_and_says_where_it_came_from() -> None:
    settings = Settings()
    changes, refused = apply_changes(
        settings,
        {
            "safety.approval_mode": "hold",
            "safety.threshold_offset": 0.03,
            "show.slideshow_seconds": 1,  # below the 3 s minimum
            "model.max_steps": 200,  # config only
            "nope.key": 1,
            "show.grid": 1,  # unchanged: not a change
        },
        "obs",
    )
    assert [c.describe() for c in changes] == [
        "approval_mode 'blur' -> 'hold' (from OBS panel)",
        "threshold_offset 0.0 -> 0.03 (from OBS panel)",
    ]
    assert settings.safety.approval_mode == "hold" and settings.safety.threshold_offset == 0.03
    assert settings.model.max_steps == 50 and settings.show.slideshow_seconds == 0.0
    assert refused == [
        "slideshow_seconds = 1 must be 0 (off) or 3 to 3600 (from the OBS panel)",
        "model.max_steps cannot be changed from the OBS panel",
        "nope.key cannot be changed from the OBS panel",
    ]


def test_the_review_page_needs_the_declared_role() -> None:
    settings = Settings()
    _, refused = apply_changes(settings, {"safety.approval_mode": "off"}, "review", "moderator")
    assert refused and settings.safety.approval_mode == "blur"  # broadcaster only
    changes, _ = apply_changes(settings, {"show.grid": 4}, "review", "moderator")
    assert changes and settings.show.grid == 4
    _, refused = apply_changes(settings, {"show.grid": 9}, "review", "vip")
    assert refused and settings.show.grid == 4


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


def test_the_docs_reference_table_is_what_the_declarations_say() -> None:
    from generator_host.tools import settings_docs

    doc = settings_docs.DOC.read_text(encoding="utf-8")
    assert settings_docs.render(doc) == doc, "run python -m generator_host.tools.settings_docs"
    for decl in declarations():
        assert f"`[{decl.section}] {decl.key}`" in doc
