"""Who may open the review page: the streamer's secret, moderators' links, `mods`, TLS."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from generator_host.cli import main
from generator_host.edges.review.auth import (
    MODS_FILE,
    ModStore,
    ReviewAuth,
    load_or_create_secret,
)


def test_the_streamer_secret_is_made_once_and_kept_private(tmp_path: Path) -> None:
    first = load_or_create_secret(tmp_path)
    assert len(first) >= 32 and load_or_create_secret(tmp_path) == first
    if os.name == "posix":
        assert stat.S_IMODE((tmp_path / "review-token").stat().st_mode) == 0o600


def test_moderator_links_are_stored_as_hashes_and_removed_at_once(tmp_path: Path) -> None:
    auth = ReviewAuth(tmp_path, "boss-secret")
    store = ModStore(tmp_path)
    alice = store.add("alice")
    assert alice not in (tmp_path / MODS_FILE).read_text()  # no working link in the file
    assert auth.identify(alice) is None  # not re-read yet
    assert auth.reload()
    who = auth.identify(alice)
    assert who is not None and who.name == "alice" and not who.is_broadcaster
    assert auth.identify("boss-secret").is_broadcaster
    assert auth.identify("nope") is None and auth.identify("") is None
    newer = store.add("alice")  # a new link ends the old one
    auth.reload()
    assert auth.identify(alice) is None and auth.identify(newer).name == "alice"
    assert store.remove("alice") and not store.remove("alice")
    auth.reload()
    assert auth.identify(newer) is None
    with pytest.raises(ValueError):
        store.add("bad name\n")


def test_wrong_secrets_slow_down_one_address(tmp_path: Path) -> None:
    auth = ReviewAuth(tmp_path, "s")
    delays = []
    for _ in range(6):
        delays.append(auth.penalty("10.0.0.9"))
        auth.failed("10.0.0.9")
    assert delays == [0.0, 0.0, 0.0, 0.5, 1.0, 2.0]
    assert auth.penalty("10.0.0.10") == 0.0
    auth.succeeded("10.0.0.9")
    assert auth.penalty("10.0.0.9") == 0.0


def test_mods_command_prints_a_link_lists_and_removes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.toml"
    config.write_text("[review]\nport = 9123\n", encoding="utf-8")
    base = ["--data-dir", str(tmp_path), "--config", str(config)]
    assert main(["mods", "add", "alice", *base]) == 0
    out = capsys.readouterr().out
    assert "http://127.0.0.1:9123/?key=" in out
    secret = out.split("key=")[1].split()[0]
    auth = ReviewAuth(tmp_path, "boss")
    assert auth.identify(secret).name == "alice"
    assert main(["mods", "list", *base]) == 0
    assert capsys.readouterr().out.strip() == "alice"
    assert main(["mods", "remove", "alice", *base]) == 0
    assert "stops working now" in capsys.readouterr().out
    auth.reload()
    assert auth.identify(secret) is None
    assert main(["mods", "remove", "alice", *base]) == 2
    assert main(["mods", "add", *base]) == 2
    assert "Name the moderator" in capsys.readouterr().err


# ---- the server's address: TLS like the link, a loud warning beyond loopback without it ----
def _serve(settings, tmp_path: Path) -> tuple[object, object]:  # noqa: ANN001
    import asyncio

    from generator_host.edges.review.server import ReviewServer

    loop = asyncio.new_event_loop()
    server = ReviewServer(settings, ReviewAuth(tmp_path, "boss-secret"), host=None)
    loop.run_until_complete(server.start())
    return loop, server


def _close(loop, server) -> None:  # noqa: ANN001
    loop.run_until_complete(server.stop())
    loop.close()


def test_the_page_is_served_over_tls_when_given_a_certificate(tmp_path: Path) -> None:
    import ssl
    import threading
    import urllib.error
    import urllib.request

    from generator_host.core.settings import ReviewSettings
    from tests.fixtures_obs import make_cert

    cert, key = make_cert(tmp_path)
    loop, server = _serve(ReviewSettings(port=0, tls_cert=cert, tls_key=key), tmp_path)
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        url = server.url("boss-secret")
        assert url.startswith(f"https://127.0.0.1:{server.port}/?key=")
        ctx = ssl.create_default_context(cafile=cert)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url.split("?")[0], context=ctx, timeout=30)
        assert refused.value.code == 401
        with urllib.request.urlopen(url, context=ctx, timeout=30) as page:
            assert "Secure" in page.headers["Set-Cookie"]
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        _close(loop, server)


def test_listening_beyond_loopback_without_tls_warns_loudly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from generator_host.core.settings import ReviewSettings

    loop, server = _serve(ReviewSettings(host="0.0.0.0", port=0), tmp_path)
    try:
        assert "WITHOUT TLS" in caplog.text and "tls_cert" in caplog.text
    finally:
        _close(loop, server)
    caplog.clear()
    loop, server = _serve(ReviewSettings(port=0), tmp_path)
    _close(loop, server)
    assert "WITHOUT TLS" not in caplog.text


def test_the_safety_summary_names_what_tripped_and_by_how_much() -> None:
    from generator_host.edges.review.state import summarize

    safety = {
        "scores": {"concept": [-0.2, 0.01, -0.5], "special": [-0.04]},
        "flagged": True,
        "offset": 0.05,
    }
    summary = summarize(safety)
    assert summary["worst"] == "concept 2" and summary["score"] == 0.06
    assert summary["tripped"] == ["concept 2", "special 1"] and summary["flagged"]
    assert summarize({"scores": None, "flagged": False}) is None
