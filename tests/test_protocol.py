"""The link's message shapes: what one side encodes the other decodes, and junk is refused.

Each assertion is something a streamer would notice: an image that arrives intact, a
prompt that cannot break the on-screen text, a hostile frame answered with a reason
instead of a crashed OBS or host.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from obs_script import chat_diffusion_protocol as p
from tests.fixtures_obs import make_png

SCRIPT_DIR = Path(__file__).resolve().parent.parent / "obs_script"


def png() -> bytes:
    return make_png((200, 30, 30), size=8)


def roundtrip(msg: dict, sender: str) -> dict:
    enc = p.encode(msg, sender)
    assert enc.error == "" and enc.text is not None
    dec = p.decode(enc.text, sender)
    assert dec.error == "", dec.error
    assert dec.message is not None
    return dec.message


def test_show_carries_the_image_bytes_and_texts_intact() -> None:
    image = png()
    msg = p.make_show(7, image, "Alice", "a red fox, oil painting", held=False, blurred=True)
    out = roundtrip(msg, "host")
    assert out["image"] == image
    assert (out["entry_id"], out["requester"], out["prompt"]) == (7, "Alice", msg["prompt"])
    assert out["blurred"] is True and out["held"] is False
    assert out["v"] == p.VERSION


def test_state_carries_screen_and_status_or_nothing_on_screen() -> None:
    image = png()
    full = roundtrip(
        p.make_state(p.make_show(3, image, "bob", "cat"), p.make_status("busy", 2, 4, 1)), "host"
    )
    assert full["show"]["image"] == image and full["show"]["entry_id"] == 3
    assert full["status"]["text"] == "busy" and full["status"]["queue"] == 1
    empty = roundtrip(p.make_state(None, None), "host")
    assert empty["show"] is None and empty["status"] is None


def test_images_are_base64_once_on_the_wire_and_the_message_is_left_as_it_was() -> None:
    import base64

    image = png()
    show = p.make_show(5, image, "dora", "a boat")
    state = p.make_state(show, None)
    wire_show = json.loads(p.encode(show, "host").text or "")
    wire_state = json.loads(p.encode(state, "host").text or "")
    assert wire_show["image"] == wire_state["show"]["image"] == base64.b64encode(image).decode()
    assert show["image"] is image and state["show"]["image"] is image  # caller's dict kept


def test_script_messages_roundtrip() -> None:
    assert roundtrip(p.make_hello("tok", "OBS test"), "script")["token"] == "tok"
    change = {"safety.threshold_offset": 0.0125, "show.grid": 4, "gallery.save_images": False}
    assert roundtrip(p.make_change(change), "script")["values"] == change
    assert roundtrip(p.make_action("approve"), "script")["action"] == "approve"


def test_texts_lose_control_and_bidi_characters_and_are_capped() -> None:
    prompt = "line1\nline2\x1b[31m\u202eevil\x00" + "x" * 2000
    out = roundtrip(p.make_show(1, png(), "na\tme\x07", prompt), "host")
    assert out["requester"] == "na me"
    assert "\n" not in out["prompt"] and "\x1b" not in out["prompt"]
    assert "\u202e" not in out["prompt"] and "\x00" not in out["prompt"]
    assert out["prompt"].startswith("line1 line2[31mevil")
    assert len(out["prompt"]) <= p.MAX_PROMPT


def test_lone_surrogates_are_dropped() -> None:
    raw = '{"v":1,"type":"status","text":"ok \\ud800 fine"}'
    out = p.decode(raw, "host").message
    assert out is not None and out["text"] == "ok fine"
    out["text"].encode("utf-8")  # OBS converts to UTF-8: must not fail


def test_wrong_version_says_which_version_this_side_speaks() -> None:
    dec = p.decode(json.dumps({"v": 2, "type": "clear"}), "host")
    assert dec.message is None and "version 2" in dec.error and "speaks 1" in dec.error


def test_a_side_cannot_send_the_other_sides_messages() -> None:
    assert "unknown message type" in p.decode('{"v":1,"type":"hello","token":"t"}', "host").error
    assert "unknown message type" in p.decode('{"v":1,"type":"clear"}', "script").error


def test_bad_fields_are_named_in_the_error() -> None:
    cases = {
        '{"v":1,"type":"change","values":{"safety.threshold_offset":NaN}}': "threshold_offset",
        '{"v":1,"type":"change","values":{"a b":1}}': "setting name",
        '{"v":1,"type":"change","values":{"show.grid":[4]}}': "show.grid",
        '{"v":1,"type":"change","values":[1]}': "values",
        '{"v":1,"type":"change"}': "missing",
        '{"v":1,"type":"action","action":"rm -rf"}': "action",
        '{"v":1,"type":"action"}': "missing",
    }
    for raw, word in cases.items():
        dec = p.decode(raw, "script")
        assert dec.message is None and word in dec.error, (raw, dec.error)


def test_show_refuses_what_is_not_a_png() -> None:
    import base64

    gif = base64.b64encode(b"GIF89a....").decode()
    for image, word in (("%%%", "base64"), (gif, "PNG"), (5, "base64")):
        raw = json.dumps({"v": 1, "type": "show", "entry_id": 1, "image": image})
        dec = p.decode(raw, "host")
        assert dec.message is None and word in dec.error
    assert "PNG" in p.encode(p.make_show(1, b"not a png"), "host").error


def test_size_caps_refuse_oversize_frames_with_a_reason() -> None:
    big = '{"v":1,"type":"action","action":"clear","arg":"' + "a" * p.MAX_SCRIPT_FRAME + '"}'
    assert "limit" in p.decode(big, "script").error
    huge = png() + b"\0" * (p.MAX_IMAGE_BYTES + 1)
    assert "larger" in p.encode(p.make_show(1, huge), "host").error


def test_deeply_nested_json_and_binary_frames_are_refused_without_raising() -> None:
    assert p.decode("[" * 50000 + "]" * 50000, "host").message is None
    assert "binary" in p.decode(b"\x00\x01", "host").error
    assert p.decode(None, "host").error
    assert "version" in p.decode("[1,2]", "script").error or p.decode("[1,2]", "script").error


def test_unknown_fields_from_a_newer_peer_are_ignored() -> None:
    dec = p.decode('{"v":1,"type":"status","text":"hi","colour":"red"}', "host")
    assert dec.message is not None and "colour" not in dec.message


@settings(max_examples=300, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.floats() | st.text() | st.integers(),
        lambda c: st.lists(c) | st.dictionaries(st.text(), c),
        max_leaves=20,
    )
)
def test_any_json_value_decodes_or_gives_a_reason(value: object) -> None:
    for sender in ("host", "script"):
        raw = json.dumps(value)
        dec = p.decode(raw, sender)
        assert (dec.message is None) != (dec.error == "")


@settings(max_examples=200, deadline=None)
@given(
    st.fixed_dictionaries(
        {"v": st.just(1), "type": st.sampled_from(p.SCRIPT_TYPES + p.HOST_TYPES)},
        optional={
            k: st.one_of(st.text(), st.integers(), st.floats(), st.booleans(), st.none())
            for k in ("token", "text", "grid", "action", "entry_id", "reason", "step", "held")
        },
    )
)
def test_random_messages_never_raise(msg: dict) -> None:
    for sender in ("host", "script"):
        dec = p.decode(json.dumps(msg), sender)
        assert (dec.message is None) != (dec.error == "")
        p.encode(msg, sender)


@given(st.text(max_size=3000))
def test_clean_text_is_one_capped_printable_line(text: str) -> None:
    out = p.clean_text(text, 100)
    assert len(out) <= 100
    assert not any(ord(c) < 32 or 0x7F <= ord(c) < 0xA0 for c in out)
    out.encode("utf-8")


def test_protocol_and_script_parse_as_python_3_9() -> None:
    """OBS embeds the streamer's Python, which may be older than the host's."""
    for name in ("chat_diffusion_protocol.py", "chat_diffusion.py", "chat_diffusion_link.py"):
        path = SCRIPT_DIR / name
        if path.exists():
            ast.parse(path.read_text(encoding="utf-8"), feature_version=(3, 9))


def test_protocol_uses_the_standard_library_only() -> None:
    tree = ast.parse((SCRIPT_DIR / "chat_diffusion_protocol.py").read_text(encoding="utf-8"))
    import sys

    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
            for name in names:
                root = (name or "").split(".")[0]
                assert root == "__future__" or root in sys.stdlib_module_names, name


def test_the_host_sends_live_settings_with_their_ranges_and_choices() -> None:
    """The panel draws what the host declares: values, kinds, ranges, choices, labels."""
    from generator_host.core import settings as st

    msg = p.make_settings(st.live_values(st.Settings(), "obs"), st.live_schema("obs"), "hi")
    out = roundtrip(msg, "host")
    assert out["values"]["safety.approval_mode"] == "blur" and out["note"] == "hi"
    by_key = {item["key"]: item for item in out["schema"]}
    offset = by_key["safety.threshold_offset"]
    assert (offset["kind"], offset["lo"], offset["hi"]) == ("float", -1.0, 1.0)
    modes = [value for value, _ in by_key["safety.approval_mode"]["choices"]]
    assert modes == ["blur", "hold", "skip", "off"]
    assert [v for v, _ in by_key["show.grid"]["choices"]] == [1, 4, 9]
    assert by_key["show.slideshow_seconds"]["lo"] == 0.0  # 0 is "off", below the 3 s minimum


def test_live_settings_messages_are_bounded() -> None:
    many = {f"k{i}": i for i in range(p.MAX_LIVE + 1)}
    assert "at most" in p.encode(p.make_settings(many), "host").error
    bad_schema = [{"key": "a.b", "kind": "slider"}]
    assert "kind" in p.encode(p.make_settings({}, bad_schema), "host").error
    # each side sends only its own: the host never proposes, a script never dictates
    assert "unknown message type" in p.encode(p.make_change({"x": 1}), "host").error
    assert "unknown message type" in p.encode(p.make_settings({"x": 1}), "script").error
