"""Fuzzing every parser that hostile input reaches (issue #8, part 1).

Targets: the IRC line parser and line builder (chat/ircparse.py), the command parser
(commands.py), the link protocol decoder on both sides (the host decoding the script's
frames, the OBS script's LinkClient handling the host's frames), the config loader
(settings_from_dict and load_settings on TOML text), and the show behind them.
The rule everywhere: no exception escapes, and every bad input gets a defined answer
(None, a refusal reason, an error string, a problem line), never a crash.

Two modes:
- CI (default): a modest number of examples per target (`FUZZ_EXAMPLES`, default 300).
- Long, on demand: `FUZZ_LONG=1` runs 30,000 examples per target (about 400,000 cases
  in total); `FUZZ_EXAMPLES=N` sets any other number.
Every executed case is counted; the totals are printed at the end of the module (and
written to $RELIABILITY_FIGURES, see tests/reliability_helpers.py).
"""

from __future__ import annotations

import json
import math
import os
import queue
import unicodedata
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from generator_host.core import commands as cmds
from generator_host.core import settings as settings_mod
from generator_host.core.message import ChatMessage, MessageDeleted, Role, UserRemoved, Viewer
from generator_host.edges.blocklist import load_blocklist
from generator_host.edges.chat import ircparse
from obs_script import chat_diffusion_protocol as protocol
from tests.reliability_helpers import obs_link_module, record

LONG = os.environ.get("FUZZ_LONG", "").lower() in ("1", "true", "yes")
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "30000" if LONG else "300"))
CASES: Counter[str] = Counter()

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],  # fmt: skip
)

# ---- strategies ------------------------------------------------------------------------------
SPECIAL = list("\r\n\x00\x01\t\x1b\x7f\u2028\u2029\u202e\u2066\u200b\ufeff\U000e0000\\;:= @!#/.")
ANY_CHAR = st.one_of(st.characters(exclude_categories=()), st.sampled_from(SPECIAL))
hostile_text = st.text(ANY_CHAR, max_size=300)
short_text = st.text(ANY_CHAR, max_size=24)


def _bidi_or_control(text: str) -> bool:
    return any(
        unicodedata.category(c) in ("Cc", "Cs") or 0x202A <= ord(c) <= 0x202E
        or 0x2066 <= ord(c) <= 0x2069
        for c in text
    )  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def _report_counts(request: pytest.FixtureRequest) -> Iterator[None]:
    failed_before = request.session.testsfailed
    yield
    total = sum(CASES.values())
    record(
        "fuzz",
        mode="long" if LONG else "ci",
        examples_per_target=EXAMPLES,
        total_cases=total,
        per_target=dict(sorted(CASES.items())),
        targets_failed=request.session.testsfailed - failed_before,
    )


# ---- IRC lines ---------------------------------------------------------------------------------
TWITCH_COMMANDS = ["PRIVMSG", "CLEARMSG", "CLEARCHAT", "PING", "RECONNECT", "NOTICE",
                   "JOIN", "PART", "USERNOTICE", "001", "376", "CAP", "ROOMSTATE"]  # fmt: skip
tag_key = st.one_of(
    st.sampled_from(["badges", "mod", "vip", "subscriber", "display-name", "id", "user-id",
                     "target-msg-id", "reply-parent-msg-id", "badge-info", "+client"]),
    st.text(st.characters(exclude_characters="=; \r\n"), min_size=1, max_size=10),
)  # fmt: skip
badge_value = st.lists(
    st.tuples(st.sampled_from(["broadcaster", "moderator", "vip", "subscriber", "founder",
                               "turbo", "x"]), st.integers(0, 99)),
    max_size=4,
).map(lambda bs: ",".join(f"{b}/{n}" for b, n in bs))  # fmt: skip


@st.composite
def irc_lines(draw: st.DrawFn) -> str:
    """Lines shaped like Twitch's, with hostile pieces anywhere."""
    parts = []
    if draw(st.booleans()):
        tags = draw(st.dictionaries(tag_key, st.one_of(short_text, badge_value), max_size=6))
        parts.append("@" + ";".join(f"{k}={ircparse.escape_tag_value(v)}" for k, v in tags.items()))
    if draw(st.booleans()):
        nick = draw(st.text(st.characters(exclude_characters=" \r\n"), max_size=12))
        parts.append(f":{nick}!{nick}@{nick}.tmi.twitch.tv")
    parts.append(draw(st.one_of(st.sampled_from(TWITCH_COMMANDS), short_text)))
    parts += draw(st.lists(st.text(st.characters(exclude_characters=" \r\n"), max_size=10),
                           max_size=3))  # fmt: skip
    if draw(st.booleans()):
        parts.append(":" + draw(hostile_text))
    sep = draw(st.sampled_from([" ", "  ", " \t"]))
    return sep.join(parts) + draw(st.sampled_from(["", "\r", "\r\n", "\n"]))


def _check_line(raw: str) -> None:
    line = ircparse.parse_line(raw)
    if line is None:
        return
    assert line.command and " " not in line.command and line.command == line.command.upper()
    assert all(isinstance(p, str) for p in line.params)
    assert isinstance(line.nick, str) and isinstance(line.trailing, str)
    ircparse.role_from_tags(line.tags)
    event = ircparse.to_event(line, 1.0)
    assert event is None or isinstance(event, (ChatMessage, MessageDeleted, UserRemoved))
    if isinstance(event, ChatMessage):
        assert event.text == line.trailing
        assert event.viewer.role in set(Role)


@FUZZ
@given(hostile_text)
@example("@" + ";" * 5000)
@example(":" * 3 + " " * 100)
@example("@badges=broadcaster/1 :x PRIVMSG")  # no channel and no text
@example("@display-name=a\\r\\nPRIVMSG\\s#x\\s:hi :evil!e@e PRIVMSG #streamer :hello")
def test_irc_parse_line_takes_any_text(raw: str) -> None:
    CASES["irc.parse_line (any text)"] += 1
    _check_line(raw)


@FUZZ
@given(irc_lines())
def test_irc_parse_line_takes_twitch_shaped_lines(raw: str) -> None:
    CASES["irc.parse_line (Twitch-shaped)"] += 1
    _check_line(raw)


@FUZZ
@given(st.dictionaries(tag_key, short_text, max_size=8))
def test_irc_tags_unescape_what_was_escaped(tags: dict[str, str]) -> None:
    CASES["irc tags escape/unescape"] += 1
    raw = ";".join(f"{k}={ircparse.escape_tag_value(v)}" for k, v in tags.items())
    assert ircparse.parse_tags(raw) == tags
    for value in tags.values():
        assert ircparse.unescape_tag_value(ircparse.escape_tag_value(value)) == value


@FUZZ
@given(short_text, hostile_text, short_text)
@example("streamer", "hi\r\nPRIVMSG #other :pwned", "")
@example("streamer", "/ban someone", "")
@example("streamer", ".timeout x", "abc\r\nJOIN #x")
@example("#Stream\u2028er", "x" * 2000, "id")
def test_irc_build_privmsg_makes_one_safe_line(channel: str, text: str, reply_to: str) -> None:
    """Chat text can never become a second IRC line, a chat command or another channel."""
    CASES["irc.build_privmsg"] += 1
    out = ircparse.build_privmsg(channel, text, reply_to)
    if out == "":
        return
    assert out.endswith("\r\n") and out.count("\r") == 1 and out.count("\n") == 1
    assert "\x00" not in out and not any(
        unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in out[:-2]
    )
    parsed = ircparse.parse_line(out)
    assert parsed is not None and parsed.command == "PRIVMSG" and len(parsed.params) == 2
    chan, body = parsed.params
    assert chan.startswith("#") and all(c.islower() or c.isdigit() or c == "_" for c in chan[1:])
    assert 0 < len(body) <= ircparse.MAX_MESSAGE
    assert not body.startswith(("/", "."))
    assert set(parsed.tags) <= {"reply-parent-msg-id"}


@FUZZ
@given(st.sampled_from(["PASS", "NICK", "JOIN", "PONG", "CAP"]), st.lists(hostile_text, max_size=3))
def test_irc_build_line_makes_one_line(command: str, params: list[str]) -> None:
    CASES["irc.build_line"] += 1
    out = ircparse.build_line(command, *params)
    assert out.endswith("\r\n") and out.count("\n") == 1 and out.count("\r") == 1


# ---- commands ---------------------------------------------------------------------------------
words = st.one_of(
    st.sampled_from([f"!{c}" for c in cmds.COMMANDS] + ["!g", "!gen", "!G", "!GeNeRaTe", "!g2",
                                                        "!generatefoo", "###", "\x01ACTION"]),
    st.from_regex(r"(?i)(steps|size|count|seed)=[0-9x\-+.e]{0,14}", fullmatch=True),
    st.sampled_from(["steps=", "size=512x", "size=x512", "seed=99999999999999", "count=4",
                     "size=００１２", "steps=٣", "size=64x64", "count=9", "steps=50"]),
    short_text,
)  # fmt: skip
command_text = st.lists(words, max_size=12).map(" ".join)
limits = st.builds(cmds.Limits, max_steps=st.integers(1, 200), max_size=st.integers(64, 2048),
                   max_count=st.sampled_from([1, 4, 9]))  # fmt: skip


@FUZZ
@given(st.one_of(command_text, hostile_text), st.sampled_from(["!", "?", "~", "!!", "cd "]),
       limits)  # fmt: skip
@example("!generate steps=99999999999999999999 a", "!", cmds.Limits())
@example("\U000e0000!g\u200b a fox", "!", cmds.Limits())
def test_command_parser_answers_everything(text: str, prefix: str, lim: cmds.Limits) -> None:
    CASES["commands.parse_command + parse_generate"] += 1
    cmd = cmds.parse_command(text, prefix)
    if cmd is None:
        return
    assert cmd.name in cmds.COMMANDS
    assert cmd.word.startswith(prefix)
    result = cmds.parse_generate(cmd.args, lim)
    if isinstance(result, str):
        assert result.strip(), "a refusal must say why"
        assert len(result) < 200
        return
    assert result.prompt.strip()
    assert result.steps is None or 1 <= result.steps <= lim.max_steps
    for side in (result.width, result.height):
        assert side is None or (lim.min_size <= side <= lim.max_size and side % 8 == 0)
    assert result.count is None or (result.count in (1, 4, 9) and result.count <= lim.max_count)
    assert result.seed is None or 0 <= result.seed < 2**32


@FUZZ
@given(hostile_text, st.lists(hostile_text, max_size=5), st.lists(hostile_text, max_size=5))
def test_command_helpers_answer_everything(args: str, alias_items: list[str],
                                           role_items: list[str]) -> None:  # fmt: skip
    CASES["commands.parse_slideshow/login/aliases/roles"] += 1
    seconds = cmds.parse_slideshow(args)
    assert seconds is None or isinstance(seconds, str) or (seconds == 0.0 or 3 <= seconds <= 3600)
    assert " " not in cmds.parse_login(args)
    aliases, problems = cmds.build_aliases(alias_items)
    assert set(aliases.values()) <= set(cmds.COMMANDS)
    roles, more = cmds.build_roles(role_items)
    assert set(roles) == set(cmds.COMMANDS) and all(isinstance(r, Role) for r in roles.values())
    assert all(isinstance(p, str) and p for p in problems + more)


# ---- the link protocol -------------------------------------------------------------------------
PNG = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00"
    b"\x1f\x15\xc4\x89\x00\x00\x00\rIDATx\x9cc\xf8\x0f\x00\x00\x01\x01\x00\x05\x18\xd8N\x00\x00"
    b"\x00\x00IEND\xaeB`\x82"
)
json_scalar = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True), hostile_text,
)  # fmt: skip
json_value = st.recursive(
    json_scalar,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(short_text, inner, max_size=4)),
    max_leaves=12,
)  # fmt: skip
FIELD_VALUES: dict[str, Any] = {
    "entry_id": st.one_of(st.integers(-5, 2**60), json_scalar),
    "image": st.one_of(st.just(protocol.base64.b64encode(PNG).decode()), hostile_text,
                       st.just("iVBORw0KGgo="), st.binary(max_size=40).map(
                           lambda b: protocol.base64.b64encode(b).decode())),
    "values": st.one_of(st.dictionaries(
        st.one_of(st.sampled_from([d.name for d in settings_mod.declarations()]), short_text),
        st.one_of(st.sampled_from([1, 4, 9, 0, 2, True, "hold", "nuke", 0.03, 1e300]),
                  st.floats(allow_nan=True), json_scalar), max_size=6), json_value),
    "schema": st.one_of(st.just(settings_mod.live_schema("obs")), st.lists(st.dictionaries(
        st.sampled_from(["key", "kind", "label", "lo", "hi", "step", "choices"]), json_value),
        max_size=3), json_value),
    "action": st.one_of(st.sampled_from(protocol.ACTIONS), json_scalar),
    "show": st.one_of(st.none(), st.dictionaries(
        st.sampled_from(["entry_id", "image", "prompt", "requester", "held"]), json_scalar)),
    "status": st.one_of(st.none(), st.dictionaries(
        st.sampled_from(["text", "step", "total", "queue", "slideshow"]), json_scalar)),
}  # fmt: skip


@st.composite
def near_valid_frames(draw: st.DrawFn, sender: str) -> str:
    """A frame of a real type with each field possibly wrong, missing or extra."""
    types = protocol.HOST_TYPES if sender == "host" else protocol.SCRIPT_TYPES
    kind = draw(
        st.one_of(
            st.sampled_from(types), st.sampled_from(protocol.HOST_TYPES + protocol.SCRIPT_TYPES)
        )
    )
    msg: dict[str, Any] = {"v": draw(st.sampled_from([1, 1, 1, 2, "1", None, 1.0])), "type": kind}
    fields = list(protocol.SCHEMAS.get(kind, {})) + (["show", "status"] if kind == "state" else [])
    for name in fields:
        if draw(st.integers(0, 9)) == 0:
            continue
        msg[name] = draw(FIELD_VALUES.get(name, json_scalar))
    msg.update(draw(st.dictionaries(short_text, json_value, max_size=2)))
    text = json.dumps(msg, allow_nan=True)
    if draw(st.integers(0, 7)) == 0:  # damage the text itself
        cut = draw(st.integers(0, len(text)))
        text = text[:cut] + draw(short_text) + text[cut + 1 :]
    return text


any_frame = st.one_of(hostile_text, json_value.map(lambda v: json.dumps(v, allow_nan=True)),
                      st.binary(max_size=64))  # fmt: skip


def _check_decoded(dec: protocol.Decoded, sender: str) -> None:
    assert (dec.message is None) != (dec.error == "")
    if dec.message is None:
        assert isinstance(dec.error, str) and dec.error
        return
    msg = dec.message
    assert msg["v"] == protocol.VERSION
    assert msg["type"] in (protocol.HOST_TYPES if sender == "host" else protocol.SCRIPT_TYPES)
    for key, cap in (("prompt", protocol.MAX_PROMPT), ("requester", protocol.MAX_NAME),
                     ("text", protocol.MAX_STATUS), ("reason", protocol.MAX_REASON),
                     ("client", protocol.MAX_NAME), ("arg", protocol.MAX_ARG)):  # fmt: skip
        for part in (msg, msg.get("show") or {}, msg.get("status") or {}):
            if isinstance(part.get(key), str):
                assert len(part[key]) <= cap and not _bidi_or_control(part[key])
                part[key].encode("utf-8")  # OBS converts to UTF-8
    for value in (msg.get("values") or {}).values():
        assert isinstance(value, (bool, int, str)) or math.isfinite(value)
    # what a peer accepted, it can send back unchanged
    back = dict(msg)
    if back["type"] == "show":
        back["image"] = msg["image"]
    enc = protocol.encode(back, sender)
    assert enc.error == "" and enc.text is not None, enc.error


@FUZZ
@given(st.one_of(near_valid_frames("script"), any_frame))
@example("[" * 100000)
@example('{"v":1,"type":"hello","token":"' + "t" * 300 + '"}')
@example('{"v":1,"type":"change","values":{"safety.threshold_offset":1e999}}')
@example('{"v":1,"type":"change","values":{"show.grid":true,"safety.approval_mode":"x"}}')
@example('{"v":1,"type":"action","action":"approve","arg":"\\ud800"}')
def test_host_decodes_any_script_frame(raw: Any) -> None:
    """The host's side: what an OBS script (or anyone reaching the port) may send."""
    CASES["protocol.decode on the host (script frames)"] += 1
    dec = protocol.decode(raw, "script")
    _check_decoded(dec, "script")
    if dec.message is not None and dec.message["type"] == "action":
        # what the host then does with it: a streamer action for the show
        from generator_host.core.show import StreamerAction

        show = _show()
        show.handle(StreamerAction(dec.message["action"], dec.message["arg"], now=1.0))
    if dec.message is not None and dec.message["type"] == "change":
        # what the host then does with it: the one check of a live change
        settings = settings_mod.Settings()
        settings_mod.apply_changes(settings, dec.message["values"], "obs")
        _check_settings(settings, [])


_SHOW: Any = None


def _show() -> Any:
    global _SHOW
    if _SHOW is None:
        from generator_host.core.show import Show

        _SHOW = Show(settings_mod.Settings(), blocklist=load_blocklist("")[0])
    return _SHOW


@pytest.fixture(scope="module")
def link_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The OBS script's real LinkClient (its thread is never started: frames are fed in)."""
    mod = obs_link_module()
    client = mod.LinkClient(
        "ws://127.0.0.1:9", "tok", "fuzz", str(tmp_path_factory.mktemp("obs-img"))
    )
    yield client
    for s in (client._wake_r, client._wake_w):
        s.close()


@FUZZ
@given(st.one_of(near_valid_frames("host"), any_frame))
@example('{"v":1,"type":"state","show":{"entry_id":1,"image":"AAAA"},"status":7}')
@example('{"v":1,"type":"show","entry_id":-1,"image":"' + "A" * 64 + '"}')
def test_obs_script_takes_any_host_frame(link_client: Any, raw: Any) -> None:
    """The script's side: decode plus the LinkClient's handling (inbox, image files)."""
    CASES["protocol.decode + LinkClient._handle in the OBS script (host frames)"] += 1
    _check_decoded(protocol.decode(raw, "host"), "host")
    folder = Path(link_client.images.folder)
    link_client.connected = True
    assert link_client._handle(raw) in (True, False)
    while True:
        try:
            item = link_client.inbox.get_nowait()
        except queue.Empty:
            break
        assert item["type"] in ("show", "clear", "status", "link", "log", "settings", "undelivered")
        if item["type"] == "log":
            assert "\n" not in item["text"]
        if item["type"] == "show":
            path = Path(item["path"]).resolve()
            assert path.parent == folder.resolve() and path.read_bytes().startswith(PNG[:8])
            assert len(item["prompt"]) <= protocol.MAX_PROMPT
    assert all(p.name.startswith("show-") for p in folder.iterdir())


# ---- the config loader ------------------------------------------------------------------------
def _section_keys() -> dict[str, list[str]]:
    hints = settings_mod.get_type_hints(settings_mod.Settings)
    return {name: list(settings_mod.get_type_hints(t)) for name, t in hints.items()}


SECTIONS = _section_keys()
toml_scalar = st.one_of(
    st.booleans(), st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=True),
    st.text(ANY_CHAR.filter(lambda c: unicodedata.category(c) != "Cs"), max_size=30),
    st.lists(st.text(max_size=8), max_size=3), st.lists(st.integers(), max_size=3),
)  # fmt: skip


@st.composite
def config_dicts(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 20)) == 0:
        return draw(json_value)
    raw: dict[str, Any] = {}
    for section in draw(st.lists(st.one_of(st.sampled_from(sorted(SECTIONS)), short_text),
                                 max_size=8)):  # fmt: skip
        if draw(st.integers(0, 15)) == 0:
            raw[section] = draw(toml_scalar)
            continue
        keys = SECTIONS.get(section, []) + ["nonsense"]
        raw[section] = draw(st.dictionaries(st.sampled_from(keys), toml_scalar, max_size=8))
    return raw


def _check_settings(settings: settings_mod.Settings, problems: list[str]) -> None:
    assert all(isinstance(p, str) and p for p in problems)
    defaults = settings_mod.Settings()
    for section, keys in SECTIONS.items():
        for key in keys:
            value = getattr(getattr(settings, section), key)
            assert type(value) is type(getattr(getattr(defaults, section), key)), (section, key)
    assert settings.safety.approval_mode in settings_mod.APPROVAL_MODES
    assert -1.0 <= settings.safety.threshold_offset <= 1.0
    assert settings.show.grid in (1, 4, 9)
    assert 0 <= settings.link.port <= 65535 and 0 < settings.twitch.port <= 65535
    assert 1 <= settings.moderation.max_queue <= 10000


@FUZZ
@given(config_dicts())
@example({"safety": {"threshold_offset": math.nan}})
@example({"show": {"grid": True}, "link": {"port": 70000}})
@example([1, 2])
def test_config_loader_answers_every_table(raw: Any) -> None:
    CASES["settings.settings_from_dict"] += 1
    settings, problems = settings_mod.settings_from_dict(raw)
    _check_settings(settings, problems)


@FUZZ
@given(config_dicts())
@example({"moderation": {"blocklist_file": "\x00"}})  # found by the long mode
def test_the_show_starts_with_any_loaded_config(raw: Any) -> None:
    """What the settings then drive: the show must start and take a chat line with them."""
    CASES["settings -> Show(settings) + a chat line"] += 1
    settings, _ = settings_mod.settings_from_dict(raw)
    from generator_host.core.show import Show

    show = Show(settings, blocklist=load_blocklist(settings.moderation.blocklist_file)[0])
    viewer = Viewer("viewer", "Viewer", "1", Role.BROADCASTER)
    show.handle(ChatMessage(viewer=viewer, text="!generate a fox", msg_id="m1", now=100.0))


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return (
            "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
        )
    if isinstance(v, int):
        return str(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return json.dumps(v)


@st.composite
def toml_texts(draw: st.DrawFn) -> str:
    raw = draw(config_dicts())
    if not isinstance(raw, dict):
        return draw(hostile_text)
    lines = []
    for section, values in raw.items():
        lines.append(f"[{json.dumps(section)}]")
        if isinstance(values, dict):
            lines += [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in values.items()]
    text = "\n".join(lines)
    if draw(st.integers(0, 4)) == 0:
        cut = draw(st.integers(0, len(text)))
        text = text[:cut] + draw(short_text) + text[cut:]
    return text


@pytest.fixture(scope="module")
def config_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-config") / "config.toml"


@FUZZ
@given(st.one_of(toml_texts(), st.binary(max_size=200).map(lambda b: b.decode("latin-1"))))
@example("a = " + "[" * 5000)
@example("[twitch]\nport = 0\n[link]\nport = -1\n")
@example("\udcff = 1")
@example("\ud800")
def test_config_loader_reads_any_file(config_file: Path, text: str) -> None:
    CASES["settings.load_settings (TOML files)"] += 1
    config_file.write_bytes(text.encode("utf-8", "surrogatepass"))
    settings, problems = settings_mod.load_settings(config_file)
    _check_settings(settings, problems)
