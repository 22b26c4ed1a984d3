"""What each chat command does: one function per command word (grep `def generate`, ...).

Who may use a command comes from commands.py (roles, parsing), whether a request may be
queued from moderation.py, what a flagged picture shows from approval.py. Each function
takes the show and the command's context (`show.Ctx`) and appends its effects there.
The review page's approve and reject (`approve_entry`, `reject_entry`) are here too, so
!approve and a click follow one rule.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING

from generator_host.core import approval
from generator_host.core import commands as cmds
from generator_host.core.approval import Outcome, Settlement
from generator_host.core.categories import too_close
from generator_host.core.events import Approve, Log, Reject, Settle, Status
from generator_host.core.generation import Entry, GenerationRequest
from generator_host.core.message import Role
from generator_host.core.moderation import MODE_NAMES, parse_mode

if TYPE_CHECKING:
    from generator_host.core.show import Ctx, Show

HIDDEN = "(hidden: it contains a blocked word)"


# ---- requests ---------------------------------------------------------------------------
def generate(show: Show, ctx: Ctx) -> None:
    """!generate <prompt> [### negative] [steps=N size=WxH count=N seed=N]"""
    if _refused_now(show, ctx):
        return
    parsed = cmds.parse_generate(ctx.args, show.limits)
    if isinstance(parsed, str):
        show.refuse(ctx, parsed, kind=f"usage: {show.prefix}generate <prompt> ### <negative>")
        return
    _submit(show, ctx, dataclasses.replace(parsed, seed=None), parsed.seed)


def regenerate(show: Show, ctx: Ctx) -> None:
    """!regenerate: the last requested prompt again, with a new seed."""
    if show.last is None:
        show.refuse(ctx, f"nothing to regenerate yet; try {show.prefix}generate <prompt>")
        return
    if _refused_now(show, ctx):
        return
    _submit(show, ctx, show.last, None)


def redeem(show: Show, ctx: Ctx) -> None:
    """A channel-point redemption (`ctx.redemption_id`): the viewer's text is read as
    !generate's arguments (prompt, ### negative, options) under the same rules, and any
    refusal refunds the points and says why (`Show.refuse`). Twitch tells no roles with a
    redemption: the viewer counts as everyone (so !mode subscribers refunds redemptions
    too). Paid (moderation.check_request): no cooldown or one-waiting limit, but a full
    queue refunds."""
    if show.moderator.is_ignored(ctx.viewer.login):
        ctx.out.append(Settle(ctx.redemption_id, Settlement.CANCELED.value, "ignored viewer"))
        return  # ignored viewers get no answer, as with chat commands
    if not ctx.args.strip():
        show.refuse(ctx, "your redemption had no prompt")
        return
    generate(show, ctx)


def _refused_now(show: Show, ctx: Ctx) -> bool:
    """Mode, cooldown, per-user and global limits; True when refused (and answered)."""
    mine = len(show.requests_of(ctx.viewer.login))
    refusal = show.moderator.check_request(ctx.viewer, ctx.now, mine, show.waiting, ctx.paid)
    if refusal:
        show.refuse(ctx, refusal.text, refusal.kind.value)
        return True
    return False


def _submit(show: Show, ctx: Ctx, ask: cmds.GenerateArgs, seed: int | None) -> None:
    refusal = show.moderator.check_prompt(ask.prompt)
    if refusal:
        show.refuse(ctx, refusal.text, refusal.kind.value)
        return
    if show.prompt_check:  # the safety categories score the prompt first (off the loop)
        show.check_first(ctx, ask, seed)
        return
    request = show.new_request(ctx, ask, seed)
    _queued(show, ctx, request, ask)


def prompt_checked(
    show: Show,
    ctx: Ctx,
    request: GenerationRequest,
    ask: cmds.GenerateArgs,
    scores: dict[str, float],
    error: str,
) -> None:
    """A prompt's category scores arrived (only the prompt: a negative prompt naming a
    category asks the model to avoid it). Too close: refused with the categories named,
    the same way as the blocklist's refusal; or, with [safety] prompt_action = "hold" or
    "flag", queued with the categories noted: approval.judge counts every tile flagged
    (hold holds it for review whatever the approval mode, flag lets the mode decide)."""
    if error:  # never unchecked: the request is refused, the reason goes to the log
        ctx.out.append(Log(f"the prompt check failed for @{ctx.viewer.login}: {error}"))
        text = "the safety filter could not check the prompt; try again"
        show.refuse(ctx, text)
        return
    refusal = show.moderator.check_prompt_scores(scores)
    request = dataclasses.replace(request, prompt_scores=tuple(sorted(scores.items())))
    if refusal:
        if show.settings.safety.prompt_action not in ("flag", "hold"):
            show.refuse(ctx, refusal.text, refusal.kind.value)
            return
        request = dataclasses.replace(request, prompt_flagged=too_close(scores))
    _queued(show, ctx, request, ask)


def _queued(show: Show, ctx: Ctx, request: GenerationRequest, ask: cmds.GenerateArgs) -> None:
    """Queue the request and tell the viewer where it stands."""
    starts_now = not show.running_run and not show.screen.deck and not show.queue
    show.enqueue(request, ask)
    if starts_now:  # a short "it is coming", only while the send budget is quiet
        show.say(ctx, f"starting now, about {show.eta(1, ctx.now):.0f} s", courtesy=True)
        return
    position = show.queue.position(request.id)
    show.say(ctx, f"queued #{position}, about {show.eta(position, ctx.now):.0f} s")


def queue(show: Show, ctx: Ctx) -> None:
    """!queue: your position and the estimated wait."""
    login = ctx.viewer.login
    if any(r.requester.login == login for r in show.running_run):
        show.say(ctx, f"yours is generating now; {show.queued} waiting")
        return
    order = show.queue.order()
    for position, req in enumerate(order, 1):
        if req.requester.login == login:
            wait = show.eta(position, ctx.now)
            show.say(ctx, f"you are #{position} of {len(order)}, about {wait:.0f} s")
            return
    deck = show.screen.deck_wait(login, ctx.now)
    if deck is not None:
        show.say(ctx, f"yours is ready and goes on screen in about {deck:.0f} s")
        return
    wait = show.eta(len(order) + 1, ctx.now)
    show.say(ctx, f"{len(order)} waiting; a new request would take about {wait:.0f} s")


def cancel(show: Show, ctx: Ctx) -> None:
    """!cancel: drop your own request (queued or running); moderators: !cancel @user."""
    target = cmds.parse_login(ctx.args) if ctx.args else ctx.viewer.login
    if target != ctx.viewer.login and ctx.viewer.role < Role.MODERATOR:
        show.refuse(ctx, "you can only cancel your own request")
        return
    line = show.queue.line(target)
    if line and target == ctx.viewer.login:
        newest = line[-1]
        show.drop(lambda r: r.id == newest.id, ctx.out, now=ctx.now)
    elif not show.drop(lambda r: r.requester.login == target, ctx.out, now=ctx.now):
        show.say(ctx, "there is no request to cancel")
        return
    show.say(ctx, "cancelled")


# ---- the screen -------------------------------------------------------------------------
def clear(show: Show, ctx: Ctx) -> None:
    """!clear: wipe the screen and stop the slideshow (the setting too, so every view
    shows it off)."""
    show.screen.clear(ctx.now, ctx.out)
    show.change_setting(ctx, "show.slideshow_seconds", 0.0)


def prev(show: Show, ctx: Ctx) -> None:
    """!prev: the image before the one on screen."""
    why_not = show.screen.prev(ctx.now, ctx.out)
    if why_not:
        show.say(ctx, why_not)


def next(show: Show, ctx: Ctx) -> None:  # noqa: A001 - the command's word
    """!next: the image after the one on screen."""
    why_not = show.screen.next(ctx.now, ctx.out)
    if why_not:
        show.say(ctx, why_not)


def slideshow(show: Show, ctx: Ctx) -> None:
    """!slideshow [seconds|off]: cycle through the history; no argument toggles."""
    value = cmds.parse_slideshow(ctx.args, show.prefix)
    if isinstance(value, str):
        show.refuse(ctx, value)
        return
    if value is None:
        on = show.screen.slideshow > 0
        value = 0.0 if on else (show.settings.show.slideshow_seconds or 15.0)
    refused = show.change_setting(ctx, "show.slideshow_seconds", value)
    if refused:
        show.refuse(ctx, refused)
        return
    show.screen.set_slideshow(value, ctx.now)
    show.say(ctx, f"slideshow every {value:g} s" if value else "slideshow off")


def terminate(show: Show, ctx: Ctx) -> None:
    """!terminate: tell OBS, cancel the running job (kept for the next start), exit 0."""
    ctx.out.append(Status(f"stopped by {ctx.viewer.name}"))
    show.screen.blank(ctx.out)
    show.replies.send(ctx.out, ctx.now, "Chat Diffusion is stopping. Bye!", "", ctx.msg_id)
    show.terminate(ctx.out)


# ---- approval ---------------------------------------------------------------------------
def approve(show: Show, ctx: Ctx) -> None:
    """!approve: the held or blurred picture on screen (else the newest held) unfiltered."""
    entry = show.screen.on_screen()
    if entry is None or Outcome(entry.outcome) not in (Outcome.HELD, Outcome.BLURRED):
        held = [e for e in show.screen.history if e.outcome == Outcome.HELD]
        entry = held[-1] if held else None
    if entry is None:
        show.say(ctx, "nothing is waiting for approval")
        return
    _approve(show, ctx, entry, None)


def approve_entry(show: Show, ctx: Ctx, entry_id: int, tile: int | None, by: str) -> None:
    """The review page approves a picture or one of its tiles (0-based)."""
    entry = _find(show, entry_id)
    if entry is None:
        show.say(ctx, f"picture {entry_id} is no longer in the history")
        return
    if _approve(show, ctx, entry, tile):
        which = f"tile {tile + 1} of picture" if tile is not None else "picture"
        ctx.out.append(Log(f"{by} approved {which} {entry_id} by @{entry.requester}"))


def _approve(show: Show, ctx: Ctx, entry: Entry, tile: int | None) -> bool:
    decision = approval.approve(entry, tile)
    if decision.refusal:
        show.say(ctx, decision.refusal)
        return False
    entry = dataclasses.replace(entry, outcome=decision.outcome.value, approved=decision.approved)
    ctx.out.append(Approve(entry.id, decision.outcome.value, decision.approved))
    index = show.screen.replace(entry)
    if index is None:  # a skipped picture, approved from the review page: on screen now
        _, msg_id = show.withheld.pop(entry.id, (None, ""))
        show.screen.history.append(entry)
        if msg_id:
            show.screen.entry_msg[entry.id] = msg_id
        index = len(show.screen.history) - 1
    show.screen.show(index, ctx.now, ctx.out)
    return True


def reject_entry(show: Show, ctx: Ctx, entry_id: int, by: str) -> None:
    """The review page rejects a flagged picture: off screen and out of the history, its
    held files deleted, the requester told."""
    entry = _find(show, entry_id)
    if entry is None:
        show.say(ctx, f"picture {entry_id} is no longer in the history")
        return
    decision = approval.reject(entry)
    if decision.refusal:
        show.say(ctx, decision.refusal)
        return
    ctx.out.append(Reject(entry.id))
    show.refund(ctx.out, ctx.now, entry, approval.rejected_text(entry))
    show.screen.forget(entry.id, ctx.out)
    show.withheld.pop(entry.id, None)
    ctx.out.append(Log(f"{by} rejected picture {entry.id} by @{entry.requester}"))
    show.say(ctx, f"picture {entry.id} rejected")


def _find(show: Show, entry_id: int) -> Entry | None:
    found = show.screen.entry(entry_id)
    if found is None and entry_id in show.withheld:
        found = show.withheld[entry_id][0]
    return found


# ---- about the picture on screen ---------------------------------------------------------
def _described(show: Show, ctx: Ctx) -> Entry | None:
    entry = show.screen.on_screen()
    if entry is None:
        show.say(ctx, "nothing is on screen")
    return entry


def params(show: Show, ctx: Ctx) -> None:
    """!params: everything needed to make the image on screen again; moderators (and the
    broadcaster) also get the host's peak memory (what the model leaves free on their PC)
    and the picture's safety scores (the checker's and each category's, positive = past
    the line). Memory first: it is short, the scores may reach the line's length cap."""
    entry = _described(show, ctx)
    if entry:
        size = f"{entry.width}x{entry.height}"
        text = (
            f"by @{entry.requester}: seed {entry.seed}, {entry.steps} steps, "
            f"guidance {entry.guidance:g}, {size}, {entry.count} image(s), model {entry.model}"
        )
        if show.memory and ctx.viewer.role >= Role.MODERATOR:
            text += f"; host {show.memory}"
        show.say(ctx, text + _safety_for(ctx, entry))


def _safety_for(ctx: Ctx, entry: Entry) -> str:
    """The safety scores, for moderators and up only (core/generation.py safety_line)."""
    if not entry.safety or ctx.viewer.role < Role.MODERATOR:
        return ""
    return f"; safety {entry.safety}"


def seed(show: Show, ctx: Ctx) -> None:
    """!seed: the seed of the image on screen."""
    entry = _described(show, ctx)
    if entry:
        show.say(ctx, f"seed {entry.seed} (use seed={entry.seed} in {show.prefix}generate)")


def prompt(show: Show, ctx: Ctx) -> None:
    """!prompt: the prompt (and the viewer's negative prompt) of the image on screen.

    Never repeats blocked text: a part with a blocked word is replaced by a note, and the
    streamer's forced negative prompt is left out (it is the streamer's, not the viewer's).
    """
    entry = _described(show, ctx)
    if not entry:
        return
    blocked = show.moderator.blocklist.match
    negative = entry.negative_prompt
    forced = show.settings.moderation.forced_negative_prompt.strip()
    if forced and negative.endswith(forced):
        negative = negative[: -len(forced)].rstrip(", ")
    text = HIDDEN if blocked(entry.prompt) else entry.prompt
    if negative:
        text += f" ### {HIDDEN if blocked(negative) else negative}"
    show.say(ctx, f"@{entry.requester}: {text}")


def help(show: Show, ctx: Ctx) -> None:  # noqa: A001 - the command's word
    """!help: the commands this viewer may use."""
    p = show.prefix
    usable = [n for n in cmds.COMMANDS if ctx.viewer.role >= show.roles.get(n, Role.EVERYONE)]
    names = " ".join(p + n for n in usable if n != "generate")
    show.say(ctx, f"{p}generate <prompt> ### <negative prompt>; also {names}")


# ---- moderation -------------------------------------------------------------------------
def mode(show: Show, ctx: Ctx) -> None:
    """!mode [everyone|subscribers|moderators]: who may request images."""
    if not ctx.args:
        who = MODE_NAMES.get(show.moderator.mode, "everyone")
        show.say(ctx, f"requests are open to {who}")
        return
    role = parse_mode(ctx.args.split()[0])
    if role is None:
        show.refuse(ctx, f"use {show.prefix}mode everyone, subscribers or moderators")
        return
    show.moderator.mode = role
    show.say(ctx, f"requests are now open to {MODE_NAMES[role]}")


def ignore(show: Show, ctx: Ctx) -> None:
    """!ignore @user: the show no longer answers them; their queued requests go."""
    login = cmds.parse_login(ctx.args)
    if not login:
        show.refuse(ctx, f"use {show.prefix}ignore @user")
        return
    show.moderator.ignore(login, True)
    show.drop(lambda r: r.requester.login == login, ctx.out, running=False, now=ctx.now)
    show.say(ctx, f"ignoring @{login}")


def unignore(show: Show, ctx: Ctx) -> None:
    """!unignore @user"""
    login = cmds.parse_login(ctx.args)
    if not login:
        show.refuse(ctx, f"use {show.prefix}unignore @user")
        return
    show.moderator.ignore(login, False)
    show.say(ctx, f"no longer ignoring @{login}")


HANDLERS: dict[str, Callable[[Show, Ctx], None]] = {name: globals()[name] for name in cmds.COMMANDS}
