"""THE message shapes of the link between the generator host and the OBS script.

One module, imported by both sides (the host as `obs_script.chat_diffusion_protocol`, the
OBS script from its own folder), so the two can never disagree about a field. Standard
library only and Python 3.9 syntax, because OBS embeds whatever Python the streamer has.

Every frame is a JSON text object `{"v": 1, "type": ..., ...}`. In Python the messages are
plain dicts; the only difference from the wire is that images are `bytes` (PNG) here and
base64 text on the wire. `encode` and `decode` validate, cap sizes and clean texts; they
never raise on bad input but return an error string a human can act on.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import unicodedata
from collections.abc import Callable
from typing import Any, NamedTuple

VERSION = 1

# Size caps. A script frame is a few hundred bytes; a host frame carries one PNG.
MAX_IMAGE_BYTES = 24 * 1024 * 1024
MAX_HOST_FRAME = (MAX_IMAGE_BYTES * 4) // 3 + 64 * 1024
MAX_SCRIPT_FRAME = 64 * 1024

# Text caps: what fits on screen, and what a hostile peer cannot inflate.
MAX_TOKEN = 256
MAX_NAME = 64
MAX_PROMPT = 500
MAX_STATUS = 200
MAX_REASON = 200
MAX_ARG = 32

MAX_LIVE = 64  # live settings in one message
MAX_KEY = 64
MAX_HELP = 300
MAX_CHOICES = 32
KINDS = ("bool", "int", "float", "str", "choice")  # how a panel draws a live setting

ACTIONS = ("approve", "clear", "prev", "next", "slideshow")
HOST_TYPES = ("show", "clear", "status", "state", "settings", "bye", "error")
SCRIPT_TYPES = ("hello", "change", "action", "error")

# Close codes the host uses, so the script can tell the streamer what to fix.
CLOSE_NO_HELLO = 4000
CLOSE_BAD_TOKEN = 4001
CLOSE_BAD_VERSION = 4002

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Bidirectional overrides and isolates can reorder what viewers read on stream.
_BIDI = set(range(0x202A, 0x202F)) | set(range(0x2066, 0x206A))


class Decoded(NamedTuple):
    """A decoded frame: `message` is None exactly when `error` says why."""

    message: dict[str, Any] | None
    error: str


class Encoded(NamedTuple):
    """An encoded frame: `text` is None exactly when `error` says why."""

    text: str | None
    error: str


def clean_text(value: str, limit: int) -> str:
    """One line of at most `limit` characters, without control or bidi characters.

    Newlines and tabs become spaces (a prompt is shown on one line); anything that could
    garble the on-stream text or break OBS's UTF-8 conversion (lone surrogates) goes.
    """
    out = []
    for ch in value:
        cat = unicodedata.category(ch)
        if ch in "\t\n\r\v\f":
            out.append(" ")
        elif cat in ("Cc", "Cs") or ord(ch) in _BIDI:
            continue
        else:
            out.append(ch)
    text = " ".join("".join(out).split())
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "\u2026"
    return text


# --- field validators: value -> (clean value, error) -------------------------------------

Validator = Callable[[Any], tuple[Any, str]]


def _text(limit: int) -> Validator:
    def check(value: Any) -> tuple[Any, str]:
        if not isinstance(value, str):
            return None, f"must be text, not {type(value).__name__}"
        return clean_text(value[: limit * 4], limit), ""

    return check


def _token(value: Any) -> tuple[Any, str]:
    if not isinstance(value, str):
        return None, "must be text"
    value = value.strip()
    if len(value) > MAX_TOKEN or not value.isprintable():
        return None, f"must be printable text of at most {MAX_TOKEN} characters"
    return value, ""


def _int(lo: int, hi: int) -> Validator:
    def check(value: Any) -> tuple[Any, str]:
        if isinstance(value, bool) or not isinstance(value, int):
            return None, "must be a whole number"
        if not lo <= value <= hi:
            return None, f"must be between {lo} and {hi}"
        return value, ""

    return check


def _bool(value: Any) -> tuple[Any, str]:
    if not isinstance(value, bool):
        return None, "must be true or false"
    return value, ""


def _choice(options: tuple[Any, ...]) -> Validator:
    def check(value: Any) -> tuple[Any, str]:
        if isinstance(value, bool) or value not in options:
            return None, f"must be one of {', '.join(str(o) for o in options)}"
        return value, ""

    return check


def _scalar(value: Any) -> tuple[Any, str]:
    """A live setting's value: true/false, a finite number or a short text."""
    if isinstance(value, bool):
        return value, ""
    if isinstance(value, int):
        return (value, "") if abs(value) <= 2**53 else (None, "is too large")
    if isinstance(value, float):
        return (value, "") if math.isfinite(value) else (None, "is not a finite number")
    if isinstance(value, str):
        return clean_text(value[: MAX_ARG * 4], MAX_ARG), ""
    return None, "must be true/false, a number or text"


def _key(value: Any) -> tuple[Any, str]:
    ok = isinstance(value, str) and 0 < len(value) <= MAX_KEY
    if not ok or not all(c.isascii() and (c.isalnum() or c in "._") for c in value):
        return None, f"must be a setting name (letters, digits, '.', '_'; at most {MAX_KEY})"
    return value, ""


def _values(value: Any) -> tuple[Any, str]:
    """{"section.key": value}: live settings, or a change a panel proposes."""
    if not isinstance(value, dict) or len(value) > MAX_LIVE:
        return None, f"must be an object of at most {MAX_LIVE} settings"
    out: dict[str, Any] = {}
    for name, item in value.items():
        key, err = _key(name)
        if not err:
            item, err = _scalar(item)
        if err:
            return None, f"{clean_text(str(name), MAX_KEY)!r} {err}"
        out[key] = item
    return out, ""


def _number_or_none(value: Any) -> tuple[Any, str]:
    if value is None:
        return None, ""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None, "must be a number or null"
    return (value, "") if math.isfinite(value) else (None, "must be finite")


def _schema(value: Any) -> tuple[Any, str]:
    """How a panel draws each live setting: [{"key", "kind", "label", "help", "lo", ...}]."""
    if not isinstance(value, list) or len(value) > MAX_LIVE:
        return None, f"must be a list of at most {MAX_LIVE} settings"
    out = []
    for item in value:
        if not isinstance(item, dict):
            return None, "must hold objects"
        checked: dict[str, Any] = {}
        for name, (check, default) in _PANEL_ITEM.items():
            if item.get(name) is None:
                if default is _REQUIRED:
                    return None, f"entry lacks '{name}'"
                checked[name] = default
                continue
            checked[name], err = check(item[name])
            if err:
                return None, f"'{name}' {err}"
        out.append(checked)
    return out, ""


def _choices(value: Any) -> tuple[Any, str]:
    """[[value, label], ...]: the values a setting may take, each with its label."""
    if not isinstance(value, list) or len(value) > MAX_CHOICES:
        return None, f"must be a list of at most {MAX_CHOICES} choices"
    out = []
    for pair in value:
        if not isinstance(pair, list) or len(pair) != 2 or not isinstance(pair[1], str):
            return None, "must hold [value, label] pairs"
        item, err = _scalar(pair[0])
        if err:
            return None, err
        out.append([item, clean_text(pair[1][: MAX_NAME * 4], MAX_NAME)])
    return out, ""


def _png_wire(value: Any) -> tuple[Any, str]:
    """Wire form (base64 text) -> PNG bytes."""
    if not isinstance(value, str):
        return None, "must be base64 text"
    if len(value) > (MAX_IMAGE_BYTES * 4) // 3 + 4:
        return None, f"is larger than {MAX_IMAGE_BYTES} bytes"
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None, "is not valid base64"
    if not data.startswith(PNG_MAGIC):
        return None, "is not a PNG image"
    return data, ""


def _png_bytes(value: Any) -> tuple[Any, str]:
    """Python form (bytes) -> base64 text for the wire."""
    if not isinstance(value, (bytes, bytearray)):
        return None, "must be PNG bytes"
    if len(value) > MAX_IMAGE_BYTES:
        return None, f"is larger than {MAX_IMAGE_BYTES} bytes"
    if bytes(value[:8]) != PNG_MAGIC:
        return None, "is not a PNG image"
    return base64.b64encode(bytes(value)).decode("ascii"), ""


# A field: (validator, default); default _REQUIRED means the field must be present.
_REQUIRED = object()
Fields = dict[str, tuple[Validator, Any]]

_SHOW: Fields = {
    "entry_id": (_int(0, 2**53), _REQUIRED),
    "image": (_png_wire, _REQUIRED),
    "requester": (_text(MAX_NAME), ""),
    "prompt": (_text(MAX_PROMPT), ""),
    "held": (_bool, False),
    "blurred": (_bool, False),
}
_STATUS: Fields = {
    "text": (_text(MAX_STATUS), ""),
    "step": (_int(0, 100000), 0),
    "total": (_int(0, 100000), 0),
    "queue": (_int(0, 1000000), 0),
    "slideshow": (_bool, False),
}
_PANEL_ITEM: Fields = {  # one entry of a settings message's schema
    "key": (_key, _REQUIRED),
    "kind": (_choice(KINDS), _REQUIRED),
    "label": (_text(MAX_NAME), ""),
    "help": (_text(MAX_HELP), ""),
    "lo": (_number_or_none, None),
    "hi": (_number_or_none, None),
    "step": (_number_or_none, None),
    "choices": (_choices, []),
}
# The host's live settings: values, how to draw them (their ranges and choices come from
# the host's declarations, so this module holds none), and a note on what just changed.
_SETTINGS: Fields = {
    "values": (_values, _REQUIRED),
    "schema": (_schema, []),
    "note": (_text(MAX_STATUS), ""),
}

SCHEMAS: dict[str, Fields] = {
    # host -> script
    "show": _SHOW,
    "clear": {},
    "status": _STATUS,
    "state": {},  # nested "show" (or null) and "status"; see _check_state
    "settings": _SETTINGS,
    "bye": {"reason": (_text(MAX_REASON), "")},
    # script -> host
    "hello": {"token": (_token, _REQUIRED), "client": (_text(MAX_NAME), "")},
    "change": {"values": (_values, _REQUIRED)},  # a proposal; the host validates it
    "action": {"action": (_choice(ACTIONS), _REQUIRED), "arg": (_text(MAX_ARG), "")},
    # either way
    "error": {"reason": (_text(MAX_REASON), "")},
}


def _check_fields(
    body: dict[str, Any], fields: Fields, where: str, wire: bool
) -> tuple[dict[str, Any] | None, str]:
    """Validate the known fields, fill defaults, drop unknown ones (newer peers)."""
    out: dict[str, Any] = {}
    for name, (check, default) in fields.items():
        if name not in body or body[name] is None:
            if default is _REQUIRED:
                return None, f"{where}: field '{name}' is missing"
            out[name] = default
            continue
        if check is _png_wire and not wire:
            check = _png_bytes
        value, err = check(body[name])
        if err:
            return None, f"{where}: field '{name}' {err}"
        out[name] = value
    return out, ""


def _check_state(body: dict[str, Any], wire: bool) -> tuple[dict[str, Any] | None, str]:
    out: dict[str, Any] = {}
    for name, fields in (("show", _SHOW), ("status", _STATUS)):
        part = body.get(name)
        if part is None:
            out[name] = None
            continue
        if not isinstance(part, dict):
            return None, f"state: '{name}' must be an object or null"
        checked, err = _check_fields(part, fields, f"state.{name}", wire)
        if err:
            return None, err
        out[name] = checked
    return out, ""


def _validate(msg: Any, allowed: tuple[str, ...], wire: bool) -> tuple[dict | None, str]:
    if not isinstance(msg, dict):
        return None, "a message must be a JSON object"
    version = msg.get("v")
    if version != VERSION:
        return None, f"unsupported protocol version {version!r}; this side speaks {VERSION}"
    kind = msg.get("type")
    if not isinstance(kind, str) or kind not in allowed:
        shown = kind if isinstance(kind, str) else type(kind).__name__
        return None, f"unknown message type {clean_text(shown, 32)!r}"
    if kind == "state":
        body, err = _check_state(msg, wire)
    else:
        body, err = _check_fields(msg, SCHEMAS[kind], kind, wire)
    if err or body is None:
        return None, err
    return {"v": VERSION, "type": kind, **body}, ""


def _sender_types(sender: str) -> tuple[tuple[str, ...], int]:
    if sender == "host":
        return HOST_TYPES, MAX_HOST_FRAME
    return SCRIPT_TYPES, MAX_SCRIPT_FRAME


def decode(raw: Any, sender: str) -> Decoded:
    """Parse one frame sent by `sender` ("host" or "script"); never raises."""
    allowed, limit = _sender_types(sender)
    if isinstance(raw, (bytes, bytearray)):
        return Decoded(None, "binary frames are not part of the protocol; send JSON text")
    if not isinstance(raw, str):
        return Decoded(None, "a frame must be JSON text")
    if len(raw) > limit:
        return Decoded(None, f"frame of {len(raw)} characters is over the {limit} limit")
    try:
        msg = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        return Decoded(None, f"not valid JSON ({clean_text(str(exc), 80)})")
    try:
        message, err = _validate(msg, allowed, wire=True)
    except Exception as exc:  # noqa: BLE001 - a validator bug must not crash a peer
        return Decoded(None, f"invalid message ({type(exc).__name__})")
    return Decoded(message, err)


def encode(message: Any, sender: str) -> Encoded:
    """Validate a Python-form message from `sender` and turn it into a JSON frame."""
    allowed, limit = _sender_types(sender)
    try:
        checked, err = _validate(message, allowed, wire=False)  # images come back base64
        if err or checked is None:
            return Encoded(None, err)
        text = json.dumps(checked, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except Exception as exc:  # noqa: BLE001
        return Encoded(None, f"cannot encode message ({type(exc).__name__}: {exc})")
    if len(text) > limit:
        return Encoded(None, f"frame of {len(text)} characters is over the {limit} limit")
    return Encoded(text, "")


# --- builders: the one place each message's fields are spelled ----------------------------


def make_hello(token: str, client: str = "") -> dict:
    return {"v": VERSION, "type": "hello", "token": token, "client": client}


def make_settings(values: dict, schema: list | None = None, note: str = "") -> dict:
    """The host's live settings for every panel: sent on connect and after each change."""
    return {
        "v": VERSION,
        "type": "settings",
        "values": values,
        "schema": schema or [],
        "note": note,
    }


def make_change(values: dict) -> dict:
    """A panel's proposal to change live settings ({"section.key": value})."""
    return {"v": VERSION, "type": "change", "values": values}


def make_action(action: str, arg: str = "") -> dict:
    return {"v": VERSION, "type": "action", "action": action, "arg": arg}


def make_show(
    entry_id: int,
    image: bytes,
    requester: str = "",
    prompt: str = "",
    held: bool = False,
    blurred: bool = False,
) -> dict:
    return {
        "v": VERSION,
        "type": "show",
        "entry_id": entry_id,
        "image": image,
        "requester": requester,
        "prompt": prompt,
        "held": held,
        "blurred": blurred,
    }


def make_clear() -> dict:
    return {"v": VERSION, "type": "clear"}


def make_status(
    text: str, step: int = 0, total: int = 0, queue: int = 0, slideshow: bool = False
) -> dict:
    return {
        "v": VERSION,
        "type": "status",
        "text": text,
        "step": step,
        "total": total,
        "queue": queue,
        "slideshow": slideshow,
    }


def make_state(show: dict | None, status: dict | None) -> dict:
    """What is on screen now (a `make_show` message or None) and the current status."""

    def body(m: dict | None) -> dict | None:
        return None if m is None else {k: v for k, v in m.items() if k not in ("v", "type")}

    return {"v": VERSION, "type": "state", "show": body(show), "status": body(status)}


def make_bye(reason: str = "") -> dict:
    return {"v": VERSION, "type": "bye", "reason": reason}


def make_error(reason: str) -> dict:
    return {"v": VERSION, "type": "error", "reason": reason}
