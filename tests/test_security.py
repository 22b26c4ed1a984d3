"""Only the streamer steers (issue #8, part 4), proven against the real host program.

One host (`generator-host run`, DEBUG logging) faces a hostile chat and hostile link
clients; the last test greps everything it printed, and the OBS script's own log lines,
for the secrets. Unit-level link refusals (each close code, TLS) are in tests/test_link.py;
here the point is that the whole program shrugs them off.
- The websocket: no token, wrong tokens (slowed down after 3), a browser Origin, an
  oversized frame, malformed frames, a silent client: refused, and the real OBS client
  still works; nothing a refused client sent reached the show.
- Chat text never becomes a file path, an extra IRC line or a setting; prompts reaching
  OBS's text sources are capped and free of control characters.
- Secrets never appear in the host's output or the OBS script's log.
- Config and token files are created readable by the user alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
import subprocess
import sys
import time
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websocket
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from generator_host.core.message import ChatMessage, Role, Viewer
from generator_host.core.settings import Settings, as_dict
from generator_host.core.show import Approve, Display, Show, Shutdown, StartGeneration
from generator_host.edges.blocklist import load_blocklist
from obs_script import chat_diffusion_protocol as protocol
from tests.reliability_helpers import (
    TWITCH_TOKEN,
    HostProcess,
    RecordingTwitchServer,
    ScriptLink,
    free_port,
    gallery_rows,
    host_config,
    listening_addresses,
    record,
    wait_until,
)

CLIENT_LOG: list[str] = []  # what the OBS script's link logged (goes to the OBS log)


class Hostile:
    def __init__(self, root: Path, server: RecordingTwitchServer, host: HostProcess,
                 token: str, obs: ScriptLink) -> None:  # fmt: skip
        self.root, self.server, self.host, self.token, self.obs = root, server, host, token, obs
        self.url = f"ws://127.0.0.1:{host.link_port}"


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Hostile]:
    root = tmp_path_factory.mktemp("hostile")
    server = RecordingTwitchServer("streamer").start()
    old_umask = os.umask(0o022)  # a usual umask: the host must not rely on a strict one
    try:
        cfg = host_config(root / "config.toml", model_dir=tiny_model_dir,
                          twitch_port=server.port)  # fmt: skip
        host = HostProcess(cfg, root / "data", free_port(), log_level="DEBUG").start()
    finally:
        os.umask(old_umask)
    token = (root / "data" / "link-token").read_text().strip()
    obs = ScriptLink(host.link_port, token, root / "obs-images").start()
    try:
        assert server.wait_for(lambda: server.joins, 15)
        assert wait_until(lambda: obs.connected_at() is not None, 10)
        assert wait_until(lambda: obs.of_type("clear") or obs.of_type("show"), 10)  # its state
        yield Hostile(root, server, host, token, obs)
    finally:
        obs.stop()
        CLIENT_LOG.extend(str(i.get("text", "")) for _, i in obs.items)
        host.stop()
        server.stop()


def _close_code(ws: websocket.WebSocket, timeout: float = 20.0) -> tuple[int, str]:
    ws.settimeout(timeout)
    while True:
        try:
            opcode, data = ws.recv_data(control_frame=True)
        except websocket.WebSocketConnectionClosedException:
            return 1006, ""
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            code = int.from_bytes(data[:2], "big") if len(data) >= 2 else 1005
            return code, data[2:].decode("utf-8", "replace")


def _connect(url: str) -> websocket.WebSocket:
    return websocket.create_connection(url, timeout=10, suppress_origin=True)


def test_the_link_refuses_every_stranger_without_harm(hostile: Hostile) -> None:
    url, figures = hostile.url, {}
    screen_before = len(hostile.obs.of_type("clear")) + len(hostile.obs.of_type("show"))
    silent = _connect(url)  # says nothing: closed after the hello timeout
    silent_at = time.monotonic()

    # No token at all, an action instead of a hello, a wrong protocol version.
    for frame in ('{"v":1,"type":"hello"}', json.dumps(protocol.make_action("clear")),
                  '{"v":2,"type":"hello","token":"x"}', "not json"):  # fmt: skip
        ws = _connect(url)
        ws.send(frame)
        figures.setdefault("no_or_bad_hello_close_codes", []).append(_close_code(ws)[0])

    # Wrong tokens: answered at once three times, then slower and slower.
    delays = []
    for k in range(6):
        ws = _connect(url)
        sent = time.monotonic()
        ws.send(protocol.encode(protocol.make_hello(f"wrong-{k}", "x"), "script").text)
        code, _ = _close_code(ws)
        delays.append(round(time.monotonic() - sent, 2))
        assert code == protocol.CLOSE_BAD_TOKEN
    figures["wrong_token_answer_s"] = delays

    # A browser (any Origin header) gets HTTP 403 before any websocket.
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(url, timeout=10, origin="https://evil.example")
    figures["browser_origin_status"] = refused.value.status_code

    # Oversized frames, before and after the hello.
    big = json.dumps({"v": 1, "type": "hello", "token": "x" * (protocol.MAX_SCRIPT_FRAME + 10)})
    ws = _connect(url)
    ws.send(big)
    figures["oversized_before_hello_close"] = _close_code(ws)[0]
    ws = _connect(url)
    ws.send(protocol.encode(protocol.make_hello(hostile.token, "x"), "script").text)
    assert protocol.decode(ws.recv(), "host").message["type"] == "settings"
    assert protocol.decode(ws.recv(), "host").message["type"] == "state"
    ws.send("x" * (protocol.MAX_SCRIPT_FRAME + 10))
    figures["oversized_after_hello_close"] = _close_code(ws)[0]

    # Malformed frames from an authenticated script: error replies, then cut off at 50.
    ws = _connect(url)
    ws.send(protocol.encode(protocol.make_hello(hostile.token, "x"), "script").text)
    ws.recv()
    errors = 0
    for k in range(60):
        bad = [b"\x00\xff", "{", '{"v":1,"type":"nuke"}', '{"v":1,"type":"action","action":"rm"}'][
            k % 4
        ]
        try:
            if isinstance(bad, bytes):
                ws.send_binary(bad)
            else:
                ws.send(bad)
            msg = protocol.decode(ws.recv(), "host").message
        except websocket.WebSocketException:
            break
        if msg and msg["type"] == "error":
            errors += 1
    figures["malformed_error_replies_before_cutoff"] = errors
    figures["silent_client_close"] = _close_code(silent)[0]
    figures["silent_client_closed_after_s"] = round(time.monotonic() - silent_at, 1)

    # The real OBS client was never disturbed, and still steers; strangers never did.
    good = _connect(url)
    sent = time.monotonic()
    good.send(protocol.encode(protocol.make_hello(hostile.token, "x"), "script").text)
    assert protocol.decode(good.recv(), "host").message["type"] == "settings"
    assert protocol.decode(good.recv(), "host").message["type"] == "state"
    figures["right_token_after_failures_s"] = round(time.monotonic() - sent, 3)
    good.close()
    screen_after = len(hostile.obs.of_type("clear")) + len(hostile.obs.of_type("show"))
    record("security: hostile link clients against the running host", **figures,
           host_alive=hostile.host.proc.poll() is None,
           screen_changes_by_strangers=screen_after - screen_before)  # fmt: skip
    assert hostile.host.proc.poll() is None
    assert screen_after == screen_before, "a refused client changed the screen"
    assert set(figures["no_or_bad_hello_close_codes"]) <= {4000, 4002}
    assert delays[3] >= 0.4 and delays[5] > delays[4] > delays[3] and max(delays[:3]) < 0.4
    assert figures["browser_origin_status"] == 403
    assert figures["oversized_before_hello_close"] == 1009
    assert figures["oversized_after_hello_close"] == 1009
    assert 1 <= errors <= 50
    assert figures["silent_client_close"] == protocol.CLOSE_NO_HELLO
    assert figures["right_token_after_failures_s"] < 0.5


def test_the_link_listens_on_localhost_only_by_default(hostile: Hostile) -> None:
    from generator_host.core.settings import LinkSettings

    assert LinkSettings().host == "127.0.0.1"
    addresses = listening_addresses(hostile.host.link_port)
    record("security: link listening addresses", addresses=addresses)
    assert addresses == ["127.0.0.1"]


HOSTILE_PROMPTS = [
    "../../../../tmp/chat-diffusion-pwned",
    "/etc/passwd",
    "C:\\Windows\\System32\\drivers\\etc\\hosts",
    "$(touch /tmp/chat-diffusion-pwned) `id` %s%n%x {0} ${HOME}",
    "fox\u2028PRIVMSG #other :pwned\u0085JOIN #other",
    "\x01ACTION fox\x01 \x1b[31mred\x1b[0m \x7f\u202eevil\u202c \u2066isolated\u2069",
    "a" * 290 + " /ban streamer",
    "[twitch] token = stolen threshold_offset=-1 approval_mode=off",
]


def test_chat_text_never_becomes_a_path_an_irc_line_or_a_setting(hostile: Hostile) -> None:
    server, root = hostile.server, hostile.root
    config_before = (root / "config.toml").read_bytes()
    n_rows = len(gallery_rows(root / "data"))
    evil_name = {"display-name": "Evil\r\nPRIVMSG #other :pwned", "user-id": "666"}
    for k, prompt in enumerate(HOSTILE_PROMPTS):
        server.privmsg(f"evil{k}", f"!generate {prompt}", tags=evil_name)
    # Viewers trying the streamer's commands and options past the caps.
    for text in ("!approve", "!terminate", "!mode everyone", "!ignore streamer", "!clear",
                 "!slideshow 3", "!generate steps=500 size=4096x4096 count=9 a fox",
                 "!generate seed=99999999999 a fox"):  # fmt: skip
        server.privmsg("viewer", text)
    accepted = [p for p in HOSTILE_PROMPTS if len(p) <= 300]
    assert wait_until(lambda: len(gallery_rows(root / "data")) >= n_rows + len(accepted), 90)
    # The screen's prompt echoed back through chat.
    server.privmsg("viewer", "!prompt")
    server.privmsg("viewer", "!params")
    time.sleep(2.0)

    allowed = re.compile(r"^(images/\d{4}-\d{2}/\d+-\d+\.png|held/\d+-\d+\.png|"
                         r"history\.sqlite3(-wal|-shm)?)$")  # fmt: skip
    gallery = root / "data" / "gallery"
    files = [p.relative_to(gallery).as_posix() for p in gallery.rglob("*") if p.is_file()]
    odd_files = [f for f in files if not allowed.match(f)]
    outside = [p for p in ("/tmp/chat-diffusion-pwned", str(root / "tmp")) if os.path.exists(p)]
    obs_files = sorted(p.name for p in (root / "obs-images").iterdir())

    lines = [s.line for s in server.received]
    commands = {s.command for s in server.received}
    privmsgs = [s.line for s in server.sent("PRIVMSG")]
    bad_lines = [
        line for line in lines
        if any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in line)
        or (line.split(" ")[0].upper() == "JOIN" and line != "JOIN #streamer")
    ]  # fmt: skip
    wrong_channel = [
        p for p in privmsgs if " PRIVMSG #streamer :" not in " " + p
    ]  # tags are optional
    slash = [p for p in privmsgs if p.split(" :", 1)[1].startswith(("/", "."))]
    record(
        "security: hostile chat text",
        hostile_prompts=len(HOSTILE_PROMPTS),
        gallery_files=len(files),
        files_not_named_by_entry_id=len(odd_files),
        files_outside_the_gallery=len(outside),
        bot_lines=len(lines),
        bot_commands=sorted(commands),
        extra_or_broken_irc_lines=len(bad_lines) + len(wrong_channel) + len(slash),
        config_changed=(root / "config.toml").read_bytes() != config_before,
    )
    assert not odd_files and not outside, (odd_files, outside)
    assert all(re.fullmatch(r"show-\d+-\d+-\d+\.png", n) for n in obs_files), obs_files
    assert commands <= {"PASS", "NICK", "CAP", "JOIN", "PONG", "PRIVMSG"}, commands
    assert not bad_lines and not wrong_channel and not slash, (bad_lines, wrong_channel, slash)
    assert (root / "config.toml").read_bytes() == config_before
    assert hostile.host.proc.poll() is None, "a viewer terminated the host"
    for row in gallery_rows(root / "data"):
        assert "\n" not in row[3] and "\r" not in row[3]


def test_prompts_reach_obs_capped_and_without_control_characters(hostile: Hostile) -> None:
    assert wait_until(lambda: len(hostile.obs.of_type("show")) >= len(HOSTILE_PROMPTS) - 1, 60)
    texts = [i["prompt"] for _, i in hostile.obs.of_type("show")]
    texts += [i["requester"] for _, i in hostile.obs.of_type("show")]
    texts += [i["text"] for _, i in hostile.obs.of_type("status")]
    bad = [t for t in texts if any(
        unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp")
        or 0x202A <= ord(c) <= 0x202E or 0x2066 <= ord(c) <= 0x2069 for c in t)]  # fmt: skip
    longest = max(len(i["prompt"]) for _, i in hostile.obs.of_type("show"))
    record("security: texts reaching OBS", texts_checked=len(texts),
           with_control_or_bidi=len(bad), longest_prompt=longest)  # fmt: skip
    assert not bad, bad[:3]
    assert longest <= protocol.MAX_PROMPT


# ---- the show: chat from a viewer can never steer ---------------------------------------------
_VIEWER_SHOW: list[Any] = []


@settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", "300")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
@given(st.lists(st.one_of(
    st.sampled_from(["!approve", "!terminate", "!clear", "!prev", "!next", "!slideshow 3",
                     "!mode everyone", "!ignore streamer", "!cancel", "!regenerate",
                     "!generate steps=999 size=9999x9999 count=9 seed=1 x",
                     "!generate threshold_offset=-1 approval_mode=off grid=9 a fox"]),
    st.text(max_size=80).map(lambda t: "!" + t), st.text(max_size=80)), max_size=8),
    st.sampled_from([Role.EVERYONE, Role.SUBSCRIBER, Role.VIP]))  # fmt: skip
def test_no_chat_line_from_a_viewer_changes_a_setting_or_steers_the_show(
    texts: list[str], role: Role
) -> None:
    base = Settings()
    base.twitch.channel = "streamer"
    show = Show(base, blocklist=load_blocklist("")[0])
    before = json.dumps(as_dict(base), sort_keys=True)
    viewer = Viewer("viewer", "Viewer", "7", role)
    now = 100.0
    for text in texts:
        now += 1
        for effect in show.handle(ChatMessage(viewer=viewer, text=text, msg_id="m", now=now)):
            assert not isinstance(effect, (Shutdown, Approve, Display)), (text, effect)
            if isinstance(effect, StartGeneration):
                p = effect.request.params
                assert p.steps <= base.model.max_steps and p.count <= max(1, base.show.grid)
                assert p.width <= base.model.max_size and p.height <= base.model.max_size
    assert json.dumps(as_dict(base), sort_keys=True) == before


# ---- files readable by the user alone ---------------------------------------------------------
def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_config_and_token_files_are_private(hostile: Hostile, tmp_path: Path) -> None:
    from generator_host.edges.link import load_or_create_token

    try:
        from generator_host.edges.files import write_private as write_secret_file
    except ImportError:  # before files.py existed
        from generator_host.edges.chat.irc import write_secret_file

    old = os.umask(0o022)
    try:
        config = tmp_path / "cfg" / "config.toml"
        subprocess.run([sys.executable, "-m", "generator_host", "init", "--config", str(config)],
                       check=True, capture_output=True, timeout=60)  # fmt: skip
        leaked = tmp_path / "old-token"
        leaked.write_text("abc\n")
        leaked.chmod(0o644)
        load_or_create_token(leaked)  # an existing token file left readable is tightened
        fresh = tmp_path / "new" / "link-token"
        load_or_create_token(fresh)
        secret = tmp_path / "twitch-token"
        write_secret_file(secret, "oauth:x")
    finally:
        os.umask(old)
    modes = {
        "init config": _mode(config),
        "host link-token": _mode(hostile.root / "data" / "link-token"),
        "existing 0644 token": _mode(leaked),
        "new token": _mode(fresh),
        "files.write_private": _mode(secret),
    }
    record("security: file modes under umask 022", **{k: oct(v) for k, v in modes.items()})
    assert all(v == 0o600 for v in modes.values()), {k: oct(v) for k, v in modes.items()}


# ---- secrets: last, so it sees everything the host printed --------------------------------------
def test_secrets_never_appear_in_any_log(hostile: Hostile, tmp_path: Path,
                                         tiny_model_dir: Path) -> None:  # fmt: skip
    # A refused Twitch login: its error message must not quote the token either.
    server = RecordingTwitchServer("streamer", refuse_login="auth").start()
    cfg = host_config(tmp_path / "c.toml", model_dir=tiny_model_dir, twitch_port=server.port)
    refused = HostProcess(cfg, tmp_path / "data", free_port(), log_level="DEBUG")
    try:
        with contextlib.suppress(AssertionError):  # it may exit before "Ready."
            refused.start(timeout=60)
        assert refused.proc is not None
        refused.proc.wait(30)
        time.sleep(0.3)  # the last lines
    finally:
        refused.kill()
        server.stop()
    # The script with a near-miss token (the risky case: a typo of the real one).
    near_miss = hostile.token[:-1] + ("x" if hostile.token[-1] != "x" else "y")
    wrong = ScriptLink(hostile.host.link_port, near_miss, tmp_path / "wrong-images").start()
    wait_until(lambda: any("refused" in str(i.get("text", "")) for _, i in wrong.items), 10)
    wrong.stop()
    script_log = CLIENT_LOG + [str(i.get("text", "")) for _, i in hostile.obs.items + wrong.items]
    assert any("refused" in line for line in script_log), script_log
    data_files = [p for p in (hostile.root / "data").rglob("*")
                  if p.is_file() and p.name != "link-token"]  # fmt: skip
    secrets = {"twitch token": TWITCH_TOKEN, "link token": hostile.token, "near miss": near_miss}
    found = {}
    for what, secret in secrets.items():
        found[what] = {
            "host output": secret in hostile.host.output,
            "refused-login output": secret in refused.output,
            "OBS script log": any(secret in line for line in script_log),
            "data files": [p.name for p in data_files if secret.encode() in p.read_bytes()],
        }
    record("security: secrets in logs", host_output_lines=len(hostile.host.lines),
           refused_login_exit=refused.proc.returncode, found=found)  # fmt: skip
    assert refused.proc.returncode == 3, refused.output[-2000:]
    assert "refused" in refused.output.lower()
    for what, where in found.items():
        assert not any(where.values()), (what, where)
