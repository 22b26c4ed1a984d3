"""Fixtures for the review page: a whole host in this process, and a headless Chromium.

`ReviewHost` is the real app.Host on its own loop thread: the tiny model (every tile
flagged: threshold offset +1), the real gallery, the real IRC adapter talking to the
local Twitch-dialect server, the real OBS link and the real review server. `browser()`
starts Debian's chromium through chromium-driver (Selenium), never a downloaded browser.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.requirements import require

__all__ = ["ReviewHost", "browser", "chromium_missing", "fetch", "until"]

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
REVIEW_SECRET = "review-secret-for-tests-0123456789"
LINK_TOKEN = "review-link-token-0123456789"


def chromium_missing() -> str:
    """Why the browser tests cannot run here ('' when they can)."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if shutil.which(path) is None:
            return f"{path} is missing (apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e .[dev])"
    return ""


def browser(profile: Path) -> Any:
    """Headless Chromium driven by Selenium, with a fresh profile."""
    require(not chromium_missing(), chromium_missing())
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-dev-shm-usage",
        "--window-size=1000,1400",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def until(check: Any, timeout: float = 10.0, what: str = "") -> Any:
    """Poll `check` until it returns something truthy; fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
        except Exception:  # noqa: BLE001 - a page element not there yet
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or check}")
        time.sleep(0.05)


def fetch(
    url: str, *, cookie: str = "", method: str = "GET", body: Any = None, headers: Any = None
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request (status, headers, body); 4xx/5xx are returned, not raised."""
    data = json.dumps(body).encode() if body is not None and not isinstance(body, bytes) else body
    req = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    if cookie:
        req.add_header("Cookie", f"cd_review={cookie}")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


class ReviewHost:
    """A running app.Host with the review page; `url` is the streamer's link."""

    def __init__(self, root: Path, tiny_model_dir: Path, twitch_port: int, grid: int = 4) -> None:
        from generator_host.app import Host
        from generator_host.core.settings import Settings
        from generator_host.edges.chat.irc import TwitchAdapter
        from generator_host.edges.gallery import Gallery
        from generator_host.engine.pipeline import Engine
        from tests.fixtures_model import tiny_settings

        s = Settings()
        s.twitch.channel, s.twitch.login, s.twitch.token = "streamer", "paintbot", "tok-123"
        s.twitch.host, s.twitch.port, s.twitch.tls = "127.0.0.1", twitch_port, False
        s.model, s.safety = tiny_settings(tiny_model_dir, steps=1)
        s.safety.threshold_offset = 1.0  # the strictest: every tile is flagged
        s.safety.approval_mode = "hold"
        s.show.grid = grid
        s.show.cut_to_one_when_waiting = False
        s.show.min_display_seconds = 0.0
        s.moderation.user_cooldown_seconds = 0.0
        s.moderation.max_queued_per_user = 20
        s.link.port = 0
        s.review.port = 0
        self.settings = s
        self.root = root
        engine = Engine(s.model, s.safety)
        engine.load()
        self.gallery = Gallery(root / "gallery")
        self.host = Host(
            s,
            root,
            TwitchAdapter(s.twitch),
            engine,
            self.gallery,
            LINK_TOKEN,
            review_folder=root,
            review_secret=REVIEW_SECRET,
        )
        self.ready = threading.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        if not self.ready.wait(60):
            raise RuntimeError("the host did not start")
        review = self.host.review
        self.base = f"http://127.0.0.1:{review.port}"
        self.url = review.url(REVIEW_SECRET)
        self.link_url = f"ws://127.0.0.1:{self.host.link.port}"

    def _run(self) -> None:
        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            await self.host.run(on_ready=lambda _h: self.ready.set())

        asyncio.run(main())

    def held_ids(self) -> list[int]:
        return [e.id for e in self.host.show.history if e.outcome in ("held", "blurred")]

    def stop(self) -> None:
        if self.loop is not None and self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.host.stopped.set)
        self.thread.join(30)
