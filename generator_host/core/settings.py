"""The streamer's settings: one dataclass per config-file section, loaded from TOML.

Each section is owned by the part of the host it configures. Loading is strict but
forgiving: an unknown key, a wrong type or an out-of-range value is reported with its
section and key, and the default is kept (a config typo must never stop a stream).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

import platformdirs

from generator_host.core.categories import parse_categories

APP_NAME = "chat-diffusion"
APPROVAL_MODES = ("blur", "hold", "skip", "off")
MODES = ("everyone", "subscribers", "moderators")
ROLES = ("everyone", "subscriber", "vip", "moderator", "broadcaster")
FAMILIES = ("auto", "sd", "turbo", "sdxl", "sdxl-turbo")
DTYPES = ("auto", "float16", "bfloat16", "float32")
VAE_CHOICES = ("auto", "full", "tiny")


def _macos_support_dir() -> Path | None:
    """macOS: ~/Library/Application Support/chat-diffusion whatever the environment says.

    platformdirs honours XDG_CONFIG_HOME / XDG_DATA_HOME on macOS too, but OBS started
    from the Dock never sees a shell's XDG variables, and the OBS script looks for the
    link token here; so the host must not depend on the environment there.
    """
    if sys.platform != "darwin":
        return None
    return Path.home() / "Library" / "Application Support" / APP_NAME


def config_dir() -> Path:
    return _macos_support_dir() or Path(platformdirs.user_config_dir(APP_NAME, appauthor=False))


def data_dir() -> Path:
    return _macos_support_dir() or Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))


def cache_dir() -> Path:
    return Path(platformdirs.user_cache_dir(APP_NAME, appauthor=False))


def default_config_path() -> Path:
    return config_dir() / "config.toml"


REGULAR_SEND_LIMIT = 20  # Twitch: messages per 30 s for a regular chatter
ELEVATED_SEND_LIMIT = 100  # ... for a moderator or the broadcaster of the channel


@dataclass
class TwitchSettings:
    channel: str = ""
    login: str = ""  # the bot account's login; defaults to the channel
    token: str = field(default="", repr=False)  # better: env CHAT_DIFFUSION_TWITCH_TOKEN
    host: str = "irc.chat.twitch.tv"
    port: int = 6697
    tls: bool = True
    send_limit: int = 0  # messages per window; 0: automatic (see send_limit_for)
    send_window: float = 30.0
    reconnect_max_seconds: float = 60.0  # backoff after a drop doubles up to this
    max_pending_sends: int = 30  # replies waiting for the send limit; older ones are dropped
    # Twitch Shared Chat: obey commands from the partner channels' viewers too (their
    # roles are the ones they hold in THIS channel; the other channel's badges never count)
    shared_chat_commands: bool = False

    def send_limit_for(self, elevated: bool) -> int:
        """Messages the bot may send per `send_window`: `send_limit` when set, else Twitch's
        own limit, 100 while Twitch says the bot is a moderator or the broadcaster of the
        channel (its USERSTATE), 20 otherwise. Twitch locks out an account that sends more."""
        if self.send_limit:
            return self.send_limit
        return ELEVATED_SEND_LIMIT if elevated else REGULAR_SEND_LIMIT


@dataclass
class ModelSettings:
    model: str = "stabilityai/sd-turbo"  # hub id or local folder
    family: str = "auto"  # auto | sd | turbo | sdxl | sdxl-turbo: picks default steps/guidance
    device: str = "auto"  # auto | cuda | mps | cpu
    dtype: str = "auto"  # auto (CUDA fp16; CPU bf16 per part where measured faster) | float16 | ...
    vae: str = "auto"  # auto (tiny on CPU and MPS, full on CUDA) | full | tiny: the decoder
    tiny_vae: str = "madebyollin/taesd"  # the tiny decoder for SD 1.x/2.x and Turbo (id/folder)
    tiny_vae_xl: str = "madebyollin/taesdxl"  # ... for SDXL and SDXL-Turbo
    cpu_threads: int = 0  # torch's CPU threads; 0: one per physical core
    attention_slicing: bool = False
    cpu_offload: bool = False
    warmup: bool = True
    steps: int = 0  # 0: the model family's default
    guidance: float = -1.0  # <0: the model family's default
    width: int = 0  # 0: the model's native size
    height: int = 0
    max_steps: int = 50
    max_size: int = 1024
    max_guidance: float = 20.0
    max_images: int = 9  # images per request (the grid)
    max_batch: int = 4  # micro-batching: requests per pipeline call


@dataclass
class SafetySettings:
    enabled: bool = True
    checker: str = "CompVis/stable-diffusion-safety-checker"  # used when the model has none
    threshold_offset: float = 0.0  # 0 = stock diffusers; positive is stricter
    approval_mode: str = "blur"  # blur | hold | skip | off
    # Categories beyond the checker's (gore, violence, hate_symbols, the streamer's own):
    # raw [safety.categories.NAME] tables, parsed and checked by core/categories.py.
    categories: dict[str, Any] = field(default_factory=dict)
    # CLIP text tower for category phrases: a hub id or folder; "auto" is the clip_text/
    # folder next to the checker when there is one, else openai/clip-vit-large-patch14.
    categories_text_model: str = "auto"


@dataclass
class ShowSettings:
    grid: int = 1  # images per request: 1, 4 or 9
    slideshow_seconds: float = 0.0  # 0: off
    command_prefix: str = "!"
    aliases: list[str] = field(default_factory=list)  # "alias=command", added to the defaults
    command_roles: list[str] = field(default_factory=list)  # "command=role" overrides
    cut_to_one_when_waiting: bool = True  # a grid request becomes 1 image while others wait
    history_size: int = 200  # images !prev/!next and the slideshow can go back to
    refusal_replies: int = 6  # refusal replies per send_window; the rest are coalesced
    first_estimate_seconds: float = 10.0  # !queue's guess before any image was timed
    min_display_seconds: float = 4.0  # a new image stays at least this long; 0: off


@dataclass
class ModerationSettings:
    blocklist_file: str = ""  # empty: the default list shipped with the host
    forced_negative_prompt: str = ""
    max_prompt_length: int = 300
    user_cooldown_seconds: float = 30.0
    max_queued_per_user: int = 1
    max_queue: int = 50
    ignored_users: list[str] = field(default_factory=list)
    mode: str = "everyone"  # who may request at start: everyone | subscribers | moderators
    exempt_role: str = "moderator"  # this role and above skip cooldown and per-user limit


@dataclass
class LinkSettings:
    host: str = "127.0.0.1"
    port: int = 8765
    token: str = field(default="", repr=False)  # empty: generated into the data folder
    tls_cert: str = ""
    tls_key: str = ""


@dataclass
class GallerySettings:
    folder: str = ""  # empty: <data dir>/gallery
    save_images: bool = True
    legacy_files: bool = False  # also write stream.png, requester.txt, prompt.txt
    legacy_folder: str = ""  # where the legacy files go; empty: <gallery folder>/stream


@dataclass
class Settings:
    twitch: TwitchSettings = field(default_factory=TwitchSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    safety: SafetySettings = field(default_factory=SafetySettings)
    show: ShowSettings = field(default_factory=ShowSettings)
    moderation: ModerationSettings = field(default_factory=ModerationSettings)
    link: LinkSettings = field(default_factory=LinkSettings)
    gallery: GallerySettings = field(default_factory=GallerySettings)


def _coerce(value: Any, typ: Any) -> Any:
    """Return value as typ, or raise ValueError; ints are accepted for floats."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if typ is bool and isinstance(value, bool):
        return value
    if typ is int and number and isinstance(value, int):
        return value
    if typ is float and number:
        return float(value)
    if typ is str and isinstance(value, str):
        return value
    if getattr(typ, "__origin__", None) is dict and isinstance(value, dict):
        return dict(value)
    is_list = getattr(typ, "__origin__", None) is list
    if is_list and isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ValueError(f"expected {getattr(typ, '__name__', typ)}, got {type(value).__name__}")


def _validate(settings: Settings) -> list[str]:
    """Range checks; returns problems and resets the offending values to defaults."""
    problems: list[str] = []
    checks = [
        ("safety", "approval_mode", lambda v: v in APPROVAL_MODES, f"one of {APPROVAL_MODES}"),
        ("safety", "threshold_offset", lambda v: -1.0 <= v <= 1.0, "between -1 and 1"),
        ("show", "grid", lambda v: v in (1, 4, 9), "1, 4 or 9"),
        ("model", "device", lambda v: v in ("auto", "cuda", "mps", "cpu"), "auto/cuda/mps/cpu"),
        ("model", "max_steps", lambda v: 1 <= v <= 200, "between 1 and 200"),
        ("model", "max_batch", lambda v: 1 <= v <= 16, "between 1 and 16"),
        ("link", "port", lambda v: 0 <= v <= 65535, "a port number"),
        ("twitch", "port", lambda v: 0 < v <= 65535, "a port number"),
        ("moderation", "max_queue", lambda v: 1 <= v <= 10000, "between 1 and 10000"),
        ("moderation", "max_queued_per_user", lambda v: 1 <= v <= 100, "between 1 and 100"),
        ("moderation", "mode", lambda v: v in MODES, f"one of {MODES}"),
        ("moderation", "exempt_role", lambda v: v in ROLES, f"one of {ROLES}"),
        ("moderation", "user_cooldown_seconds", lambda v: 0 <= v <= 86400, "0 to 86400"),
        ("moderation", "max_prompt_length", lambda v: 1 <= v <= 2000, "between 1 and 2000"),
        ("model", "family", lambda v: v in FAMILIES, f"one of {FAMILIES}"),
        ("model", "dtype", lambda v: v in DTYPES, f"one of {DTYPES}"),
        ("model", "vae", lambda v: v in VAE_CHOICES, f"one of {VAE_CHOICES}"),
        ("model", "cpu_threads", lambda v: 0 <= v <= 1024, "0 (physical cores) to 1024"),
        ("model", "max_size", lambda v: 64 <= v <= 4096, "between 64 and 4096"),
        ("model", "max_images", lambda v: 1 <= v <= 16, "between 1 and 16"),
        ("model", "max_guidance", lambda v: 0 <= v <= 50, "between 0 and 50"),
        ("show", "slideshow_seconds", lambda v: 0 <= v <= 3600, "0 to 3600"),
        ("show", "history_size", lambda v: 1 <= v <= 10000, "between 1 and 10000"),
        ("show", "refusal_replies", lambda v: 0 <= v <= 100, "between 0 and 100"),
        ("show", "first_estimate_seconds", lambda v: 0 < v <= 3600, "0 to 3600"),
        ("show", "min_display_seconds", lambda v: 0 <= v <= 600, "0 to 600"),
        (
            "show",
            "command_prefix",
            lambda v: 1 <= len(v) <= 3 and v.isprintable() and " " not in v,
            "1 to 3 printable characters",
        ),
        ("twitch", "send_limit", lambda v: 0 <= v <= 100, "0 (automatic) or 1 to 100"),
        ("twitch", "send_window", lambda v: 1 <= v <= 600, "between 1 and 600"),
        ("twitch", "reconnect_max_seconds", lambda v: 1 <= v <= 3600, "between 1 and 3600"),
        ("twitch", "max_pending_sends", lambda v: 0 <= v <= 1000, "between 0 and 1000"),
    ]
    problems += parse_categories(settings.safety.categories)[1]
    for section, key, ok, want in checks:
        sec = getattr(settings, section)
        if not ok(getattr(sec, key)):
            default = getattr(type(sec)(), key)
            problems.append(
                f"[{section}] {key} = {getattr(sec, key)!r} must be {want}; using {default!r}"
            )
            setattr(sec, key, default)
    return problems


def settings_from_dict(raw: Any) -> tuple[Settings, list[str]]:
    """Build Settings from parsed TOML; returns the settings and every problem found."""
    settings = Settings()
    problems: list[str] = []
    if not isinstance(raw, dict):
        return settings, ["the config must be a table of sections"]
    section_types = get_type_hints(Settings)
    for section, values in raw.items():
        if section not in section_types:
            problems.append(f"unknown section [{section}] ignored")
            continue
        if not isinstance(values, dict):
            problems.append(f"[{section}] must be a section, not a value")
            continue
        sec = getattr(settings, section)
        hints = get_type_hints(type(sec))
        for key, value in values.items():
            if key not in hints:
                problems.append(f"[{section}] unknown key {key!r} ignored")
                continue
            try:
                setattr(sec, key, _coerce(value, hints[key]))
            except ValueError as exc:
                problems.append(f"[{section}] {key}: {exc}; keeping the default")
    problems += _validate(settings)
    return settings, problems


def load_settings(path: Path | None) -> tuple[Settings, list[str]]:
    """Read the TOML file (missing file: defaults) and apply environment overrides."""
    raw: Any = {}
    problems: list[str] = []
    if path is not None and path.exists():
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8-sig"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError, RecursionError) as exc:
            problems.append(f"{path}: cannot read config ({exc}); using defaults")
            raw = {}
    settings, more = settings_from_dict(raw)
    token = os.environ.get("CHAT_DIFFUSION_TWITCH_TOKEN")
    if token:
        settings.twitch.token = token
    return settings, problems + more


def as_dict(settings: Settings) -> dict[str, Any]:
    return dataclasses.asdict(settings)
