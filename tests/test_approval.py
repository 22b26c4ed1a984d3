"""The approval policy, rule by rule: what each tile shows on stream, approve and reject."""

from __future__ import annotations

import dataclasses
import itertools

import pytest

from generator_host.core import approval
from generator_host.core.approval import Outcome, Tile
from generator_host.core.generation import Entry

C, B, P, N = Tile.CLEAR, Tile.BLURRED, Tile.PLACEHOLDER, Tile.NOTHING
FLAGGED = (False, True, False, True)


def entry(outcome: str, mode: str, flagged=FLAGGED, approved=()) -> Entry:
    return Entry(1, "r1", "Dora", "a fox", "", 7, 2, 0.0, 64, 64, len(flagged), "tiny",
                 outcome, 0.0, "dora", mode, tuple(flagged), tuple(approved))  # fmt: skip


def test_outcome_of_each_mode():
    assert approval.outcome_for(FLAGGED, "blur") is Outcome.BLURRED
    assert approval.outcome_for(FLAGGED, "hold") is Outcome.HELD
    assert approval.outcome_for(FLAGGED, "skip") is Outcome.SKIPPED
    assert approval.outcome_for(FLAGGED, "off") is Outcome.SHOWN
    for mode in approval.MODES:
        assert approval.outcome_for([False] * 4, mode) is Outcome.SHOWN
    with pytest.raises(ValueError, match="unknown approval mode 'maybe'"):
        approval.outcome_for(FLAGGED, "maybe")


def test_a_prompt_too_close_filters_every_tile_as_its_action_and_the_mode_say():
    """[safety] prompt_action: "flag" counts every tile flagged and the mode decides;
    "hold" holds them whatever the mode; the images' own verdicts otherwise."""
    clean = (False,) * 4

    def on_stream(image_flagged, mode, prompt_flagged=(), action="refuse"):
        judged = approval.judge(image_flagged, mode, prompt_flagged, action)
        return judged.outcome, approval.screen(judged.outcome, judged.mode, judged.flagged)

    gore = ("gore",)
    assert on_stream(clean, "blur", gore, "flag") == (Outcome.BLURRED, (B, B, B, B))
    assert on_stream(clean, "hold", gore, "flag") == (Outcome.HELD, (P, P, P, P))
    assert on_stream(clean, "skip", gore, "flag") == (Outcome.SKIPPED, (N, N, N, N))
    assert on_stream(clean, "off", gore, "flag") == (Outcome.SHOWN, (C, C, C, C))
    assert on_stream(clean, "blur", gore, "hold") == (Outcome.HELD, (P, P, P, P))
    assert on_stream(clean, "off", gore, "hold") == (Outcome.HELD, (P, P, P, P))
    assert on_stream(FLAGGED, "blur", gore, "flag") == (Outcome.BLURRED, (B, B, B, B))
    # a clean prompt, or an action that never lets a flagged prompt through: the images'
    assert on_stream(clean, "blur", (), "flag") == (Outcome.SHOWN, (C, C, C, C))
    assert on_stream(FLAGGED, "blur") == (Outcome.BLURRED, (C, B, C, B))
    assert on_stream(FLAGGED, "blur", gore, "refuse") == (Outcome.BLURRED, (C, B, C, B))


@pytest.mark.parametrize(
    ("outcome", "mode", "tiles"),
    [
        ("shown", "blur", (C, C, C, C)),
        ("shown", "off", (C, C, C, C)),
        ("blurred", "blur", (C, B, C, B)),
        ("held", "hold", (C, P, C, P)),
        ("skipped", "skip", (N, N, N, N)),
        ("approved", "hold", (C, C, C, C)),
        ("approved", "skip", (C, C, C, C)),
        ("rejected", "hold", (N, N, N, N)),
    ],
)
def test_what_each_tile_shows(outcome, mode, tiles):
    assert approval.screen(outcome, mode, FLAGGED) == tiles


def test_no_flagged_tile_is_ever_clear_before_it_is_approved():
    for outcome, mode in itertools.product(
        [Outcome.BLURRED, Outcome.HELD, Outcome.SKIPPED], ["blur", "hold", "skip"]
    ):
        for approved in ([], [1], [3]):
            tiles = approval.screen(outcome, mode, FLAGGED, approved)
            for k, bad in enumerate(FLAGGED):
                if bad and k not in approved:
                    assert tiles[k] is not C, (outcome, mode, approved)


def test_approving_one_tile_leaves_the_other_filtered():
    held = entry("held", "hold")
    one = approval.approve(held, tile=1)
    assert (one.outcome, one.approved, one.refusal) == (Outcome.HELD, (1,), "")
    after = dataclasses.replace(held, approved=one.approved)
    assert approval.entry_tiles(after) == (C, C, C, P)
    both = approval.approve(after, tile=3)
    assert both.outcome is Outcome.APPROVED and both.approved == (1, 3)


def test_approving_the_grid_and_what_cannot_be_approved():
    done = approval.approve(entry("blurred", "blur"))
    assert done.outcome is Outcome.APPROVED and done.approved == (1, 3)
    assert approval.approve(entry("shown", "blur")).refusal
    assert approval.approve(entry("rejected", "hold")).refusal
    assert "no tile 9" in approval.approve(entry("held", "hold"), tile=8).refusal
    # a clean tile needs no approval: approving it changes nothing
    assert approval.approve(entry("held", "hold"), tile=0).approved == ()


def test_a_skipped_picture_approved_tile_by_tile_blurs_the_rest():
    partly = entry("skipped", "skip", approved=(1,))
    assert approval.entry_tiles(partly) == (C, C, C, B)


def test_reject():
    assert approval.reject(entry("held", "hold")).outcome is Outcome.REJECTED
    assert approval.reject(entry("skipped", "skip")).outcome is Outcome.REJECTED
    assert approval.reject(entry("shown", "blur")).refusal
    assert approval.entry_tiles(entry("rejected", "hold")) == (N, N, N, N)


def test_slideshow_skips_what_waits_for_approval():
    assert approval.replayable(entry("blurred", "blur"))
    assert not approval.replayable(entry("held", "hold"))
    assert approval.replayable(entry("approved", "hold"))
    assert not approval.replayable(entry("skipped", "skip"))


def test_entries_saved_before_per_tile_verdicts():
    old = Entry(1, "r1", "Dora", "a fox", "", 7, 2, 0.0, 64, 64, 4, "tiny", "held", 0.0)
    assert approval.entry_tiles(old) == (P, P, P, P)
    shown = dataclasses.replace(old, outcome="shown")
    assert approval.entry_tiles(shown) == (C, C, C, C)
