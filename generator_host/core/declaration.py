"""How a setting is declared: `setting(...)` makes a dataclass field that carries its
range or choices, one line of help and who may change it live; `Declared` reads one back
and checks values against it. The settings themselves are in core/settings.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

ROLES = ("everyone", "subscriber", "vip", "moderator", "broadcaster")  # lowest first

# --- the declaration ----------------------------------------------------------------------

VIEWS = {"obs": "OBS panel", "review": "review page", "chat": "chat"}  # where changes come from


@dataclass(frozen=True)
class Live:
    """Who may change a setting while the host runs (the config file always may).

    `obs`: the OBS script's panel (the streamer's). `review`: the lowest role that may
    change it on the review page ("broadcaster" or "moderator"; "" = not there), and with
    a chat command that sets it (`!slideshow`): the same people, the same rule.
    """

    obs: bool = False
    review: str = ""

    def allows(self, view: str, role: str = "broadcaster") -> bool:
        if view == "obs":
            return self.obs
        if view in ("review", "chat") and self.review:
            return ROLES.index(role) >= ROLES.index(self.review) if role in ROLES else False
        return False

    def describe(self) -> str:
        where = ["OBS panel"] if self.obs else []
        if self.review:
            where.append(
                f"review page ({self.review}{'s' if self.review != 'broadcaster' else ''})"
            )
        return ", ".join(where) or "config only"


CONFIG_ONLY = Live()
PANEL = Live(obs=True, review="broadcaster")  # the streamer's own choices
PANEL_AND_MODS = Live(obs=True, review="moderator")  # what moderators run the show with


@dataclass(frozen=True)
class Spec:
    """What a declaration says besides type and default (see `setting`)."""

    help: str
    label: str = ""
    lo: float | None = None
    hi: float | None = None
    off: Any = None
    choices: dict[Any, str] = field(default_factory=dict)
    step: float | None = None
    live: Live = CONFIG_ONLY
    rule: Callable[[Any], bool] | None = None
    rule_text: str = ""
    secret: bool = False
    problems: Callable[[Any], list[str]] | None = None
    example: str = ""


def setting(
    default: Any,
    help: str,
    *,
    label: str = "",
    range: tuple[float, float] | None = None,
    off: Any = None,
    choices: tuple[Any, ...] | dict[Any, str] = (),
    step: float | None = None,
    live: Live = CONFIG_ONLY,
    rule: Callable[[Any], bool] | None = None,
    rule_text: str = "",
    secret: bool = False,
    problems: Callable[[Any], list[str]] | None = None,
    example: str = "",
) -> Any:
    """Declare one setting as a dataclass field.

    `range`: inclusive bounds; `off`: one more accepted value outside them that turns the
    feature off (slideshow 0); `choices`: the allowed values (a dict gives each a label
    for panels); `step`: a panel's increment; `label`: a panel's label (default: the key);
    `rule`/`rule_text`: a check ranges cannot say; `secret`: never in a repr or a log.
    A table of tables (a `dict` setting, e.g. [safety.categories.NAME]) names the module
    that checks its contents with `problems` (reported, the good parts kept) and shows
    `example` (TOML) in the template.
    """
    spec = Spec(
        help=help,
        label=label,
        lo=None if range is None else range[0],
        hi=None if range is None else range[1],
        off=off,
        choices=dict(choices) if isinstance(choices, dict) else {c: str(c) for c in choices},
        step=step,
        live=live,
        rule=rule,
        rule_text=rule_text,
        secret=secret,
        problems=problems,
        example=example,
    )
    meta = {"setting": spec}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta, repr=not secret)
    return field(default=default, metadata=meta, repr=not secret)


def _number(value: float) -> str:
    return f"{value:g}"


@dataclass(frozen=True)
class Declared:
    """One setting as declared: where it lives, its type and default, and its Spec."""

    section: str
    key: str
    type: Any
    default: Any
    spec: Spec

    @property
    def name(self) -> str:
        return f"{self.section}.{self.key}"

    @property
    def kind(self) -> str:
        """bool | int | float | str | list | choice: how panels and the docs show it."""
        if self.spec.choices:
            return "choice"
        if self.type in (bool, int, float, str):
            return self.type.__name__
        return "table" if getattr(self.type, "__origin__", None) is dict else "list"

    def allowed(self) -> str:
        """The allowed values in words, as messages and the docs say them."""
        s = self.spec
        if s.choices:
            return "one of " + ", ".join(str(c) for c in s.choices)
        if s.rule_text:
            return s.rule_text
        if s.lo is not None and s.hi is not None:
            span = f"{_number(s.lo)} to {_number(s.hi)}"
            return span if s.off is None else f"{_number(s.off)} (off) or {span}"
        if self.kind == "table":
            return f"[{self.section}.{self.key}.NAME] tables"
        return {
            bool: "true or false",
            int: "a whole number",
            float: "a number",
            str: "text",
        }.get(self.type, "a list of texts")

    def check(self, value: Any) -> tuple[Any, str]:
        """`value` as this setting's type, or (None, what is wrong) - one check for all.

        The loader, the OBS panel's changes and the review page's all come through here.
        """
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if self.type is bool:
            ok = isinstance(value, bool)
        elif self.type is int:
            ok = number and isinstance(value, int)
        elif self.type is float:
            ok = number and math.isfinite(value)
            value = float(value) if ok else value
        elif self.type is str:
            ok = isinstance(value, str)
        elif self.kind == "table":
            ok = isinstance(value, dict)
            value = dict(value) if ok else value
        else:
            ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
            value = list(value) if ok else value
        if ok:
            s = self.spec
            if s.choices:
                ok = value in s.choices
            elif s.off is not None and value == s.off:
                ok = True
            elif s.lo is not None and s.hi is not None:
                ok = s.lo <= value <= s.hi
            if ok and s.rule is not None:
                ok = s.rule(value)
        if not ok:
            return None, f"must be {self.allowed()}"
        return value, ""

    def panel(self) -> dict[str, Any]:
        """What a panel needs to draw this setting (sent in the live-settings message)."""
        s = self.spec
        lo = s.lo if s.off is None or s.lo is None else min(s.lo, s.off)
        return {
            "key": self.name,
            "kind": self.kind,
            "label": s.label or self.key.replace("_", " "),
            "help": s.help,
            "lo": lo,
            "hi": s.hi,
            "step": s.step,
            "choices": [[value, label] for value, label in s.choices.items()],
        }
