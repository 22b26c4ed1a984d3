"""The private review page, as the streamer and a moderator use it, in a real browser.

Real parts throughout: the whole host in this process (tiny model with every tile
flagged, hold mode, 2x2 grids), the local Twitch-dialect IRC server, Debian's headless
Chromium driven by Selenium, and for the approval a real OBS under Xvfb reading the
host's link. Required in CI (tests/requirements.py).

Screenshots for docs/review.md: `UPDATE_DOCS_SCREENSHOTS=1 pytest tests/test_review.py`.
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from generator_host.edges.review.auth import ModStore
from tests.fixtures_review import (
    LINK_TOKEN,
    REVIEW_SECRET,
    ReviewHost,
    browser,
    chromium_missing,
    fetch,
    until,
)
from tests.requirements import require
from tests.twitch_server import TwitchServer

pytestmark = [pytest.mark.model]

PNG = b"\x89PNG"
DOCS = Path(__file__).resolve().parent.parent / "docs"


class Stage:
    def __init__(self, host: ReviewHost, chat: TwitchServer) -> None:
        self.host, self.chat = host, chat
        self.msg_id = ""

    def held_grid(self, prompt: str, viewer: str = "viewer_fox") -> int:
        """A viewer asks in chat; returns the id of the held entry that comes back."""
        before = set(self.host.held_ids())
        self.msg_id = self.chat.privmsg(viewer, f"!generate {prompt}")
        new = until(
            lambda: [i for i in self.host.held_ids() if i not in before], 120, "a held grid"
        )
        return new[0]


@pytest.fixture(scope="module")
def stage(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Stage]:
    chat = TwitchServer("streamer").start()
    host = ReviewHost(tmp_path_factory.mktemp("review"), tiny_model_dir, chat.port)
    try:
        until(lambda: chat.sent("JOIN"), 30, "the bot to join")
        yield Stage(host, chat)
    finally:
        host.stop()
        chat.stop()


def _shot(driver, name: str) -> None:  # noqa: ANN001
    """A small PNG of the page for docs/review.md (only when asked to update them)."""
    if os.environ.get("UPDATE_DOCS_SCREENSHOTS") != "1":
        return
    image = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
    image = image.crop((0, 0, image.width, min(image.height, 1100)))
    image.thumbnail((640, 700))
    image.quantize(64).save(DOCS / name, optimize=True)


# ---- security, without a browser -----------------------------------------------------------
def test_no_secret_no_image_bytes_and_bad_input_gets_a_4xx(
    stage: Stage, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    base = stage.host.base
    from tests.reliability_helpers import listening_addresses

    assert listening_addresses(stage.host.host.review.port) == ["127.0.0.1"]
    entry = stage.held_grid("a lighthouse at night")
    paths = [
        "/",
        "/api/state",
        f"/api/tile/{entry}/1",
        f"/api/tile/{entry}/1?view=raw",
        f"/api/screen/{entry}",
        "/ws",
    ]
    for cookie in ("", "wrong-secret"):
        for path in paths:
            status, headers, body = fetch(base + path, cookie=cookie)
            assert status in (401, 403), (path, status)
            assert not body.startswith(PNG), path
    status, _, body = fetch(f"{base}/?key=not-the-key")
    assert status == 401 and not body.startswith(PNG)

    status, headers, body = fetch(f"{base}/api/tile/{entry}/1?view=raw", cookie=REVIEW_SECRET)
    assert status == 200 and body.startswith(PNG)
    assert headers["Content-Type"] == "image/png" and headers["Cache-Control"] == "no-store"

    origin = {"Origin": base, "Content-Type": "application/json"}
    bad = [
        ("GET", f"/api/tile/{entry}/9", None, origin, 404),
        ("GET", f"/api/tile/{entry}/1?view=naked", None, origin, 400),
        ("GET", "/api/tile/abc/1", None, origin, 404),
        ("GET", "/api/screen/999999999", None, origin, 404),
        ("GET", "/static/../auth.py", None, origin, 404),
        ("POST", "/api/action", b"{not json", origin, 400),
        ("POST", "/api/action", [1, 2], origin, 400),
        ("POST", "/api/action", {"action": "format-disk"}, origin, 400),
        ("POST", "/api/action", {"action": "approve"}, origin, 400),
        ("POST", "/api/action", {"action": "approve", "entry": "1; drop"}, origin, 400),
        ("POST", "/api/action", {"action": "cancel", "login": "a b\r\nPRIVMSG"}, origin, 400),
        ("POST", "/api/action", {"action": "clear"}, {**origin, "Origin": "http://evil"}, 403),
        ("POST", "/api/action", {"action": "clear"}, {"Origin": base}, 400),  # not JSON typed
        ("POST", "/api/settings", {"grid": 5}, origin, 400),
        ("POST", "/api/settings", {"colour": "red"}, origin, 400),
    ]
    for method, path, body, headers, want in bad:
        status, _, answer = fetch(
            base + path, cookie=REVIEW_SECRET, method=method, body=body, headers=headers
        )
        assert status == want, (path, body, status, answer[:200])
    assert stage.host.thread.is_alive()  # the host went on

    # the live channel refuses another site's page, even with the cookie
    import websocket

    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(
            base.replace("http", "ws") + "/ws",
            origin="http://evil.example",
            cookie=f"cd_review={REVIEW_SECRET}",
            timeout=10,
        )
    assert refused.value.status_code == 403
    ws = websocket.create_connection(
        base.replace("http", "ws") + "/ws", origin=base, cookie=f"cd_review={REVIEW_SECRET}"
    )
    assert '"type": "state"' in ws.recv()
    ws.close()

    # the broadcaster changes a live setting through the protocol's bounds; it is logged
    settings = stage.host.settings
    for mode in ("blur", "hold"):
        status, _, _ = fetch(
            f"{base}/api/settings",
            cookie=REVIEW_SECRET,
            method="POST",
            body={"approval_mode": mode},
            headers=origin,
        )
        assert status == 200
        until(lambda: settings.safety.approval_mode == mode, 5, f"approval mode {mode}")  # noqa: B023
    assert "review page: the streamer proposes approval_mode='blur'" in caplog.text
    assert "settings: approval_mode 'hold' -> 'blur' (from review page)" in caplog.text

    # repeated wrong secrets from one address are answered ever more slowly (this address
    # has guessed wrong above already: within a few more guesses one waits a second)
    waits = []
    while len(waits) < 5 and (not waits or waits[-1] < 1.0):
        started = time.monotonic()
        fetch(f"{base}/api/state", cookie="guess")
        waits.append(time.monotonic() - started)
    assert waits[-1] >= 1.0, waits
    assert REVIEW_SECRET not in caplog.text


# ---- the page in a real browser --------------------------------------------------------------
@pytest.mark.obs
def test_a_held_grid_appears_and_one_revealed_tile_is_approved_on_obs(
    stage: Stage, tmp_path: Path
) -> None:
    from tests.obs_harness import IMAGE, obs_missing, run_obs

    require(not chromium_missing(), chromium_missing())
    require(not obs_missing(), obs_missing())
    host = stage.host
    driver = browser(tmp_path / "chromium")
    try:
        # The OBS panel sends its settings on connect; they are the host's (hold, 2x2, strict).
        panel = {"threshold_offset": 1.0, "grid": 4, "approval_mode": "hold"}
        script = {"host": host.link_url, "token": LINK_TOKEN, **panel}
        with run_obs(tmp_path / "obs", script) as obs:
            until(lambda: host.host.link.client_count, 30, "OBS to connect")
            time.sleep(1.0)  # its settings message follows the hello
            driver.get(host.url)
            until(lambda: driver.execute_script("return document.body.dataset.updated"), 20,
                  "the page's first state")  # fmt: skip
            assert "key=" not in driver.current_url  # the secret left the address bar
            entry = stage.held_grid("a red lighthouse")
            tiles = until(
                lambda: driver.find_elements("css selector", f'[data-entry="{entry}"] img'),
                5,
                "the held grid on the page",
            )
            assert len(tiles) == 4
            assert all(t.get_attribute("data-view") == "blur" for t in tiles)
            _loaded(driver, entry, 1, "blur")
            _shot(driver, "review-held.png")

            driver.find_element("css selector", f'[data-tile="{entry}/2"] img').click()
            _loaded(driver, entry, 2, "raw")
            raw = _page_tile(driver, entry, 2)
            blurred = _page_tile(driver, entry, 1)
            _shot(driver, "review-revealed.png")

            driver.find_element("css selector", f'[data-testid="approve-{entry}/2"]').click()
            until(lambda: host.gallery.get(entry).approved == (1,), 10,
                  "tile 2 approved in the gallery")  # fmt: skip
            assert host.gallery.get(entry).outcome == "held"  # the other three wait
            tile2 = np.asarray(host.gallery.tile_image(entry, 1).convert("RGB"), dtype=float)
            from generator_host.engine.grid import placeholder

            hold = np.asarray(placeholder((64, 64)), dtype=float)

            def quadrants() -> list[np.ndarray]:
                shot = np.asarray(obs.screenshot(IMAGE, 128, 128), dtype=float)
                return [shot[r : r + 64, c : c + 64] for r in (0, 64) for c in (0, 64)]

            def approved_on_stream() -> bool:
                q = quadrants()
                return _diff(q[1], tile2) < 12 and all(_diff(q[k], hold) < 12 for k in (0, 2, 3))

            until(approved_on_stream, 20, "OBS showing tile 2 alone unfiltered")
            q = quadrants()
            assert all(_diff(q[k], tile2) > 20 for k in (0, 2, 3))
            # the page had tile 2 unblurred after the click, tile 1 still blurred
            assert _diff(_pixels(raw), tile2) < 1
            tile1 = np.asarray(host.gallery.tile_image(entry, 0).convert("RGB"), dtype=float)
            assert _diff(_pixels(blurred), tile1) > 10
    finally:
        driver.quit()


def test_reject_tells_the_requester_and_deletes_the_file(
    stage: Stage, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    require(not chromium_missing(), chromium_missing())
    host, chat = stage.host, stage.chat
    driver = browser(tmp_path / "chromium")
    try:
        driver.get(host.url)
        entry = stage.held_grid("a spooky lighthouse", viewer="viewer_owl")
        held_files = sorted(host.gallery.held_dir.glob(f"{entry:06d}-*.png"))
        assert len(held_files) == 4
        card = f'[data-entry="{entry}"]'
        until(lambda: driver.find_element("css selector", card), 5, "the card")
        # each tile says why it is held: these images passed the (strict) threshold
        lines = [e.text for e in driver.find_elements("css selector", f"{card} .score")]
        assert len(lines) == 4, lines
        assert all(t.startswith("flagged: ") and "past the threshold" in t for t in lines)
        driver.find_element("css selector", f"{card} input").send_keys("too spooky for us")
        driver.find_element("css selector", f'[data-testid="reject-{entry}"]').click()
        said = until(
            lambda: [s.line for s in chat.sent("PRIVMSG") if "was rejected by the" in s.line],
            10,
            "the rejection in chat",
        )
        # threaded to the viewer's own !generate message, with the filter's reason; who
        # rejected it and their own words are logged, not said
        assert f"reply-parent-msg-id={stage.msg_id} " in said[-1]
        assert said[-1].endswith("rejected by the streamer: the safety filter flagged it")
        assert "spooky for us" not in " ".join(s.line for s in chat.sent("PRIVMSG"))
        assert f"the streamer (review page) rejected picture {entry} by @" in caplog.text
        assert f"reason to reject {entry}: too spooky for us" in caplog.text
        assert not any(p.exists() for p in held_files)
        until(lambda: not driver.find_elements("css selector", card), 5, "the card to go")
        # the rejected picture left the screen; the screen buttons act as OBS's do
        assert host.host.show.on_screen is None
        driver.find_element("css selector", 'button[data-act="prev"]').click()
        until(lambda: host.host.show.on_screen is not None, 5, "Previous to bring one back")
        driver.find_element("css selector", 'button[data-act="clear"]').click()
        until(lambda: host.host.show.on_screen is None, 5, "Clear to clear the screen")
        status, _, body = fetch(f"{host.base}/api/tile/{entry}/1?view=raw", cookie=REVIEW_SECRET)
        assert status == 404 and not body.startswith(PNG)
    finally:
        driver.quit()


def test_a_skipped_picture_is_listed_and_a_moderator_approves_it_on_screen(
    stage: Stage, caplog: pytest.LogCaptureFixture
) -> None:
    """Mode skip shows nothing on stream; the page still lists what was skipped (the show
    remembers the last 50) and an approval from the page puts it on screen."""
    caplog.set_level(logging.INFO)
    host = stage.host
    show = host.host.show
    mod = ModStore(host.root).add("bob")
    post = {"Origin": host.base, "Content-Type": "application/json"}

    def action(secret: str, body: dict) -> int:
        return fetch(f"{host.base}/api/action", cookie=secret, method="POST", body=body,
                     headers=post)[0]  # fmt: skip

    status, _, _ = fetch(f"{host.base}/api/settings", cookie=REVIEW_SECRET, method="POST",
                         body={"approval_mode": "skip"}, headers=post)  # fmt: skip
    assert status == 200
    try:
        before = set(show.withheld)
        stage.chat.privmsg("viewer_elk", "!generate a skipped lighthouse")
        entry = until(lambda: [i for i in show.withheld if i not in before], 120, "a skip")[0]
        state = until(
            lambda: [
                e
                for e in json.loads(fetch(f"{host.base}/api/state", cookie=mod)[2])["held"]
                if e["id"] == entry
            ],  # fmt: skip
            5,
            "the skipped picture listed on the page",
        )[0]
        assert state["outcome"] == "skipped" and len(state["tiles"]) == 4
        assert all(t["filtered"] for t in state["tiles"])
        assert fetch(f"{host.base}/api/tile/{entry}/3?view=raw", cookie=mod)[2].startswith(PNG)
        assert show.on_screen != entry
        assert action(mod, {"action": "approve", "entry": entry}) == 200
        until(lambda: show.on_screen == entry, 10, "the approved skipped picture on screen")
        logged = f"moderator bob (review page) approved picture {entry}"
        until(lambda: logged in caplog.text, 5, "the approval logged with who")
        # a moderator may not change settings; the broadcaster's change is the live value
        status, _, _ = fetch(f"{host.base}/api/settings", cookie=mod, method="POST",
                             body={"approval_mode": "off"}, headers=post)  # fmt: skip
        assert status == 403 and host.settings.safety.approval_mode == "skip"
    finally:
        fetch(f"{host.base}/api/settings", cookie=REVIEW_SECRET, method="POST",
              body={"approval_mode": "hold"}, headers=post)  # fmt: skip
        ModStore(host.root).remove("bob")


def test_a_removed_moderator_is_shut_out_and_their_page_closed(
    stage: Stage, tmp_path: Path
) -> None:
    require(not chromium_missing(), chromium_missing())
    host = stage.host
    mods = ModStore(host.root)
    secret = mods.add("alice")
    review = host.host.review
    url = review.url(secret)
    driver = browser(tmp_path / "chromium")
    try:
        driver.get(url)
        until(lambda: "alice (moderator)" in driver.find_element("id", "who").text, 20,
              "the page to greet alice")  # fmt: skip
        boss_only = driver.find_element("css selector", "#settings select[name=approval_mode]")
        assert not boss_only.is_enabled()
        status, _, _ = fetch(
            f"{host.base}/api/settings",
            cookie=secret,
            method="POST",
            body={"threshold_offset": 0.0},
            headers={"Origin": host.base, "Content-Type": "application/json"},
        )
        assert status == 403
        # the declarations let moderators set the grid (core/settings.py: PANEL_AND_MODS)
        status, _, _ = fetch(
            f"{host.base}/api/settings",
            cookie=secret,
            method="POST",
            body={"grid": 4},
            headers={"Origin": host.base, "Content-Type": "application/json"},
        )
        assert status == 200
        grid = driver.find_element("css selector", "#settings select[name=grid]")
        assert grid.is_enabled()
        _shot(driver, "review-moderator.png")
        assert mods.remove("alice")
        until(lambda: driver.execute_script("return document.body.dataset.closed") == "revoked",
              5, "alice's open page to close")  # fmt: skip
        assert "no longer works" in driver.find_element("id", "banner").text
        assert not driver.find_elements("css selector", "main img")
        for path in ("/api/state", "/"):
            assert fetch(host.base + path, cookie=secret)[0] == 401
    finally:
        driver.quit()


# ---- helpers ---------------------------------------------------------------------------------
def _pixels(png: bytes | None) -> np.ndarray:
    assert png is not None
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=float)


def _diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).mean())


def _loaded(driver, entry: int, tile: int, view: str) -> None:  # noqa: ANN001
    until(
        lambda: driver.execute_script(
            "const i = document.querySelector(arguments[0]);"
            "return i && i.dataset.view === arguments[1] && i.complete && i.naturalWidth > 0;",
            f'[data-tile="{entry}/{tile}"] img',
            view,
        ),
        10,
        f"tile {tile} loaded ({view})",
    )


def _page_tile(driver, entry: int, tile: int) -> bytes | None:  # noqa: ANN001
    """The tile's pixels as the page got them (drawn into a canvas, read back as PNG)."""
    data = driver.execute_script(
        "const i = document.querySelector(arguments[0]);"
        "const c = document.createElement('canvas'); c.width = i.naturalWidth;"
        "c.height = i.naturalHeight; c.getContext('2d').drawImage(i, 0, 0);"
        "return c.toDataURL('image/png');",
        f'[data-tile="{entry}/{tile}"] img',
    )
    import base64

    return base64.b64decode(data.split(",", 1)[1]) if data else None
