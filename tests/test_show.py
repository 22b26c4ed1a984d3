"""The show, command by command, role by role, state by state (no I/O: events in, effects out)."""

from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from generator_host import commands as cmds
from generator_host.chat.message import ChatMessage, MessageDeleted, Role, UserRemoved, Viewer
from generator_host.generation import Entry
from generator_host.moderation import Blocklist, Moderator
from generator_host.settings import Settings
from generator_host.show import (
    Approve,
    CancelGeneration,
    Display,
    GenerationFailed,
    GenerationFinished,
    GenerationProgress,
    GenerationStarted,
    Reply,
    SettingsChanged,
    Show,
    Shutdown,
    StartGeneration,
    Status,
    StreamerAction,
    Tick,
)

ROLES = list(Role)
_msg = iter(range(1, 10**9))


def make(grid: int = 1, **moderation) -> Show:
    s = Settings()
    s.twitch.channel = "boss"
    s.show.grid = grid
    s.moderation.user_cooldown_seconds = 0.0
    for key, value in moderation.items():
        setattr(s.moderation, key, value)
    block, _ = Blocklist.from_lines(["nude*"])
    return Show(s, rng_seed=7, moderator=Moderator(s.moderation, block))


def chat(show: Show, login: str, text: str, role: Role = Role.EVERYONE, now: float = 0.0):
    msg = ChatMessage(Viewer(login, login.capitalize(), role=role), text, f"m{next(_msg)}", now)
    return show.handle(msg)


def of(effects, kind):
    return [e for e in effects if isinstance(e, kind)]


def replies(effects) -> list[str]:
    return [e.text for e in of(effects, Reply)]


def finish(show: Show, now: float = 10.0, outcome: str = "shown", entry_id: int | None = None):
    req = show.running
    assert req is not None
    entry = Entry(
        id=entry_id if entry_id is not None else len(show.history) + 100,
        request_id=req.id,
        requester=req.requester.login,
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
    return show.handle(GenerationFinished(req.id, entry, now))


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
    assert of(chat(show, "anyone", "!clear"), Display) == [Display(None)]
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
    assert Status("generating for @Alice, 0 queued") in first
    second = chat(show, "bob", "!generate a cat", now=1)
    assert not of(second, StartGeneration)
    assert replies(second) == ["queued #1, about 9 s"]
    done = finish(show, now=12)
    assert of(done, Display) == [Display(100)]
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
    assert effects == [Status("generating 3/8 for @Alice, 1 queued")]
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
    assert of(effects, Display) == [Display(9)]  # the placeholder
    assert "held until the streamer approves" in replies(effects)[0]
    approve = chat(show, "boss", "!approve", Role.BROADCASTER)
    assert approve[:2] == [Approve(9), Display(9, reveal=True)]
    assert show.history[-1].outcome == "approved"
    assert replies(chat(show, "boss", "!approve", Role.BROADCASTER)) == [
        "nothing is waiting for approval"
    ]


def test_approve_the_blurred_image_on_screen():
    show = with_images(1, ["blurred"])
    assert chat(show, "boss", "!approve", Role.BROADCASTER)[:2] == [
        Approve(1),
        Display(1, reveal=True),
    ]


def test_approve_finds_the_held_image_when_another_is_on_screen():
    show = with_images(3, ["held", "shown", "shown"])
    assert of(chat(show, "boss", "!approve", Role.BROADCASTER), Approve) == [Approve(1)]


def test_clear_wipes_the_screen_and_stops_the_slideshow():
    show = with_images(3)
    chat(show, "mod", "!slideshow 5", Role.MODERATOR, now=10)
    assert of(chat(show, "mod", "!clear", Role.MODERATOR, now=11), Display) == [Display(None)]
    assert show.on_screen is None
    assert show.handle(Tick(100)) == []
    assert replies(chat(show, "a", "!params")) == ["nothing is on screen"]


# ---- history: !prev, !next, !slideshow ------------------------------------------------------
def test_prev_and_next_walk_the_history_and_stop_at_the_ends():
    show = with_images(3)
    m = Role.MODERATOR
    assert of(chat(show, "m", "!prev", m), Display) == [Display(2)]
    assert of(chat(show, "m", "!prev", m), Display) == [Display(1)]
    assert replies(chat(show, "m", "!prev", m)) == ["this is the oldest image"]
    assert of(chat(show, "m", "!next", m), Display) == [Display(2)]
    assert of(chat(show, "m", "!next", m), Display) == [Display(3)]
    assert replies(chat(show, "m", "!next", m)) == ["this is the newest image"]


def test_prev_after_clear_starts_from_where_the_screen_was():
    show = with_images(3)
    chat(show, "m", "!clear", Role.MODERATOR)
    assert of(chat(show, "m", "!prev", Role.MODERATOR), Display) == [Display(3)]
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
        "slideshow seconds must be 3-3600"
    ]


def test_slideshow_without_argument_toggles_and_new_images_interrupt_it():
    show = with_images(2)
    assert replies(chat(show, "m", "!slideshow", Role.MODERATOR, now=10)) == [
        "slideshow every 15 s"
    ]
    chat(show, "a", "!generate new", now=20)
    finish(show, now=24, entry_id=50)
    assert show.handle(Tick(30)) == []  # the new image keeps its full 15 s
    assert of(show.handle(Tick(39)), Display) == [Display(1)]
    assert replies(chat(show, "m", "!slideshow", Role.MODERATOR, now=40)) == ["slideshow off"]


def test_slideshow_seconds_from_settings():
    show = with_images(2)
    show.settings.show.slideshow_seconds = 4
    show.handle(SettingsChanged(now=0))
    assert of(show.handle(Tick(4)), Display) == [Display(1)]


# ---- !queue, !cancel, !regenerate ------------------------------------------------------------
def test_queue_answers_position_and_estimated_wait_from_the_moving_average():
    show = make()
    chat(show, "a", "!generate one", now=0)
    finish(show, now=20)  # average moves from 10 toward 20: 13 s
    chat(show, "a", "!generate two", now=20)
    chat(show, "b", "!generate three", now=20)
    chat(show, "c", "!generate four", now=20)
    assert replies(chat(show, "a", "!queue", now=25)) == ["yours is generating now; 2 waiting"]
    assert replies(chat(show, "c", "!queue", now=25)) == ["you are #2 of 2, about 21 s"]
    assert replies(chat(show, "z", "!queue", now=25)) == [
        "2 waiting; a new request would take about 34 s"
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
    assert params.startswith("by @alice: seed 42,") and "model tiny" in params
    assert replies(chat(show, "x", "!seed")) == ["seed 42 (use seed=42 in !generate)"]
    assert replies(chat(show, "x", "!prompt")) == ["@alice: a fox ### blurry"]


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
    assert show.handle(MessageDeleted(queued_msg, 1)) == [Status("generating for @A, 0 queued")]
    effects = show.handle(MessageDeleted(running_msg, 2))
    assert of(effects, CancelGeneration) and show.running is None
    chat(show, "c", "!generate three")
    shown_msg = show.running.msg_id
    finish(show, entry_id=77)
    effects = show.handle(MessageDeleted(shown_msg, 3))
    assert of(effects, Display) == [Display(None)]
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
    assert (
        summary.startswith("@U6 @U7")
        and "(+19 more): the queue is full (1); try again later" in summary
    )


def test_refusals_that_differ_only_in_numbers_share_one_summary():
    show = make(user_cooldown_seconds=60, max_queue=1000, max_queued_per_user=100)
    for i in range(12):
        chat(show, f"u{i}", "!generate x", now=0)
    out = []
    for i in range(12):
        out += chat(show, f"u{i}", "!generate again", now=1 + i)
    assert "cooldown: try again in 59 s" in replies(out)
    (summary,) = replies(show.handle(Tick(31)))
    assert summary.endswith(": please wait for your cooldown")
    assert summary.count("@") == 12 - show.settings.show.refusal_replies


def test_changed_blocklist_file_is_reloaded(tmp_path):
    show = make()
    path = tmp_path / "list.txt"
    path.write_text("kittens\n", encoding="utf-8")
    show.settings.moderation.blocklist_file = str(path)
    show.handle(SettingsChanged(0))
    assert replies(chat(show, "a", "!generate fluffy KITTENS")) == [
        "the prompt contains a blocked word"
    ]


def test_all_replies_in_a_window_stay_under_the_send_limit():
    show = make(max_queue=1000)
    out = []
    for i in range(100):
        out += chat(show, f"u{i}", "!queue", now=i * 0.1)
    assert len(replies(out)) == show.settings.twitch.send_limit - 2
    assert replies(chat(show, "late", "!queue", now=31))


# ---- OBS buttons and hotkeys ---------------------------------------------------------------------
def test_streamer_actions_act_as_the_broadcaster_and_answer_on_the_status_line():
    show = with_images(2, ["shown", "held"])
    assert show.handle(StreamerAction("approve", now=1))[:2] == [
        Approve(2),
        Display(2, reveal=True),
    ]
    assert of(show.handle(StreamerAction("prev", now=2)), Display) == [Display(1)]
    assert show.handle(StreamerAction("prev", now=3)) == [Status("this is the oldest image")]
    assert show.handle(StreamerAction("clear", now=4)) == [Display(None)]
    assert show.handle(StreamerAction("slideshow", "8", now=5)) == [Status("slideshow every 8 s")]
    assert show.handle(StreamerAction("explode", now=6)) == [Status("unknown action 'explode'")]
    chat(show, "a", "!generate x")
    assert of(show.handle(StreamerAction("cancel", now=7)), CancelGeneration)
    assert of(show.handle(StreamerAction("terminate", now=8)), Shutdown)


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
    assert effects[0] == Display(2)  # the screen comes back first
    (start,) = of(effects, StartGeneration)
    assert start.request.params.prompt == "running one"  # the interrupted job runs again
    assert [r.params.prompt for r in again.queue_order()] == ["queued one"]
    assert [e.id for e in again.history] == [1, 2, 3]
    assert of(chat(again, "m", "!prev", Role.MODERATOR), Display) == [Display(1)]
    assert of(chat(again, "boss", "!approve", Role.BROADCASTER), Approve) == [Approve(2)]
    new_ids = {again.running.id}
    finish(again)
    chat(again, "c", "!generate more")
    new_ids.add(again.running.id)
    assert len(new_ids) == 2


def test_damaged_state_is_not_fatal():
    s = Settings()
    assert Show(s, {"version": 99}).problems
    show = Show(s, {"version": 1, "queue": [{"id": "x"}], "history": "nonsense"})
    assert show.problems and show.queued == 0
    assert show.handle(Tick(0)) == [Status("ready for !generate")]


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
    show = Show(Settings(), state)
    assert of(chat(show, "m", "!prev", Role.MODERATOR), Display) == [Display(2)]
