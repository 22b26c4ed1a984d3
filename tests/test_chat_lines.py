"""Chat lines a real Twitch chat sends that the bot once got wrong, over a real socket.

Each test drives the Twitch adapter against the local Twitch-dialect server
(tests/twitch_server.py) with the show behind it, the way a stream meets it: a viewer
presses Reply, a line arrives for another channel, a Shared Chat partner's viewer types
a command, a line too long for the reader arrives, a blocked word hides behind an
invisible character. Viewers' display names differ from their logins, as on Twitch.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable

from generator_host.core.message import ChatMessage, Role
from generator_host.core.settings import Settings, TwitchSettings
from generator_host.core.show import Reply, Show
from generator_host.edges.blocklist import load_blocklist
from generator_host.edges.chat.irc import TwitchAdapter
from tests.fixtures_twitch import until
from tests.twitch_server import HOST, TwitchServer, escape

ROOM_ID = "1"  # the test server's room id for #streamer (its ROOMSTATE says so)


def _chat(
    server: TwitchServer,
    twitch: TwitchSettings,
    script: Callable[[TwitchServer], None],
    *,
    expect_events: int,
    settle: float = 0.3,
) -> tuple[list[ChatMessage], list[str]]:
    """Run the bot with a show behind it, play `script` on the server, and return the chat
    messages the show received and the texts the bot said in chat."""
    show = Show(Settings(twitch=twitch), rng_seed=1, blocklist=load_blocklist("")[0])
    events: list[ChatMessage] = []

    async def main() -> None:
        adapter = TwitchAdapter(twitch)

        def on_event(event) -> None:  # noqa: ANN001 - any chat event
            if isinstance(event, ChatMessage):
                events.append(event)
            for effect in show.handle(event):
                if isinstance(effect, Reply):
                    asyncio.ensure_future(adapter.say(effect.text, effect.reply_to))

        task = asyncio.ensure_future(adapter.run(on_event))
        assert await until(adapter.connected.is_set), "the bot did not join"
        # the channel's ROOMSTATE (right after JOIN) tells the bot its room id
        await until(lambda: getattr(getattr(adapter, "room", None), "room_id", "") == ROOM_ID, 2)
        await asyncio.to_thread(script, server)
        await until(lambda: len(events) >= expect_events, 5)
        await asyncio.sleep(settle)
        await adapter.close()
        await asyncio.wait_for(task, 5)

    asyncio.run(main())
    said = [s.line.partition("PRIVMSG ")[2].partition(" :")[2] for s in server.sent("PRIVMSG")]
    return events, said


def _line(
    login: str, text: str, tags: dict[str, str], channel: str = "streamer", msg_id: str = ""
) -> str:
    """A PRIVMSG as Twitch sends it, for a channel of our choosing."""
    base = {
        "badges": "",
        "display-name": login.capitalize(),
        "id": msg_id or f"id-{login}-{abs(hash(text)) % 10**6}",
        "room-id": ROOM_ID,
        "user-id": str(abs(hash(login)) % 10**8),
    }
    base.update(tags)
    tag_text = ";".join(f"{k}={escape(v)}" for k, v in base.items())
    return f"@{tag_text} :{login}!{login}@{login}.{HOST} PRIVMSG #{channel} :{text}"


def _reply_tags(parent_login: str, parent_display: str, body: str) -> dict[str, str]:
    """The tags Twitch's Reply button adds (a reply to the parent's message)."""
    return {
        "reply-parent-msg-id": "parent-msg-1",
        "reply-parent-user-id": "4242",
        "reply-parent-user-login": parent_login,
        "reply-parent-display-name": parent_display,
        "reply-parent-msg-body": body,
        "reply-thread-parent-msg-id": "parent-msg-1",
        "reply-thread-parent-user-login": parent_login,
        "reply-thread-parent-display-name": parent_display,
    }


# ---- the Reply button -------------------------------------------------------------------
def test_commands_sent_with_the_reply_button_work(twitch_server: TwitchServer, twitch_settings):
    """Twitch puts "@Parent " in front of a reply: `@PaintBot !queue` (a reply to the
    bot) and `@Rita !generate a cat` (a reply to a viewer) are the commands themselves."""

    def script(server: TwitchServer) -> None:
        # Dora replies to one of the bot's messages (display name differs from the login)
        server.privmsg(
            "dora_42",
            "@PaintBot !queue",
            tags={"display-name": "Dora", **_reply_tags("paintbot", "PaintBot", "queued #1")},
        )
        # Sam replies to Rita's message (login rita_paints, display name Rita)
        server.privmsg(
            "sam_x",
            "@Rita !generate a cat",
            tags={"display-name": "Sam", **_reply_tags("rita_paints", "Rita", "nice one")},
        )
        server.privmsg(
            "sam_x", "@rita_paints !queue", tags={"display-name": "Sam", **_reply_tags(
                "rita_paints", "Rita", "again")}
        )  # fmt: skip

    events, said = _chat(twitch_server, twitch_settings, script, expect_events=3)
    assert [e.text for e in events] == ["!queue", "!generate a cat", "!queue"]
    assert any("about" in text and "Dora" not in text for text in said), said  # Dora's !queue
    assert any(text.startswith("yours is generating now") for text in said), said  # Sam's


def test_a_mention_without_reply_tags_stays_text(twitch_server: TwitchServer, twitch_settings):
    """Only a reply (reply-parent tags naming that parent) loses its mention: a plain
    "@PaintBot !queue" typed by hand, or a reply whose mention names someone else, is
    ordinary chat and no command."""

    def script(server: TwitchServer) -> None:
        server.privmsg("dora_42", "@PaintBot !queue", tags={"display-name": "Dora"})
        server.privmsg(
            "dora_42",
            "@Someone !queue",
            tags={"display-name": "Dora", **_reply_tags("rita_paints", "Rita", "hi")},
        )

    events, said = _chat(twitch_server, twitch_settings, script, expect_events=2)
    assert [e.text for e in events] == ["@PaintBot !queue", "@Someone !queue"]
    assert said == []


# ---- other channels and Shared Chat -------------------------------------------------------
def test_lines_for_another_channel_are_ignored(twitch_server: TwitchServer, twitch_settings):
    """A connection that also receives another channel's chat (or a line with another
    room id) never obeys it; the joined channel's own lines still work."""

    def script(server: TwitchServer) -> None:
        server.send_raw(
            _line("boss_other", "!clear", {"badges": "broadcaster/1"}, channel="otherchan")
        )
        server.send_raw(_line("eve_99", "!queue", {"room-id": "777"}))
        server.send_raw(f"@target-msg-id=x;room-id=777 :{HOST} CLEARMSG #otherchan :gone")
        server.privmsg("dora_42", "!queue", tags={"display-name": "Dora"})

    events, said = _chat(twitch_server, twitch_settings, script, expect_events=1)
    assert [(e.viewer.login, e.text) for e in events] == [("dora_42", "!queue")]
    assert len(said) == 1 and "about" in said[0]


def _partner_tags(badges: str, source_badges: str) -> dict[str, str]:
    """A Shared Chat message mirrored from partner channel 999 into ours."""
    return {
        "badges": badges,
        "source-badges": source_badges,
        "source-badge-info": "",
        "source-id": "source-msg-1",
        "source-room-id": "999",
        "display-name": "Partner Mod",
    }


def test_shared_chat_partner_viewers_are_ignored_by_default(
    twitch_server: TwitchServer, twitch_settings
):
    def script(server: TwitchServer) -> None:
        server.send_raw(_line("pmod", "!clear", _partner_tags("", "moderator/1")))
        server.send_raw(_line("pviewer", "!queue", _partner_tags("", "")))
        # during a session our own viewers' messages carry our own id as source-room-id
        server.privmsg(
            "dora_42",
            "!queue",
            tags={"display-name": "Dora", "source-room-id": ROOM_ID, "source-badges": ""},
        )

    events, said = _chat(twitch_server, twitch_settings, script, expect_events=1)
    assert [(e.viewer.login, e.text) for e in events] == [("dora_42", "!queue")]
    assert len(said) == 1 and "about" in said[0]


def test_shared_chat_setting_obeys_partners_without_their_channels_roles(
    twitch_server: TwitchServer, twitch_settings
):
    """With shared_chat_commands on, partner viewers may use commands, but a moderator (or
    the broadcaster) of the partner channel is an ordinary viewer here; a viewer who also
    moderates OUR channel keeps that role (their `badges` for our channel say so)."""
    twitch = dataclasses.replace(twitch_settings, shared_chat_commands=True)

    def script(server: TwitchServer) -> None:
        server.send_raw(_line("pmod", "!clear", _partner_tags("", "moderator/1")))
        server.send_raw(_line("pboss", "!clear", _partner_tags("broadcaster/1", "broadcaster/1")))
        server.send_raw(_line("ourmod", "!slideshow off", _partner_tags("moderator/1", "")))
        server.send_raw(_line("pviewer", "!queue", _partner_tags("", "subscriber/3")))

    events, said = _chat(twitch_server, twitch, script, expect_events=4)
    roles = {e.viewer.login: e.viewer.role for e in events}
    assert roles == {
        "pmod": Role.EVERYONE,
        "pboss": Role.EVERYONE,
        "ourmod": Role.MODERATOR,
        "pviewer": Role.EVERYONE,
    }
    assert sum("!clear is for moderators" in text for text in said) == 2, said
    assert any("slideshow off" in text for text in said), said
    assert any("about" in text for text in said), said


# ---- an over-long line ------------------------------------------------------------------
def test_an_over_long_line_is_dropped_whole_never_its_tail(
    twitch_server: TwitchServer, twitch_settings
):
    """A line over the reader's 64 KiB limit is discarded up to its CRLF: the part after
    the limit (here a broadcaster's !terminate hidden in a tag value) is never a line."""
    smuggled = f"@badges=broadcaster/1 :boss!boss@boss.{HOST} PRIVMSG #streamer :!clear"
    head = "@client-nonce=" + "a" * (65537 - len("@client-nonce="))  # one byte over the limit
    assert len(head.encode()) == 65537

    def script(server: TwitchServer) -> None:
        server.send_bytes(head.encode())  # the reader drops what it has, then waits for more
        server.wait_for(lambda: False, 0.5)
        server.send_bytes(smuggled.encode() + b"\r\n")
        server.privmsg("dora_42", "!queue", tags={"display-name": "Dora"})

    events, said = _chat(twitch_server, twitch_settings, script, expect_events=1)
    assert [(e.viewer.login, e.text) for e in events] == [("dora_42", "!queue")]
    assert len(said) == 1 and "about" in said[0]


# ---- the blocklist ---------------------------------------------------------------------
def test_invisible_characters_and_negative_prompts_never_get_blocked_words_through(
    twitch_server: TwitchServer, twitch_settings
):
    """A soft hyphen (or any invisible format character) inside a blocked word is refused;
    a blocked word in the negative prompt is dropped and never said back in chat."""

    def script(server: TwitchServer) -> None:
        server.privmsg("eve_99", "!generate nu\u00adde art", tags={"display-name": "Eve"})
        server.privmsg("zed_7", "!generate nu\u2063de art", tags={"display-name": "Zed"})
        server.privmsg("yan_3", "!generate nu\u180ede art", tags={"display-name": "Yan"})

    events, said = _chat(twitch_server, twitch_settings, script, expect_events=3)
    assert len(events) == 3
    assert sum("blocked word" in text for text in said) == 3, said


def test_a_blocked_negative_prompt_never_comes_back_in_chat(
    twitch_server: TwitchServer, twitch_settings
):
    """`!generate a cat ### blurry, nsfw` is accepted without the blocked part, so the
    image's negative prompt holds no blocked word for any reply to repeat."""
    show = Show(Settings(twitch=twitch_settings), rng_seed=1, blocklist=load_blocklist("")[0])

    async def main() -> list[str]:
        adapter = TwitchAdapter(twitch_settings)
        negatives: list[str] = []

        def on_event(event) -> None:  # noqa: ANN001 - any chat event
            for effect in show.handle(event):
                request = getattr(effect, "request", None)
                if request is not None:
                    negatives.append(request.params.negative_prompt)

        task = asyncio.ensure_future(adapter.run(on_event))
        assert await until(adapter.connected.is_set)
        twitch_server.privmsg(
            "eve_99", "!generate a cat ### blurry, n\u00adsfw, text", tags={"display-name": "Eve"}
        )
        assert await until(lambda: len(negatives) == 1)
        await adapter.close()
        await asyncio.wait_for(task, 5)
        return negatives

    assert asyncio.run(main()) == ["blurry, text"]


# ---- cheers -----------------------------------------------------------------------------
def test_a_cheer_paints_ahead_of_free_requests_and_a_refused_one_is_told_why(
    twitch_server: TwitchServer, twitch_settings
):
    """`Cheer100 a red fox` (bits=100, the default min_bits) is a request for "a red fox"
    that waits ahead of free ones; a smaller cheer is just a cheer; a cheer with a blocked
    word is refused by name, however busy the refusals are."""

    def script(server: TwitchServer) -> None:
        server.privmsg("ann", "!generate a boat")  # starts at once
        server.privmsg("bob_b", "!generate a house", tags={"display-name": "Bob"})  # queued #1
        server.privmsg("cleo", "Cheer100 a red fox", tags={"bits": "100", "id": "cheer-cleo"})
        server.privmsg("dan", "Cheer50 nice stream", tags={"bits": "50"})  # below min_bits
        server.privmsg("eve", "Cheer200 nude fox", tags={"bits": "200", "id": "cheer-eve"})
        server.privmsg("bob_b", "!queue", tags={"display-name": "Bob", "id": "queue-bob"})

    events, said = _chat(twitch_server, twitch_settings, script, expect_events=6)
    assert [e.text for e in events][2:5] == ["a red fox", "nice stream", "nude fox"]
    assert [e.bits for e in events] == [0, 0, 100, 50, 200, 0]
    answers = {}  # the answer threaded under each message, as viewers see it
    for sent in twitch_server.sent("PRIVMSG"):
        parent = sent.line.partition("reply-parent-msg-id=")[2].partition(" ")[0]
        answers[parent] = sent.line.partition("PRIVMSG ")[2].partition(" :")[2]
    assert "queued #1," in answers["cheer-cleo"], said  # ahead of Bob's
    assert answers["queue-bob"].startswith("you are #2 of 2"), said
    assert answers["cheer-eve"].startswith("the prompt contains a blocked word"), said
    assert len(said) == 5, said  # Ann, Bob, Cleo, Eve, Bob: Dan's plain cheer is not answered
