"""The streamer's settings: each one declared once, here, with everything said about it.

A setting is a dataclass field made by `setting(...)`: its type (the annotation), its
default, its range or choices, one line of help, and who may change it while the host
runs (`Live`). Everything else is derived from these declarations, never written again:
- the loader's checks and messages (`settings_from_dict`, `Declared.check`);
- the commented file `generator-host init` writes (core/config_template.py);
- the live settings the host sends to the OBS panel, with their ranges and choices, and
  the check of every change a panel proposes (`live_message`, `apply_changes`);
- the reference table in docs/settings.md (tools/settings_docs.py; a test compares).
Adding a setting is adding one `setting(...)` line to its section below (how a declaration
works: core/declaration.py).

Why plain dataclass metadata and not pydantic (installed): the loader must keep going
past a bad key (report it, keep that key's default, load the rest), which pydantic does
by failing the whole model; and `import pydantic` alone takes ~107 ms here (`python -X
importtime -c "import pydantic"`), paid by every start and every test process, for
checks that fit in `Declared.check`.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, get_type_hints

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

import platformdirs

from generator_host.core.categories import parse_categories
from generator_host.core.declaration import (
    PANEL,
    PANEL_AND_MODS,
    ROLES,
    VIEWS,
    Declared,
    setting,
)

APP_NAME = "chat-diffusion"
APPROVAL_MODES = {
    "blur": "Blur them",
    "hold": "Hold them until I approve",
    "skip": "Skip them",
    "off": "Show everything (filter off)",
}
PROMPT_ACTIONS = ("refuse", "hold", "flag")
GRIDS = {1: "1 image", 4: "4 images (2x2 grid)", 9: "9 images (3x3)"}
MODES = ("everyone", "subscribers", "moderators")
FAMILIES = ("auto", "sd", "turbo", "sdxl", "sdxl-turbo")
DTYPES = ("auto", "float16", "bfloat16", "float32")
DEVICES = ("auto", "cuda", "mps", "cpu")
VAE_CHOICES = ("auto", "full", "tiny")
BACKENDS = ("auto", "torch", "openvino")


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


def _printable_prefix(value: str) -> bool:
    return 1 <= len(value) <= 3 and value.isprintable() and " " not in value


# --- the settings, one section per part of the host ---------------------------------------


@dataclass
class TwitchSettings:
    """Twitch chat: the channel that paints and the bot account that answers."""

    channel: str = setting("", "The channel whose chat paints (your Twitch login, no '#').")
    login: str = setting("", "The bot account's login; empty means the channel itself.")
    client_id: str = setting(
        "",
        "Your Twitch application's Client ID (dev.twitch.tv, type Public; docs/twitch.md), "
        "for `generator-host login`: log in once, the host keeps the login fresh.",
    )
    token: str = setting(
        "",
        "Or paste an OAuth token with chat:read and chat:write (never refreshed; it wins over "
        "a login). Better: leave empty and set the environment variable "
        "CHAT_DIFFUSION_TWITCH_TOKEN.",
        secret=True,
    )
    send_limit: int = setting(
        0,
        "Messages per send_window the bot may send; 0 follows Twitch (20, or 100 while the "
        "bot is a moderator or the broadcaster).",
        range=(0, 100),
    )
    send_window: float = setting(30.0, "The window of send_limit, in seconds.", range=(1, 600))
    host: str = setting("irc.chat.twitch.tv", "Twitch's chat server; change only for testing.")
    port: int = setting(6697, "The chat server's port.", range=(1, 65535))
    tls: bool = setting(True, "Encrypt the chat connection.")
    id_url: str = setting(
        "https://id.twitch.tv", "Twitch's login service; change only for testing."
    )
    helix_url: str = setting(
        "https://api.twitch.tv/helix", "Twitch's API (channel points); change only for testing."
    )
    eventsub_url: str = setting(
        "wss://eventsub.wss.twitch.tv/ws",
        "Twitch's EventSub WebSocket (redemptions); change only for testing.",
    )
    reconnect_max_seconds: float = setting(
        60.0, "Reconnect backoff after a dropped connection doubles up to this.", range=(1, 3600)
    )
    max_pending_sends: int = setting(
        30, "Replies waiting for the send limit; older ones are dropped past this.",
        range=(0, 1000),
    )  # fmt: skip
    shared_chat_commands: bool = setting(
        False,
        "Twitch Shared Chat (several channels' chats joined): false ignores commands from the "
        "other channels' viewers; true obeys them, with the roles they hold in YOUR channel.",
    )

    def send_limit_for(self, elevated: bool) -> int:
        """Messages the bot may send per `send_window`: `send_limit` when set, else Twitch's
        own limit, 100 while Twitch says the bot is a moderator or the broadcaster of the
        channel (its USERSTATE), 20 otherwise. Twitch locks out an account that sends more."""
        if self.send_limit:
            return self.send_limit
        return ELEVATED_SEND_LIMIT if elevated else REGULAR_SEND_LIMIT


ON_STOP = {
    "refund": "Refund the points of redemptions not served when the host stops",
    "keep": "Keep them queued for the next start",
}


@dataclass
class ChannelPointsSettings:
    """A channel-point reward that paints (docs/twitch.md): the host creates and owns it,
    refunds the points when no picture reaches the stream. Needs the broadcaster's login
    and an Affiliate or Partner channel."""

    enabled: bool = setting(
        False, "Create the reward and take its redemptions as requests (log in first)."
    )
    title: str = setting(
        "Paint a picture", "The reward's title on Twitch (unique on your channel).",
        rule=lambda v: 1 <= len(v) <= 45, rule_text="must be 1 to 45 characters",
    )  # fmt: skip
    cost: int = setting(500, "Points one picture costs.", range=(1, 999_999))
    prompt: str = setting(
        "Describe the picture. Refunded if it cannot be shown.",
        "The text viewers see when they redeem it.",
        rule=lambda v: len(v) <= 200, rule_text="must be at most 200 characters",
    )  # fmt: skip
    user_input_required: bool = setting(
        True, "Viewers must type the prompt when they redeem (without one: refunded)."
    )
    global_cooldown_seconds: int = setting(
        0, "Seconds between two redemptions by anyone; 0 off.", range=(0, 604800)
    )
    max_per_stream: int = setting(
        0, "Redemptions per stream in all; 0 no limit.", range=(0, 999_999)
    )
    max_per_user_per_stream: int = setting(
        0, "Redemptions per viewer per stream; 0 no limit.", range=(0, 999_999)
    )
    priority: bool = setting(True, "Redemptions wait ahead of free requests in the queue.")
    on_stop: str = setting(
        "refund",
        "Redemptions not served when the host stops: refund them, or keep them queued for "
        "the next start.",
        choices=ON_STOP,
    )


@dataclass
class ModelSettings:
    """The diffusion model and the caps chat can never exceed."""

    model: str = setting(
        "stabilityai/sd-turbo", "A diffusers model id (downloaded once) or a local folder."
    )
    family: str = setting(
        "auto",
        "Picks the default steps and guidance; auto: from the model.",
        choices=FAMILIES,
    )
    device: str = setting("auto", "Where the model runs.", choices=DEVICES)
    dtype: str = setting(
        "auto",
        "auto: float16 on CUDA; on the CPU bfloat16 for each part the first warm-up measures "
        "faster (remembered per machine and model), else float32.",
        choices=DTYPES,
    )
    vae: str = setting(
        "auto",
        "The VAE decoder: auto (tiny on CPU and Apple MPS, full on CUDA); the tiny one "
        "(TAESD, ~10 MB, downloaded once) is many times faster at stream quality.",
        choices=VAE_CHOICES,
    )
    backend: str = setting(
        "auto",
        "On the CPU: auto = OpenVINO for SD 1.x/2.x and Turbo (about 1.5x faster; the "
        "first start converts the model once, minutes), torch = PyTorch. GPUs, SDXL: PyTorch.",
        choices=BACKENDS,
    )
    tiny_vae: str = setting(
        "madebyollin/taesd", "The tiny decoder for SD 1.x/2.x and Turbo (hub id or folder)."
    )
    tiny_vae_xl: str = setting("madebyollin/taesdxl", "... for SDXL and SDXL-Turbo.")
    cpu_threads: int = setting(0, "torch's CPU threads; 0: one per physical core.", range=(0, 1024))
    steps: int = setting(0, "Steps per image; 0: the model family's default (Turbo 1, SD 25).")
    guidance: float = setting(
        -1.0, "Guidance scale; below 0: the model family's default (Turbo 0, SD 7)."
    )
    width: int = setting(0, "Image width; 0: the model's native size.")
    height: int = setting(0, "Image height; 0: the model's native size.")
    max_batch: int = setting(
        4, "Requests with the same settings generated together in one call.", range=(1, 16)
    )
    warmup: bool = setting(
        True, "Generate one throw-away image at start so the first request is not slow."
    )
    max_steps: int = setting(50, "The most steps chat may ask for.", range=(1, 200))
    max_size: int = setting(1024, "The largest width or height chat may ask for.", range=(64, 4096))
    max_guidance: float = setting(20.0, "The highest guidance chat may ask for.", range=(0, 50))
    max_images: int = setting(
        9,
        "The most images one request may make (count=...; also capped by [show] grid).",
        range=(1, 16),
    )
    attention_slicing: bool = setting(False, "Saves memory on small GPUs, a little slower.")
    cpu_offload: bool = setting(False, "Saves more memory on small GPUs, much slower.")
    hub_timeout: float = setting(
        10.0,
        "Seconds to wait for the model hub to connect or send data, on every hub call.",
        range=(1, 300),
    )
    check_updates: bool = setting(
        False,
        "Ask the hub at each start whether a downloaded model changed (bounded by "
        "hub_timeout); off: a complete cache starts without any hub call.",
    )


@dataclass
class SafetySettings:
    """The safety checker, and what happens to a picture it flags."""

    enabled: bool = setting(True, "Keep the Stable Diffusion safety checker on.")
    threshold_offset: float = setting(
        0.0,
        "0 flags what stock diffusers flags; positive is stricter (more caught, also "
        "harmless), negative looser. 0.01 is about the original project's default.",
        label="Safety threshold (- looser / + stricter)",
        range=(-1.0, 1.0),
        step=0.0001,  # OBS shows as many decimals as the step has: 4
        live=PANEL,
    )
    approval_mode: str = setting(
        "blur",
        "What happens to a flagged picture: blur it, hold it until !approve, skip it, or "
        "show everything (off).",
        label="Flagged images",
        choices=APPROVAL_MODES,
        live=PANEL,
    )
    checker: str = setting(
        "CompVis/stable-diffusion-safety-checker",
        "The checker used when the model folder has none (SDXL and Turbo ship none).",
    )
    categories_text_model: str = setting(
        "auto",
        "CLIP text tower for the category phrases (hub id or folder); auto: clip_text/ "
        "beside the checker, else openai/clip-vit-large-patch14 (1.7 GB, downloaded once).",
    )
    prompt_action: str = setting(
        "refuse",
        "A prompt too close to a category that applies to prompts: refuse it before any "
        "GPU time; hold: make it and hold it for review; flag: make it with every tile "
        "flagged, so approval_mode decides.",
        choices=PROMPT_ACTIONS,
    )
    categories: dict[str, Any] = setting(
        {},
        "Categories beyond the checker's sexual concepts, judged on the same CLIP image "
        "embedding (docs/safety.md): a tile is flagged when the checker OR any category "
        "flags it, and approval_mode applies. On by default: gore, violence, hate_symbols, "
        "with built-in phrases. Keys: phrases (texts), vectors (a .npy, .safetensors or .pt "
        "file of CLIP ViT-L/14 projection vectors), threshold (a tile whose best cosine with "
        "the category is above it is flagged), applies_to (images | prompts | both: prompts "
        "are checked before queueing), prompt_threshold, enabled. A default's table changes "
        "only its keys.",
        problems=lambda raw: parse_categories(raw)[1],
        example="""\
[safety.categories.gore]
threshold = 0.26

[safety.categories.violence]
threshold = 0.26

[safety.categories.hate_symbols]
threshold = 0.26

# Your own, e.g. for an arachnophobic streamer:
# [safety.categories.spiders]
# phrases = ["a photo of a spider", "a tarantula", "a spider web with a spider"]
# threshold = 0.26
# applies_to = "both"        # also check prompts before queueing them
# prompt_threshold = 0.85    # prompt-to-phrase cosines run higher: tune with safety-eval""",
    )


@dataclass
class ShowSettings:
    """What is on screen and how chat commands behave."""

    grid: int = setting(
        1, "Images per request, shown as a grid.", label="Images per request",
        choices=GRIDS, live=PANEL_AND_MODS,
    )  # fmt: skip
    slideshow_seconds: float = setting(
        0.0,
        "Seconds between slideshow images of past pictures; 0 is off.",
        label="Slideshow every (s)",
        range=(3, 3600),
        off=0.0,
        step=1.0,
        live=PANEL_AND_MODS,
    )
    command_prefix: str = setting(
        "!", "What starts a chat command.",
        rule=_printable_prefix, rule_text="1 to 3 printable characters, no space",
    )  # fmt: skip
    aliases: list[str] = setting(
        [], 'Extra command words, "alias=command", e.g. ["gen=generate", "g=generate"].'
    )
    command_roles: list[str] = setting(
        [],
        'Minimum role per command, "command=role" (everyone, subscriber, vip, moderator, '
        'broadcaster), e.g. ["approve=moderator"].',
    )
    cut_to_one_when_waiting: bool = setting(
        True, "While others wait, a grid request is cut to one image to keep things moving."
    )
    history_size: int = setting(
        200, "How many past images !prev, !next and the slideshow reach.", range=(1, 10000)
    )
    refusal_replies: int = setting(
        6, "Refusal replies per send window; more are merged, one line per reason.",
        range=(0, 100),
    )  # fmt: skip
    first_estimate_seconds: float = setting(
        10.0, "!queue's wait estimate before any image was timed.", range=(0.001, 3600)
    )
    min_display_seconds: float = setting(
        4.0,
        "A new image stays on screen at least this long before the next replaces it; 0 off.",
        range=(0, 600),
    )


@dataclass
class ModerationSettings:
    """Who may paint, how often, and what is refused."""

    blocklist_file: str = setting(
        "", "Empty: the list shipped with the host. One word, phrase or /pattern/ a line."
    )
    forced_negative_prompt: str = setting("", "Added to every request's negative prompt.")
    max_prompt_length: int = setting(300, "Longer prompts are refused.", range=(1, 2000))
    user_cooldown_seconds: float = setting(
        30.0, "Seconds between two requests of one viewer.", range=(0, 86400)
    )
    max_queued_per_user: int = setting(1, "Requests one viewer may have waiting.", range=(1, 100))
    max_queue: int = setting(50, "Requests waiting in all.", range=(1, 10000))
    ignored_users: list[str] = setting([], "Logins whose commands are ignored.")
    mode: str = setting(
        "everyone", "Who may request at start (moderators switch it with !mode).", choices=MODES
    )
    exempt_role: str = setting(
        "moderator", "This role and above skip the cooldown and the per-viewer limit.",
        choices=ROLES,
    )  # fmt: skip


@dataclass
class BitsSettings:
    """Cheers: a cheer with a prompt paints, ahead of free requests. Bits are never refunded."""

    enabled: bool = setting(True, "A cheer of at least min_bits with a prompt is a request.")
    min_bits: int = setting(
        100, "The fewest bits a cheer must carry to paint.", range=(1, 1_000_000)
    )
    priority: bool = setting(True, "Cheers wait ahead of free requests in the queue.")
    require_command: bool = setting(
        False, "Only a cheer that is also a !generate command paints (else any cheer's text)."
    )


@dataclass
class LinkSettings:
    """Where the OBS script connects."""

    host: str = setting(
        "127.0.0.1", "Keep 127.0.0.1 unless the host runs on another machine than OBS."
    )
    port: int = setting(8765, "The link's port; 0 picks a free one.", range=(0, 65535))
    token: str = setting(
        "",
        "Empty: generated on first run into the data folder (the path is printed).",
        secret=True,
    )
    tls_cert: str = setting("", "For a host on another machine: a TLS certificate (PEM file).")
    tls_key: str = setting("", "... and its key (PEM file).")


@dataclass
class ReviewSettings:
    """The private review page (docs/review.md): held pictures seen before they go on
    stream, in an OBS dock and through moderators' links (`generator-host mods add NAME`)."""

    enabled: bool = setting(True, "Serve the review page (its address is printed at start).")
    host: str = setting(
        "127.0.0.1",
        "Keep 127.0.0.1 unless moderators open it from their phones; then set tls_cert and "
        "tls_key too (without them secrets and pictures cross the network in clear).",
    )
    port: int = setting(8766, "The page's port; 0 picks a free one.", range=(0, 65535))
    tls_cert: str = setting("", "For phones on your network: a TLS certificate (PEM file).")
    tls_key: str = setting("", "... and its key (PEM file).")


@dataclass
class GallerySettings:
    """Where finished pictures are kept."""

    folder: str = setting("", "Empty: <data folder>/gallery.")
    save_images: bool = setting(
        True, "Keep every picture in the gallery.", label="Save images in the host's gallery",
        live=PANEL,
    )  # fmt: skip
    legacy_files: bool = setting(
        False, "Also write stream.png, requester.txt and prompt.txt (setups without the script)."
    )
    legacy_folder: str = setting("", "Where the legacy files go; empty: <gallery folder>/stream.")


@dataclass
class Settings:
    twitch: TwitchSettings = field(default_factory=TwitchSettings)
    channel_points: ChannelPointsSettings = field(default_factory=ChannelPointsSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    safety: SafetySettings = field(default_factory=SafetySettings)
    show: ShowSettings = field(default_factory=ShowSettings)
    moderation: ModerationSettings = field(default_factory=ModerationSettings)
    bits: BitsSettings = field(default_factory=BitsSettings)
    link: LinkSettings = field(default_factory=LinkSettings)
    review: ReviewSettings = field(default_factory=ReviewSettings)
    gallery: GallerySettings = field(default_factory=GallerySettings)


# --- reading the declarations --------------------------------------------------------------


@cache
def declarations() -> tuple[Declared, ...]:
    """Every setting, section by section, in declaration order."""
    out = []
    for section, section_type in get_type_hints(Settings).items():
        hints = get_type_hints(section_type)
        for f in dataclasses.fields(section_type):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            out.append(Declared(section, f.name, hints[f.name], default, f.metadata["setting"]))
    return tuple(out)


@cache
def _by_name() -> dict[str, Declared]:
    return {d.name: d for d in declarations()}


def declared(name: str) -> Declared:
    """The declaration of "section.key" (KeyError for an unknown one)."""
    return _by_name()[name]


def section_help(section: str) -> str:
    """The one-line description of a [section] (its dataclass's docstring)."""
    return (get_type_hints(Settings)[section].__doc__ or "").strip()


# --- the config file ----------------------------------------------------------------------


def settings_from_dict(raw: Any) -> tuple[Settings, list[str]]:
    """Build Settings from parsed TOML; returns the settings and every problem found.

    Strict but forgiving: an unknown key, a wrong type or an out-of-range value is
    reported with its section and key, and its default is kept (a config typo must never
    stop a stream).
    """
    settings = Settings()
    problems: list[str] = []
    if not isinstance(raw, dict):
        return settings, ["the config must be a table of sections"]
    by_name = _by_name()
    for section, values in raw.items():
        if not hasattr(settings, section):
            problems.append(f"unknown section [{section}] ignored")
            continue
        if not isinstance(values, dict):
            problems.append(f"[{section}] must be a section, not a value")
            continue
        for key, value in values.items():
            decl = by_name.get(f"{section}.{key}")
            if decl is None:
                problems.append(f"[{section}] unknown key {key!r} ignored")
                continue
            checked, error = decl.check(value)
            if error:
                shown = "(hidden)" if decl.spec.secret else repr(value)
                problems.append(f"[{section}] {key} = {shown} {error}; using {decl.default!r}")
                continue
            setattr(getattr(settings, section), key, checked)
            if decl.spec.problems is not None:
                problems += decl.spec.problems(checked)  # a table's own checks
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


# --- live settings: the host owns them, views propose changes ----------------------------


def live_declarations(view: str) -> list[Declared]:
    """The settings `view` ("obs" or "review") may change while the host runs."""
    return [d for d in declarations() if d.spec.live.allows(view, "broadcaster")]


def live_values(settings: Settings, view: str) -> dict[str, Any]:
    """The current values of `view`'s live settings, by "section.key"."""
    return {d.name: getattr(getattr(settings, d.section), d.key) for d in live_declarations(view)}


def live_schema(view: str) -> list[dict[str, Any]]:
    """How `view` draws its live settings: kind, label, help, range, choices."""
    return [d.panel() for d in live_declarations(view)]


@dataclass(frozen=True)
class Change:
    """One applied change of a live setting, and where it came from."""

    name: str
    old: Any
    new: Any
    view: str

    def describe(self) -> str:
        key = self.name.split(".", 1)[1]
        return f"{key} {self.old!r} -> {self.new!r} (from {VIEWS.get(self.view, self.view)})"


def apply_changes(
    settings: Settings, proposed: dict[str, Any], view: str, role: str = "broadcaster"
) -> tuple[list[Change], list[str]]:
    """Validate a view's proposal and apply what passes; returns (changes, refusals).

    The one check of every live change: the setting must exist, `view` (and `role` on the
    review page) may change it, and the value passes the declaration's check. A value
    equal to the current one is no change.
    """
    changes: list[Change] = []
    refused: list[str] = []
    where = VIEWS.get(view, view)
    for name, value in proposed.items():
        decl = _by_name().get(name)
        if decl is None or not decl.spec.live.allows(view, role):
            refused.append(f"{name} cannot be changed from the {where}")
            continue
        checked, error = decl.check(value)
        if error:
            refused.append(f"{decl.key} = {value!r} {error} (from the {where})")
            continue
        section = getattr(settings, decl.section)
        old = getattr(section, decl.key)
        if old == checked and type(old) is type(checked):
            continue
        setattr(section, decl.key, checked)
        changes.append(Change(name, old, checked, view))
    return changes, refused
