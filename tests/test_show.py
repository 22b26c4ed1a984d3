"""The show, command by command, role by role, state by state (no I/O: events in, effects out)."""

from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from generator_host.core import commands as cmds
from generator_host.core.approval import Tile
from generator_host.core.generation import Entry
from generator_host.core.message import (
    BotStatus,
    ChatMessage,
    MessageDeleted,
    Role,
    UserRemoved,
    Viewer,
)
from generator_host.core.moderation import Blocklist, Moderator
from generator_host.core.settings import Settings, settings_from_dict
from generator_host.core.show import (
    Approve,
    ApproveEntry,
    CancelGeneration,
    CancelRequests,
    Display,
    GenerationFailed,
    GenerationFinished,
    GenerationProgress,
    GenerationStarted,
    IgnoreViewer,
    Log,
    Reject,
    RejectEntry,
    Reply,
    SettingsChanged,
    Show,
    Shutdown,
    StartBatch,
    StartGeneration,
    Status,
    StreamerAction,
    Tick,
    staff_reserved,
)

ROLES = list(Role)
CLEAR = Tile.CLEAR
_msg = iter(range(1, 10**9))


def make(grid: int = 1, max_batch: int = 1, min_display: float = 0.0, **moderation) -> Show:
    """A show; by default one request per run and no minimum screen time (as before)."""
    s = Settings()
    s.twitch.channel = "boss"
    s.show.grid = grid
    s.model.max_batch = max_batch
    s.show.min_display_seconds = min_display
    s.moderation.user_cooldown_seconds = 0.0
    for key, value in moderation.items():
        setattr(s.moderation, key, value)
    block, _ = Blocklist.from_lines(["nude*"])
    return Show(s, rng_seed=7, moderator=Moderator(s.moderation, block))


def chat(show: Show, login: str, text: str, role: Role = Role.EVERYONE, now: float = 0.0):
    msg = ChatMessage(Viewer(login, login.capitalize(), role=role), text, f"m{next(_msg)}", now)
    return show.handle(msg)


def shown(effects) -> list[int | None]:
    """The entry ids the effects put on screen, in order (None: a cleared screen)."""
    return [e.entry_id for e in effects if isinstance(e, Display)]


def statuses(effects) -> list[str]:
    return [e.text for e in effects if isinstance(e, Status)]


def of(effects, kind):
    return [e for e in effects if isinstance(e, kind)]


def replies(effects) -> list[str]:
    return [e.text for e in of(effects, Reply)]


def finish(show: Show, now: float = 10.0, outcome: str = "shown", entry_id: int | None = None):
    req = show.running
    assert req is not None
    entry_id = entry_id if entry_id is not None else len(show.history) + 100
    return show.handle(GenerationFinished(req.id, entry_for(req, entry_id, now, outcome), now))


def entry_for(req, entry_id: int, now: float, outcome: str = "shown") -> Entry:
    """What the gallery would store for this request."""
    return Entry(
        id=entry_id,
        request_id=req.id,
        requester=req.requester.name,  # the display name ("Dora"); the login apart ("dora")
        requester_login=req.requester.login,
        prompt=req.params.prompt,
        negative_prompt=req.params.negative_prompt,
        seed=req.params.seed,
        steps=req.params.steps,
        guidance=req.params.guidance,
        width=req.params.width,
        height=req.params.height,
        count=req.params.count,
        model="tiny",
        outcome=outcome,
        created=now,
    )


def with_images(n: int, outcomes: list[str] | None = None) -> Show:
    show = make()
    for i in range(n):
        chat(show, f"v{i}", f"!generate picture {i}", now=i)
        finish(show, now=i + 0.5, outcome=(outcomes or ["shown"] * n)[i], entry_id=i + 1)
    return show


# ---- who may use what ------------------------------------------------------------------------
ARGS = {
    "generate": "a fox",
    "slideshow": "10",
    "mode": "everyone",
    "ignore": "@x",
    "unignore": "@x",
}


@pytest.mark.parametrize("role", ROLES, ids=[r.name.lower() for r in ROLES])
@pytest.mark.parametrize("command", cmds.COMMANDS)
def test_every_command_by_role(command: str, role: Role):
    show = with_images(2, ["shown", "held"])
    effects = chat(
        show, "someone", f"!{command} {ARGS.get(command, '')}".strip(), role=role, now=50
    )
    need = cmds.DEFAULT_ROLES.get(command, Role.EVERYONE)
    refused = [t for t in replies(effects) if "is for" in t]
    if role < need:
        assert refused == [f"!{command} is for {need.name.lower()}s and up"]
        assert not of(effects, (Display, Approve, Shutdown, StartGeneration))
    else:
        assert not refused
        assert effects, f"!{command} did nothing for a {role.name.lower()}"


def test_command_roles_are_configurable():
    show = make()
    show.settings.show.command_roles = ["approve=moderator", "clear=everyone"]
    show.handle(SettingsChanged(0))
    assert shown(chat(show, "anyone", "!clear")) == [None]
    assert "nothing is waiting" in replies(chat(show, "mod", "!approve", Role.MODERATOR))[0]


def test_ignored_users_get_no_answer():
    show = make(ignored_users=["troll"])
    show.handle(Tick(0))
    assert chat(show, "troll", "!generate a fox") == []
    assert chat(show, "troll", "!help") == []


# ---- !generate, the queue and one generation at a time -------------------------------------
def test_generate_starts_at_once_when_idle_and_runs_one_at_a_time():
    show = make()
    first = chat(show, "alice", "!generate a red fox ### blurry")
    (start,) = of(first, StartGeneration)
    assert start.request.params.prompt == "a red fox"
    assert start.request.params.negative_prompt == "blurry"
    assert start.request.requester.login == "alice"
    assert "generating for @Alice, 0 queued" in statuses(first)
    second = chat(show, "bob", "!generate a cat", now=1)
    assert not of(second, StartGeneration)
    assert replies(second) == ["queued #1, about 19 s"]  # 9 s left of alice's, then 10 s
    done = finish(show, now=12)
    assert shown(done) == [100]
    assert of(done, StartGeneration)[0].request.requester.login == "bob"


def test_seeds_come_from_the_seeded_random_and_ids_are_unique():
    def seeds(show: Show) -> list[int]:
        out = []
        for i in range(5):
            chat(show, f"u{i}", "!generate x")
            out.append(show.running.params.seed)
            finish(show)
        return out

    a, b = make(), make()
    assert seeds(a) == seeds(b)
    assert len(set(seeds(make()))) == 5
    ids = {e.request_id for e in a.history}
    assert len(ids) == 5


def test_forced_negative_prompt_and_blocklist():
    show = make(forced_negative_prompt="nsfw")
    chat(show, "a", "!generate a fox ### blurry")
    assert show.running.params.negative_prompt == "blurry, nsfw"
    assert replies(chat(show, "b", "!generate a NUD3 fox")) == [
        "the prompt contains a blocked word"
    ]
    assert show.queued == 0


def test_chat_cannot_exceed_the_caps():
    show = make(grid=4)
    assert replies(chat(show, "a", "!generate steps=999 fox")) == ["steps must be 1-50"]
    assert replies(chat(show, "a", "!generate size=4096x64 fox")) == [
        "size must be 64-1024 per side"
    ]
    assert replies(chat(show, "a", "!generate count=9 fox")) == ["count must be 1 or 4"]
    assert "whole number" in replies(chat(show, "a", "!generate steps=1e9 fox"))[0]
    chat(show, "a", "!generate steps=20 size=512x768 seed=5 fox")
    p = show.running.params
    assert (p.steps, p.width, p.height, p.seed, p.count) == (20, 512, 768, 5, 4)


def test_grid_request_is_cut_to_one_image_while_others_wait():
    show = make(grid=4)
    chat(show, "a", "!generate fox")
    assert show.running.params.count == 4  # nobody waiting
    chat(show, "b", "!generate cat")
    chat(show, "c", "!generate dog")
    finish(show)
    assert show.running.params.count == 1  # c is waiting behind b
    finish(show)
    assert show.running.params.count == 4


def test_fair_queue_round_robin_across_viewers():
    show = make(max_queued_per_user=5)
    chat(show, "busy", "!generate one")  # starts
    for text in ("two", "three", "four"):
        chat(show, "busy", f"!generate {text}")
    chat(show, "b", "!generate b1")
    chat(show, "c", "!generate c1")
    assert [r.params.prompt for r in show.queue_order()] == ["two", "b1", "c1", "three", "four"]
    order = []
    while show.running:
        order.append(show.running.params.prompt)
        finish(show)
    assert order == ["one", "two", "b1", "c1", "three", "four"]


def test_limits_cooldown_and_queue_cap_are_answered():
    show = make(max_queue=2, user_cooldown_seconds=30.0)
    chat(show, "a", "!generate one", now=0)
    assert replies(chat(show, "a", "!generate two", now=5)) == ["cooldown: try again in 25 s"]
    assert "limit 1" in replies(chat(show, "a", "!generate two", now=40))[0]
    chat(show, "b", "!generate b", now=1)
    chat(show, "c", "!generate c", now=1)
    assert replies(chat(show, "d", "!generate d", now=2)) == [
        "the queue is full (2); try again later"
    ]
    assert show.queued == 2


def test_failed_generation_is_answered_and_the_queue_moves_on():
    show = make()
    chat(show, "a", "!generate one")
    chat(show, "b", "!generate two")
    rid = show.running.id
    effects = show.handle(GenerationFailed(rid, "CUDA out of\nmemory", 3))
    assert "sorry, your image failed: CUDA out of memory" in replies(effects)
    assert of(effects, StartGeneration)[0].request.params.prompt == "two"


def test_progress_shows_in_the_status_line():
    show = make()
    chat(show, "alice", "!generate one")
    chat(show, "bob", "!generate two")
    show.handle(GenerationStarted(show.running.id, 1))
    effects = show.handle(GenerationProgress(show.running.id, 3, 8, 2))
    assert effects == [Status("generating 3/8 for @Alice, 1 queued", step=3, total=8, queue=1)]
    assert show.handle(GenerationProgress("other", 4, 8, 2)) == []


# ---- outcomes, !approve, !clear -------------------------------------------------------------
def test_skipped_image_is_not_shown_and_the_viewer_is_told():
    show = make()
    chat(show, "a", "!generate fox")
    effects = finish(show, outcome="skipped")
    assert not of(effects, Display)
    assert "withheld by the safety filter" in replies(effects)[0]
    assert show.history == []


def test_held_image_waits_for_approve_then_is_revealed():
    show = make()
    chat(show, "a", "!generate fox")
    effects = finish(show, outcome="held", entry_id=9)
    assert shown(effects) == [9]  # the placeholder
    assert "held until the streamer approves" in replies(effects)[0]
    approve = chat(show, "boss", "!approve", Role.BROADCASTER)
    assert approve[:2] == [Approve(9, "approved", (0,)), Display(9, (CLEAR,))]
    assert show.history[-1].outcome == "approved"
    assert replies(chat(show, "boss", "!approve", Role.BROADCASTER)) == [
        "nothing is waiting for approval"
    ]


def test_approve_the_blurred_image_on_screen():
    show = with_images(1, ["blurred"])
    assert chat(show, "boss", "!approve", Role.BROADCASTER)[:2] == [
        Approve(1, "approved", (0,)),
        Display(1, (CLEAR,)),
    ]


def test_approve_finds_the_held_image_when_another_is_on_screen():
    show = with_images(3, ["held", "shown", "shown"])
    assert of(chat(show, "boss", "!approve", Role.BROADCASTER), Approve) == [
        Approve(1, "approved", (0,))
    ]


def test_clear_wipes_the_screen_and_stops_the_slideshow():
    show = with_images(3)
    chat(show, "mod", "!slideshow 5", Role.MODERATOR, now=10)
    assert shown(chat(show, "mod", "!clear", Role.MODERATOR, now=11)) == [None]
    assert show.on_screen is None
    assert show.handle(Tick(100)) == []
    assert replies(chat(show, "a", "!params")) == ["nothing is on screen"]


# ---- history: !prev, !next, !slideshow ------------------------------------------------------
def test_prev_and_next_walk_the_history_and_stop_at_the_ends():
    show = with_images(3)
    m = Role.MODERATOR
    assert shown(chat(show, "m", "!prev", m)) == [2]
    assert shown(chat(show, "m", "!prev", m)) == [1]
    assert replies(chat(show, "m", "!prev", m)) == ["this is the oldest image"]
    assert shown(chat(show, "m", "!next", m)) == [2]
    assert shown(chat(show, "m", "!next", m)) == [3]
    assert replies(chat(show, "m", "!next", m)) == ["this is the newest image"]


def test_prev_after_clear_starts_from_where_the_screen_was():
    show = with_images(3)
    chat(show, "m", "!clear", Role.MODERATOR)
    assert shown(chat(show, "m", "!prev", Role.MODERATOR)) == [3]
    assert replies(chat(make(), "m", "!prev", Role.MODERATOR)) == ["no images yet"]
    assert replies(chat(make(), "m", "!next", Role.MODERATOR)) == ["no images yet"]


def test_slideshow_cycles_on_ticks_and_skips_held_images():
    show = with_images(4, ["shown", "held", "shown", "shown"])
    assert replies(chat(show, "m", "!slideshow 10", Role.MODERATOR, now=100)) == [
        "slideshow every 10 s"
    ]
    assert show.handle(Tick(105)) == []
    seen = [of(show.handle(Tick(t)), Display)[0].entry_id for t in (110, 120, 130, 140)]
    assert seen == [1, 3, 4, 1]
    assert replies(chat(show, "m", "!slideshow off", Role.MODERATOR, now=141)) == ["slideshow off"]
    assert show.handle(Tick(200)) == []
    assert replies(chat(show, "m", "!slideshow 1", Role.MODERATOR)) == [
        "slideshow seconds must be 0 (off) or 3 to 3600"
    ]


def test_slideshow_without_argument_toggles_and_new_images_interrupt_it():
    show = with_images(2)
    assert replies(chat(show, "m", "!slideshow", Role.MODERATOR, now=10)) == [
        "slideshow every 15 s"
    ]
    chat(show, "a", "!generate new", now=20)
    finish(show, now=24, entry_id=50)
    assert show.handle(Tick(30)) == []  # the new image keeps its full 15 s
    assert shown(show.handle(Tick(39))) == [1]
    assert replies(chat(show, "m", "!slideshow", Role.MODERATOR, now=40)) == ["slideshow off"]


def test_slideshow_seconds_from_settings():
    show = with_images(2)
    show.settings.show.slideshow_seconds = 4
    show.handle(SettingsChanged(now=0))
    assert shown(show.handle(Tick(4))) == [1]


# ---- !queue, !cancel, !regenerate ------------------------------------------------------------
def test_queue_answers_position_and_estimated_wait_from_the_moving_average():
    show = make()
    chat(show, "a", "!generate one", now=0)
    finish(show, now=20)  # average moves from 10 toward 20: 13 s
    chat(show, "a", "!generate two", now=20)
    chat(show, "b", "!generate three", now=20)
    chat(show, "c", "!generate four", now=20)
    assert replies(chat(show, "a", "!queue", now=25)) == ["yours is generating now; 2 waiting"]
    # until on screen: 8 s left of the running one, then 13 s for each ahead and itself
    assert replies(chat(show, "c", "!queue", now=25)) == ["you are #2 of 2, about 34 s"]
    assert replies(chat(show, "z", "!queue", now=25)) == [
        "2 waiting; a new request would take about 47 s"
    ]


def test_cancel_your_own_queued_or_running_request():
    show = make()
    chat(show, "a", "!generate one")
    chat(show, "b", "!generate two")
    assert replies(chat(show, "b", "!cancel")) == ["cancelled"]
    assert show.queued == 0
    running = show.running.id
    effects = chat(show, "a", "!cancel")
    assert CancelGeneration(running) in effects and show.running is None
    assert replies(chat(show, "a", "!cancel")) == ["there is no request to cancel"]


def test_cancel_someone_else_needs_a_moderator():
    show = make()
    chat(show, "a", "!generate one")
    chat(show, "b", "!generate two")
    assert replies(chat(show, "c", "!cancel @b")) == ["you can only cancel your own request"]
    assert replies(chat(show, "mod", "!cancel @B", Role.MODERATOR)) == ["cancelled"]
    assert show.queued == 0


def test_late_result_of_a_cancelled_request_is_not_shown():
    show = make()
    chat(show, "a", "!generate one")
    req = show.running
    chat(show, "a", "!cancel")
    entry = Entry(5, req.id, "a", "one", "", 1, 1, 0, 64, 64, 1, "m", "shown", 1)
    assert not of(show.handle(GenerationFinished(req.id, entry, 3)), Display)


def test_regenerate_repeats_the_last_prompt_with_a_new_seed():
    show = make()
    assert "nothing to regenerate" in replies(chat(show, "a", "!regenerate"))[0]
    chat(show, "a", "!generate a fox ### blurry")
    first = show.running.params
    finish(show)
    chat(show, "b", "!regenerate")
    again = show.running.params
    assert (again.prompt, again.negative_prompt) == ("a fox", "blurry")
    assert again.seed != first.seed
    assert show.running.requester.login == "b"


# ---- details of the image on screen ----------------------------------------------------------
def test_params_seed_and_prompt_describe_the_image_on_screen():
    show = make()
    chat(show, "alice", "!generate seed=42 a fox ### blurry")
    finish(show)
    params = replies(chat(show, "x", "!params"))[0]
    assert params.startswith("by @Alice: seed 42,") and "model tiny" in params
    assert replies(chat(show, "x", "!seed")) == ["seed 42 (use seed=42 in !generate)"]
    assert replies(chat(show, "x", "!prompt")) == ["@Alice: a fox ### blurry"]


def test_params_tells_moderators_the_hosts_peak_memory_and_viewers_not():
    show = make()
    chat(show, "alice", "!generate a fox")
    req = show.running
    show.handle(GenerationFinished(req.id, entry_for(req, 1, 1), 1, "peak memory 3.1 GB RAM"))
    mod = replies(chat(show, "mod", "!params", Role.MODERATOR))[0]
    assert mod.startswith("by @Alice: seed ") and mod.endswith("; host peak memory 3.1 GB RAM")
    boss = replies(chat(show, "boss", "!params", Role.BROADCASTER, now=40))[0]
    assert boss.endswith("; host peak memory 3.1 GB RAM")
    viewer = replies(chat(show, "vip", "!params", Role.VIP, now=80))[0]
    assert "memory" not in viewer and viewer.endswith("model tiny")


def test_help_lists_what_this_viewer_may_use():
    viewer = replies(chat(make(), "v", "!help"))[0]
    assert "!generate <prompt> ### <negative prompt>" in viewer
    assert "!queue" in viewer and "!clear" not in viewer and "!terminate" not in viewer
    boss = replies(chat(make(), "b", "!help", Role.BROADCASTER))[0]
    assert "!terminate" in boss and "!clear" in boss


# ---- modes, !terminate -------------------------------------------------------------------------
def test_moderators_toggle_subscriber_only_and_moderator_only_modes():
    show = make()
    m = Role.MODERATOR
    assert replies(chat(show, "m", "!mode subs", m)) == ["requests are now open to subscribers"]
    assert "only subscribers" in replies(chat(show, "v", "!generate fox"))[0]
    assert of(chat(show, "s", "!generate fox", Role.SUBSCRIBER), StartGeneration)
    chat(show, "m", "!mode mods", m)
    assert "only moderators" in replies(chat(show, "vip", "!generate fox", Role.VIP))[0]
    assert replies(chat(show, "m", "!mode", m)) == ["requests are open to moderators"]
    assert "use !mode" in replies(chat(show, "m", "!mode chaos", m))[0]


def test_ignore_and_unignore():
    show = make()
    chat(show, "a", "!generate one")
    chat(show, "troll", "!generate two")
    assert replies(chat(show, "m", "!ignore @Troll", Role.MODERATOR)) == ["ignoring @troll"]
    assert show.queued == 0
    assert chat(show, "troll", "!queue") == []
    chat(show, "m", "!unignore troll", Role.MODERATOR)
    assert replies(chat(show, "troll", "!queue"))


def test_terminate_tells_obs_cancels_and_shuts_down():
    show = with_images(1)
    chat(show, "a", "!generate one")
    running = show.running.id
    effects = chat(show, "boss", "!terminate", Role.BROADCASTER)
    assert effects[0] == Status("stopped by Boss")
    assert Display(None) in effects and CancelGeneration(running) in effects
    assert effects[-1] == Shutdown()
    assert show.handle(Tick(1000)) == []
    state = json.loads(json.dumps(show.snapshot()))
    assert [r["id"] for r in state["queue"]] == [running]  # kept for the next start


# ---- CLEARMSG / CLEARCHAT ----------------------------------------------------------------------
def test_deleted_message_removes_its_request_queued_running_or_shown():
    show = make()
    chat(show, "a", "!generate one")
    running_msg = show.running.msg_id
    chat(show, "b", "!generate two")
    queued_msg = show.queue_order()[0].msg_id
    assert statuses(show.handle(MessageDeleted(queued_msg, 1))) == ["generating for @A, 0 queued"]
    effects = show.handle(MessageDeleted(running_msg, 2))
    assert of(effects, CancelGeneration) and show.running is None
    chat(show, "c", "!generate three")
    shown_msg = show.running.msg_id
    finish(show, entry_id=77)
    effects = show.handle(MessageDeleted(shown_msg, 3))
    assert shown(effects) == [None]
    assert show.history == []


def test_timeout_or_ban_drops_the_users_requests():
    show = make(max_queued_per_user=3)
    chat(show, "bad", "!generate one")
    chat(show, "bad", "!generate two")
    chat(show, "good", "!generate three")
    running = show.running.id
    effects = show.handle(UserRemoved("bad", 5))
    assert CancelGeneration(running) in effects
    assert of(effects, StartGeneration)[0].request.requester.login == "good"
    assert show.queued == 0


# ---- replies stay under the send limit ---------------------------------------------------------
def test_refusals_beyond_the_budget_are_coalesced():
    show = make(max_queue=1)
    chat(show, "a", "!generate one", now=0)
    chat(show, "b", "!generate two", now=0)
    out = []
    for i in range(40):
        out += chat(show, f"u{i}", "!generate x", now=1 + i * 0.1)
    assert len(replies(out)) == show.settings.show.refusal_replies
    later = show.handle(Tick(40))
    (summary,) = replies(later)
    assert summary.startswith("@U6 @U7 @U8")
    assert summary.endswith("@U20 (+19 more viewers): the queue is full; try again later")


def test_a_coalesced_refusal_counts_people_not_messages():
    show = make(max_queue=1)
    chat(show, "a", "!generate one", now=0)
    chat(show, "b", "!generate two", now=0)
    for i in range(40):
        chat(show, f"u{i}", "!generate x", now=1 + i * 0.1)
    for _ in range(100):  # the same people again and again
        chat(show, "u30", "!generate x", now=6)
        chat(show, "u39", "!generate x", now=6)
    (summary,) = replies(show.handle(Tick(40)))
    assert "(+19 more viewers)" in summary and summary.count("@") == 15


def test_refusals_that_differ_only_in_numbers_share_one_summary():
    show = make(user_cooldown_seconds=60, max_queue=1000, max_queued_per_user=100)
    for i in range(11):
        chat(show, f"u{i}", "!generate x", now=0)
    out = []
    for i in range(11):
        out += chat(show, f"u{i}", "!generate again", now=1 + i)
    assert "cooldown: try again in 59 s" in replies(out)
    (summary,) = replies(show.handle(Tick(31)))
    assert summary.endswith(": please wait for your cooldown")
    answered = [r for r in replies(out) if r.startswith("cooldown")]
    assert 0 < len(answered) <= show.settings.show.refusal_replies
    assert summary.count("@") == 11 - len(answered)


def test_a_flood_of_viewers_never_uses_the_replies_kept_for_moderators():
    show = make(max_queue=1000, max_queued_per_user=100, user_cooldown_seconds=0)
    out = []
    for i in range(40):
        out += chat(show, f"u{i}", "!queue", now=1 + i * 0.01)
    viewer_replies = len(replies(out))
    budget = show.settings.twitch.send_limit_for(False) - 2
    assert viewer_replies == budget - staff_reserved(budget)
    answer = replies(chat(show, "mod", "!queue", now=2, role=Role.MODERATOR))
    assert len(answer) == 1 and "waiting" in answer[0]


def test_a_bot_that_moderates_gets_twitchs_bigger_reply_budget():
    show = make(max_queue=1000, max_queued_per_user=100, user_cooldown_seconds=0)
    show.handle(BotStatus(elevated=True, now=0.5))  # Twitch's USERSTATE: the bot is a mod
    out = []
    for i in range(150):
        out += chat(show, f"u{i}", "!queue", now=1 + i * 0.01)
    budget = 100 - 2  # Twitch allows a moderator 100 per 30 s; 2 kept as a margin
    assert len(replies(out)) == budget - staff_reserved(budget)
    show.handle(BotStatus(elevated=False, now=31))  # unmodded: back to 20 per window
    out = []
    for i in range(40):
        out += chat(show, f"v{i}", "!queue", now=32 + i * 0.01)
    assert len(replies(out)) == 18 - staff_reserved(18)


def test_usage_hints_name_the_streamers_own_prefix():
    show = make()
    show.settings.show.command_prefix = "?"
    show.handle(SettingsChanged(0))
    assert replies(chat(show, "m", "?slideshow soon", Role.MODERATOR)) == [
        "use ?slideshow <seconds> or ?slideshow off"
    ]


def test_a_blocklist_handed_in_with_the_settings_applies_at_once():
    show = make()
    assert replies(chat(show, "b", "!generate fluffy kittens"))[0].startswith("starting now")
    kittens, _ = Blocklist.from_lines(["kittens"])
    show.handle(SettingsChanged(0, blocklist=kittens))
    assert replies(chat(show, "a", "!generate fluffy KITTENS")) == [
        "the prompt contains a blocked word"
    ]


def test_all_replies_in_a_window_stay_under_the_send_limit():
    show = make(max_queue=1000)
    out = []
    for i in range(100):
        out += chat(show, f"u{i}", "!queue", now=i * 0.1)
    assert len(replies(out)) <= show.settings.twitch.send_limit_for(False) - 2
    assert replies(chat(show, "late", "!queue", now=31))


# ---- OBS buttons and hotkeys ---------------------------------------------------------------------
def test_streamer_actions_act_as_the_broadcaster_and_answer_on_the_status_line():
    show = with_images(2, ["shown", "held"])
    assert show.handle(StreamerAction("approve", now=1))[:2] == [
        Approve(2, "approved", (0,)),
        Display(2, (CLEAR,)),
    ]
    assert shown(show.handle(StreamerAction("prev", now=2))) == [1]
    assert show.handle(StreamerAction("prev", now=3)) == [Status("this is the oldest image")]
    assert show.handle(StreamerAction("clear", now=4)) == [Display(None)]
    slideshow = show.handle(StreamerAction("slideshow", "8", now=5))
    assert slideshow[-1] == Status("slideshow every 8 s")
    assert show.settings.show.slideshow_seconds == 8.0  # the live setting: every view follows
    assert show.handle(StreamerAction("explode", now=6)) == [Status("unknown action 'explode'")]
    # OBS offers only the protocol's actions: it can never stop the host or drop a request
    assert show.handle(StreamerAction("terminate", now=7)) == [Status("unknown action 'terminate'")]


def test_settings_changed_rereads_prefix_and_grid():
    show = make()
    show.settings.show.command_prefix = "?"
    show.settings.show.grid = 4
    show.handle(SettingsChanged(0))
    assert chat(show, "a", "!generate fox") == []
    assert of(chat(show, "a", "?generate fox"), StartGeneration)[0].request.params.count == 4


# ---- surviving a restart ------------------------------------------------------------------------
def test_queue_history_cursor_and_screen_survive_a_restart():
    show = with_images(3, ["shown", "held", "shown"])
    chat(show, "m", "!prev", Role.MODERATOR)
    chat(show, "m", "!slideshow 20", Role.MODERATOR)
    chat(show, "a", "!generate running one")
    chat(show, "b", "!generate queued one")
    state = json.loads(json.dumps(show.snapshot()))

    again = Show(show.settings, state, moderator=Moderator(show.settings.moderation, Blocklist()))
    effects = again.handle(Tick(1))
    assert shown(effects[:1]) == [2]  # the screen comes back first
    (start,) = of(effects, StartGeneration)
    assert start.request.params.prompt == "running one"  # the interrupted job runs again
    assert [r.params.prompt for r in again.queue_order()] == ["queued one"]
    assert [e.id for e in again.history] == [1, 2, 3]
    assert shown(chat(again, "m", "!prev", Role.MODERATOR)) == [1]
    assert of(chat(again, "boss", "!approve", Role.BROADCASTER), Approve) == [
        Approve(2, "approved", (0,))
    ]
    new_ids = {again.running.id}
    finish(again)
    chat(again, "c", "!generate more")
    new_ids.add(again.running.id)
    assert len(new_ids) == 2


def test_damaged_state_is_not_fatal():
    s = Settings()
    assert Show(s, blocklist=Blocklist(), state={"version": 99}).problems
    show = Show(
        s,
        blocklist=Blocklist(),
        state={"version": 1, "queue": [{"id": "x"}], "history": "nonsense"},
    )
    assert show.problems and show.queued == 0
    assert show.handle(Tick(0)) == [Status("ready for !generate")]
    # a browse position past the saved history must not make !prev raise
    one = with_images(1, ["shown"]).snapshot()
    show = Show(
        s, {**one, "cursor": None, "browse": 7}, moderator=Moderator(s.moderation, Blocklist())
    )
    assert shown(chat(show, "m", "!prev", Role.MODERATOR)) == [1]


# ---- hostile chat never raises ------------------------------------------------------------------
_texts = st.one_of(
    st.text(max_size=80).map(lambda t: "!" + t),
    st.sampled_from([f"!{c}" for c in cmds.COMMANDS]).flatmap(
        lambda c: st.text(max_size=40).map(lambda t: f"{c} {t}")
    ),
)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["a", "b", "c"]), st.sampled_from(ROLES), _texts), max_size=30
    )
)
def test_any_chat_sequence_keeps_the_show_consistent(lines):
    show = make(max_queue=5)
    now = 0.0
    for login, role, text in lines:
        now += 1
        effects = chat(show, login, text, role, now)
        assert len(of(effects, StartGeneration)) <= 1
        assert show.queued <= 5
        if show.running is not None and now % 3 == 0:
            finish(show, now)
    json.dumps(show.snapshot())
    dataclasses.asdict(Settings())


def test_prev_with_nothing_on_screen_yet_starts_at_the_newest():
    state = with_images(2).snapshot()
    state.update(cursor=None, browse=-1)
    show = Show(Settings(), state, blocklist=Blocklist())
    assert shown(chat(show, "m", "!prev", Role.MODERATOR)) == [2]


# ---- micro-batching: several compatible waiting requests in one run ---------------------------
def finish_run(show: Show, now: float, first_id: int, outcome: str = "shown") -> list:
    """Every request of the running run finishes at `now`, in order (as the app feeds them)."""
    out = []
    for k, req in enumerate(show.running_batch):
        out += show.handle(
            GenerationFinished(req.id, entry_for(req, first_id + k, now, outcome), now)
        )
    return out


def prompts(requests) -> list[str]:
    return [r.params.prompt for r in requests]


def test_compatible_waiting_requests_start_together_in_fair_order():
    show = make(max_batch=3, max_queued_per_user=3)
    assert of(chat(show, "a", "!generate a1"), StartGeneration)  # alone: nobody else waited
    chat(show, "b", "!generate b1")
    chat(show, "c", "!generate steps=5 c1")  # other settings: cannot share the call
    chat(show, "c", "!generate c2")
    chat(show, "d", "!generate d1")
    chat(show, "b", "!generate b2")
    assert prompts(show.queue_order()) == ["b1", "c1", "d1", "b2", "c2"]
    (batch,) = of(finish_run(show, 5, 1), StartBatch)
    # c2 would fit, but c1 (c's earlier one) must run first: c is skipped, not overtaken
    assert prompts(batch.requests) == ["b1", "d1", "b2"]
    assert show.running_batch == list(batch.requests)
    assert prompts(show.queue_order()) == ["c1", "c2"]
    (alone,) = of(finish_run(show, 8, 10), StartGeneration)
    assert alone.request.params.prompt == "c1"
    assert of(finish_run(show, 9, 20), StartGeneration)[0].request.params.prompt == "c2"


def test_max_batch_one_starts_one_request_at_a_time():
    show = make(max_batch=1)
    for v in "abcd":
        chat(show, v, f"!generate {v}")
    seen = []
    while show.running:
        assert len(show.running_batch) == 1
        seen.append(show.running.params.prompt)
        assert not of(finish(show), StartBatch)
    assert seen == ["a", "b", "c", "d"]


def test_a_batch_shows_each_result_in_order_and_the_next_run_waits_for_all():
    show = make(max_batch=3)
    for v in "abcde":
        chat(show, v, f"!generate {v}")
    finish_run(show, 2, 1)
    assert prompts(show.running_batch) == ["b", "c", "d"]
    ids = [r.id for r in show.running_batch]
    show.handle(GenerationStarted(ids[0], 3))
    assert statuses(show.handle(GenerationProgress(ids[0], 1, 2, 3.5))) == [
        "generating 1/2 for @B, @C, @D, 1 queued"
    ]
    out = show.handle(GenerationFinished(ids[0], entry_for(show.running_batch[0], 11, 4), 4))
    assert shown(out) == [11] and not of(out, (StartGeneration, StartBatch))
    c_msg = show.running_batch[0].msg_id
    out = show.handle(GenerationFailed(ids[1], "out of memory", 4))
    assert Reply("sorry, your image failed: out of memory", c_msg) in out  # to c alone
    out = show.handle(GenerationFinished(ids[2], entry_for(show.running_batch[0], 13, 4), 4))
    assert shown(out) == [13]
    assert of(out, StartGeneration)[0].request.params.prompt == "e"  # only now


def test_grid_requests_in_a_batch_are_cut_to_one_while_others_wait():
    show = make(grid=4, max_batch=2)
    for v in "abcd":
        chat(show, v, f"!generate {v}")
    finish_run(show, 1, 1)
    assert [r.params.count for r in show.running_batch] == [1, 1]  # d still waits
    finish_run(show, 2, 5)
    assert [r.params.count for r in show.running_batch] == [4]


def test_cancel_one_request_inside_a_running_batch_keeps_the_others():
    show = make(max_batch=3)
    for v in "abcd":
        chat(show, v, f"!generate {v}")
    finish_run(show, 1, 1)
    b, c, d = show.running_batch
    out = chat(show, "c", "!cancel", now=2)
    assert of(out, CancelGeneration) == [CancelGeneration(c.id)] and replies(out) == ["cancelled"]
    assert show.running_batch == [b, d] and not of(out, (StartGeneration, StartBatch))
    late = show.handle(GenerationFinished(c.id, entry_for(c, 99, 3), 3))
    assert not of(late, Display)  # the cancelled one's images never show
    shown = []
    for req, eid in ((b, 2), (d, 4)):
        shown += of(show.handle(GenerationFinished(req.id, entry_for(req, eid, 3), 3)), Display)
    assert [d.entry_id for d in shown] == [2, 4]
    assert 99 not in [e.id for e in show.history]


def test_deleted_message_or_ban_inside_a_running_batch():
    show = make(max_batch=4, max_queued_per_user=2)
    chat(show, "a", "!generate a")
    for login, text in (("bad", "x1"), ("good", "g"), ("bad", "x2")):
        chat(show, login, f"!generate {text}")
    finish_run(show, 1, 1)
    assert prompts(show.running_batch) == ["x1", "g", "x2"]
    good = show.running_batch[1]
    out = show.handle(MessageDeleted(good.msg_id, 2))
    assert of(out, CancelGeneration) == [CancelGeneration(good.id)]
    out = show.handle(UserRemoved("bad", 3))
    assert len(of(out, CancelGeneration)) == 2
    assert show.running is None  # the whole run is gone: nothing to wait for


def test_a_running_batch_goes_back_to_the_queue_on_restart_and_on_terminate():
    show = make(max_batch=3)
    for v in "abcde":
        chat(show, v, f"!generate {v}")
    finish_run(show, 1, 1)
    assert prompts(show.running_batch) == ["b", "c", "d"]
    state = json.loads(json.dumps(show.snapshot()))
    assert [r["params"]["prompt"] for r in state["queue"]] == ["b", "c", "d", "e"]
    again = Show(show.settings, state, moderator=Moderator(show.settings.moderation, Blocklist()))
    (batch,) = of(again.handle(Tick(1)), StartBatch)
    assert prompts(batch.requests) == ["b", "c", "d"]
    out = chat(again, "boss", "!terminate", Role.BROADCASTER)
    assert len(of(out, CancelGeneration)) == 3
    assert prompts(again.queue_order()) == ["b", "c", "d", "e"]


def test_queue_estimate_counts_runs_of_a_batch():
    show = make(max_batch=4)
    show.settings.show.first_estimate_seconds = 10.0
    chat(show, "a", "!generate a", now=0)
    for v in "bcdef":
        chat(show, v, f"!generate {v}", now=0)
    # 10 s for a's run; b-e share the next run (10 s); f needs a third
    assert replies(chat(show, "e", "!queue", now=0)) == ["you are #4 of 5, about 20 s"]
    assert replies(chat(show, "f", "!queue", now=0)) == ["you are #5 of 5, about 30 s"]


# ---- minimum time on screen -------------------------------------------------------------------
def test_a_fast_image_waits_on_deck_until_the_one_on_screen_had_its_time():
    show = make(min_display=4.0)
    chat(show, "a", "!generate a", now=0)
    chat(show, "b", "!generate b", now=0)
    chat(show, "c", "!generate c", now=0)
    assert shown(finish(show, now=1, entry_id=1)) == [1]  # screen was empty
    out = finish(show, now=1.2, entry_id=2)
    assert not of(out, Display) and show.on_deck == [2]
    assert not of(out, StartGeneration)  # at most one batch ahead of the screen
    assert "1 queued, 1 ready, next picture in 4 s" in statuses(out)
    assert replies(chat(show, "b", "!queue", now=2)) == [
        "yours is ready and goes on screen in about 3 s"
    ]
    assert not of(show.handle(Tick(4.9)), Display)
    out = show.handle(Tick(5.0))
    assert shown(out) == [2] and show.on_deck == []
    assert of(out, StartGeneration)[0].request.params.prompt == "c"  # generation goes on
    out = finish(show, now=5.2, entry_id=3)
    assert not of(out, Display)
    assert shown(show.handle(Tick(9.0))) == [3]


def test_a_slow_image_is_shown_at_once_and_min_display_zero_is_off():
    show = make(min_display=4.0)
    chat(show, "a", "!generate a", now=0)
    chat(show, "b", "!generate b", now=0)
    finish(show, now=1, entry_id=1)
    assert shown(finish(show, now=6, entry_id=2)) == [2]  # 1 was up 5 s
    off = make(min_display=0.0)
    chat(off, "a", "!generate a", now=0)
    chat(off, "b", "!generate b", now=0)
    finish(off, now=1, entry_id=1)
    assert shown(finish(off, now=1.1, entry_id=2)) == [2]


def test_a_batch_goes_on_screen_one_picture_per_minimum_time():
    show = make(max_batch=3, min_display=4.0)
    for v in "abcde":
        chat(show, v, f"!generate {v}", now=0)
    finish_run(show, 1, 1)
    out = finish_run(show, 1.5, 2)
    assert show.on_deck == [2, 3, 4] and not of(out, (StartGeneration, StartBatch))
    up = {t: shown(show.handle(Tick(t))) for t in (4.9, 5, 8.9, 9, 13)}
    assert up == {4.9: [], 5: [2], 8.9: [], 9: [3], 13: [4]}
    assert show.running.params.prompt == "e"  # started when the deck emptied


def test_moderators_act_at_once_and_a_hand_shown_picture_is_not_shown_twice():
    show = make(max_batch=2, min_display=4.0)
    for v in "abc":
        chat(show, v, f"!generate {v}", now=0)
    finish_run(show, 1, 1)
    finish_run(show, 1.5, 2)
    assert show.on_deck == [2, 3]
    m = Role.MODERATOR
    assert shown(chat(show, "m", "!next", m, now=2)) == [2]  # at once
    assert show.on_deck == [3]
    assert shown(chat(show, "m", "!prev", m, now=3)) == [1]
    assert not of(show.handle(Tick(6.9)), Display)  # the moderator's pick keeps its time
    assert shown(show.handle(Tick(7))) == [3]
    assert show.on_deck == [] and show.running is None and show.queued == 0
    assert shown(chat(show, "m", "!clear", m, now=8)) == [None]


def test_approve_and_clear_with_pictures_on_deck():
    show = make(min_display=4.0)
    chat(show, "a", "!generate a", now=0)
    chat(show, "b", "!generate b", now=0)
    finish(show, now=1, entry_id=1)
    out = finish(show, now=1.5, entry_id=2, outcome="held")
    assert "held until the streamer approves" in replies(out)[0] and show.on_deck == [2]
    approve = chat(show, "boss", "!approve", Role.BROADCASTER, now=2)
    assert (
        approve[:2] == [Approve(2, "approved", (0,)), Display(2, (CLEAR,))] and show.on_deck == []
    )
    show2 = make(min_display=4.0)
    chat(show2, "a", "!generate a", now=0)
    chat(show2, "b", "!generate b", now=0)
    finish(show2, now=1, entry_id=1)
    finish(show2, now=1.5, entry_id=2)
    chat(show2, "m", "!clear", Role.MODERATOR, now=2)
    assert not of(show2.handle(Tick(5.5)), Display)  # the cleared screen is held too
    assert shown(show2.handle(Tick(6))) == [2]


def test_deleted_message_of_a_picture_on_deck_means_it_never_shows():
    show = make(min_display=4.0)
    chat(show, "a", "!generate a", now=0)
    chat(show, "b", "!generate b", now=0)
    msg_b = show.queue_order()[0].msg_id
    finish(show, now=1, entry_id=1)
    finish(show, now=1.5, entry_id=2)
    show.handle(MessageDeleted(msg_b, 2))
    assert show.on_deck == [] and not of(show.handle(Tick(10)), Display)


def test_queue_estimate_and_status_count_the_screen_time():
    show = make(min_display=4.0)
    show.settings.show.first_estimate_seconds = 1.0
    show = Show(show.settings, rng_seed=7, blocklist=Blocklist())
    chat(show, "a", "!generate a", now=0)
    chat(show, "b", "!generate b", now=0)
    finish(show, now=1, entry_id=1)
    finish(show, now=1.3, entry_id=2)  # on deck until 5
    # c: starts when b goes up at 5, done about 6, on screen when b had its 4 s: 9
    assert replies(chat(show, "c", "!generate c", now=2)) == ["queued #1, about 7 s"]
    assert statuses(show.handle(Tick(3.2)))[-1:] == ["1 queued, 1 ready, next picture in 2 s"]


def test_the_deck_survives_a_restart_and_shows_before_the_queue_moves():
    show = make(min_display=4.0)
    for v in "abc":
        chat(show, v, f"!generate {v}", now=0)
    finish(show, now=1, entry_id=1)
    finish(show, now=1.5, entry_id=2)
    state = json.loads(json.dumps(show.snapshot()))
    again = Show(show.settings, state, moderator=Moderator(show.settings.moderation, Blocklist()))
    out = again.handle(Tick(100))
    assert shown(out[:1]) == [1] and not of(out, StartGeneration) and again.on_deck == [2]
    out = again.handle(Tick(104))
    assert shown(out) == [2] and of(out, StartGeneration)


def test_min_display_seconds_is_range_checked():
    settings, problems = settings_from_dict({"show": {"min_display_seconds": 601}})
    assert settings.show.min_display_seconds == 4.0 and "0 to 600" in problems[0]
    settings, problems = settings_from_dict({"show": {"min_display_seconds": 0}})
    assert settings.show.min_display_seconds == 0.0 and not problems


# ---- batching and the deck never lose or reorder a viewer's pictures ---------------------------
_OPS = ["gen", "gen", "gen5", "finish", "finish", "finish", "fail", "tick", "tick", "cancel"]
_ops = st.lists(
    st.tuples(
        st.sampled_from([*_OPS, "delete", "next"]),  # repeats: the common events come often
        st.sampled_from(["a", "b", "c", "d"]),
        st.sampled_from([0.0, 0.2, 0.5, 1.0, 2.5]),  # seconds passing before the event
    ),
    min_size=8,
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(_ops, st.integers(1, 3), st.sampled_from([0.0, 2.0]))
def test_batches_and_the_deck_keep_every_picture_and_each_viewers_order(ops, max_batch, hold):
    show = make(max_batch=max_batch, min_display=hold, max_queued_per_user=3, max_queue=8)
    now, next_id = 0.0, 1
    started: dict[str, list[str]] = {}
    msg_of: dict[int, str] = {}
    finished: set[int] = set()
    displayed: set[int] = set()
    gone: set[int] = set()  # deleted by a moderator: allowed never to show

    def note(effects) -> None:
        for e in effects:
            runs = [e.request] if isinstance(e, StartGeneration) else []
            runs += list(e.requests) if isinstance(e, StartBatch) else []
            for r in runs:
                started.setdefault(r.requester.login, []).append(r.id)
            if isinstance(e, Display) and e.entry_id is not None:
                displayed.add(e.entry_id)

    for op, who, dt in ops:
        now += dt
        if op.startswith("gen"):
            steps = " steps=5" if op == "gen5" else ""
            note(chat(show, who, f"!generate{steps} p", now=now))
        elif op in ("finish", "fail") and show.running:
            req = show.running_batch[0]
            if op == "finish":
                finished.add(next_id)
                msg_of[next_id] = req.msg_id
                note(show.handle(GenerationFinished(req.id, entry_for(req, next_id, now), now)))
                next_id += 1
            else:
                note(show.handle(GenerationFailed(req.id, "boom", now)))
        elif op == "tick":
            note(show.handle(Tick(now)))
        elif op == "cancel":
            note(chat(show, who, "!cancel", now=now))
        elif op == "delete" and show.history:
            entry = show.history[-1]
            gone.add(entry.id)
            note(show.handle(MessageDeleted(msg_of[entry.id], now)))
        elif op == "next":
            note(chat(show, "mod", "!next", Role.MODERATOR, now=now))
        batch = show.running_batch
        assert len(batch) <= max_batch
        assert len({(r.params.steps, r.params.width) for r in batch}) <= 1
        assert not {r.id for r in batch} & {r.id for r in show.queue_order()}
        assert len(show.on_deck) <= max_batch  # at most one batch ahead of the screen
        assert set(show.on_deck) <= {e.id for e in show.history}
    for ids in started.values():  # nobody's own requests ran out of order (r<n> counts up)
        assert ids == sorted(ids, key=lambda rid: int(rid[1:].split("-")[0]))
    for _ in range(10):  # given time, everything finished reaches the screen
        now += hold + 0.1
        note(show.handle(Tick(now)))
    assert show.on_deck == []
    assert finished - gone <= displayed
    json.dumps(show.snapshot())


# ---- display names, replies, review page (issue 11 and 12) --------------------------------------
def test_queue_finds_a_finished_picture_by_login_when_the_display_name_differs():
    show = make(min_display=10.0)
    chat(show, "ann", "!generate first", now=0)
    chat(show, "dora", "!generate mine", now=0)
    finish(show, now=1, entry_id=1)
    finish(show, now=2, entry_id=2)  # Dora's waits on deck behind Ann's
    assert show.history[-1].requester == "Dora" and show.on_deck == [2]
    assert replies(chat(show, "dora", "!queue", now=3)) == [
        "yours is ready and goes on screen in about 8 s"
    ]


def test_an_accepted_generate_is_answered_while_the_budget_is_quiet():
    show = make()
    assert replies(chat(show, "ann", "!generate a fox")) == ["starting now, about 10 s"]
    busy = make(max_queue=1000, max_queued_per_user=100)
    for i in range(7):  # half of a viewer's budget spent on answers
        chat(busy, f"q{i}", "!queue", now=0.5)
    busy.handle(GenerationFailed("none", "x", 0.6))
    assert not busy.running
    assert replies(chat(busy, "ann", "!generate a fox", now=1)) == []  # courtesy waits
    assert busy.running.requester.login == "ann"  # the request itself is taken


def test_the_same_text_is_never_sent_twice_within_30_seconds():
    show = make()
    (first,) = of(chat(show, "ann", "!prompt", now=1), Reply)
    assert first.text == "nothing is on screen" and first.reply_to  # threaded
    (again,) = of(chat(show, "ann", "!prompt", now=2), Reply)  # named, still threaded
    assert again.text == "@Ann nothing is on screen" and again.reply_to
    assert replies(chat(show, "ann", "!prompt", now=3)) == ["@Ann nothing is on screen (2)"]
    for n in range(3, 10):
        chat(show, "ann", "!prompt", now=3 + n / 10)
    assert replies(chat(show, "ann", "!prompt", now=4)) == []  # past that: left out
    assert replies(chat(show, "ann", "!prompt", now=32)) == ["nothing is on screen"]


def test_prompt_never_echoes_a_blocked_word_in_the_negative_prompt():
    show = make()
    show.settings.moderation.forced_negative_prompt = "lowres"
    chat(show, "ann", "!generate a calm lake ### nude, blurry")
    finish(show, now=1, entry_id=1)
    (answer,) = replies(chat(show, "m", "!prompt", Role.MODERATOR, now=2))
    assert "nude" not in answer.lower() and "lowres" not in answer
    # the blocked part was dropped from the negative prompt before it reached the model
    # (moderation.check_negative), so what is left is repeated as it is
    assert answer == "@Ann: a calm lake ### blurry"
    chat(show, "bob", "!generate a hill ### fog")
    finish(show, now=3, entry_id=2)
    assert replies(chat(show, "m", "!prompt", Role.MODERATOR, now=4)) == ["@Bob: a hill ### fog"]


def test_review_page_approves_one_tile_then_the_rest():
    show = make(grid=4)
    chat(show, "dora", "!generate count=4 a fox")
    req = show.running
    entry = dataclasses.replace(
        entry_for(req, 5, 1, "held"), mode="hold", flagged=(False, True, False, True)
    )
    assert of(show.handle(GenerationFinished(req.id, entry, 1)), Display)[0].tiles == (
        Tile.CLEAR, Tile.PLACEHOLDER, Tile.CLEAR, Tile.PLACEHOLDER,
    )  # fmt: skip
    out = show.handle(ApproveEntry(5, tile=1, by="mod Max", now=2))
    assert of(out, Approve) == [Approve(5, "held", (1,))]
    assert of(out, Display)[0].tiles == (CLEAR, CLEAR, CLEAR, Tile.PLACEHOLDER)
    assert [e.text for e in of(out, Log)] == ["mod Max approved tile 2 of picture 5 by @Dora"]
    out = show.handle(ApproveEntry(5, now=3))
    assert of(out, Approve) == [Approve(5, "approved", (1, 3))]
    assert of(out, Display)[0].tiles == (CLEAR,) * 4
    assert statuses(show.handle(ApproveEntry(5, now=4))) == ["picture 5 is approved, not waiting"]
    assert statuses(show.handle(ApproveEntry(77, now=5))) == [
        "picture 77 is no longer in the history"
    ]


def test_review_page_rejects_a_held_picture_and_the_requester_is_told_why():
    show = make(grid=4)
    chat(show, "dora", "!generate a fox")
    finish(show, now=1, outcome="held", entry_id=3)
    out = show.handle(RejectEntry(3, by="the streamer", now=2))
    assert of(out, Reject) == [Reject(3)] and shown(out) == [None]
    assert replies(out) == ["your image was rejected by the streamer: the safety filter flagged it"]
    assert show.history == [] and show.on_screen is None
    assert statuses(show.handle(RejectEntry(3, now=3))) == ["picture 3 is no longer in the history"]
    chat(show, "ann", "!generate count=4 a cat", now=4)  # a grid with one flagged tile
    req = show.running
    entry = dataclasses.replace(
        entry_for(req, 4, 5, "held"), mode="hold", flagged=(False, True, False, False)
    )
    show.handle(GenerationFinished(req.id, entry, 5))
    assert replies(show.handle(RejectEntry(4, now=6))) == [
        "your image was rejected by the streamer: the safety filter flagged 1 of its 4 tiles"
    ]


def test_review_page_approves_a_skipped_picture_onto_the_screen():
    show = make()
    chat(show, "dora", "!generate a fox")
    assert not of(finish(show, now=1, outcome="skipped", entry_id=4), Display)
    out = show.handle(ApproveEntry(4, now=2))
    assert of(out, Approve) == [Approve(4, "approved", (0,))]
    assert of(out, Display) == [Display(4, (CLEAR,))]


def test_review_page_cancels_and_ignores_a_viewer():
    show = make()
    chat(show, "ann", "!generate a fox")
    chat(show, "spam", "!generate one")
    out = show.handle(CancelRequests("@Spam", by="mod Max", now=1))
    assert show.queued == 0 and [e.text for e in of(out, Log)] == [
        "mod Max cancelled 1 request(s) of @spam"
    ]
    out = show.handle(IgnoreViewer("spam", by="mod Max", now=2))
    assert statuses(out)[0] == "ignoring @spam" and not replies(chat(show, "spam", "!queue", now=3))
    show.handle(IgnoreViewer("spam", ignore=False, now=4))
    assert replies(chat(show, "spam", "!queue", now=5))


def test_an_event_the_show_does_not_know_is_an_error():
    with pytest.raises(TypeError, match="no handler for str"):
        make().handle("hello")  # type: ignore[arg-type]
