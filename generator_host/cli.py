"""`generator-host`: the command line. Subcommands: demo, run, init, login, logout,
mods, safety-eval.

Heavy imports (torch, diffusers) happen inside the subcommands, so `--help` is instant.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Any

from generator_host import __version__
from generator_host.core.settings import (
    APPROVAL_MODES,
    GRIDS,
    Settings,
    data_dir,
    default_config_path,
    load_settings,
)
from generator_host.exit_codes import (
    EXIT_ENGINE,
    EXIT_INTERRUPTED,
    EXIT_LOGIN,
    EXIT_OK,
    EXIT_USAGE,
)

log = logging.getLogger("generator_host")

__all__ = ["EXIT_ENGINE", "EXIT_LOGIN", "EXIT_OK", "EXIT_USAGE", "build_parser", "main"]


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", type=Path, help="where the gallery, state and link token live")
    p.add_argument("--link-port", type=int, help="port for the OBS script (default from config)")
    p.add_argument("--review-port", type=int, help="port of the review page (default from config)")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="generator-host",
        description="Chat Diffusion's generator host: Twitch chat paints live in OBS.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        help="try it now: a tiny built-in model, commands typed in this terminal",
        description=(
            "Run the host with no configuration, no Twitch account, no GPU and no download: "
            "a tiny random-weight Stable Diffusion model is built once into the cache folder. "
            "Type chat commands such as '!generate a red fox' as the broadcaster; images go "
            "to the gallery folder and to OBS when the script is connected. End with Ctrl-C "
            "or !terminate; at end of input the host finishes its queue and exits."
        ),
    )
    _common(demo)
    demo.add_argument("--grid", type=int, choices=list(GRIDS), help="images per request")
    demo.add_argument(
        "--approval-mode",
        choices=list(APPROVAL_MODES),
        help="what a flagged picture shows (default blur); try it with !generate a red fox seed=13",
    )

    run = sub.add_parser(
        "run",
        help="the real thing: Twitch chat and the configured model",
        description=(
            "Connect to Twitch chat and generate with the configured model. Settings come "
            f"from the config file (default {default_config_path()}); write a commented one "
            "with 'generator-host init'. Twitch: the login stored by 'generator-host login', "
            "or a pasted token (the environment variable CHAT_DIFFUSION_TWITCH_TOKEN)."
        ),
    )
    _common(run)
    run.add_argument("--config", type=Path, default=None, help="config file to read")

    init = sub.add_parser(
        "init",
        help="write a commented config file template",
        description="Write a commented config template (readable by you alone).",
    )
    init.add_argument("--config", type=Path, default=None, help="where to write it")
    init.add_argument("--force", action="store_true", help="overwrite an existing file")

    for name, verb in (("login", "log in"), ("logout", "log out")):
        account = sub.add_parser(
            name,
            help=f"{verb} a Twitch account (the broadcaster, or --bot)",
            description=(
                "Log in with Twitch's device code: open the printed address, enter the code, "
                "and the host keeps the login (validated and refreshed by itself) in its data "
                "folder, readable by you alone. Needs [twitch] client_id (docs/twitch.md)."
                if name == "login"
                else "Revoke the stored Twitch login at Twitch and delete it."
            ),
        )
        account.add_argument("--bot", action="store_true", help="the bot account for chat")
        account.add_argument("--config", type=Path, default=None, help="config file to read")
        account.add_argument("--data-dir", type=Path, help="where the login is stored")
        if name == "login":
            account.add_argument("--no-browser", action="store_true", help="only print the link")

    mods = sub.add_parser(
        "mods",
        help="moderators' personal links to the review page (add, list, remove)",
        description=(
            "Give a moderator a personal link to the private review page (docs/review.md). "
            "'add NAME' prints the link once (a new one replaces the old); 'remove NAME' "
            "stops it at once, and closes their open page."
        ),
    )
    mods.add_argument("action", choices=["add", "list", "remove"])
    mods.add_argument("name", nargs="?", default="", help="the moderator's name (add, remove)")
    mods.add_argument("--data-dir", type=Path, help="the host's data folder")
    mods.add_argument("--config", type=Path, default=None, help="config file ([review] address)")

    from generator_host.tools import safety_eval  # its own module: heavy imports stay lazy there

    safety_eval.add_parser(sub)
    return parser


def _console_never_raises() -> None:
    """Chat text (emoji, any script) must never break a print or a log line.

    A Windows console redirected to a file or pipe encodes with the ANSI code page
    (cp1252), which has no emoji: a prompt like "a fox 🦊" would raise UnicodeEncodeError
    in print() and "--- Logging error ---" in logging. Unencodable characters are
    written as \\U escapes instead.
    """
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            with contextlib.suppress(ValueError, OSError):
                reconfigure(errors="backslashreplace")


def _setup_logging(level: str) -> None:
    _console_never_raises()
    # transformers and diffusers speak through their own loggers; keep their chatter
    # (e.g. "torchvision not installed" notes) out of the streamer's terminal.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    logging.basicConfig(
        level=getattr(logging, level),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # httpx2/httpcore2: huggingface_hub's HTTP client would log every request at INFO.
    for noisy in ("websockets", "httpx", "httpx2", "httpcore2", "urllib3", "PIL", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, getattr(logging, level)))


def cmd_init(args: argparse.Namespace) -> int:
    from generator_host.core.config_template import TEMPLATE
    from generator_host.edges.files import write_private

    path: Path = args.config or default_config_path()
    if path.exists() and not args.force:
        print(f"{path} already exists; use --force to overwrite it.")
        return EXIT_OK
    write_private(path, TEMPLATE)
    print(f"Wrote {path}\nEdit [twitch] channel, then run: generator-host run")
    return EXIT_OK


def _apply_common(args: argparse.Namespace, settings: Settings) -> Path:
    if args.link_port is not None:
        settings.link.port = args.link_port
    if args.review_port is not None:
        settings.review.port = args.review_port
    return args.data_dir or data_dir()


def cmd_demo(args: argparse.Namespace) -> int:
    from generator_host.app import run_demo

    settings = Settings()
    home = _apply_common(args, settings) / "demo"
    if args.grid:
        settings.show.grid = args.grid
    if args.approval_mode:
        settings.safety.approval_mode = args.approval_mode
    return run_demo(settings, home)


def cmd_run(args: argparse.Namespace) -> int:
    path: Path = args.config or default_config_path()
    print(f"Config file: {path}" + ("" if path.exists() else " (not found; using defaults)"))
    settings, problems = load_settings(path)
    for problem in problems:
        log.warning("config: %s", problem)
    home = _apply_common(args, settings)
    if not settings.twitch.channel:
        print(
            f"No Twitch channel configured. Run 'generator-host init', set [twitch] channel "
            f"in {path}, and run 'generator-host login' (or set CHAT_DIFFUSION_TWITCH_TOKEN).",
            file=sys.stderr,
        )
        return EXIT_USAGE
    from generator_host.edges.twitch.auth import stored_chat_login

    if not settings.twitch.token and stored_chat_login(home) is None:
        print(
            "No Twitch login: run 'generator-host login' (needs [twitch] client_id), or set "
            f"the environment variable CHAT_DIFFUSION_TWITCH_TOKEN or [twitch] token in {path}.",
            file=sys.stderr,
        )
        return EXIT_USAGE
    from generator_host.app import run_twitch

    return run_twitch(settings, home, path)


def _id_client(args: argparse.Namespace) -> tuple[Any, Settings] | None:
    from generator_host.edges.twitch.auth import IdClient

    path: Path = args.config or default_config_path()
    settings, problems = load_settings(path)
    for problem in problems:
        log.warning("config: %s", problem)
    if not settings.twitch.client_id.strip():
        print(
            f"No Twitch Client ID: register an application at dev.twitch.tv (client type "
            f"Public; docs/twitch.md) and set [twitch] client_id in {path}.",
            file=sys.stderr,
        )
        return None
    return IdClient(settings.twitch.client_id.strip(), settings.twitch.id_url), settings


def cmd_login(args: argparse.Namespace) -> int:
    from generator_host.edges.twitch import auth

    made = _id_client(args)
    if made is None:
        return EXIT_USAGE
    client, settings = made
    account = "bot" if args.bot else "broadcaster"
    path = auth.token_path(args.data_dir or data_dir(), account)
    try:
        tokens = auth.device_login(
            client,
            auth.scopes_for(account, channel_points=settings.channel_points.enabled),
            account=account,
            out=sys.stdout,
            open_browser=not args.no_browser,
        )
    except auth.AuthError as exc:
        print(f"Twitch login failed: {exc}", file=sys.stderr)
        return EXIT_LOGIN
    except KeyboardInterrupt:
        print("Login cancelled.", file=sys.stderr)
        return EXIT_LOGIN
    auth.save_tokens(path, tokens)
    print(
        f"Logged in as {tokens.login or '?'} ({account}); saved to {path} (readable by you alone)."
    )
    if settings.twitch.token:
        print("Note: a pasted token ([twitch] token or CHAT_DIFFUSION_TWITCH_TOKEN) is set and "
              "wins over this login; remove it to use the login.")  # fmt: skip
    return EXIT_OK


def cmd_logout(args: argparse.Namespace) -> int:
    from generator_host.edges.twitch import auth

    made = _id_client(args)
    if made is None:
        return EXIT_USAGE
    account = "bot" if args.bot else "broadcaster"
    print(auth.logout(made[0], args.data_dir or data_dir(), account))
    return EXIT_OK


def cmd_mods(args: argparse.Namespace) -> int:
    from generator_host.edges.review.auth import ModStore
    from generator_host.edges.review.server import page_url

    folder: Path = args.data_dir or data_dir()
    store = ModStore(folder)
    if args.action == "list":
        names = store.names()
        print(
            "\n".join(names)
            if names
            else "No moderator links. Add one: generator-host mods add NAME"
        )
        return EXIT_OK
    if not args.name:
        print(f"Name the moderator: generator-host mods {args.action} NAME", file=sys.stderr)
        return EXIT_USAGE
    if args.action == "remove":
        if not store.remove(args.name):
            print(f"No moderator named {args.name!r} (see: generator-host mods list)")
            return EXIT_USAGE
        print(f"Removed {args.name}: their link stops working now.")
        return EXIT_OK
    settings, problems = load_settings(args.config or default_config_path())
    for problem in problems:
        log.warning("config: %s", problem)
    try:
        secret = store.add(args.name)
    except ValueError as exc:
        print(f"Cannot add {args.name!r}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"Review link for {args.name} (send it privately; it works until 'mods remove'):")
    print(page_url(settings.review, settings.review.port, secret))
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    _setup_logging(getattr(args, "log_level", "INFO"))
    handlers = {
        "demo": cmd_demo,
        "run": cmd_run,
        "init": cmd_init,
        "login": cmd_login,
        "logout": cmd_logout,
        "mods": cmd_mods,
    }
    try:
        if args.command in handlers:
            return handlers[args.command](args)
        from generator_host.tools import safety_eval

        settings, problems = load_settings(getattr(args, "config", None) or default_config_path())
        for problem in problems:
            log.warning("config: %s", problem)
        return safety_eval.main(args, settings)
    except KeyboardInterrupt:  # Ctrl-C anywhere else (while torch imports, say): one line
        print("\nInterrupted.", file=sys.stderr)
        return EXIT_INTERRUPTED
