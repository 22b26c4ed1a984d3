"""The OBS script's own link client (obs_script/chat_diffusion_link.py), run on its own.

Run by tests and bench/soak_link.py under any Python that has websocket-client, e.g.
Debian's system Python (/usr/bin/python3 with python3-websocket, which OBS on Linux
uses) or the project's venv (the newest websocket-client). Standard library only here:
the system Python has none of the project's dependencies.

    python link_client_probe.py URL TOKEN IMAGE_DIR

stdout: one JSON object per line, `{"t": <monotonic>, "type": ...}`: first `ready` (with
the websocket-client and Python versions), then every inbox item the client produces
(`link` status changes, `log` lines, ...), image bytes left out. stdin: `action NAME`
presses a button, `quit` (or end of input) stops the client.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "obs_script"))

import chat_diffusion_link as link_mod  # noqa: E402
import chat_diffusion_protocol as protocol  # noqa: E402


def emit(item: dict) -> None:
    line = {"t": round(time.monotonic(), 3)}
    line.update((k, v) for k, v in item.items() if k != "image")
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()


def main() -> int:
    url, token, image_dir = sys.argv[1:4]
    if link_mod.websocket is None:
        emit({"type": "error", "text": "websocket-client is not installed"})
        return 2
    client = link_mod.LinkClient(url, token, "link probe", image_dir)
    client.start()
    emit(
        {
            "type": "ready",
            "websocket": getattr(link_mod.websocket, "__version__", "?"),
            "python": sys.version.split()[0],
            "executable": sys.executable,
        }
    )
    done = threading.Event()

    def read_commands() -> None:
        for line in sys.stdin:
            words = line.split()
            if words[:1] == ["action"] and len(words) == 2:
                client.send(protocol.make_action(words[1]))
            elif words[:1] == ["quit"]:
                break
        done.set()

    threading.Thread(target=read_commands, daemon=True).start()
    while not done.is_set():
        with contextlib.suppress(queue.Empty):
            emit(client.inbox.get(timeout=0.2))
    client.stop(timeout=2.0)
    while not client.inbox.empty():
        emit(client.inbox.get_nowait())
    return 0


if __name__ == "__main__":
    sys.exit(main())
