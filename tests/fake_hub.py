"""A local model hub over a real socket: the subset of the Hub's HTTP API huggingface_hub uses.

Point `HF_ENDPOINT` at `FakeHub.url` (in a child process's environment, with `HF_HOME` in a
temp folder) and `generator-host` downloads from here exactly as from huggingface.co:
- GET /api/models/{repo}[/revision/{rev}]   model info: sha, siblings (with sizes)
- GET /api/models/{repo}/tree/{rev}         the file list (recursive)
- HEAD/GET /{repo}/resolve/{rev}/{path}     ETag, X-Repo-Commit, Content-Length, Range
Unknown repositories answer 404 with `X-Error-Code: RepoNotFound`, as the Hub does.

Faults, per file path (`fail_next(path, status, times)`, `cut_next(path, after, times)`),
or for the whole hub (`mode = "hang"`: accept and never answer). `requests` records
(method, path, Range header) for assertions. `BlackHole` is a port whose connects never
complete (a listening socket with a full backlog): a network dropping packets.

`build_repos` lays out tiny repositories like stabilityai/sd-turbo (with .fp16. files and a
top-level single-file checkpoint), a repo without fp16 files,
CompVis/stable-diffusion-safety-checker (pytorch_model.bin) and the CLIP text tower the
safety categories download (openai/clip-vit-large-patch14), from the tiny model.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

SD_TURBO = "stabilityai/sd-turbo"
NO_FP16 = "example/sd-no-fp16"
CHECKER = "CompVis/stable-diffusion-safety-checker"
CLIP_TEXT = "openai/clip-vit-large-patch14"  # the safety categories' text tower ("auto")


class Repo:
    """A folder served as one repository at one commit."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.files = sorted(
            p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()
        )
        digest = hashlib.sha1()
        for name in self.files:
            digest.update(name.encode() + b"\0" + (folder / name).read_bytes())
        self.sha = digest.hexdigest()
        self._etags: dict[str, str] = {}

    def etag(self, name: str) -> str:
        if name not in self._etags:
            self._etags[name] = hashlib.sha256((self.folder / name).read_bytes()).hexdigest()
        return self._etags[name]

    def size(self, name: str) -> int:
        return (self.folder / name).stat().st_size


class FakeHub:
    def __init__(self, repos: dict[str, Path]) -> None:
        self.repos = {rid: Repo(Path(folder)) for rid, folder in repos.items()}
        self.requests: list[tuple[str, str, str]] = []
        self.mode = "serve"  # or "hang"
        self._faults: dict[str, list[tuple[str, int]]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._connections: list[socket.socket] = []

    # ----- control -----
    def start(self) -> FakeHub:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def setup(self) -> None:
                super().setup()
                with hub._lock:
                    hub._connections.append(self.connection)

            def do_HEAD(self) -> None:  # noqa: N802
                hub._handle(self, head=True)

            def do_GET(self) -> None:  # noqa: N802
                hub._handle(self, head=False)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop listening and close every open connection (kept-alive ones too)."""
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        with self._lock:
            for conn in self._connections:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def fail_next(self, path: str, status: int = 500, times: int = 1) -> None:
        """The next `times` GETs of a file (a repo path: "unet/x.safetensors") get `status`."""
        with self._lock:
            self._faults.setdefault(path, []).extend([("status", status)] * times)

    def cut_next(self, path: str, after: int, times: int = 1) -> None:
        """The next `times` GETs of a file send `after` bytes, then drop the connection."""
        with self._lock:
            self._faults.setdefault(path, []).extend([("cut", after)] * times)

    def stall(self, path: str, after: int = 1000) -> None:
        """Every GET of a file sends `after` bytes, then nothing until the hub stops."""
        with self._lock:
            self._faults.setdefault(path, []).extend([("stall", after)] * 1000)

    def gets(self, suffix: str = "") -> list[tuple[str, str, str]]:
        """File downloads (GET .../resolve/...) whose path ends with `suffix`."""
        return [
            r
            for r in self.requests
            if r[0] == "GET" and "/resolve/" in r[1] and r[1].endswith(suffix)
        ]

    # ----- serving -----
    def _handle(self, h: BaseHTTPRequestHandler, *, head: bool) -> None:
        path = unquote(urlsplit(h.path).path)
        with self._lock:
            self.requests.append((h.command, path, h.headers.get("Range", "")))
        if self.mode == "hang":
            self._stop.wait(600)
            return
        if path.startswith("/api/models/"):
            return self._api(h, path.removeprefix("/api/models/"))
        if "/resolve/" in path:
            return self._resolve(h, path.lstrip("/"), head)
        self._send(h, 404, b"not found", {"X-Error-Code": "EntryNotFound"})

    def _repo(self, h: BaseHTTPRequestHandler, rest: str) -> tuple[Repo | None, str, str]:
        parts = rest.split("/")
        repo_id, tail = "/".join(parts[:2]), "/".join(parts[2:])
        repo = self.repos.get(repo_id)
        if repo is None:
            self._send(
                h,
                404,
                b'{"error":"Repository not found"}',
                {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"},
            )
        return repo, repo_id, tail

    def _api(self, h: BaseHTTPRequestHandler, rest: str) -> None:
        repo, repo_id, tail = self._repo(h, rest)
        if repo is None:
            return
        if tail.startswith("tree/"):
            body = [
                {"type": "file", "path": f, "size": repo.size(f), "oid": repo.etag(f)}
                for f in repo.files
            ]
            return self._json(h, body)
        siblings = [
            {"rfilename": f, "size": repo.size(f), "blobId": repo.etag(f)} for f in repo.files
        ]
        self._json(
            h,
            {
                "id": repo_id,
                "modelId": repo_id,
                "sha": repo.sha,
                "private": False,
                "siblings": siblings,
            },
        )

    def _resolve(self, h: BaseHTTPRequestHandler, rest: str, head: bool) -> None:
        repo, repo_id, tail = self._repo(h, rest)
        if repo is None:
            return
        name = tail.split("/", 2)[-1]  # tail: resolve/{revision}/{path}
        if name not in repo.files:
            return self._send(h, 404, b"entry not found", {"X-Error-Code": "EntryNotFound"})
        data = (repo.folder / name).read_bytes()
        headers = {
            "ETag": f'"{repo.etag(name)}"',
            "X-Repo-Commit": repo.sha,
            "Accept-Ranges": "bytes",
        }
        fault = None
        if not head:
            with self._lock:
                queue = self._faults.get(name)
                if queue:
                    fault = queue.pop(0)
        if fault and fault[0] == "status":
            return self._send(h, fault[1], b"Internal Error", {})
        start = 0
        rng = h.headers.get("Range", "")
        if rng.startswith("bytes=") and not head:
            start = int(rng.removeprefix("bytes=").split("-")[0] or 0)
        body = data[start:]
        status = 206 if start else 200
        if start:
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        headers["Content-Length"] = str(len(data) if head else len(body))
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        h.end_headers()
        if head:
            return
        if fault and fault[0] == "stall":
            h.wfile.write(body[: fault[1]])
            h.wfile.flush()
            self._stop.wait(600)
            return
        if fault and fault[0] == "cut":
            h.wfile.write(body[: fault[1]])
            h.wfile.flush()
            h.close_connection = True
            with contextlib.suppress(OSError):
                h.connection.shutdown(socket.SHUT_RDWR)
            return
        h.wfile.write(body)

    def _json(self, h: BaseHTTPRequestHandler, obj: Any) -> None:
        self._send(h, 200, json.dumps(obj).encode(), {"Content-Type": "application/json"})

    def _send(self, h: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict) -> None:
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)


class BlackHole:
    """A local port where TCP connects never complete, as on a network dropping packets.

    A listening socket that never accepts, with its backlog filled: the kernel then drops
    further SYNs, so a client's connect waits until its own timeout.
    """

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(0)
        self.port = self.sock.getsockname()[1]
        self._fill: list[socket.socket] = []
        for _ in range(8):
            c = socket.socket()
            c.setblocking(False)
            c.connect_ex(("127.0.0.1", self.port))
            self._fill.append(c)
        time.sleep(0.2)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        for c in self._fill:
            c.close()
        self.sock.close()


# ----- generator-host run against this hub ------------------------------------------
class HostRun:
    """`generator-host run` in a child process, its output collected line by line."""

    def __init__(
        self,
        home: Path,
        endpoint: str,
        twitch: Any,
        env: dict[str, str] | None = None,
        **model: Any,
    ) -> None:
        # vae = "full": the tiny VAE's repo is not served here (its download is hub.fetch too).
        values = {"device": '"cpu"', "vae": '"full"', **{k: _toml(v) for k, v in model.items()}}
        config = home / "config.toml"
        config.write_text(
            "[twitch]\n"
            'channel = "streamer"\nhost = "127.0.0.1"\n'
            f"port = {twitch.port}\ntls = false\n"
            "[model]\n" + "".join(f"{k} = {v}\n" for k, v in values.items())
        )
        env = {
            **os.environ,
            "CHAT_DIFFUSION_TWITCH_TOKEN": "oauth:test-token",
            "HF_ENDPOINT": endpoint,
            "HF_HOME": str(home / "hf"),
            "HF_HUB_OFFLINE": "0",
            "XDG_CACHE_HOME": str(home / "xdg-cache"),
            **(env or {}),  # the caller's additions last
        }
        env.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)
        self.started = time.monotonic()
        self.ready_after: float | None = None
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "generator_host",
                "run",
                "--config",
                str(config),
                "--data-dir",
                str(home / "data"),
                "--link-port",
                "0",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self._threads = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.err), daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _read(self, stream: Any, into: list[str]) -> None:
        for line in stream:
            into.append(line.rstrip("\n"))
            if line.startswith("Ready.") and self.ready_after is None:
                self.ready_after = time.monotonic() - self.started

    def wait_for(self, predicate: Any, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if predicate():
                return True
            if self.proc.poll() is not None:
                time.sleep(0.2)  # let the readers finish
                return bool(predicate())
            time.sleep(0.1)
        return False

    def wait_ready(self, timeout: float = 120) -> float:
        assert self.wait_for(lambda: self.ready_after is not None, timeout), self.text
        return self.ready_after or 0.0

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for t in self._threads:
            t.join(5)
        return self.proc.returncode

    @property
    def text(self) -> str:
        return "\n".join(self.out + self.err)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


# ----- repositories built from the tiny model -----------------------------------------
def build_repos(tiny_model: Path, root: Path) -> dict[str, Path]:
    """Tiny repositories with the real repos' file names and layout (built in ~1 s)."""
    import torch
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_model)
    checker, extractor = pipe.safety_checker, pipe.feature_extractor
    pipe.safety_checker = None
    pipe.feature_extractor = None
    pipe.register_to_config(safety_checker=(None, None), feature_extractor=(None, None))
    pipe.register_to_config(requires_safety_checker=False)

    turbo = root / "sd-turbo"
    pipe.save_pretrained(turbo, safe_serialization=True)
    plain = root / "no-fp16"
    shutil.copytree(turbo, plain)
    pipe.to(torch.float16).save_pretrained(turbo, safe_serialization=True, variant="fp16")
    # The real repo also holds a single-file checkpoint at the top and a model card.
    (turbo / "sd_turbo.safetensors").write_bytes(b"\0" * 4096)
    (turbo / "README.md").write_text("# sd-turbo (tiny test copy)\n")

    ck = root / "safety-checker"
    # pytorch_model.bin, like the CompVis repo (transformers 5 saves safetensors only).
    checker.config.save_pretrained(ck)
    torch.save(checker.state_dict(), ck / "pytorch_model.bin")
    extractor.save_pretrained(ck)
    (ck / "flax_model.msgpack").write_bytes(b"\0" * 2048)
    (ck / "README.md").write_text("# safety checker (tiny test copy)\n")
    clip = root / "clip-text"
    shutil.copytree(tiny_model / "clip_text", clip)
    (clip / "flax_model.msgpack").write_bytes(b"\0" * 2048)
    return {SD_TURBO: turbo, NO_FP16: plain, CHECKER: ck, CLIP_TEXT: clip}
