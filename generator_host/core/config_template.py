"""The commented config file `generator-host init` writes, generated from the declarations.

Every key with its help line, its allowed values and its default, section by section, so
the template can never miss or misdescribe a setting (core/settings.py is the one source).
"""

from __future__ import annotations

import json
import textwrap
from typing import Any

from generator_host.core.settings import declarations, section_help

WIDTH = 92

HEADER = """\
# Chat Diffusion generator host configuration.
# Every key is optional; a missing key keeps its default. Start with:
#   generator-host run            (uses this file)
#   generator-host run --help
# Settings marked "live" can also be changed while the host runs (OBS panel, review page);
# the host owns the live values: this file gives the values it starts with.
"""


def toml_value(value: Any) -> str:
    """A default as TOML writes it (strings and lists of strings are JSON-compatible)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(value, ensure_ascii=False)


def _comment(text: str) -> list[str]:
    return textwrap.wrap(text, WIDTH - 2, initial_indent="# ", subsequent_indent="# ")


def render() -> str:
    """The whole template."""
    lines = [HEADER.rstrip("\n")]
    sections: dict[str, list[Any]] = {}
    for decl in declarations():
        sections.setdefault(decl.section, []).append(decl)
    for section, decls in sections.items():
        lines += ["", *_comment(section_help(section)), f"[{section}]"]
        tables = [d for d in decls if d.kind == "table"]  # TOML: after the plain keys
        for decl in [d for d in decls if d.kind != "table"] + tables:
            note = decl.spec.help
            if decl.spec.lo is not None or decl.spec.choices or decl.spec.rule_text:
                note += f" Allowed: {decl.allowed()}."
            if decl.spec.live.obs or decl.spec.live.review:
                note += f" Live: {decl.spec.live.describe()}."
            if decl.kind == "table":
                lines += ["", *_comment(note), decl.spec.example]
            else:
                lines += [*_comment(note), f"{decl.key} = {toml_value(decl.default)}"]
    return "\n".join(lines) + "\n"


TEMPLATE = render()
