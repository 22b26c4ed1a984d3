"""Moderation rules as a viewer meets them: blocked prompts, cooldowns, limits, modes."""

from __future__ import annotations

from pathlib import Path

import pytest

from generator_host.core.message import Role, Viewer
from generator_host.core.moderation import Blocklist, Moderator, RefusalKind
from generator_host.core.settings import ModerationSettings
from generator_host.edges.blocklist import load_blocklist

VIEWER = Viewer("viewer")
MOD = Viewer("mod", role=Role.MODERATOR)


@pytest.fixture(scope="module")
def default_list() -> Blocklist:
    block, problems = load_blocklist("")
    assert problems == []
    return block


@pytest.mark.parametrize(
    "prompt",
    [
        "a NUDE woman",
        "n u d e statue",
        "n.u.d.e statue",
        "a nud3 statue",
        "an nsfw picture",
        "N-S-F-W art",
        "pornographic poster",
        "p0rn",
        "sеx scene",  # Cyrillic е
        "$ex scene",
        "rule 34 art",
        "a Nüde",
        "ＮＵＤＥ",  # full-width letters
        # invisible characters inside the word: chat shows "nude", the text does not say it
        "nu\u00adde art",  # soft hyphen
        "nu\u2063de art",  # invisible separator
        "nu\u180ede art",  # Mongolian vowel separator
        "nu\u200dde art",  # zero-width joiner
        "nu\u200cde art",  # zero-width non-joiner
        "nu\u200bde art",  # zero-width space
        "nu\u2060de art",  # word joiner
        "nu\ufeffde art",  # zero-width no-break space
        "n\u00adu\u00add\u00ade art",
        "nu\U000e0020de art",  # a tag character
        "nu\ufe0fde art",  # variation selector
        "nu\u034fde art",  # combining grapheme joiner
        "nu\u3164de art",  # Hangul filler
        "po\u00adrnographic poster",
        "s\u200de\u200dx scene",
    ],
)
def test_default_list_blocks_disguised_words(default_list: Blocklist, prompt: str):
    assert default_list.match(prompt), prompt


@pytest.mark.parametrize(
    "prompt",
    ["a castle in sussex", "classic car", "a cockatoo on a branch", "denuded hills", "therapist"],
)
def test_default_list_leaves_ordinary_prompts(default_list: Blocklist, prompt: str):
    assert not default_list.match(prompt), prompt


def test_phrases_prefixes_and_patterns():
    block, problems = Blocklist.from_lines(
        ["# comment", "", "red hat", "zomb*", "/\\bx{3,}\\b/", "/([/"]
    )
    assert len(problems) == 1 and "line 6" in problems[0]
    assert block.match("a RED   hat")
    assert not block.match("a red cap, a hat")
    assert block.match("zombies everywhere")
    assert block.match("xxxx")
    assert not block.match("x")


def test_streamer_list_file_replaces_the_default(tmp_path: Path):
    path = tmp_path / "mine.txt"
    path.write_text("banana\n", encoding="utf-8")
    mod = Moderator(ModerationSettings(), load_blocklist(str(path))[0])
    assert mod.check_prompt("a BANANA").text == "the prompt contains a blocked word"
    assert mod.check_prompt("a BANANA").kind is RefusalKind.BLOCKED
    assert mod.check_prompt("a nude banana") is not None
    assert mod.check_prompt("a nude apple") is None
    fallback, problems = load_blocklist(str(tmp_path / "nope.txt"))
    assert "cannot read" in problems[0]
    missing = Moderator(ModerationSettings(), fallback)
    assert missing.check_prompt("nude") is not None  # fell back to the default list


def test_prompt_length_limit():
    mod = Moderator(ModerationSettings(max_prompt_length=10), Blocklist())
    assert mod.check_prompt("x" * 10) is None
    assert mod.check_prompt("x" * 11).text == "the prompt is 11 characters; the limit is 10"
    assert mod.check_prompt("x" * 11).kind is RefusalKind.TOO_LONG


def test_cooldown_per_user_and_moderators_exempt():
    mod = Moderator(ModerationSettings(user_cooldown_seconds=30), Blocklist())
    mod.note_request("viewer", 100.0)
    assert mod.check_request(VIEWER, 110.0, 0, 0).text == "cooldown: try again in 20 s"
    assert mod.check_request(VIEWER, 130.0, 0, 0) is None
    assert mod.check_request(Viewer("other"), 110.0, 0, 0) is None
    mod.note_request("mod", 100.0)
    assert mod.check_request(MOD, 101.0, 5, 0) is None


def test_per_user_and_global_limits():
    mod = Moderator(ModerationSettings(max_queued_per_user=1, max_queue=3), Blocklist())
    assert (
        mod.check_request(VIEWER, 0, 1, 0).text == "you already have 1 request(s) waiting (limit 1)"
    )
    assert mod.check_request(VIEWER, 0, 0, 3).text == "the queue is full (3); try again later"
    assert mod.check_request(MOD, 0, 0, 3) is not None  # the cap holds for everyone


def test_modes_and_ignored_users():
    mod = Moderator(ModerationSettings(mode="subscribers", ignored_users=["@Spammer"]), Blocklist())
    assert "only subscribers" in mod.check_request(VIEWER, 0, 0, 0).text
    assert mod.check_request(Viewer("s", role=Role.SUBSCRIBER), 0, 0, 0) is None
    assert mod.is_ignored("spammer")
    mod.ignore("spammer", False)
    assert not mod.is_ignored("spammer")
    mod.ignore("troll", True)
    assert mod.is_ignored("troll")
    restored = Moderator(ModerationSettings(ignored_users=["spammer"]), Blocklist())
    restored.restore(mod.snapshot())
    assert restored.is_ignored("troll") and not restored.is_ignored("spammer")
    assert restored.mode == Role.SUBSCRIBER


def test_every_role_word_works_for_the_exempt_role_and_everyone_survives_a_restart():
    def mod(**values: str) -> Moderator:
        return Moderator(ModerationSettings(**values), Blocklist())

    assert mod(exempt_role="everyone").exempt == Role.EVERYONE  # 0, not "unset"
    assert mod(exempt_role="vip").exempt == Role.VIP
    assert mod(exempt_role="broadcaster").exempt == Role.BROADCASTER
    assert mod().exempt == Role.MODERATOR
    opened = mod(mode="subscribers")
    opened.restore({"mode": "everyone"})  # a !mode everyone made before the restart
    assert opened.mode == Role.EVERYONE


def test_forced_negative_prompt_is_always_added():
    mod = Moderator(ModerationSettings(forced_negative_prompt="nsfw, gore"), Blocklist())
    assert mod.negative_prompt("") == "nsfw, gore"
    assert mod.negative_prompt("blurry") == "blurry, nsfw, gore"


def test_every_invisible_format_character_is_folded(default_list: Blocklist):
    """Every Unicode format character (category Cf) inside a blocked word is folded."""
    import sys
    import unicodedata

    format_chars = [
        chr(i) for i in range(sys.maxunicode + 1) if unicodedata.category(chr(i)) == "Cf"
    ]
    assert len(format_chars) > 100
    missed = [f"U+{ord(c):04X}" for c in format_chars if not default_list.match(f"nu{c}de art")]
    assert missed == []


def test_negative_prompt_parts_with_blocked_words_are_dropped():
    mod = Moderator(ModerationSettings(forced_negative_prompt="gore"), load_blocklist("")[0])
    assert mod.check_negative("blurry, nu\u00adde, text") == ("blurry, text", 1)
    assert mod.negative_prompt("blurry, NSFW woman, text") == "blurry, text, gore"
    assert mod.negative_prompt("n, u, d, e") == "gore"  # spread over commas: all dropped
    assert mod.negative_prompt("p0rn") == "gore"
    assert mod.check_negative("blurry, watermark") == ("blurry, watermark", 0)
    # the streamer's forced negative prompt is theirs: it is never dropped
    forced = Moderator(ModerationSettings(forced_negative_prompt="nude"), load_blocklist("")[0])
    assert forced.negative_prompt("nude, blurry") == "blurry, nude"


def test_cooldown_memory_stays_bounded():
    mod = Moderator(ModerationSettings(user_cooldown_seconds=1), Blocklist())
    for i in range(20000):
        mod.note_request(f"user{i}", i * 0.01)
    assert len(mod._last_request) <= 4097


def test_a_blocklist_saved_with_a_byte_order_mark_blocks_its_first_word(tmp_path) -> None:
    """Notepad's "UTF-8 with BOM": the mark must not glue itself to the first word."""
    path = tmp_path / "blocklist.txt"
    path.write_text("\ufeffzombie\r\nred hat\r\n", encoding="utf-8")
    block, problems = load_blocklist(str(path))
    assert problems == []
    assert block.match("a zombie parade")
