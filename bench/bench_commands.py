"""Chat command path benchmark (not a test): raw Twitch lines per second, one core.

Each line goes the whole way a real one does: IRC parsing with tag unescaping, the
viewer's role from badges, command parsing, moderation (mode, cooldown, limits,
blocklist) and routing in the show, including replies under the send budget. The mix is
a busy chat: most lines are ordinary talk, some ask for images (most of those refused by
cooldown or the queue cap, as in a raid), a few ask !queue / !help / !prompt, and
moderators step through the history. Target: >= 50,000 lines/s.

Time is this process's CPU time (one core), so other work on a shared machine does not
distort the figure.

    python -m bench.bench_commands            # ~300,000 lines, best of 5
    python -m bench.bench_commands --quick    # ~40,000 lines, best of 3
"""

from __future__ import annotations

import argparse
import random
import time

from generator_host.core.generation import Entry
from generator_host.core.message import ChatMessage, Viewer
from generator_host.core.settings import Settings
from generator_host.core.show import GenerationFinished, Show
from generator_host.edges.blocklist import load_blocklist
from generator_host.edges.chat import ircparse

TARGET = 50_000
TALK = [
    "LUL that is amazing",
    "PogChamp PogChamp",
    "hi chat",
    "what model is this?",
    "make it a cat next pls",
    "KEKW",
    "@streamer how long is the stream today",
    "this is so cursed",
]
PROMPTS = [
    "a red fox in the snow, highly detailed",
    "a castle on a cloud ### blurry, text",
    "steps=20 size=512x512 a cyberpunk city at night",
    "portrait of a corgi wearing a crown, oil painting",
    "a n u d e statue",  # caught by the blocklist
]
OTHER = ["!queue", "!help", "!prompt", "!seed", "!params", "!gen", "!cancel", "!foo"]


def _line(i: int, rng: random.Random) -> str:
    user = f"viewer{rng.randrange(2000)}"
    roll = rng.random()
    badges = "subscriber/12" if roll < 0.2 else ""
    if roll < 0.80:
        text = rng.choice(TALK)
    elif roll < 0.92:
        text = f"!generate {rng.choice(PROMPTS)}"
    elif roll < 0.985:
        text = rng.choice(OTHER)
    else:
        badges = "moderator/1"
        text = rng.choice(["!prev", "!next", "!slideshow 10", "!clear"])
    tags = (
        f"@badge-info=;badges={badges};client-nonce={i:032x};color=#1E90FF;"
        f"display-name={user.capitalize()};emotes=;first-msg=0;flags=;id=00000000-0000-0000-0000-"
        f"{i:012d};mod={int('moderator' in badges)};returning-chatter=0;room-id=12345;"
        f"subscriber={int('subscriber' in badges)};tmi-sent-ts=1700000000000;turbo=0;"
        f"user-id={abs(hash(user)) % 10**8};user-type="
    )
    return f"{tags} :{user}!{user}@{user}.tmi.twitch.tv PRIVMSG #streamer :{text}"


def _show() -> Show:
    settings = Settings()
    settings.moderation.max_queue = 50
    settings.show.min_display_seconds = 0.0  # measure routing, not the display policy
    show = Show(settings, rng_seed=1, blocklist=load_blocklist("")[0])
    for n in range(5):  # some history so !prev / !params have something to do
        show.handle(ChatMessage(Viewer(f"seed{n}"), f"!generate picture {n}", f"s{n}", 0.0))
        req = show.running
        assert req is not None
        p = req.params
        entry = Entry(
            n + 1, req.id, "seed", p.prompt, "", p.seed, 1, 0, 512, 512, 1, "m", "shown", 0
        )
        show.handle(GenerationFinished(req.id, entry, 1.0))
    return show


def _route(lines: list[str], show: Show, start: float) -> float:
    """CPU seconds to push all lines through parse -> event -> show; 1 ms of show time a line."""
    parse, to_event, handle = ircparse.parse_line, ircparse.to_event, show.handle
    t0 = time.process_time()
    now = start
    for raw in lines:
        now += 0.001
        line = parse(raw)
        if line is not None:
            event = to_event(line, now)
            if event is not None:
                handle(event)
    return time.process_time() - t0


def run(quick: bool = False) -> list[dict]:
    """Best-of-N lines/second for the whole path and for parsing alone."""
    n = 40_000 if quick else 300_000
    repeats = 3 if quick else 5
    rng = random.Random(4)
    lines = [_line(i, rng) for i in range(n)]
    full, parse_only = [], []
    for r in range(repeats):
        full.append(n / _route(lines, _show(), start=10.0 + r * 1000))
        t0 = time.process_time()
        for raw in lines:
            line = ircparse.parse_line(raw)
            if line is not None:
                ircparse.to_event(line, 0.0)
        parse_only.append(n / (time.process_time() - t0))
    return [
        {
            "name": "chat lines: parse + roles + moderation + routing",
            "lines": n,
            "lines_per_second": round(max(full)),
            "target": TARGET,
            "meets_target": max(full) >= TARGET,
        },
        {
            "name": "chat lines: IRC parse + roles only",
            "lines": n,
            "lines_per_second": round(max(parse_only)),
        },
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer lines and repeats")
    args = parser.parse_args()
    for row in run(quick=args.quick):
        extra = ""
        if "target" in row:
            met = "met" if row["meets_target"] else "NOT met"
            extra = f"  (target >= {row['target']:,}: {met})"
        print(
            f"{row['name']}: {row['lines_per_second']:,} lines/s over {row['lines']:,} lines{extra}"
        )


if __name__ == "__main__":
    main()
