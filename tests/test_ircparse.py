"""Twitch IRC lines: tags unescaped, roles from badges, outgoing lines that cannot be abused."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from generator_host.core.message import ChatMessage, MessageDeleted, Role, UserRemoved
from generator_host.edges.chat import ircparse

PRIVMSG = (
    "@badge-info=subscriber/8;badges=moderator/1,subscriber/6;color=#0D4200;"
    "display-name=Ronni\\sthe\\:Great\\\\;emotes=;id=b34ccfc7-4977-403a-8a94-33c6bac34fb8;"
    "mod=1;room-id=1337;subscriber=1;user-id=1337;user-type=mod "
    ":ronni!ronni@ronni.tmi.twitch.tv PRIVMSG #dallas :!generate a cat :3 ### dogs"
)


def test_privmsg_with_escaped_tags():
    line = ircparse.parse_line(PRIVMSG + "\r\n")
    assert line.command == "PRIVMSG"
    assert line.params == ["#dallas", "!generate a cat :3 ### dogs"]
    assert line.nick == "ronni"
    assert line.tags["display-name"] == "Ronni the;Great\\"
    event = ircparse.to_event(line, now=5.0)
    assert isinstance(event, ChatMessage)
    assert event.viewer.role == Role.MODERATOR
    assert event.viewer.display_name == "Ronni the;Great\\"
    assert event.msg_id == "b34ccfc7-4977-403a-8a94-33c6bac34fb8"
    assert event.now == 5.0


def test_tag_unescaping_rules():
    assert ircparse.unescape_tag_value(r"a\sb\:c\\d\re\nf") == "a b;c\\d\re\nf"
    assert ircparse.unescape_tag_value("trailing\\") == "trailing"
    assert ircparse.unescape_tag_value(r"\q") == "q"
    assert ircparse.parse_tags("a=;b;c=1") == {"a": "", "b": "", "c": "1"}


def test_roles_from_badges_and_flags():
    role = ircparse.role_from_tags
    assert role({"badges": "broadcaster/1,subscriber/0"}) == Role.BROADCASTER
    assert role({"badges": "moderator/1"}) == Role.MODERATOR
    assert role({"badges": "", "mod": "1"}) == Role.MODERATOR
    assert role({"badges": "lead_moderator/1"}) == Role.MODERATOR
    assert role({"badges": "vip/1,subscriber/3"}) == Role.VIP
    assert role({"badges": "founder/0"}) == Role.SUBSCRIBER
    assert role({"badges": "premium/1", "subscriber": "0"}) == Role.EVERYONE
    assert role({}) == Role.EVERYONE


def test_clearmsg_and_clearchat():
    line = ircparse.parse_line(
        "@login=ronni;room-id=;target-msg-id=abc-123-def;tmi-sent-ts=1642720582342 "
        ":tmi.twitch.tv CLEARMSG #dallas :HeyGuys"
    )
    assert ircparse.to_event(line, 1.0) == MessageDeleted("abc-123-def", 1.0)
    ban = ircparse.parse_line(
        "@room-id=12345678;target-user-id=87654321;tmi-sent-ts=1642715756806 "
        ":tmi.twitch.tv CLEARCHAT #dallas :Ronni"
    )
    assert ircparse.to_event(ban, 2.0) == UserRemoved("ronni", 2.0)
    whole_chat = ircparse.parse_line(":tmi.twitch.tv CLEARCHAT #dallas")
    assert ircparse.to_event(whole_chat, 3.0) is None


def test_other_lines():
    assert ircparse.parse_line("PING :tmi.twitch.tv").trailing == "tmi.twitch.tv"
    assert ircparse.parse_line(":tmi.twitch.tv RECONNECT").command == "RECONNECT"
    assert ircparse.parse_line("") is None
    assert ircparse.parse_line("@only=tags") is None
    assert ircparse.parse_line(":prefix.only") is None


def test_build_privmsg_threads_replies_and_caps_length():
    line = ircparse.build_privmsg("#Streamer", "queued #2", reply_to="b34c-cfc7")
    assert line == "@reply-parent-msg-id=b34c-cfc7 PRIVMSG #streamer :queued #2\r\n"
    long = ircparse.build_privmsg("streamer", "é" * 900)
    assert long == "PRIVMSG #streamer :" + "é" * 500 + "\r\n"
    assert ircparse.build_privmsg("streamer", "\r\n\x00") == ""
    assert ircparse.build_privmsg("", "hi") == ""


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=700), st.text(max_size=60))
def test_no_text_can_make_a_second_line(text, reply_to):
    line = ircparse.build_privmsg("streamer", text, reply_to)
    if not line:
        return
    assert line.endswith("\r\n")
    body = line[:-2]
    assert "\r" not in body and "\n" not in body
    assert not any(ord(c) < 32 or ord(c) == 127 for c in body)
    parsed = ircparse.parse_line(body)
    assert parsed.command == "PRIVMSG" and parsed.params[0] == "#streamer"
    assert len(parsed.trailing) <= 500
    assert set(parsed.tags) <= {"reply-parent-msg-id"}


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_tag_values_survive_escaping(value):
    assert ircparse.unescape_tag_value(ircparse.escape_tag_value(value)) == value


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_any_line_parses_or_is_none(raw):
    line = ircparse.parse_line(raw)
    if line is not None:
        assert line.command
        ircparse.to_event(line, 0.0)  # never raises
