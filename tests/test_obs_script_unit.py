"""The OBS script against a fake obspython and the host's REAL link server.

The fake stands in for OBS only (tests/fake_obspython.py): it keeps sources, counts
every reference and records which thread made each obs_* call. The network, the image
files and the host are real. What a streamer would notice is asserted: the image source
shows the new picture, buttons and hotkeys reach the host, a dead host does not spam the
log, unloading leaves nothing behind.
"""

from __future__ import annotations

import importlib
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import websocket

from obs_script import chat_diffusion_protocol as p
from tests.fake_obspython import Data, FakeOBS
from tests.fixtures_obs import LINK_TOKEN, RunningLink, make_cert, make_png

SCRIPT_DIR = Path(__file__).resolve().parent.parent / "obs_script"
IMAGE, REQUESTER, PROMPT, STATUS = (
    "Chat Diffusion Image",
    "Chat Diffusion Requester",
    "Chat Diffusion Prompt",
    "Chat Diffusion Status",
)


class Runner:
    """Loads the script into the fake OBS as OBS does, and pumps OBS's timer."""

    def __init__(self, fake: FakeOBS, image_dir: Path) -> None:
        self.fake = fake
        self.image_dir = image_dir
        self.mod: ModuleType | None = None
        self.settings = Data()

    def load(self, **values: Any) -> ModuleType:
        if "chat_diffusion" in sys.modules:
            mod = importlib.reload(sys.modules["chat_diffusion"])
        else:
            mod = importlib.import_module("chat_diffusion")
        mod.IMAGE_DIR = str(self.image_dir)
        self.settings.values.update(values)
        mod.script_defaults(self.settings)
        mod.script_update(self.settings)
        mod.script_load(self.settings)
        self.mod = mod
        return mod

    def update(self, **values: Any) -> None:
        self.settings.values.update(values)
        assert self.mod is not None
        self.mod.script_update(self.settings)

    def unload(self) -> None:
        if self.mod is not None:
            self.mod.script_unload()
            self.mod = None

    def pump(self, until: Callable[[], Any], timeout: float = 5.0) -> Any:
        """Run OBS timer ticks until `until()` is truthy; fail after `timeout`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.fake.tick()
            result = until()
            if result:
                return result
            time.sleep(0.01)
        raise AssertionError(f"timed out waiting for {until}")

    def connected(self) -> bool:
        assert self.mod is not None
        return bool(self.mod.S.connected)


@pytest.fixture
def fake_obs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeOBS]:
    # The host's token file lives in a fresh data folder: never the real user's one (the
    # script also tries ~/.local/share, so HOME is a fresh folder too).
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    fake = FakeOBS()
    fake.add_source(IMAGE, "image_source", file="")
    for name in (REQUESTER, PROMPT, STATUS):
        fake.add_source(name, "text_ft2_source", text="")
    fake.add_source("Webcam", "v4l2_input")
    monkeypatch.setitem(sys.modules, "obspython", fake.module)
    monkeypatch.syspath_prepend(str(SCRIPT_DIR))
    yield fake
    for name in ("chat_diffusion", "chat_diffusion_link"):
        sys.modules.pop(name, None)


@pytest.fixture
def runner(fake_obs: FakeOBS, tmp_path: Path) -> Iterator[Runner]:
    r = Runner(fake_obs, tmp_path / "images")
    yield r
    r.unload()
    assert fake_obs.leaks() == []
    assert fake_obs.foreign_thread_calls() == []


def token_file(tmp_path: Path) -> Path:
    """Where the host writes its link token, with the data folder the fixture set."""
    return tmp_path / "xdg-data" / "chat-diffusion" / "link-token"


def link_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "chat-diffusion-link"]


def text_of(fake: FakeOBS, name: str) -> str:
    return fake.sources[name].settings.get("text", "")


def panel_line(runner: Runner) -> str:
    """The panel's Connection line as OBS draws it: the info text shows its settings value."""
    assert runner.mod is not None
    props = runner.mod.script_properties()
    assert props.props["connection_info"].extra["text_type"] == runner.fake.module.OBS_TEXT_INFO
    return str(runner.settings.values.get("connection_info", ""))


def warnings_of(fake: FakeOBS) -> list[str]:
    """What the script logged as warnings (OBS opens its script log window for these)."""
    return [text for level, text in fake.script_logs if level == fake.module.LOG_WARNING]


def test_a_new_image_reaches_the_image_source_under_a_new_file(
    runner: Runner, link_server: RunningLink
) -> None:
    runner.load(host=link_server.url, token=LINK_TOKEN)
    runner.pump(runner.connected)
    files: list[str] = []
    src = runner.fake.sources[IMAGE]
    for i, color in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255), (9, 9, 9), (1, 2, 3)]):
        png = make_png(color)
        link_server.show(i + 1, png, "alice", f"picture {i}")
        path = runner.pump(lambda: src.settings["file"] not in files and src.settings["file"])  # noqa: B023
        assert Path(path).read_bytes() == png
        assert Path(path).parent == runner.image_dir
        files.append(path)
        assert text_of(runner.fake, REQUESTER) == "alice"
        assert text_of(runner.fake, PROMPT) == f"picture {i}"
    assert len(set(files)) == 5
    # old images are cleaned up, the one on screen stays
    left = sorted(os.listdir(runner.image_dir))
    assert len(left) <= 3 and os.path.basename(files[-1]) in left
    link_server.broadcast(p.make_clear())
    runner.pump(lambda: runner.fake.sources[IMAGE].settings["file"] == "")
    assert text_of(runner.fake, PROMPT) == ""


def test_status_text_follows_the_host(runner: Runner, link_server: RunningLink) -> None:
    runner.load(host=link_server.url, token=LINK_TOKEN)
    runner.pump(lambda: text_of(runner.fake, STATUS) == "idle")
    link_server.broadcast(p.make_status("generating 2/4, 3 waiting", 2, 4, 3))
    runner.pump(lambda: text_of(runner.fake, STATUS) == "generating 2/4, 3 waiting")


def test_the_panel_shows_the_hosts_settings_and_never_overwrites_them(
    runner: Runner, link_server: RunningLink
) -> None:
    """A streamer set hold and a strict offset in the config; the panel still holds old
    values from an earlier session. Connecting shows the host's values, proposes nothing."""
    link_server.live.safety.approval_mode = "hold"
    link_server.live.safety.threshold_offset = 0.03
    stale = {"safety.approval_mode": "blur", "safety.threshold_offset": 0.0, "show.grid": 9}
    mod = runner.load(host=link_server.url, token=LINK_TOKEN, **stale)
    values = runner.settings.values
    runner.pump(lambda: values["safety.approval_mode"] == "hold")
    assert values["safety.threshold_offset"] == 0.03 and values["show.grid"] == 1
    runner.update(image_source=IMAGE)  # OBS calls script_update on any edit
    runner.pump(lambda: True)
    time.sleep(0.3)
    proposals = [m for m in drain(link_server) if m["type"] == "change"]
    assert proposals == [] and link_server.live.safety.approval_mode == "hold"
    props = mod.script_properties().props
    modes = props["safety.approval_mode"]
    assert [v for _, v in modes.items] == ["blur", "hold", "skip", "off"]
    offset = props["safety.threshold_offset"]
    assert (offset.kind, offset.extra["lo"], offset.extra["hi"]) == ("float", -1.0, 1.0)
    assert "stricter" in offset.label and "looser" in offset.label
    assert "stock diffusers" in offset.long_description
    assert [v for _, v in props["show.grid"].items] == [1, 4, 9]


def test_a_panel_change_goes_to_the_host_and_its_answer_comes_back(
    runner: Runner, link_server: RunningLink
) -> None:
    mod = runner.load(host=link_server.url, token=LINK_TOKEN)
    values = runner.settings.values
    runner.pump(lambda: values.get("safety.approval_mode") == "blur")
    runner.update(**{"safety.approval_mode": "hold", "show.slideshow_seconds": 20.0})
    runner.pump(lambda: not mod.S.proposal)  # sent by OBS's timer once the edits pause
    change = link_server.next_message("change")
    assert change["values"] == {"safety.approval_mode": "hold", "show.slideshow_seconds": 20.0}
    assert link_server.live.safety.approval_mode == "hold"
    # a value the host refuses: the panel snaps back to the host's
    runner.update(**{"show.slideshow_seconds": 1.0})
    runner.pump(lambda: not mod.S.proposal)
    assert link_server.next_message("change")["values"] == {"show.slideshow_seconds": 1.0}
    runner.pump(lambda: values["show.slideshow_seconds"] == 20.0)
    assert link_server.live.show.slideshow_seconds == 20.0


def test_a_change_from_another_panel_reaches_this_one(
    runner: Runner, link_server: RunningLink
) -> None:
    runner.load(host=link_server.url, token=LINK_TOKEN)
    values = runner.settings.values
    runner.pump(lambda: values.get("gallery.save_images") is True)
    other = websocket.create_connection(link_server.url, timeout=5, suppress_origin=True)
    try:
        other.send(p.encode(p.make_hello(LINK_TOKEN, "second OBS"), "script").text)
        other.send(p.encode(p.make_change({"gallery.save_images": False}), "script").text)
        runner.pump(lambda: values["gallery.save_images"] is False)
    finally:
        other.close()
    assert [m for m in drain(link_server) if m["type"] == "change"] == [
        {"v": 1, "type": "change", "values": {"gallery.save_images": False}}
    ]


def test_after_a_restart_the_panel_draws_the_last_live_settings_before_connecting(
    runner: Runner, link_server: RunningLink
) -> None:
    runner.load(host=link_server.url, token=LINK_TOKEN)
    runner.pump(lambda: runner.settings.values.get("safety.approval_mode") == "blur")
    runner.unload()
    mod = runner.load(host="ws://192.0.2.7:8765", token="x")  # OBS restarted, host away
    props = mod.script_properties().props
    assert [v for _, v in props["safety.approval_mode"].items] == ["blur", "hold", "skip", "off"]
    assert "host's values" in props["live_info"].label
    assert mod.S.live is None  # nothing is proposed until the host has sent its values


def drain(link: RunningLink) -> list[dict]:
    out = []
    while not link.received.empty():
        out.append(link.received.get_nowait())
    return out


def test_buttons_and_hotkeys_send_actions(runner: Runner, link_server: RunningLink) -> None:
    mod = runner.load(host=link_server.url, token=LINK_TOKEN)
    runner.pump(runner.connected)
    props = mod.script_properties()
    buttons = {
        "btn_approve": "approve",
        "btn_clear": "clear",
        "btn_prev": "prev",
        "btn_next": "next",
        "btn_slideshow": "slideshow",
    }
    for key, action in buttons.items():
        assert props.props[key].extra["callback"](props, props.props[key]) is True
        assert link_server.next_message("action")["action"] == action
    names = {name: cb for name, _, cb in runner.fake.hotkeys.values()}
    assert set(names) == {f"chat_diffusion.{a}" for a in ("approve", "clear", "prev", "next")}
    names["chat_diffusion.approve"](False)  # key released: nothing
    names["chat_diffusion.next"](True)
    assert link_server.next_message("action")["action"] == "next"


def test_hotkey_bindings_are_saved_with_the_script_settings(
    runner: Runner, link_server: RunningLink
) -> None:
    mod = runner.load(host=link_server.url, token=LINK_TOKEN)
    approve_id = next(h for h, v in runner.fake.hotkeys.items() if v[0].endswith("approve"))
    runner.fake.hotkey_bindings[approve_id] = [{"key": "OBS_KEY_F9"}]
    mod.script_save(runner.settings)
    assert runner.settings.values["hotkey_approve"] == [{"key": "OBS_KEY_F9"}]
    runner.unload()
    runner.load()
    approve_id = next(h for h, v in runner.fake.hotkeys.items() if v[0].endswith("approve"))
    assert runner.fake.hotkey_bindings[approve_id] == [{"key": "OBS_KEY_F9"}]


def test_unload_stops_the_thread_within_a_second_and_releases_everything(
    runner: Runner, link_server: RunningLink
) -> None:
    runner.load(host=link_server.url, token=LINK_TOKEN)
    runner.pump(runner.connected)
    start = time.monotonic()
    runner.unload()
    assert time.monotonic() - start < 1.0
    assert link_threads() == []
    assert runner.fake.timers == [] and runner.fake.hotkeys == {}
    assert runner.fake.leaks() == []


def test_reloading_twenty_times_leaves_no_thread_and_no_reference(
    runner: Runner, link_server: RunningLink
) -> None:
    for i in range(20):
        mod = runner.load(host=link_server.url, token=LINK_TOKEN)
        if i % 5 == 0:
            runner.pump(runner.connected)
            mod.script_properties()
        runner.unload()
    assert link_threads() == []
    assert runner.fake.timers == [] and runner.fake.hotkeys == {}
    assert runner.fake.leaks() == []


def test_unload_is_prompt_while_connecting_to_an_unreachable_host(runner: Runner) -> None:
    # 10.255.255.1 is not routable: the connect would hang for seconds
    runner.load(host="ws://10.255.255.1:8765", token=LINK_TOKEN)
    time.sleep(0.3)
    start = time.monotonic()
    runner.unload()
    assert time.monotonic() - start < 1.0 and link_threads() == []


def test_quiet_while_the_host_is_down_then_reconnects(
    runner: Runner, capsys: pytest.CaptureFixture[str]
) -> None:
    probe = RunningLink()
    port = probe.port
    probe.close()  # a port that nothing listens on now
    runner.load(host=f"ws://127.0.0.1:{port}", token=LINK_TOKEN)
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline:
        runner.fake.tick()
        time.sleep(0.02)
    log = capsys.readouterr().out
    assert log.count("not reachable") == 1, log
    assert text_of(runner.fake, STATUS) == "Chat Diffusion: waiting for the host"
    assert "not reachable" in panel_line(runner)
    host = RunningLink(port=port)
    try:
        props = runner.mod.script_properties()
        props.props["btn_reconnect"].extra["callback"](props, None)
        runner.pump(runner.connected, timeout=3)
        assert panel_line(runner).startswith("connected to ws://127.0.0.1")
    finally:
        host.close()


def test_host_restart_shows_the_current_image_again(
    runner: Runner, link_server: RunningLink
) -> None:
    runner.load(host=link_server.url, token=LINK_TOKEN)
    runner.pump(runner.connected)
    link_server.show(1, make_png((200, 0, 0)), "bob", "first")
    src = runner.fake.sources[IMAGE]
    runner.pump(lambda: src.settings["file"])
    port = link_server.port
    link_server.close()
    runner.pump(lambda: not runner.connected())
    host = RunningLink(port=port)
    try:
        red = make_png((0, 0, 200))
        host.state = [p.make_state(p.make_show(7, red, "carol", "after restart"), None)]
        runner.pump(lambda: text_of(runner.fake, PROMPT) == "after restart", timeout=5)
        assert Path(src.settings["file"]).read_bytes() == red
    finally:
        host.close()


def test_a_remote_host_over_tls(
    runner: Runner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from generator_host.core.settings import LinkSettings

    cert, key = make_cert(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", cert)  # trust the test CA like a system CA
    host = RunningLink(LinkSettings(port=0, tls_cert=cert, tls_key=key))
    try:
        runner.load(host=host.url, token=LINK_TOKEN)
        host.show(4, make_png((4, 5, 6)), "tls", "encrypted")
        runner.pump(lambda: text_of(runner.fake, PROMPT) == "encrypted")
        assert host.url.startswith("wss://")
    finally:
        host.close()


def test_wrong_token_is_reported_and_not_hammered(runner: Runner, link_server: RunningLink) -> None:
    mod = runner.load(host=link_server.url, token="not-the-token")
    runner.pump(lambda: "wrong token" in mod.S.connection)
    attempts = link_server.server.failures.count("127.0.0.1")
    time.sleep(1.5)
    assert link_server.server.failures.count("127.0.0.1") == attempts
    assert "wrong token" in panel_line(runner)


def test_changing_the_token_reconnects_after_typing_stops(
    runner: Runner, link_server: RunningLink
) -> None:
    mod = runner.load(host=link_server.url, token="wrong")
    runner.pump(lambda: "wrong token" in mod.S.connection)
    for partial in ("t", "te", LINK_TOKEN):
        runner.update(token=partial)
    runner.pump(runner.connected, timeout=4)


def test_missing_sources_are_looked_up_again_later(
    runner: Runner, link_server: RunningLink
) -> None:
    del runner.fake.sources[IMAGE]
    runner.load(host=link_server.url, token=LINK_TOKEN)
    runner.pump(runner.connected)
    link_server.show(1, make_png((1, 1, 1)), "a", "b")
    runner.pump(lambda: text_of(runner.fake, PROMPT) == "b")
    runner.fake.add_source(IMAGE, "image_source", file="")
    link_server.show(2, make_png((2, 2, 2)), "a", "c")
    runner.pump(lambda: runner.fake.sources[IMAGE].settings["file"])


def test_source_pickers_list_sources_of_the_right_kind(runner: Runner) -> None:
    mod = runner.load()
    runner.fake.add_source("Another picture", "image_source")
    props = mod.script_properties()
    image_items = [v for _, v in props.props["image_source"].items]
    text_items = [v for _, v in props.props["prompt_source"].items]
    assert set(image_items) == {IMAGE, "Another picture"}
    assert set(text_items) == {REQUESTER, PROMPT, STATUS}
    assert props.props["image_source"].extra["combo"] == runner.fake.module.OBS_COMBO_TYPE_EDITABLE
    # never connected: no live settings to draw yet, and the panel says when they come
    assert "once the host has connected" in props.props["live_info"].label
    assert "safety.threshold_offset" not in props.props
    assert runner.fake.leaks() == []


def test_without_a_token_the_panel_says_what_to_do(runner: Runner, tmp_path: Path) -> None:
    # host on this computer, its token file not written yet: the link waits for the file
    mod = runner.load(token="")
    runner.pump(lambda: "not there yet" in mod.S.connection)
    assert "no token" in mod.S.connection and str(token_file(tmp_path)) in mod.S.connection
    assert len(link_threads()) == 1
    assert text_of(runner.fake, STATUS) == "Chat Diffusion: waiting for the host"
    runner.unload()
    # host elsewhere: nothing to wait for, the streamer must paste the token
    mod = runner.load(host="ws://192.0.2.7:8765", token="")
    assert "no token" in mod.S.connection and "Token" in mod.S.connection
    assert link_threads() == []


def test_the_token_file_is_picked_up_once_the_host_has_written_it(
    runner: Runner, link_server: RunningLink, tmp_path: Path
) -> None:
    """OBS opened before the host's first run: no field to edit, no button to press."""
    mod = runner.load(host=link_server.url, token="")
    runner.pump(lambda: "not there yet" in mod.S.connection)
    path = token_file(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text(LINK_TOKEN + "\n")
    runner.pump(runner.connected, timeout=5)
    link_server.wait_connected()


def test_restarts_in_one_process_leave_only_the_kept_images(
    runner: Runner, link_server: RunningLink
) -> None:
    link_mod = importlib.import_module("chat_diffusion_link")
    src = runner.fake.sources[IMAGE]
    names: set[str] = set()
    for i in range(5):  # five script reloads, each a new link and image store
        link_server.show(10 * i + 1, make_png((i, 0, 0)), "a", f"round {i}")
        runner.load(host=link_server.url, token=LINK_TOKEN)
        runner.pump(lambda: text_of(runner.fake, PROMPT) == f"round {i}")  # noqa: B023
        names.add(os.path.basename(src.settings["file"]))
        link_server.show(10 * i + 2, make_png((i, 1, 0)), "a", f"again {i}")
        runner.pump(lambda: text_of(runner.fake, PROMPT) == f"again {i}")  # noqa: B023
        names.add(os.path.basename(src.settings["file"]))
        runner.unload()
    assert len(names) == 10  # every image under a new name
    left = os.listdir(runner.image_dir)
    assert len(left) <= link_mod.KEEP_IMAGES, left
    assert os.path.basename(src.settings["file"]) in left  # the one on screen stays


def test_localhost_connects_when_it_resolves_to_ipv6_first(
    runner: Runner, link_server: RunningLink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """'localhost' may give ::1 first while the host listens on 127.0.0.1 only."""
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host != "localhost":
            return real(host, port, *args, **kwargs)
        v6 = (socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("::1", port, 0, 0))
        return [v6, *real("127.0.0.1", port, *args, **kwargs)]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    runner.load(host=f"ws://localhost:{link_server.port}", token=LINK_TOKEN)
    runner.pump(runner.connected, timeout=4)


class SlowHandshake:
    """A TCP port in front of `port` whose handshake takes about a second, as over a
    real network: its accept queue is full, so the kernel drops the first SYN."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(0)
        self.port = self.listener.getsockname()[1]
        self.fillers = []
        for _ in range(3):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", self.port))
            self.fillers.append(s)
        time.sleep(0.1)
        self.filler_ports = {s.getsockname()[1] for s in self.fillers}
        self.open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        time.sleep(0.3)  # the script's SYN arrives while the queue is still full
        while True:
            try:
                conn, peer = self.listener.accept()
            except OSError:
                return
            self.open.append(conn)
            if peer[1] in self.filler_ports:
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target))
            self.open.append(upstream)
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
            b.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        for s in [self.listener, *self.fillers, *self.open]:
            s.close()


def test_a_slow_tcp_handshake_still_connects_at_the_first_attempt(
    runner: Runner, link_server: RunningLink, capsys: pytest.CaptureFixture[str]
) -> None:
    """A pending wake-up (the settings are queued before the first connect) must not cut
    the connect short: over a real network every attempt would fail at once."""
    slow = SlowHandshake(link_server.port)
    try:
        runner.load(host=f"ws://127.0.0.1:{slow.port}", token=LINK_TOKEN)
        runner.pump(runner.connected, timeout=6)
        log = capsys.readouterr().out
        assert "connected to" in log and "not reachable" not in log, log
    finally:
        slow.close()


def test_missing_websocket_client_explains_the_install(
    runner: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    mod = runner.load(token=LINK_TOKEN)
    runner.unload()
    link_mod = sys.modules["chat_diffusion_link"]
    monkeypatch.setattr(link_mod, "websocket", None)
    mod = runner.load(token=LINK_TOKEN)
    text = mod.script_description()
    assert "apt install python3-websocket" in text
    assert "-m pip install websocket-client" in text
    assert "&quot;/usr/bin/python3&quot; -m pip install websocket-client" in text
    assert "missing_info" in mod.script_properties().props
    assert link_threads() == []


def test_the_install_hint_names_obs_s_own_python_quoted(runner: Runner) -> None:
    """Inside OBS sys.executable is OBS: the hint must name the loaded Python's own
    interpreter (a user name with spaces stays one argument once quoted)."""
    mod = runner.load(token=LINK_TOKEN)
    win = mod.obs_python_executable("win32", "C:\\Users\\Jo Ann\\Python312", "3.12")
    assert win == "C:\\Users\\Jo Ann\\Python312\\python.exe"
    mac = mod.obs_python_executable(
        "darwin", "/Library/Frameworks/Python.framework/Versions/3.12", "3.12"
    )
    assert mac == "/Library/Frameworks/Python.framework/Versions/3.12/bin/python3.12"
    assert mod.obs_python_executable("linux", "/usr", "3.11") == "/usr/bin/python3"


class HostileHost:
    """A websocket server that sends whatever a test wants, token or not."""

    def __init__(self, frames: list[Any]) -> None:
        import asyncio

        from websockets.asyncio.server import serve

        self.frames = frames
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()

        async def handler(ws: Any) -> None:
            await ws.recv()
            for frame in self.frames:
                await ws.send(frame)
            await ws.wait_closed()

        async def start() -> Any:
            return await serve(handler, "127.0.0.1", 0, max_size=None)

        self.server = asyncio.run_coroutine_threadsafe(start(), self.loop).result(5)
        self.url = f"ws://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    def close(self) -> None:
        import asyncio

        async def stop() -> None:
            self.server.close()
            await self.server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)


def test_a_hostile_host_cannot_crash_the_script_or_garble_the_texts(
    runner: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    import base64
    import json

    evil_prompt = "ok\x1b[2J\u202eevil\nnext" + "A" * 5000
    frames: list[Any] = [
        "{not json",
        b"\x00binary",
        json.dumps({"v": 1, "type": "show", "entry_id": 1, "image": "%%%"}),
        json.dumps({"v": 1, "type": "show", "entry_id": -1, "image": ""}),
        json.dumps({"v": 7, "type": "clear"}),
        "[" * 100000,
        json.dumps(
            {
                "v": 1,
                "type": "show",
                "entry_id": 2,
                "image": base64.b64encode(make_png((5, 5, 5))).decode(),
                "requester": "\x07mallory\x00",
                "prompt": evil_prompt,
            }
        ),
        "x" * (2 * 1024 * 1024),  # over the cap set below: the link is dropped
    ]
    host = HostileHost(frames)
    try:
        link_mod = importlib.import_module("chat_diffusion_protocol")
        monkeypatch.setattr(link_mod, "MAX_HOST_FRAME", 1024 * 1024)
        runner.load(host=host.url, token=LINK_TOKEN)
        runner.pump(lambda: text_of(runner.fake, REQUESTER) == "mallory")
        prompt = text_of(runner.fake, PROMPT)
        assert prompt.startswith("ok[2Jevil next") and len(prompt) <= p.MAX_PROMPT
        assert "\x1b" not in prompt and "\u202e" not in prompt
        mod = runner.mod
        assert mod is not None
        runner.pump(lambda: "over" in mod.S.connection or "not reachable" in mod.S.connection)
    finally:
        host.close()


# ---- the panel's connection line and buttons pressed while the link is down -------------


def test_the_panel_connection_line_is_the_live_state(
    runner: Runner, link_server: RunningLink
) -> None:
    """OBS reads the description once, at load: the state lives in the Connection line,
    which OBS draws from the script's settings each time it draws the panel."""
    runner.settings.values["connection_info"] = "connected to ws://old-run"  # saved last time
    mod = runner.load(host=link_server.url, token=LINK_TOKEN)
    assert panel_line(runner) != "connected to ws://old-run"
    runner.pump(runner.connected)
    assert panel_line(runner) == f"connected to {link_server.url}/"
    assert "connect" not in mod.script_description().lower()  # no frozen state there
    port = link_server.port
    link_server.close()
    runner.pump(lambda: "not reachable" in panel_line(runner) or "stopped" in panel_line(runner))
    host = RunningLink(port=port)
    try:
        runner.pump(lambda: panel_line(runner).startswith("connected to"), timeout=5)
    finally:
        host.close()
    mod._set_connection("refused by the host: <a href='http://x'>click</a>", False)
    assert "<" not in panel_line(runner) and ">" not in panel_line(runner)  # no rich text


def press(runner: Runner, button: str) -> None:
    assert runner.mod is not None
    props = runner.mod.script_properties()
    assert props.props[button].extra["callback"](props, props.props[button]) is True


def host_down(runner: Runner, link_server: RunningLink) -> int:
    runner.load(host=link_server.url, token=LINK_TOKEN)
    runner.pump(runner.connected)
    port = link_server.port
    link_server.close()
    runner.pump(lambda: not runner.connected())
    return port


def test_a_button_pressed_while_the_host_is_down_is_sent_once_it_is_back(
    runner: Runner, link_server: RunningLink, capsys: pytest.CaptureFixture[str]
) -> None:
    port = host_down(runner, link_server)
    press(runner, "btn_next")
    runner.pump(lambda: True)
    assert "'next' waits for the host" in capsys.readouterr().out
    host = RunningLink(port=port)
    try:
        assert host.next_message("action", timeout=5)["action"] == "next"
        runner.pump(runner.connected)
        press(runner, "btn_slideshow")  # and one pressed while connected
        assert host.next_message("action", timeout=5)["action"] == "slideshow"
        time.sleep(0.5)  # the host's pong confirms both
    finally:
        host.close()
    runner.pump(lambda: not runner.connected())
    runner.pump(lambda: True)
    assert warnings_of(runner.fake) == []  # confirmed: never reported as maybe lost


def test_approve_pressed_while_the_host_is_down_is_reported_not_sent_later(
    runner: Runner, link_server: RunningLink
) -> None:
    """After a reconnect another picture may be held: a late approve would show it."""
    port = host_down(runner, link_server)
    names = {name: cb for name, _, cb in runner.fake.hotkeys.values()}
    names["chat_diffusion.approve"](True)
    runner.pump(lambda: warnings_of(runner.fake))
    assert "'approve' not sent: not connected to the host" in warnings_of(runner.fake)[0]
    host = RunningLink(port=port)
    try:
        runner.pump(runner.connected, timeout=5)
        press(runner, "btn_clear")  # sent after the approve would have been
        assert host.next_message("action", timeout=5)["action"] == "clear"
    finally:
        host.close()


def test_a_press_that_waits_too_long_for_the_host_is_reported(
    runner: Runner, link_server: RunningLink, monkeypatch: pytest.MonkeyPatch
) -> None:
    host_down(runner, link_server)
    monkeypatch.setattr(sys.modules["chat_diffusion_link"], "ACTION_GRACE", 1.0)
    press(runner, "btn_prev")
    runner.pump(lambda: warnings_of(runner.fake), timeout=4)
    assert "'prev' not sent: no link to the host within 1 s" in warnings_of(runner.fake)[0]


def test_a_dragged_slider_makes_one_proposal(runner: Runner, link_server: RunningLink) -> None:
    mod = runner.load(host=link_server.url, token=LINK_TOKEN)
    runner.pump(lambda: runner.settings.values.get("safety.threshold_offset") == 0.0)
    for step in range(1, 31):  # OBS calls script_update for every step the slider passes
        runner.update(**{"safety.threshold_offset": step / 1000})
    runner.pump(lambda: not mod.S.proposal)
    assert link_server.next_message("change")["values"] == {"safety.threshold_offset": 0.03}
    runner.pump(lambda: link_server.live.safety.threshold_offset == 0.03)
    time.sleep(0.5)
    assert [m for m in drain(link_server) if m["type"] == "change"] == []


def test_settings_chosen_in_an_older_panel_are_proposed_once(
    runner: Runner, link_server: RunningLink
) -> None:
    """Before the host owned live settings the panel's values won; an upgrade must not
    silently drop a streamer's choice: it is proposed once, then erased from the panel."""
    runner.load(host=link_server.url, token=LINK_TOKEN, approval_mode="hold", grid=4)
    runner.pump(lambda: link_server.live.show.grid == 4)
    change = link_server.next_message("change")
    assert change["values"] == {"safety.approval_mode": "hold", "show.grid": 4}
    runner.pump(lambda: runner.settings.values.get("safety.approval_mode") == "hold")
    assert "approval_mode" not in runner.settings.values and "grid" not in runner.settings.values
    runner.unload()
    runner.load(host=link_server.url, token=LINK_TOKEN)
    runner.pump(lambda: runner.connected())
    time.sleep(0.5)
    runner.pump(lambda: True)
    assert [m for m in drain(link_server) if m["type"] == "change"] == []
    assert link_server.live.safety.approval_mode == "hold"
