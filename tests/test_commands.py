"""Chat text -> commands: exact words, prefix and aliases, the `###` negative prompt, caps."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from generator_host.core import commands as cmds
from generator_host.core.message import Role

LIMITS = cmds.Limits(max_steps=50, max_size=1024, max_count=4)


def test_exact_words_not_prefixes():
    assert cmds.parse_command("!generate a fox").name == "generate"
    assert cmds.parse_command("!generatefoo a fox") is None
    assert cmds.parse_command("!g2 x") is None
    assert cmds.parse_command("!gx") is None
    assert cmds.parse_command("hello !generate a fox") is None
    assert cmds.parse_command("!unknown") is None


def test_aliases_case_and_invisible_characters():
    assert cmds.parse_command("!g a fox").name == "generate"
    assert cmds.parse_command("!GEN a fox").args == "a fox"
    assert cmds.parse_command("!regen").name == "regenerate"
    # 7TV appends an invisible tag character to repeated messages
    assert cmds.parse_command("!queue \U000e0000").name == "queue"
    assert cmds.parse_command("\x01ACTION !queue\x01").name == "queue"


def test_configurable_prefix_and_aliases():
    aliases, problems = cmds.build_aliases(["paint=generate", "x=nothing", "queue=help"])
    assert cmds.parse_command("?paint a fox", "?", aliases).name == "generate"
    assert cmds.parse_command("!paint a fox", "?", aliases) is None
    assert len(problems) == 2 and "nothing" in problems[0]
    assert cmds.parse_command("?queue", "?", aliases).name == "queue"


def test_command_roles_defaults_and_overrides():
    roles, problems = cmds.build_roles(["approve=mods", "clear=everyone", "next=king", "nope=vip"])
    assert roles["approve"] == Role.MODERATOR
    assert roles["clear"] == Role.EVERYONE
    assert roles["terminate"] == Role.BROADCASTER
    assert roles["next"] == Role.MODERATOR  # unknown role kept the default
    assert roles["generate"] == Role.EVERYONE
    assert len(problems) == 2


def test_negative_prompt_after_hashes():
    args = cmds.parse_generate("a red fox in snow ### blurry, text", LIMITS)
    assert args.prompt == "a red fox in snow" and args.negative == "blurry, text"
    assert cmds.parse_generate("fox ###", LIMITS).negative == ""


def test_options_are_checked_against_caps():
    args = cmds.parse_generate("steps=20 size=512x768 count=4 seed=7 a fox", LIMITS)
    assert (args.prompt, args.steps, args.width, args.height, args.count, args.seed) == (
        "a fox", 20, 512, 768, 4, 7,
    )  # fmt: skip
    assert "steps must be 1-50" in cmds.parse_generate("steps=500 fox", LIMITS)
    assert "size" in cmds.parse_generate("size=4096 fox", LIMITS)
    assert "count must be 1 or 4" in cmds.parse_generate("count=9 fox", LIMITS)
    assert "whole number" in cmds.parse_generate("steps=ten fox", LIMITS)
    assert "whole number" in cmds.parse_generate("steps=-3 fox", LIMITS)
    assert "whole number" in cmds.parse_generate("steps=٣ fox", LIMITS)  # Arabic digit
    assert cmds.parse_generate("size=513 fox", LIMITS).width == 512  # rounded to 8
    assert "give a prompt" in cmds.parse_generate("steps=3", LIMITS)
    assert "give a prompt" in cmds.parse_generate("", LIMITS)


def test_slideshow_arguments():
    assert cmds.parse_slideshow("20") == 20.0
    assert cmds.parse_slideshow("20s") == 20.0
    assert cmds.parse_slideshow("yes") is None  # toggles, like "on" (its "s" is no unit)
    assert cmds.parse_slideshow("off") == 0.0
    assert cmds.parse_slideshow("") is None
    assert "3 to 3600" in cmds.parse_slideshow("1")
    assert "slideshow" in cmds.parse_slideshow("banana")
    # float() accepts these words: they must be refused as out of range, never become an interval
    for word in ("nan", "NaN", "inf", "-inf", "infinity", "nans", "1e9"):
        assert cmds.parse_slideshow(word) == "slideshow seconds must be 0 (off) or 3 to 3600", word
    assert cmds.parse_slideshow("3") == 3.0
    assert cmds.parse_slideshow("3600") == 3600.0
    assert cmds.parse_slideshow("3600.1") == "slideshow seconds must be 0 (off) or 3 to 3600"


def test_every_bad_option_is_named_in_one_answer_and_seed_minus_one_is_random():
    answer = cmds.parse_generate("steps=500 count=9 size=1x1 seed=x fox", LIMITS)
    assert answer == (
        "seed= needs a whole number, not 'x'; steps must be 1-50; "
        "size must be 64-1024 per side; count must be 1 or 4"
    )
    assert cmds.parse_generate("seed=-1 a fox", LIMITS) == cmds.GenerateArgs("a fox")
    assert cmds.parse_generate("seed=5 seed=-1 a fox", LIMITS).seed is None
    assert "whole number" in cmds.parse_generate("seed=-2 fox", LIMITS)


WORDS = st.text(st.characters(codec="ascii", categories=["L", "N"]), min_size=1, max_size=8)


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(sorted({**cmds.DEFAULT_ALIASES, **{c: c for c in cmds.COMMANDS}}.items())),
    st.text(max_size=100),
)
def test_every_command_word_is_recognised_whatever_follows(word_and_name, rest):
    word, name = word_and_name
    cmd = cmds.parse_command(f"!{word} {rest}")
    assert cmd is not None and cmd.name == name


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_any_text_gives_a_command_or_none(text):
    cmd = cmds.parse_command(text)
    if cmd is not None:
        assert cmd.name in cmds.COMMANDS
        assert "!" in text


@settings(max_examples=200, deadline=None)
@given(
    st.lists(WORDS, min_size=1, max_size=6),
    st.lists(WORDS, max_size=3),
    st.one_of(st.none(), st.integers(1, 50)),
    st.one_of(st.none(), st.sampled_from([1, 4])),
    st.one_of(st.none(), st.integers(0, 2**32 - 1)),
    st.one_of(st.none(), st.tuples(st.integers(8, 128), st.integers(8, 128))),
)
def test_valid_generate_args_come_back_exactly(words, negative, steps, count, seed, size):
    opts = []
    if steps is not None:
        opts.append(f"steps={steps}")
    if count is not None:
        opts.append(f"count={count}")
    if seed is not None:
        opts.append(f"seed={seed}")
    if size is not None:
        opts.append(f"size={size[0] * 8}x{size[1] * 8}")
    text = " ".join(opts + words) + (" ### " + " ".join(negative) if negative else "")
    parsed = cmds.parse_generate(text, LIMITS)
    assert isinstance(parsed, cmds.GenerateArgs), (text, parsed)
    assert parsed.prompt == " ".join(words) and parsed.negative == " ".join(negative)
    assert (parsed.steps, parsed.count, parsed.seed) == (steps, count, seed)
    assert (parsed.width, parsed.height) == ((size[0] * 8, size[1] * 8) if size else (None, None))


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_any_generate_args_give_args_or_a_reason(text):
    result = cmds.parse_generate(text, LIMITS)
    if isinstance(result, str):
        assert result
    else:
        assert result.prompt and "###" not in result.prompt
        assert result.steps is None or 1 <= result.steps <= 50
        assert result.width is None or 64 <= result.width <= 1024
        assert result.count in (None, 1, 4)
