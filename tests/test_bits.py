"""Cheers: who paints with bits, where they wait, what a refused cheer hears (no I/O)."""

from __future__ import annotations

import pytest

from generator_host.core.message import ChatMessage, Role, Viewer
from generator_host.core.moderation import Blocklist, Moderator
from generator_host.core.settings import Settings
from generator_host.core.show import GenerationStarted, Reply, Show, StartBatch
from generator_host.edges.chat.ircparse import bits_of, cheer_text


def make(**bits) -> Show:
    s = Settings()
    s.twitch.channel = "boss"
    s.model.max_batch = 1
    s.show.min_display_seconds = 0.0
    s.moderation.user_cooldown_seconds = 60.0
    s.moderation.max_queue = 2
    for key, value in bits.items():
        setattr(s.bits, key, value)
    block, _ = Blocklist.from_lines(["nude*"])
    return Show(s, rng_seed=7, moderator=Moderator(s.moderation, block))


def say(show: Show, login: str, text: str, bits: int = 0, now: float = 1.0) -> list[str]:
    """The answers to this message (threaded to it, as Twitch shows them under it)."""
    msg_id = f"m-{login}-{now}"
    msg = ChatMessage(Viewer(login, login.capitalize()), text, msg_id, now, bits)
    replies = [e for e in show.handle(msg) if isinstance(e, Reply)]
    return [e.text for e in replies if e.reply_to == msg_id]


def prompts_in_order(show: Show) -> list[str]:
    return [r.params.prompt for r in show.queue.order()]


def busy(show: Show) -> None:
    """A first request running, so later ones wait."""
    say(show, "first", "!generate the first")
    for effect in show.handle(GenerationStarted("r1", 1.0)):
        assert not isinstance(effect, StartBatch)


def test_a_cheer_waits_ahead_of_free_requests_round_robin_among_cheers():
    show = make()
    busy(show)
    say(show, "ann", "!generate free one")
    say(show, "bob", "a fox", bits=100)
    say(show, "cat", "!generate a cat Cheer300", bits=300)
    assert prompts_in_order(show) == ["a fox", "a cat Cheer300", "free one"]


def test_priority_off_keeps_a_cheer_in_the_fair_order():
    show = make(priority=False)
    busy(show)
    say(show, "ann", "!generate free one")
    say(show, "bob", "a fox", bits=100)
    assert prompts_in_order(show) == ["free one", "a fox"]


def test_a_cheer_below_min_bits_or_with_bits_off_is_only_a_cheer():
    assert say(make(min_bits=500), "bob", "a fox", bits=100) == []
    assert say(make(enabled=False), "bob", "a fox", bits=1000) == []
    assert say(make(require_command=True), "bob", "a fox", bits=1000) == []
    assert say(make(), "bob", "", bits=1000) == []  # nothing to paint


def test_a_cheer_skips_cooldown_per_viewer_limit_and_a_full_queue_but_not_the_blocklist():
    show = make()
    busy(show)
    assert say(show, "ann", "!generate one", now=2.0)[0].startswith("queued #1")
    say(show, "bob", "!generate two", now=2.0)
    assert "queue is full" in say(show, "cid", "!generate three", now=2.0)[0]
    # Ann is in her cooldown, has a request waiting and the queue is full: her cheer paints
    assert say(show, "ann", "a fox", bits=100, now=3.0)[0].startswith("queued #1")
    refused = say(show, "ann", "a nude fox", bits=100, now=4.0)
    assert refused and "blocked word" in refused[0]


def test_a_refused_cheer_is_told_even_when_free_refusals_are_coalesced():
    show = make()
    busy(show)
    say(show, "ann", "!generate one")
    say(show, "bob", "!generate two")
    for n in range(20):  # a flood of refused free requests: answers are coalesced
        say(show, f"v{n}", "!generate more", now=2.0)
    told = say(show, "eve", "nude", bits=100, now=2.0)
    assert told, "a paid refusal must be answered to the viewer"


def test_mode_still_applies_to_cheers():
    show = make()
    show.moderator.mode = Role.MODERATOR
    assert "only moderators" in say(show, "bob", "a fox", bits=100)[0]


@pytest.mark.parametrize(
    ("text", "bits", "prompt"),
    [
        ("Cheer100 a red fox", 100, "a red fox"),
        ("!generate a red fox cheer50 Kappa50", 100, "!generate a red fox"),
        ("an mp3 player Cheer100", 100, "an mp3 player"),
        ("an mp3 player MyChannel100", 100, "an mp3 player"),  # a channel's own cheermote
        ("r2d2 in space Cheer10", 10, "r2d2 in space"),
        ("a plain message Cheer100", 0, "a plain message Cheer100"),  # no bits: untouched
    ],
)
def test_cheermote_words_leave_the_prompt(text: str, bits: int, prompt: str):
    assert cheer_text(text, bits) == prompt


@pytest.mark.parametrize(
    ("tag", "bits"), [("100", 100), ("", 0), ("-5", 0), ("1e9", 0), ("٣", 0), ("9" * 30, 0)]
)
def test_the_bits_tag_is_a_plain_number_or_nothing(tag: str, bits: int):
    assert bits_of({"bits": tag}) == bits
