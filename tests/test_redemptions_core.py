"""Channel-point redemptions in the pure core: each ends with exactly one Settle, and the
viewer is told why when the points come back (no I/O: events in, effects out)."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

from generator_host.core.approval import Settlement, Tile, settlement
from generator_host.core.events import (
    ApproveEntry,
    CancelRequests,
    Redemption,
    RedemptionsSettled,
    RejectEntry,
    Reply,
    Settle,
    Shutdown,
    Stopping,
)
from generator_host.core.message import Role
from generator_host.core.show import GenerationFailed, GenerationFinished, Show, Tick
from tests.test_show import chat, entry_for, make

_n = iter(range(1, 10**9))


def redeem(show: Show, login: str, text: str, now: float = 0.0, rid: str = "") -> tuple[str, list]:
    rid = rid or f"red-{next(_n)}"
    return rid, show.handle(Redemption(rid, login, login.capitalize(), "", text, now))


def settles(effects) -> list[tuple[str, str]]:
    return [(e.redemption_id, e.status) for e in effects if isinstance(e, Settle)]


def replies(effects) -> list[str]:
    return [e.text for e in effects if isinstance(e, Reply)]


def finish(show: Show, outcome: str = "shown", flagged=(), now: float = 1.0, entry_id=None):
    req = show.running
    assert req is not None
    entry = entry_for(req, entry_id or 100 + next(_n), now, outcome)
    entry = dataclasses.replace(entry, flagged=tuple(flagged) or (outcome != "shown",) * 1)
    return show.handle(GenerationFinished(req.id, entry, now))


def test_the_settlement_rule_reads_the_tiles_on_stream() -> None:
    assert settlement([Tile.CLEAR]) is Settlement.FULFILLED
    assert settlement([Tile.BLURRED, Tile.CLEAR]) is Settlement.FULFILLED  # a grid, partly
    assert settlement([Tile.PLACEHOLDER]) is None  # waits for the streamer
    assert settlement([Tile.BLURRED]) is Settlement.CANCELED
    assert settlement([Tile.NOTHING, Tile.NOTHING]) is Settlement.CANCELED


def test_a_shown_redemption_is_fulfilled_once_when_it_goes_on_screen() -> None:
    show = make(min_display=5.0)
    chat(show, "ann", "!generate first")
    finish(show, now=1.0)  # on screen until 6.0
    rid, out = redeem(show, "bob", "a red fox", now=1.5)
    assert any("starting now" in t or "queued" in t for t in replies(out))
    out = finish(show, now=2.0)  # ready, but on deck: not shown yet
    assert settles(out) == []
    out = show.handle(Tick(now=6.5))
    assert settles(out) == [(rid, "FULFILLED")]
    # never again: a tick, a !prev/!next, an approval of nothing
    for later in (chat(show, "boss", "!prev", now=7), chat(show, "boss", "!next", now=8)):
        assert settles(later) == []


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("a nude fox", "blocked word"),
        ("", "no prompt"),
        ("x" * 400, "characters"),
        ("fox steps=abc", ""),
    ],
)
def test_a_refused_redemption_is_refunded_once_and_the_viewer_told(text: str, why: str) -> None:
    show = make()
    rid, out = redeem(show, "bob", text)
    assert settles(out) == [(rid, "CANCELED")]
    said = " ".join(replies(out))
    assert "refunded" in said and why in said and "@Bob" in said
    assert show.queued == 0 and show.running is None


def test_mode_queue_full_and_ignored_viewers_are_refunded_but_no_cooldown_applies() -> None:
    show = make(max_queue=2, user_cooldown_seconds=30.0)
    first, _ = redeem(show, "ann", "one fox", now=0)  # runs
    again, out = redeem(show, "ann", "two foxes", now=1)  # paid: no cooldown, no one-waiting
    assert settles(out) == [] and show.queued == 1
    redeem(show, "bob", "queued fox", now=2)  # the queue is full now
    full, out = redeem(show, "cid", "one too many", now=3)
    assert settles(out) == [(full, "CANCELED")] and "full" in " ".join(replies(out))
    chat(show, "boss", "!ignore @dan", role=Role.MODERATOR)
    ignored, out = redeem(show, "dan", "fox", now=4)
    assert settles(out) == [(ignored, "CANCELED")] and replies(out) == []
    chat(show, "boss", "!mode subscribers", role=Role.MODERATOR)
    closed, out = redeem(show, "eve", "fox", now=5)
    assert settles(out) == [(closed, "CANCELED")] and "subscribers" in replies(out)[0]


def test_redemptions_wait_ahead_of_free_requests_and_keep_it_across_a_restart() -> None:
    show = make(max_queued_per_user=5)
    chat(show, "ann", "!generate running fox")
    chat(show, "bob", "!generate free fox")
    rid, _ = redeem(show, "cid", "paid fox")
    assert [r.params.prompt for r in show.queue_order()] == ["paid fox", "free fox"]
    state = json.loads(json.dumps(show.snapshot()))
    again = Show(show.settings, state, blocklist=show.moderator.blocklist)
    restored = [r.params.prompt for r in again.queue_order()]
    assert restored == ["paid fox", "running fox", "free fox"]  # the run goes back in line
    assert again.pending_redemptions() == {rid}
    show.settings.channel_points.priority = False
    redeem(show, "dan", "late paid fox")
    assert [r.params.prompt for r in show.queue_order()][-1] == "late paid fox"


def test_failed_cancelled_and_withheld_redemptions_are_refunded() -> None:
    show = make(max_queued_per_user=5)
    failed, _ = redeem(show, "ann", "fox")
    out = show.handle(GenerationFailed(show.running.id, "out of memory", now=1))
    assert settles(out) == [(failed, "CANCELED")] and "refunded" in replies(out)[0]
    withheld, _ = redeem(show, "bob", "fox")
    out = finish(show, outcome="skipped", flagged=(True,))
    assert settles(out) == [(withheld, "CANCELED")]
    assert "withheld" in replies(out)[0] and "refunded" in replies(out)[0]
    blurred, _ = redeem(show, "cid", "fox")
    out = finish(show, outcome="blurred", flagged=(True,))
    assert settles(out) == [(blurred, "CANCELED")]
    running, _ = redeem(show, "dan", "fox")
    queued, _ = redeem(show, "dan", "another fox")
    out = show.handle(CancelRequests("dan", now=3))
    assert sorted(settles(out)) == sorted([(running, "CANCELED"), (queued, "CANCELED")])
    out = chat(show, "eve", "!generate free fox")
    assert settles(out) == []  # a chat request is not paid


def test_a_partly_clean_grid_is_fulfilled_in_blur_mode() -> None:
    show = make(grid=4)
    rid, _ = redeem(show, "ann", "four foxes")
    req = show.running
    entry = dataclasses.replace(
        entry_for(req, 7, 1.0, "blurred"), flagged=(True, False, True, True), mode="blur"
    )
    out = show.handle(GenerationFinished(req.id, entry, 1.0))
    assert settles(out) == [(rid, "FULFILLED")]


def test_a_held_redemption_waits_for_the_streamer_approve_or_reject() -> None:
    show = make(max_queued_per_user=5)
    show.settings.safety.approval_mode = "hold"
    kept, _ = redeem(show, "ann", "fox")
    out = finish(show, outcome="held", flagged=(True,), entry_id=1)
    assert settles(out) == []  # a placeholder on stream: not yet
    gone, _ = redeem(show, "bob", "fox")
    assert settles(finish(show, outcome="held", flagged=(True,), entry_id=2)) == []
    out = show.handle(RejectEntry(2, now=3))
    assert settles(out) == [(gone, "CANCELED")]
    assert any("rejected" in t and "refunded" in t for t in replies(out))
    out = show.handle(ApproveEntry(1, now=4))
    assert settles(out) == [(kept, "FULFILLED")]
    assert settles(show.handle(ApproveEntry(1, now=5))) == []


def test_on_stop_refund_refunds_everything_unserved_and_keep_keeps_it() -> None:
    show = make(max_queued_per_user=5)
    running, _ = redeem(show, "ann", "fox")
    queued, _ = redeem(show, "bob", "fox")
    out = show.handle(Stopping(now=2))
    assert sorted(settles(out)) == sorted([(running, "CANCELED"), (queued, "CANCELED")])
    assert show.pending_redemptions() == set()

    show = make(max_queued_per_user=5)
    show.settings.channel_points.on_stop = "keep"
    running, _ = redeem(show, "ann", "fox")
    queued, _ = redeem(show, "bob", "fox")
    out = show.handle(Stopping(now=2))
    assert settles(out) == [] and show.running is None  # and no new run starts
    assert not [e for e in out if type(e).__name__ in ("StartGeneration", "StartBatch")]
    state = json.loads(json.dumps(show.snapshot()))
    again = Show(show.settings, state, blocklist=show.moderator.blocklist)
    assert again.pending_redemptions() == {running, queued}
    assert settles(again.handle(Redemption(running, "ann", "Ann", "", "fox", 3))) == []  # a repeat
    out = again.handle(RedemptionsSettled((queued,), now=3))
    assert again.pending_redemptions() == {running}
    out += finish(again, now=4)
    assert settles(out) == [(running, "FULFILLED")]


def test_terminate_settles_nothing_itself_and_the_stop_after_it_settles_each_once() -> None:
    """!terminate asks the host to shut down; the host's Stopping (fed at every clean
    stop) is the one place redemptions are settled, and a second one settles none again."""
    show = make(max_queued_per_user=5)
    running, _ = redeem(show, "ann", "fox")
    queued, _ = redeem(show, "bob", "fox")
    out = chat(show, "boss", "!terminate", Role.BROADCASTER, now=1)
    assert settles(out) == [] and out[-1] == Shutdown()
    assert show.handle(Tick(now=1.5)) == []  # terminated: nothing else is heard
    out = show.handle(Stopping(now=2))
    assert sorted(settles(out)) == sorted([(running, "CANCELED"), (queued, "CANCELED")])
    assert sum("the painter stopped" in t and "refunded" in t for t in replies(out)) == 2
    assert settles(show.handle(Stopping(now=3))) == []

    show = make(max_queued_per_user=5)
    show.settings.channel_points.on_stop = "keep"
    running, _ = redeem(show, "ann", "fox")
    chat(show, "boss", "!terminate", Role.BROADCASTER, now=1)
    assert settles(show.handle(Stopping(now=2))) == []
    state = json.loads(json.dumps(show.snapshot()))
    again = Show(show.settings, state, blocklist=show.moderator.blocklist)
    assert again.pending_redemptions() == {running}  # kept for the next start, not lost


def test_every_redemption_settles_exactly_once_in_a_busy_mix() -> None:
    show = make(max_queued_per_user=3, grid=1)
    show.settings.safety.approval_mode = "hold"
    ids, counts = [], Counter()
    outcomes = ["shown", "held", "skipped", "shown", "held", "blurred"]
    for k in range(12):
        rid, out = redeem(show, f"v{k % 4}", "a nude fox" if k % 5 == 4 else f"fox {k}", now=k)
        ids.append(rid)
        counts.update(r for r, _ in settles(out))
        if show.running is not None:
            outcome = outcomes[k % len(outcomes)]
            out = finish(show, outcome=outcome, flagged=(outcome != "shown",), now=k + 0.5)
            counts.update(r for r, _ in settles(out))
    for entry_id in list(show.paid_entries):
        out = show.handle(RejectEntry(entry_id, now=50))
        counts.update(r for r, _ in settles(out))
    counts.update(r for r, _ in settles(show.handle(Stopping(now=60))))
    assert all(counts[rid] == 1 for rid in ids), counts


ACTIONS = ["redeem", "redeem", "chat", "shown", "held", "blurred", "skipped", "fail",
           "tick", "approve", "reject", "cancel", "ban", "grid"]  # fmt: skip


@hyp_settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(ACTIONS), st.integers(0, 5)), max_size=60))
def test_any_interleaving_settles_each_redemption_at_most_once_and_all_by_the_stop(
    steps: list[tuple[str, int]],
) -> None:
    from generator_host.core.message import UserRemoved

    show = make(max_queued_per_user=3, min_display=2.0)
    counts: Counter[str] = Counter()
    redeemed: list[str] = []
    now = 0.0
    for action, k in steps:
        now += 0.7
        out: list = []
        if action == "redeem":
            rid, out = redeem(show, f"v{k}", f"fox {k}", now=now)
            redeemed.append(rid)
        elif action == "chat":
            out = chat(show, f"v{k}", f"!generate free {k}", now=now)
        elif action in ("shown", "held", "blurred", "skipped") and show.running:
            out = finish(show, outcome=action, flagged=(action != "shown",), now=now)
        elif action == "grid" and show.running:
            req = show.running
            entry = entry_for(req, 500 + next(_n), now, "held")
            entry = dataclasses.replace(entry, count=2, flagged=(k % 2 == 0, True), mode="hold")
            out = show.handle(GenerationFinished(req.id, entry, now))
        elif action == "fail" and show.running:
            out = show.handle(GenerationFailed(show.running.id, "boom", now=now))
        elif action == "approve" and show.paid_entries:
            entry_id = sorted(show.paid_entries)[k % len(show.paid_entries)]
            out = show.handle(ApproveEntry(entry_id, tile=None if k % 2 else 0, now=now))
        elif action == "reject" and show.paid_entries:
            entry_id = sorted(show.paid_entries)[k % len(show.paid_entries)]
            out = show.handle(RejectEntry(entry_id, now=now))
        elif action == "cancel":
            out = show.handle(CancelRequests(f"v{k}", now=now))
        elif action == "ban":
            out = show.handle(UserRemoved(f"v{k}", now=now))
        else:
            out = show.handle(Tick(now=now))
        counts.update(r for r, _ in settles(out))
        assert all(counts[r] <= 1 for r in redeemed), (action, counts)
    counts.update(r for r, _ in settles(show.handle(Stopping(now=now + 1))))
    assert all(counts[r] == 1 for r in redeemed), counts
    assert set(counts) <= set(redeemed)


def test_rejecting_the_picture_on_screen_while_another_waits_on_deck() -> None:
    """Found by the interleaving test: the status line's wait was computed from -inf
    (nothing held any more) and the show raised, losing the rejection's effects."""
    show = make(max_queued_per_user=3, min_display=2.0)
    chat(show, "ann", "!generate a", now=0.7)
    chat(show, "ann", "!generate b", now=1.4)
    finish(show, outcome="held", flagged=(True,), now=2.1, entry_id=101)
    finish(show, outcome="shown", now=2.8, entry_id=102)  # waits on deck
    out = show.handle(RejectEntry(101, now=3.5))
    assert any("rejected" in t for t in replies(out))
