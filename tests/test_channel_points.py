"""Channel points end to end, against a local Twitch (Helix, EventSub WebSocket, id service)
over real loopback sockets, with the real host, tiny engine and gallery in-process.

What a streamer and Twitch notice: the reward's state as Twitch stores it, every status
call Twitch applies (each redemption FULFILLED or CANCELED exactly once), what the viewer
is told in chat, and the host's log lines.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from generator_host.app import Host
from generator_host.core import events as ev
from generator_host.core.settings import Settings
from generator_host.edges.gallery import Gallery
from generator_host.edges.twitch import auth
from generator_host.edges.twitch.channel_points import ChannelPoints
from tests.fake_twitch_api import FakeTwitchApi
from tests.fake_twitch_id import FakeTwitchId
from tests.fixtures_model import make_tiny_engine, tiny_settings
from tests.reliability_helpers import record
from tests.test_app import StandInChat, run_scenario, say, until

pytestmark = pytest.mark.model

CP_LOG = "generator_host.edges.twitch"


@pytest.fixture
def fake_id() -> Iterator[FakeTwitchId]:
    fake = FakeTwitchId().start()
    yield fake
    fake.stop()


@pytest.fixture
def fake_api(fake_id: FakeTwitchId) -> Iterator[FakeTwitchApi]:
    def token_ok(token: str) -> bool:
        return fake_id.access.get(token, 0.0) > time.time()

    fake = FakeTwitchApi(token_ok=token_ok, keepalive=1).start()
    yield fake
    fake.stop()


def cp_settings(tmp_path: Path, model_dir: Path, fake_id: FakeTwitchId, api: FakeTwitchApi,
                **cp: Any) -> Settings:  # fmt: skip
    settings = Settings()
    settings.model, settings.safety = tiny_settings(model_dir, max_batch=4)
    settings.show.min_display_seconds = 0.0
    settings.moderation.user_cooldown_seconds = 0.0
    settings.moderation.max_queued_per_user = 20
    settings.link.port = 0
    settings.review.enabled = False
    settings.twitch.channel = "streamer"
    settings.twitch.client_id = fake_id.client_id
    settings.twitch.id_url = fake_id.url
    settings.twitch.helix_url = api.helix_url
    settings.twitch.eventsub_url = api.ws_url
    settings.channel_points.enabled = True
    settings.channel_points.global_cooldown_seconds = 60
    for key, value in cp.items():
        setattr(settings.channel_points, key, value)
    return settings


def make_host(tmp_path: Path, model_dir: Path, settings: Settings, fake_id: FakeTwitchId,
              home: Path | None = None) -> Host:  # fmt: skip
    home = home or tmp_path / "data"
    issued = fake_id.issue()
    path = auth.token_path(home, "broadcaster")
    tokens = auth.Tokens(
        issued["access_token"], issued["refresh_token"], expires_at=time.time() + 3600,
        login="streamer", user_id="12345",
    )  # fmt: skip
    auth.save_tokens(path, tokens)
    keeper = auth.TokenKeeper(auth.IdClient(fake_id.client_id, fake_id.url), path, tokens)
    points = ChannelPoints(settings, keeper, home, run_keeper=False, retry_max=0.5)
    points.keepalive_grace = 0.5
    engine = make_tiny_engine(model_dir, max_batch=4)
    gallery = Gallery(home / "gallery")
    return Host(settings, home, StandInChat(), engine, gallery, "t" * 32, points=points)


def run(host: Host, scenario: Callable[[], Any]) -> None:
    """test_app's scenario runner, then the gallery closed (each test makes its own)."""
    try:
        run_scenario(host, scenario)  # type: ignore[arg-type]
    finally:
        host.gallery.close()


class Gate:
    """Holds the engine's pipeline call for prompts with `word` until opened."""

    def __init__(self, engine: Any, word: str) -> None:
        self.entered = threading.Event()
        self._open = threading.Event()
        original = engine.call_pipeline

        def call(**kwargs: Any) -> Any:
            if any(word in p for p in kwargs["prompt"]):
                self.entered.set()
                self._open.wait(20)
            return original(**kwargs)

        engine.call_pipeline = call

    def open_when(self, check: Callable[[], bool]) -> None:
        deadline = time.monotonic() + 20
        while not check() and time.monotonic() < deadline:
            time.sleep(0.02)
        self._open.set()


def said(host: Host) -> str:
    return "\n".join(host.chat.said)  # type: ignore[attr-defined]


def test_reward_made_from_the_config_redemptions_fulfilled_or_refunded_once_paused_at_stop(
    tmp_path: Path, tiny_model_dir: Path, fake_id: FakeTwitchId, fake_api: FakeTwitchApi
) -> None:
    settings = cp_settings(tmp_path, tiny_model_dir, fake_id, fake_api, title="Paint it",
                           cost=321, max_per_user_per_stream=3)  # fmt: skip
    host = make_host(tmp_path, tiny_model_dir, settings, fake_id)
    gate = Gate(host.engine, "slow")
    left: list[str] = []

    async def scenario() -> None:
        await until(fake_api.subscribed)
        (reward,) = fake_api.rewards.values()
        assert reward["title"] == "Paint it" and reward["cost"] == 321
        assert reward["is_user_input_required"] is True and reward["is_paused"] is False
        assert reward["global_cooldown_seconds"] == 60 and reward["max_per_user_per_stream"] == 3
        assert reward["should_redemptions_skip_request_queue"] is False
        shown = await asyncio.to_thread(fake_api.redeem, "ann", "a red fox", repeat=2)
        blocked = await asyncio.to_thread(fake_api.redeem, "bob", "a nude fox")
        await until(lambda: fake_api.applied(shown) and fake_api.applied(blocked))
        await asyncio.sleep(0.3)  # a second status would come now
        assert fake_api.applied(shown) == ["FULFILLED"]
        assert fake_api.applied(blocked) == ["CANCELED"]
        assert "@Bob" in said(host) and "blocked word" in said(host) and "refunded" in said(host)
        # what is running when the host stops is refunded (on_stop = "refund")
        left.append(await asyncio.to_thread(fake_api.redeem, "cid", "a slow fox"))
        await until(lambda: gate.entered.is_set())
        threading.Thread(target=gate.open_when, args=(lambda: fake_api.applied(left[0]),),
                         daemon=True).start()  # fmt: skip

    run(host, scenario)
    assert fake_api.applied(left[0]) == ["CANCELED"]
    (reward,) = fake_api.rewards.values()
    assert reward["is_paused"] is True  # paused while the host is not running
    last = fake_api.calls_to("/channel_points/custom_rewards", "PATCH")[-1].body
    assert last["title"] == "Paint it" and last["is_user_input_required"] is True  # whole state
    assert "the painter stopped" in said(host)


def test_held_rejected_is_refunded_held_approved_is_fulfilled(
    tmp_path: Path, tiny_model_dir: Path, fake_id: FakeTwitchId, fake_api: FakeTwitchApi
) -> None:
    settings = cp_settings(tmp_path, tiny_model_dir, fake_id, fake_api)
    settings.safety.threshold_offset = 1.0  # the strictest: every picture is flagged
    settings.safety.approval_mode = "hold"
    host = make_host(tmp_path, tiny_model_dir, settings, fake_id)
    ids: dict[str, str] = {}

    async def scenario() -> None:
        await until(fake_api.subscribed)
        rejected = ids["rejected"] = await asyncio.to_thread(fake_api.redeem, "ann", "a fox")
        await until(lambda: rejected in set(host.show.paid_entries.values()))
        (entry_id,) = [e for e, r in host.show.paid_entries.items() if r == rejected]
        await asyncio.sleep(0.3)
        assert fake_api.applied(rejected) == []  # held: the streamer decides
        host.feed(ev.RejectEntry(entry_id, now=time.monotonic()))
        await until(lambda: fake_api.applied(rejected))
        assert (
            "rejected by the streamer: the safety filter flagged it; your points are refunded"
            in said(host)
        )
        approved = ids["approved"] = await asyncio.to_thread(fake_api.redeem, "bob", "a fox")
        await until(lambda: approved in set(host.show.paid_entries.values()))
        (entry_id,) = [e for e, r in host.show.paid_entries.items() if r == approved]
        host.feed(ev.ApproveEntry(entry_id, now=time.monotonic()))
        await until(lambda: fake_api.applied(approved))

    run(host, scenario)
    assert fake_api.applied(ids["rejected"]) == ["CANCELED"]
    assert fake_api.applied(ids["approved"]) == ["FULFILLED"]


def test_session_reconnect_amid_ten_redemptions_and_a_silent_connection_each_handled_once(
    tmp_path: Path, tiny_model_dir: Path, fake_id: FakeTwitchId, fake_api: FakeTwitchApi
) -> None:
    settings = cp_settings(tmp_path, tiny_model_dir, fake_id, fake_api)
    host = make_host(tmp_path, tiny_model_dir, settings, fake_id)
    ids: list[str] = []

    async def scenario() -> None:
        await until(fake_api.subscribed)
        for k in range(10):
            ids.append(await asyncio.to_thread(fake_api.redeem, f"v{k}", f"fox {k}", repeat=2))
            if k == 4:
                await asyncio.to_thread(fake_api.session_reconnect)
        await until(lambda: all(fake_api.applied(r) for r in ids), 60)
        assert len(fake_api.calls_to("/eventsub/subscriptions", "POST")) == 1  # carried over
        # silence: no keepalive for longer than the timeout -> a new session, subscribed again
        fake_api.send_keepalives = False
        await until(lambda: len(fake_api.calls_to("/eventsub/subscriptions", "POST")) == 2, 15)
        fake_api.send_keepalives = True
        await until(fake_api.subscribed)
        # Twitch revokes the subscription: subscribed again on the same session
        await asyncio.to_thread(fake_api.revoke)
        await until(lambda: len(fake_api.calls_to("/eventsub/subscriptions", "POST")) == 3)
        await until(fake_api.subscribed)
        ids.append(await asyncio.to_thread(fake_api.redeem, "late", "one more fox"))
        await until(lambda: fake_api.applied(ids[-1]), 30)

    run(host, scenario)
    counts = Counter(r for r, _ in fake_api.statuses)
    assert all(counts[r] == 1 for r in ids), counts
    assert {s for _, s in fake_api.statuses} == {"FULFILLED"}
    waits = sorted(fake_api.applied_at[r] - fake_api.redeemed_at[r] for r in ids[:10])
    status_calls = len(fake_api.calls_to("/channel_points/custom_rewards/redemptions", "PATCH"))
    record("channel points: 10 redemptions, session_reconnect after the 5th",
           redeemed_to_fulfilled_median_s=round(waits[5], 3),
           redeemed_to_fulfilled_max_s=round(waits[-1], 3),
           status_calls_per_redemption=status_calls / len(ids),
           eventsub_connections=host.points.eventsub.connections)  # fmt: skip


def test_the_reward_is_paused_while_the_queue_is_full(
    tmp_path: Path, tiny_model_dir: Path, fake_id: FakeTwitchId, fake_api: FakeTwitchApi
) -> None:
    settings = cp_settings(tmp_path, tiny_model_dir, fake_id, fake_api)
    settings.moderation.max_queue = 1
    host = make_host(tmp_path, tiny_model_dir, settings, fake_id)
    gate = Gate(host.engine, "slow")

    def paused() -> bool:
        return bool(next(iter(fake_api.rewards.values()))["is_paused"])

    async def scenario() -> None:
        await until(fake_api.subscribed)
        first = await asyncio.to_thread(fake_api.redeem, "ann", "a slow fox")
        await until(gate.entered.is_set)
        second = await asyncio.to_thread(fake_api.redeem, "bob", "a waiting fox")
        await until(paused)  # one waiting: the queue is full
        threading.Thread(target=gate.open_when, args=(lambda: True,), daemon=True).start()
        await until(lambda: not paused())
        await until(lambda: fake_api.applied(first) and fake_api.applied(second))

    run(host, scenario)
    assert sorted(s for _, s in fake_api.statuses) == ["FULFILLED", "FULFILLED"]


def test_a_restart_updates_the_same_reward_to_the_new_config_and_serves_kept_redemptions(
    tmp_path: Path, tiny_model_dir: Path, fake_id: FakeTwitchId, fake_api: FakeTwitchApi
) -> None:
    settings = cp_settings(tmp_path, tiny_model_dir, fake_id, fake_api, on_stop="keep")
    host = make_host(tmp_path, tiny_model_dir, settings, fake_id)
    gate = Gate(host.engine, "slow")
    kept: list[str] = []

    async def first() -> None:
        await until(fake_api.subscribed)
        kept.append(await asyncio.to_thread(fake_api.redeem, "ann", "a slow fox"))
        kept.append(await asyncio.to_thread(fake_api.redeem, "bob", "a waiting fox"))
        await until(gate.entered.is_set)
        opener = (lambda: host.stopped.is_set() and host.show.running is None,)
        threading.Thread(target=gate.open_when, args=opener, daemon=True).start()

    run(host, first)
    assert fake_api.statuses == []  # kept for the next start, not refunded
    assert next(iter(fake_api.rewards.values()))["is_paused"] is True

    settings.channel_points.cost = 42
    settings.channel_points.prompt = "A new prompt"
    again = make_host(tmp_path, tiny_model_dir, settings, fake_id)

    async def second() -> None:
        await until(lambda: all(fake_api.applied(r) for r in kept))

    run(again, second)
    assert len(fake_api.rewards) == 1 and len(fake_api.calls_to(
        "/channel_points/custom_rewards", "POST")) == 1  # fmt: skip
    (reward,) = fake_api.rewards.values()
    assert reward["cost"] == 42 and reward["prompt"] == "A new prompt"
    assert [fake_api.applied(r) for r in kept] == [["FULFILLED"], ["FULFILLED"]]


def test_at_start_a_status_twitch_already_took_is_not_resent_and_a_lost_redemption_is_served(
    tmp_path: Path, tiny_model_dir: Path, fake_id: FakeTwitchId, fake_api: FakeTwitchApi
) -> None:
    """The two kill -9 windows the subprocess test does not hit: Twitch applied the status
    but the host died before noting it; the host stored a redemption but died before its
    queue was saved."""
    from generator_host.edges.twitch.channel_points import STORE_FILE
    from generator_host.edges.twitch.redemptions import DONE, RedemptionStore, Stored

    settings = cp_settings(tmp_path, tiny_model_dir, fake_id, fake_api)
    first = make_host(tmp_path, tiny_model_dir, settings, fake_id)

    async def setup() -> None:
        await until(fake_api.subscribed)

    run(first, setup)
    took = fake_api.redeem("ann", "a fox", notify=False)
    fake_api.redemptions[took]["status"] = "FULFILLED"  # applied, never answered
    lost = fake_api.redeem("bob", "a lost fox", notify=False)
    store = RedemptionStore(tmp_path / "data" / STORE_FILE)
    reward_id = next(iter(fake_api.rewards))
    for rid, login in ((took, "ann"), (lost, "bob")):
        store.receive(Stored(rid, reward_id, login, login, "", "a fox", "received"))
    store.intend(took, "FULFILLED", "picture 1 shown", reward_id)
    store.close()
    again = make_host(tmp_path, tiny_model_dir, settings, fake_id)

    async def scenario() -> None:
        await until(lambda: fake_api.applied(lost))

    run(again, scenario)
    patched = [c for c in fake_api.calls_to("/channel_points/custom_rewards/redemptions", "PATCH")
               if ("id", took) in c.query]  # fmt: skip
    assert patched == [] and fake_api.applied(lost) == ["FULFILLED"]
    store = RedemptionStore(tmp_path / "data" / STORE_FILE)
    assert store.get(took).state == DONE and store.get(lost).state == DONE  # type: ignore[union-attr]
    store.close()


def test_hostile_notifications_are_ignored_with_a_line_and_a_token_refresh_goes_unnoticed(
    tmp_path: Path,
    tiny_model_dir: Path,
    fake_id: FakeTwitchId,
    fake_api: FakeTwitchApi,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="generator_host")
    settings = cp_settings(tmp_path, tiny_model_dir, fake_id, fake_api)
    host = make_host(tmp_path, tiny_model_dir, settings, fake_id)
    hostile = [
        "not json at all {",
        "[1, 2, 3]",
        '{"metadata": {"message_type": "notification"}}',
        '{"metadata": {"message_type": "notification", "message_id": "x1"}, "payload": {}}',
        "{" * 5000,
    ]
    ids: dict[str, str] = {}

    async def scenario() -> None:
        await until(fake_api.subscribed)
        reward_id = next(iter(fake_api.rewards))
        for text in hostile:
            await asyncio.to_thread(fake_api.send_raw, text)
        bad = {"id": "bad-1", "user_login": "evil\r\nPRIVMSG #x :hi", "user_input": "fox",
               "reward": {"id": reward_id}}  # fmt: skip
        other = {"id": "other-1", "user_login": "ann", "user_input": "fox",
                 "reward": {"id": "someone-elses-reward"}}  # fmt: skip
        no_id = {"user_login": "ann", "user_input": "fox", "reward": {"id": reward_id}}
        for event in (bad, other, no_id):
            await asyncio.to_thread(fake_api.send_raw, fake_api.notification_text(event))
        # the broadcaster's token dies early: the next Helix call refreshes and goes on
        fake_id.access.clear()
        good = ids["good"] = await asyncio.to_thread(fake_api.redeem, "ann", "a calm fox")
        await until(lambda: fake_api.applied(good))

    run(host, scenario)
    assert fake_api.applied(ids["good"]) == ["FULFILLED"]
    assert len(fake_api.statuses) == 1  # nothing else was settled
    text = caplog.text
    assert "not JSON" in text and "not an object" in text and "without metadata" in text
    assert "without a usable login" in text and "another reward" in text
    assert "without a usable id" in text
    assert "refreshed" in text  # the keeper's line
    status_call = fake_api.calls_to("/channel_points/custom_rewards/redemptions", "PATCH")[-1]
    assert status_call.auth == f"Bearer {fake_id.current}"  # the new token
    for token in list(fake_id.access) + [fake_id.current]:
        assert token not in text  # no token in any log line


def test_a_channel_without_channel_points_gets_one_clear_line_and_chat_still_paints(
    tmp_path: Path,
    tiny_model_dir: Path,
    fake_id: FakeTwitchId,
    fake_api: FakeTwitchApi,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="generator_host")
    fake_api.affiliate = False
    settings = cp_settings(tmp_path, tiny_model_dir, fake_id, fake_api)
    host = make_host(tmp_path, tiny_model_dir, settings, fake_id)

    async def scenario() -> None:
        say(host, "ann", "!generate a fox in the snow")
        await until(lambda: host.on_screen is not None)

    run(host, scenario)
    lines = [r.getMessage() for r in caplog.records if "Affiliate" in r.getMessage()]
    assert len(lines) == 1 and "chat commands work as before" in lines[0]
    assert fake_api.rewards == {} and not fake_api.subscriptions


# ---- a real host process, killed ---------------------------------------------------------
def test_sigkill_between_shown_and_the_status_call_fulfils_exactly_once_after_restart(
    tmp_path: Path,
    tiny_model_dir: Path,
    fake_id: FakeTwitchId,
    fake_api: FakeTwitchApi,
    server: Any,
) -> None:
    """The picture is on screen and the FULFILLED call is on its way (Twitch holds it
    unanswered) when the host is SIGKILLed; a redemption comes while it is down. After
    the restart: each is FULFILLED exactly once, and nothing is painted twice."""
    from tests.obs_harness import free_port
    from tests.reliability_helpers import HostProcess, gallery_rows, host_config, wait_until

    data = tmp_path / "data"
    issued = fake_id.issue()
    tokens = auth.Tokens(
        issued["access_token"], issued["refresh_token"], expires_at=time.time() + 3600,
        login="streamer", user_id="12345",
    )  # fmt: skip
    auth.save_tokens(auth.token_path(data, "broadcaster"), tokens)
    twitch = {"client_id": fake_id.client_id, "id_url": fake_id.url,
              "helix_url": fake_api.helix_url, "eventsub_url": fake_api.ws_url}  # fmt: skip
    cfg = host_config(tmp_path / "config.toml", model_dir=tiny_model_dir,
                      twitch_port=server.port, twitch=twitch)  # fmt: skip
    cfg.write_text(cfg.read_text() + "[channel_points]\nenabled = true\n")
    port = free_port()
    status_path = "/channel_points/custom_rewards/redemptions"
    first = HostProcess(cfg, data, port).start()
    second: HostProcess | None = None
    try:
        assert wait_until(fake_api.subscribed, 30), first.output[-3000:]
        fake_api.hang_status = 1  # the first status call is received, never answered
        shown = fake_api.redeem("ann", "a fox on screen")
        assert wait_until(lambda: fake_api.calls_to(status_path, "PATCH"), 60), first.output
        first.kill()
        assert fake_api.applied(shown) == []
        away = fake_api.redeem("bob", "a fox while away", notify=False)
        second = HostProcess(cfg, data, port).start()
        assert wait_until(lambda: fake_api.applied(shown) and fake_api.applied(away), 60), (
            second.output[-3000:]
        )
        time.sleep(0.5)  # a second status would come now
        assert fake_api.applied(shown) == ["FULFILLED"]
        assert fake_api.applied(away) == ["FULFILLED"]
        prompts = [row[3] for row in gallery_rows(data)]
        assert prompts.count("a fox on screen") == 1 and prompts.count("a fox while away") == 1
    finally:
        if second is not None:
            second.stop()
        first.kill()
    assert second is not None and "Traceback" not in first.output + second.output
    assert issued["access_token"] not in first.output + second.output
    assert fake_api.rewards[next(iter(fake_api.rewards))]["is_paused"] is True
