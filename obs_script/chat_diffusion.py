"""Chat Diffusion for OBS: shows what Twitch chat paints, sent by the generator host.

Add this file in OBS under Tools > Scripts. It stays thin on purpose: a properties panel,
buttons and hotkeys for the streamer, a link thread (chat_diffusion_link.py) that talks
to the host, and an OBS timer that applies what arrived to the image and text sources on
OBS's own thread. Nothing here blocks OBS: the network and file writes live on the link
thread; the timer only sets source settings. Python 3.9+, stdlib + websocket-client.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import math
import os
import queue
import socket
import sys
import threading
import time
from typing import Any

import obspython as obs

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:  # OBS adds it; the unit tests and other hosts may not
    sys.path.insert(0, _HERE)

import chat_diffusion_link as link_mod  # noqa: E402
import chat_diffusion_protocol as protocol  # noqa: E402

TICK_MS = 20
DEBOUNCE_S = 0.8  # typing a host address must not reconnect on every key
MAX_ITEMS_PER_TICK = 50
IMAGE_DIR = os.path.join(_HERE, "images")
DEFAULT_HOST = "ws://127.0.0.1:8765"
DEFAULT_SOURCES = {
    "image_source": "Chat Diffusion Image",
    "requester_source": "Chat Diffusion Requester",
    "prompt_source": "Chat Diffusion Prompt",
    "status_source": "Chat Diffusion Status",
}
HOTKEYS = (
    ("approve", "Chat Diffusion: approve the held image"),
    ("clear", "Chat Diffusion: clear the screen"),
    ("prev", "Chat Diffusion: previous image"),
    ("next", "Chat Diffusion: next image"),
)
OFFLINE_TEXT = "Chat Diffusion: waiting for the host"
CONNECTION_KEY = "connection_info"  # the panel's live connection line (a settings value)


class _Script:
    """Everything one loaded copy of the script owns; rebuilt on every (re)load."""

    def __init__(self) -> None:
        self.loaded = False
        self.config: dict[str, Any] = {}
        self.link: link_mod.LinkClient | None = None
        self.link_key: tuple[str, str, str] | None = None
        self.restart_at = 0.0
        self.hotkeys: dict[str, int] = {}
        self.settings: Any = None  # the script's own settings (OBS keeps it while loaded)
        self.connection = "starting"
        self.connected = False
        self.shown_offline = False
        self.data: Any = None  # OBS's settings object of this script (borrowed, while loaded)
        self.schema: list[dict[str, Any]] = []  # how to draw the host's live settings
        self.live: dict[str, Any] | None = None  # the host's values; None until it sent them
        self.proposal: dict[str, Any] = {}  # panel changes not sent yet (see PROPOSE_AFTER_S)
        self.propose_at = 0.0


S = _Script()


def _log(line: str) -> None:
    print(f"[Chat Diffusion] {line}", flush=True)


def _warn(line: str) -> None:
    """A warning the streamer must see: OBS opens its script log window for these."""
    obs.script_log(obs.LOG_WARNING, f"[Chat Diffusion] {line}")


def _websocket_ready() -> bool:
    return link_mod.websocket is not None


def obs_python_executable(platform: str, prefix: str, version: str) -> str:
    """The interpreter of the Python OBS loaded (inside OBS, sys.executable is OBS itself).

    Windows: <install folder>\\python.exe; macOS (a framework): <prefix>/bin/python3.X;
    Linux: OBS links the system's libpython, whose interpreter is /usr/bin/python3.
    """
    if platform.startswith("win"):
        return prefix.rstrip("\\/") + "\\python.exe"
    if platform == "darwin":
        return f"{prefix.rstrip('/')}/bin/python{version}"
    return "/usr/bin/python3"


def _install_help() -> str:
    import html

    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    python = obs_python_executable(sys.platform, sys.prefix, version)
    command = html.escape(f'"{python}" -m pip install websocket-client')  # quoted: spaces
    if sys.platform.startswith("linux"):
        how = "On Debian/Ubuntu: <code>sudo apt install python3-websocket</code>. Elsewhere: "
    else:
        how = "In a Command Prompt (Windows) or Terminal (macOS): "
    return (
        "<p><b>websocket-client is missing</b> for the Python OBS uses "
        f"(Python {version}, {html.escape(sys.prefix)}). {how}"
        f"<code>{command}</code>, "
        "or install it into a virtual environment and set <i>Extra packages folder</i> "
        "to its site-packages. Then press <i>Reconnect</i>.</p>"
    )


# --- OBS script API: description and properties ------------------------------------------


def script_description() -> str:
    help_text = (
        "<p><b>Chat Diffusion</b> shows the images your Twitch chat paints.</p>"
        "<ol><li>Start the generator host (try <code>generator-host demo</code>).</li>"
        "<li>Host on this computer: leave <b>Token</b> empty, the script reads the "
        "host's token file. Host on another computer: copy the token from the file the "
        "host names at start (<i>token file ...</i>) into <b>Token</b>.</li>"
        "<li>Add an <b>Image</b> source and <b>Text</b> sources for the requester, the "
        "prompt and the status to your scene, and pick them below.</li></ol>"
    )
    if not _websocket_ready():
        help_text += _install_help()
    # OBS reads the description once, when it loads the script: the live connection state
    # is the Connection line among the settings below, never here.
    return help_text


def _source_names(kind: str) -> list[str]:
    """Names of existing sources of one kind ('image' or 'text'), every reference released."""
    names: list[str] = []
    sources = obs.obs_enum_sources()
    try:
        for src in sources or []:
            sid = obs.obs_source_get_unversioned_id(src) or ""
            if (kind == "image" and sid == "image_source") or (
                kind == "text" and sid.startswith("text")
            ):
                names.append(obs.obs_source_get_name(src))
    finally:
        obs.source_list_release(sources)
    return sorted(set(names), key=str.lower)


def _add_source_picker(props: Any, key: str, label: str, kind: str) -> None:
    p = obs.obs_properties_add_list(
        props, key, label, obs.OBS_COMBO_TYPE_EDITABLE, obs.OBS_COMBO_FORMAT_STRING
    )
    current = S.config.get(key) or DEFAULT_SOURCES[key]
    names = _source_names(kind)
    for name in [current] + [n for n in names if n != current]:
        obs.obs_property_list_add_string(p, name, name)
    obs.obs_property_set_long_description(
        p, f"An existing {kind} source (or type its name; it may be created later)."
    )


def script_properties() -> Any:
    props = obs.obs_properties_create()
    # An info text shows its value in the script's settings, which _set_connection keeps
    # current: OBS reads it each time it draws the panel (opening it, any change or click
    # in it), so the line is never older than the panel on screen.
    obs.obs_properties_add_text(props, CONNECTION_KEY, "Connection", obs.OBS_TEXT_INFO)
    if not _websocket_ready():
        missing = obs.obs_properties_add_text(
            props, "missing_info", "websocket-client is missing: see the description above",
            obs.OBS_TEXT_INFO,
        )  # fmt: skip
        obs.obs_property_text_set_info_type(missing, obs.OBS_TEXT_INFO_ERROR)
    p = obs.obs_properties_add_text(props, "host", "Host address", obs.OBS_TEXT_DEFAULT)
    obs.obs_property_set_long_description(
        p, "Where the generator host runs, e.g. ws://127.0.0.1:8765 (wss:// with TLS)."
    )
    p = obs.obs_properties_add_text(props, "token", "Token", obs.OBS_TEXT_PASSWORD)
    obs.obs_property_set_long_description(
        p, "Empty: read from the host's token file on this computer. Else the token in it."
    )
    _add_live_properties(props)
    _add_source_picker(props, "image_source", "Image source", "image")
    _add_source_picker(props, "requester_source", "Requester text source", "text")
    _add_source_picker(props, "prompt_source", "Prompt text source", "text")
    _add_source_picker(props, "status_source", "Status text source", "text")
    p = obs.obs_properties_add_path(
        props, "python_path", "Extra packages folder (optional)", obs.OBS_PATH_DIRECTORY, "", ""
    )
    obs.obs_property_set_long_description(
        p, "A site-packages folder holding websocket-client, if OBS's Python lacks it."
    )
    for name, label, callback in (
        ("btn_reconnect", "Reconnect", _on_reconnect),
        ("btn_approve", "Approve", _button("approve")),
        ("btn_clear", "Clear", _button("clear")),
        ("btn_prev", "Previous", _button("prev")),
        ("btn_next", "Next", _button("next")),
        ("btn_slideshow", "Slideshow on/off", _button("slideshow")),
    ):
        obs.obs_properties_add_button(props, name, label, callback)
    return props


def script_defaults(settings: Any) -> None:
    obs.obs_data_set_default_string(settings, "host", DEFAULT_HOST)
    obs.obs_data_set_default_string(settings, "token", "")
    for key, name in DEFAULT_SOURCES.items():
        obs.obs_data_set_default_string(settings, key, name)
    obs.obs_data_set_default_string(settings, "python_path", "")


# --- settings ----------------------------------------------------------------------------


def _read_config(settings: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "host": (obs.obs_data_get_string(settings, "host") or "").strip(),
        "token": (obs.obs_data_get_string(settings, "token") or "").strip(),
        "python_path": (obs.obs_data_get_string(settings, "python_path") or "").strip(),
    }
    for key, default in DEFAULT_SOURCES.items():
        cfg[key] = (obs.obs_data_get_string(settings, key) or "").strip() or default
    # An empty token with a local host is kept empty: the link thread reads the host's
    # token file at every connect attempt, so a file written later is picked up too.
    return cfg


def _use_python_path(path: str) -> None:
    """Let OBS's Python find websocket-client in a folder the streamer chose."""
    if not path or not os.path.isdir(path) or _websocket_ready():
        return
    if path not in sys.path:
        sys.path.append(path)
    try:
        link_mod.websocket = importlib.import_module("websocket")
        _log(f"websocket-client found in {path}")
    except ImportError:
        _log(f"websocket-client is not in {path} either")


def script_update(settings: Any) -> None:
    S.settings = settings
    S.config = _read_config(settings)
    _use_python_path(S.config["python_path"])
    _propose_changes(settings)
    key = (S.config["host"], S.config["token"], S.config["python_path"])
    if S.loaded and key != S.link_key:
        S.restart_at = time.monotonic() + DEBOUNCE_S


def script_save(settings: Any) -> None:
    for name, hotkey_id in S.hotkeys.items():
        array = obs.obs_hotkey_save(hotkey_id)
        try:
            obs.obs_data_set_array(settings, f"hotkey_{name}", array)
        finally:
            obs.obs_data_array_release(array)


# --- live settings: the host owns them; this panel shows them and proposes changes ------
#
# The host sends its live values with how to draw each one (kind, range, choices, help:
# from its declarations, so nothing here repeats a range) on every connect and after every
# change. They are written into this script's own settings, which the panel shows; a
# change the streamer makes here is sent as a proposal, and the host's answer (to every
# panel) is what the panel then shows. A panel never overwrites the host's values.

SCHEMA_KEY = "live_schema"  # the last schema the host sent, so the panel has it offline
PROPOSE_AFTER_S = 0.3  # a dragged slider makes one proposal, not one per step it passes
# Panel keys of script versions before the host owned live settings: values a streamer
# set there are proposed to the host once (then erased), so an upgrade loses no choice.
LEGACY_KEYS = {
    "threshold_offset": ("safety.threshold_offset", "double"),
    "grid": ("show.grid", "int"),
    "approval_mode": ("safety.approval_mode", "string"),
    "slideshow_seconds": ("show.slideshow_seconds", "int"),
    "save_images": ("gallery.save_images", "bool"),
}


def _cached_schema(settings: Any) -> list[dict[str, Any]]:
    raw = obs.obs_data_get_string(settings, SCHEMA_KEY) or ""
    with contextlib.suppress(ValueError, TypeError):
        msg = {"v": protocol.VERSION, "type": "settings", "values": {}, "schema": json.loads(raw)}
        checked = protocol.decode(json.dumps(msg), "host").message
        if checked is not None:
            return checked["schema"]
    return []


def _add_live_properties(props: Any) -> None:
    if not S.schema:
        obs.obs_properties_add_text(
            props, "live_info",
            "Live settings (safety, grid, slideshow) appear here once the host has "
            "connected: press Reconnect to refresh this panel.",
            obs.OBS_TEXT_INFO,
        )  # fmt: skip
        return
    obs.obs_properties_add_text(
        props, "live_info",
        "Live settings: the host's values (from its config, or changed live). A change "
        "here is sent to the host, which checks it and applies it to the next image.",
        obs.OBS_TEXT_INFO,
    )  # fmt: skip
    for item in S.schema:
        key, kind, label = item["key"], item["kind"], item["label"] or item["key"]
        lo, hi, step = item["lo"], item["hi"], item["step"]
        if kind == "choice":
            ints = all(isinstance(v, int) and not isinstance(v, bool) for v, _ in item["choices"])
            fmt = obs.OBS_COMBO_FORMAT_INT if ints else obs.OBS_COMBO_FORMAT_STRING
            p = obs.obs_properties_add_list(props, key, label, obs.OBS_COMBO_TYPE_LIST, fmt)
            for value, text in item["choices"]:
                if ints:
                    obs.obs_property_list_add_int(p, text, value)
                else:
                    obs.obs_property_list_add_string(p, text, str(value))
        elif kind == "bool":
            p = obs.obs_properties_add_bool(props, key, label)
        elif kind == "int":
            p = obs.obs_properties_add_int(
                props, key, label, int(lo if lo is not None else -(2**31)),
                int(hi if hi is not None else 2**31 - 1), int(step or 1),
            )  # fmt: skip
        elif kind == "float":
            # A slider with a number field beside it: the whole range is reachable and
            # a precise value can be typed (the slider alone is coarse on a wide range).
            p = obs.obs_properties_add_float_slider(
                props, key, label, float(lo if lo is not None else -1e9),
                float(hi if hi is not None else 1e9), float(step or 0.001),
            )  # fmt: skip
        else:
            p = obs.obs_properties_add_text(props, key, label, obs.OBS_TEXT_DEFAULT)
        obs.obs_property_set_long_description(p, item["help"])


def _panel_value(settings: Any, item: dict[str, Any]) -> Any:
    key, kind = item["key"], item["kind"]
    if kind == "bool":
        return bool(obs.obs_data_get_bool(settings, key))
    if kind == "int":
        return int(obs.obs_data_get_int(settings, key))
    if kind == "float":
        return float(obs.obs_data_get_double(settings, key))
    if kind == "choice" and item["choices"] and isinstance(item["choices"][0][0], int):
        return int(obs.obs_data_get_int(settings, key))
    return obs.obs_data_get_string(settings, key) or ""


def _write_panel_value(settings: Any, item: dict[str, Any], value: Any) -> None:
    key = item["key"]
    if isinstance(value, bool):
        obs.obs_data_set_bool(settings, key, value)
    elif isinstance(value, int) and item["kind"] != "float":
        obs.obs_data_set_int(settings, key, value)
    elif isinstance(value, (int, float)):
        obs.obs_data_set_double(settings, key, float(value))
    else:
        obs.obs_data_set_string(settings, key, str(value))


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        try:
            return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-9)
        except (TypeError, ValueError):
            return False
    return bool(a == b)


def _take_host_settings(msg: dict[str, Any]) -> None:
    """The host's live values (OBS's thread): the panel shows them from now on."""
    if msg["schema"]:
        S.schema = msg["schema"]
    S.live = dict(msg["values"])
    data = S.data
    if data is not None:
        for item in S.schema:
            if item["key"] in S.live:
                _write_panel_value(data, item, S.live[item["key"]])
        obs.obs_data_set_string(data, SCHEMA_KEY, json.dumps(S.schema))
    if data is not None:
        _move_legacy_settings(data)
    if msg["note"]:
        _log(f"host settings: {msg['note']}")
    else:
        shown = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in S.live.items())
        _log(f"the panel shows the host's live settings: {shown}")


def _move_legacy_settings(data: Any) -> None:
    """Propose what the streamer had set in an older panel, once, then forget it there."""
    getters = {
        "double": obs.obs_data_get_double,
        "int": obs.obs_data_get_int,
        "string": obs.obs_data_get_string,
        "bool": obs.obs_data_get_bool,
    }
    old = {}
    for key, (name, kind) in LEGACY_KEYS.items():
        if obs.obs_data_has_user_value(data, key):
            old[name] = getters[kind](data, key)
            obs.obs_data_erase(data, key)
    if old and S.live is not None:
        if "show.slideshow_seconds" in old:
            old["show.slideshow_seconds"] = float(old["show.slideshow_seconds"])
        _log(f"proposing this panel's settings from an older version to the host once: {old}")
        S.proposal.update(old)
        S.propose_at = time.monotonic()


def _propose_changes(settings: Any) -> None:
    """Send what the streamer changed in the panel to the host, as a proposal."""
    live = S.live
    if not S.schema:
        return
    changed = {}
    for item in S.schema:
        key = item["key"]
        value = _panel_value(settings, item)
        if live is not None and key in live and not _same(value, live[key]):
            changed[key] = value
    if live is None or not changed:
        return  # not connected: the host's values replace the panel's when it connects
    live.update(changed)  # proposed once; the host's answer (to every panel) is what counts
    S.proposal.update(changed)
    S.propose_at = time.monotonic() + PROPOSE_AFTER_S


def _send_proposal() -> None:
    """On OBS's timer: the panel's changes, once the streamer has stopped moving."""
    changed, S.proposal = S.proposal, {}
    link = S.link
    if link is None or not link.send(protocol.make_change(changed)):
        _log("settings not sent (not connected); the panel shows the host's values on connect")


# --- load / unload -----------------------------------------------------------------------


def _old_link_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name == link_mod.THREAD_NAME)


def script_load(settings: Any) -> None:
    _log(f"script loaded (link threads left from earlier loads: {_old_link_threads()})")
    S.settings = settings
    _show_connection()  # never the line an earlier run saved with the settings
    S.config = _read_config(settings)
    S.data = settings
    S.schema = _cached_schema(settings)
    _use_python_path(S.config["python_path"])
    for name, description in HOTKEYS:
        hotkey_id = obs.obs_hotkey_register_frontend(
            f"chat_diffusion.{name}", description, _hotkey(name)
        )
        S.hotkeys[name] = hotkey_id
        array = obs.obs_data_get_array(settings, f"hotkey_{name}")
        try:
            obs.obs_hotkey_load(hotkey_id, array)
        finally:
            obs.obs_data_array_release(array)
    S.loaded = True
    _restart_link()
    obs.timer_add(_tick, TICK_MS)


def script_unload() -> None:
    started = time.monotonic()
    S.loaded = False
    obs.timer_remove(_tick)
    S.settings = None  # OBS may free it after unload
    stopped = True
    if S.link is not None:
        stopped = S.link.stop(timeout=1.0)
        S.link = None
    for hotkey_id in S.hotkeys.values():
        obs.obs_hotkey_unregister(hotkey_id)
    S.hotkeys.clear()
    S.data, S.live = None, None
    ms = (time.monotonic() - started) * 1000
    state = "stopped" if stopped else "STILL RUNNING"
    _log(f"script unloaded (link thread {state} after {ms:.0f} ms)")


def _restart_link() -> None:
    """(Re)create the link thread for the current host address and token."""
    S.restart_at = 0.0
    if S.link is not None:
        S.link.stop(timeout=1.0)
        S.link = None
    cfg = S.config
    S.link_key = (cfg["host"], cfg["token"], cfg["python_path"])
    if not _websocket_ready():
        _set_connection("websocket-client is missing (see the description)", False)
        return
    try:
        link_mod.parse_address(cfg["host"])
    except ValueError as exc:
        _set_connection(str(exc), False)
        return
    if not cfg["token"] and not link_mod.is_local_address(cfg["host"]):
        # A host on this computer needs none: the link thread waits for its token file.
        _set_connection(
            "no token: copy the link token from the host's token file into Token", False
        )
        return
    name = f"OBS {obs.obs_get_version_string()} on {socket.gethostname()}"
    S.link = link_mod.LinkClient(cfg["host"], cfg["token"], name, IMAGE_DIR)
    S.link.start()


# --- buttons and hotkeys (OBS UI / hotkey threads: no obs_* calls, just send) -----------


def _action(name: str) -> None:
    """Send, or queue until the link is back; the link reports what never arrives."""
    link = S.link
    if link is None:  # the panel's Connection line says why
        _log(f"'{name}' not sent: no link to the host ({S.connection})")
    else:
        link.send(protocol.make_action(name))


def _button(name: str) -> Any:
    def pressed(props: Any, prop: Any) -> bool:
        _action(name)
        return True  # refresh the panel so the connection line is current

    return pressed


def _hotkey(name: str) -> Any:
    def pressed(is_pressed: bool) -> None:
        if is_pressed:
            _action(name)

    return pressed


def _on_reconnect(props: Any, prop: Any) -> bool:
    link = S.link  # read once: the timer may replace it meanwhile
    if link is not None and S.link_key == (
        S.config["host"], S.config["token"], S.config["python_path"]
    ):  # fmt: skip
        link.reconnect_now()
    else:
        # the timer restarts the link: one thread (OBS's own) ever does, so two restarts
        # at once (this button on the UI thread, a debounced edit on the timer) can't race
        S.restart_at = time.monotonic()
    return True


# --- the OBS timer: the only place that touches sources -----------------------------------


def _tick() -> None:
    try:
        if S.restart_at and time.monotonic() >= S.restart_at:
            _restart_link()
        if S.proposal and time.monotonic() >= S.propose_at:
            _send_proposal()
        link = S.link
        if link is None:
            return
        for _ in range(MAX_ITEMS_PER_TICK):
            try:
                item = link.inbox.get_nowait()
            except queue.Empty:
                break
            _apply(item)
    except Exception as exc:  # noqa: BLE001 - a bad message must not spam OBS every tick
        _log(f"error while updating sources: {type(exc).__name__}: {exc}")


def _set_connection(text: str, connected: bool) -> None:
    S.connection = text
    S.connected = connected
    _show_connection()
    if not connected and not S.shown_offline:
        S.shown_offline = True
        _set_text(S.config.get("status_source", ""), OFFLINE_TEXT)
    if connected:
        S.shown_offline = False
    else:
        S.live, S.proposal = None, {}  # a new connection brings the host's values again


def _show_connection() -> None:
    """Put the connection state where the panel's Connection line reads it."""
    if S.settings is not None:  # OBS's label takes tags as rich text: no host text may
        text = S.connection.replace("<", "\u2039").replace(">", "\u203a")  # make one
        obs.obs_data_set_string(S.settings, CONNECTION_KEY, text)


def _apply(item: dict[str, Any]) -> None:
    kind = item.get("type")
    cfg = S.config
    if kind == "log":
        _log(item["text"])
    elif kind == "undelivered":
        _warn(item["text"])
    elif kind == "link":
        _set_connection(item["text"], item["connected"])
    elif kind == "show":
        _set_image(cfg["image_source"], item["path"])
        _set_text(cfg["requester_source"], item.get("requester", ""))
        _set_text(cfg["prompt_source"], item.get("prompt", ""))
    elif kind == "clear":
        _set_image(cfg["image_source"], "")
        _set_text(cfg["requester_source"], "")
        _set_text(cfg["prompt_source"], "")
    elif kind == "status":
        _set_text(cfg["status_source"], item.get("text", ""))
    elif kind == "settings":
        _take_host_settings(item)


def _update_source(name: str, key: str, value: str) -> bool:
    """Set one string setting of a source by name; False when there is no such source."""
    if not name:
        return False
    source = obs.obs_get_source_by_name(name)
    if source is None:
        return False
    try:
        data = obs.obs_data_create()
        try:
            obs.obs_data_set_string(data, key, value)
            obs.obs_source_update(source, data)
        finally:
            obs.obs_data_release(data)
    finally:
        obs.obs_source_release(source)
    return True


def _set_image(name: str, path: str) -> None:
    _update_source(name, "file", path)


def _set_text(name: str, text: str) -> None:
    # The protocol already cleaned it; clean again so no caller can put raw text on air.
    with contextlib.suppress(Exception):
        text = protocol.clean_text(str(text), protocol.MAX_PROMPT)
    _update_source(name, "text", text)
