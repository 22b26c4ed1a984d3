"""The benchmark report: the machine's description, the rows as one Markdown table, and
docs/benchmarks.md updated between its markers (the hand-written text stays).

A row is a dict. Rows in the common shape carry `section`, `name`, `value`, `unit`, and
optionally `target` (text), `ok` (True / False / a status text), `how` and `detail`.
Rows from the part modules that use other keys (s_per_image, lines_per_second, median_ms
...) are turned into that shape by `normalize`; unknown keys end up in the notes, so a
part that adds a key never breaks the report.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import re
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

BEGIN = "<!-- bench:begin (written by python -m bench; edits between these markers are lost) -->"
END = "<!-- bench:end -->"
COLUMNS = ("Section", "Figure", "Result", "Target", "Status", "How measured / notes")
_SKIP = {"section", "name", "value", "unit", "target", "ok", "how", "detail"}


# ---- the machine ----------------------------------------------------------------------
def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _cpu_model() -> str:
    for line in _read("/proc/cpuinfo").splitlines():
        if line.lower().startswith(("model name", "hardware", "cpu model")):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def _ram_gib() -> float:
    match = re.search(r"^MemTotal:\s+(\d+) kB", _read("/proc/meminfo"), re.M)
    if match:
        return int(match.group(1)) / 1024**2
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    except (ValueError, OSError, AttributeError):
        return float("nan")


def _os_name() -> str:
    match = re.search(r'^PRETTY_NAME="?([^"\n]+)"?', _read("/etc/os-release"), re.M)
    name = match.group(1) if match else platform.system()
    return f"{name} (kernel {platform.release()})"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _gpu() -> tuple[str, str]:
    """(GPU description, torch threads); imports torch, so a second or two."""
    try:
        import torch
    except ImportError:
        return "torch not importable", "?"
    threads = str(torch.get_num_threads())
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        return f"CUDA: {', '.join(names)} (CUDA {torch.version.cuda})", threads
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "Apple MPS (not benchmarked separately)", threads
    return "none (CPU only)", threads


def machine(with_gpu: bool = True) -> dict[str, str]:
    """What the figures were measured on."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    gpu, threads = _gpu() if with_gpu else ("not checked", "?")
    return {
        "CPU": _cpu_model(),
        "Cores": f"{os.cpu_count()} logical, {usable} usable by this process",
        "RAM": f"{_ram_gib():.1f} GiB",
        "OS": _os_name(),
        "Python": platform.python_version(),
        "torch": f"{_version('torch')} ({threads} threads)",
        "diffusers": _version("diffusers"),
        "GPU": gpu,
    }


# ---- rows -------------------------------------------------------------------------------
def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _notes(raw: dict[str, Any], used: set[str]) -> str:
    parts = []
    for k, v in raw.items():
        if k in used or k in _SKIP or v is None:
            continue
        parts.append(f"{k}={fmt_number(v) if _num(v) else v}")
    return ", ".join(parts)


def _join(*texts: str) -> str:
    return "; ".join(t for t in texts if t)


def normalize(section: str, raw: dict[str, Any]) -> list[dict[str, Any]]:
    """One part's row in whatever shape -> rows in the common shape."""
    name = str(raw.get("name", "?"))
    if "value" in raw:
        row = {k: raw.get(k) for k in _SKIP if k in raw}
        row.setdefault("section", section)
        row["detail"] = _join(str(raw.get("detail", "") or ""), _notes(raw, set()))
        return [row]
    if "s_per_image" in raw:  # bench_engine
        used = {"s_per_image", "speedup_vs_batch_1"}
        rows = [
            {
                "section": section,
                "name": f"{name}, time per image",
                "value": raw["s_per_image"],
                "unit": "s",
                "detail": _notes(raw, used),
            }
        ]
        if _num(raw.get("speedup_vs_batch_1")):
            speed = float(raw["speedup_vs_batch_1"])
            rows.append(micro_batching_row(section, name, speed))
        return rows
    if "lines_per_second" in raw:  # bench_commands
        used = {"lines_per_second", "target", "meets_target"}
        target = raw.get("target")
        return [
            {
                "section": section,
                "name": name,
                "value": raw["lines_per_second"],
                "unit": "lines/s",
                "target": f">= {fmt_number(target)} lines/s" if _num(target) else "",
                "ok": raw.get("meets_target"),
                "detail": _notes(raw, used),
            }
        ]
    if "median_ms" in raw:  # bench_obs
        label = str(raw.get("method") or name)
        used = {"median_ms", "p95_ms", "method"}
        return [
            {"section": section, "name": f"{label}, median", "value": raw["median_ms"],
             "unit": "ms", "detail": _notes(raw, used)},
            {"section": section, "name": f"{label}, p95", "value": raw.get("p95_ms"),
             "unit": "ms"},
        ]  # fmt: skip
    numbers = {k: v for k, v in raw.items() if _num(v) and k not in _SKIP}
    key = next(iter(numbers), None)
    return [
        {
            "section": section,
            "name": f"{name} ({key})" if key else name,
            "value": numbers.get(key) if key else None,
            "unit": "",
            "detail": _notes(raw, {key} if key else set()),
        }
    ]


def micro_batching_row(section: str, name: str, speedup: float) -> dict[str, Any]:
    """Issue #7: >= 1.5x where the device has spare parallelism, never slower."""
    if speedup >= 1.5:
        status: Any = True
    elif speedup >= 0.95:
        status = "not slower; < 1.5x (no spare parallelism?)"
    else:
        status = False
    return {
        "section": section,
        "name": f"{name}: images/s vs batch 1",
        "value": speedup,
        "unit": "x",
        "target": ">= 1.5x with spare parallelism; never < 1x",
        "ok": status,
        "how": "batch 1 and micro-batch runs interleaved in one process",
    }


def failed_row(section: str, part: str, reason: str) -> dict[str, Any]:
    return {
        "section": section,
        "name": f"{part}: did not finish",
        "value": None,
        "unit": "",
        "ok": False,
        "detail": reason,
    }


# ---- formatting -------------------------------------------------------------------------
def fmt_number(v: Any) -> str:
    if not _num(v):
        return str(v)
    x = float(v)
    if math.isnan(x):
        return "n/a"
    if math.isinf(x):
        return "inf"
    if isinstance(v, int) or (abs(x) >= 1000 and x == int(x)):
        return f"{int(x):,}"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    if abs(x) >= 1:
        return f"{x:.2f}"
    return f"{x:.3g}"


def fmt_value(row: dict[str, Any]) -> str:
    value = row.get("value")
    if value is None:
        return "—"
    unit = row.get("unit") or ""
    text = fmt_number(value)
    return f"{text}{unit}" if unit in ("x", "%") else f"{text} {unit}".strip()


def fmt_status(ok: Any) -> str:
    if ok is True:
        return "pass"
    if ok is False:
        return "**FAIL**"
    return str(ok) if ok else ""


def _cell(text: Any) -> str:
    return str(text or "").replace("|", "\\|").replace("\n", " ").strip()


def table(rows: list[dict[str, Any]]) -> str:
    """The rows as one Markdown table, the section named once per group."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    last = None
    for row in rows:
        section = row.get("section", "")
        cells = [
            f"**{section}**" if section != last else "",
            row.get("name", ""),
            fmt_value(row),
            row.get("target", ""),
            fmt_status(row.get("ok")),
            _join(str(row.get("how") or ""), str(row.get("detail") or "")),
        ]
        last = section
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines)


def render(rows: list[dict[str, Any]], info: dict[str, str], run: dict[str, str]) -> str:
    """The whole generated block: run facts, machine, table. Printed and written as is."""
    out = ["### Last run", ""]
    out += [f"- **{k}**: {v}" for k, v in run.items()]
    out += ["", "### Machine", ""]
    out += [f"- **{k}**: {v}" for k, v in info.items()]
    out += ["", "### Results", "", table(rows), ""]
    return "\n".join(out)


# ---- docs/benchmarks.md -------------------------------------------------------------------
def write_block(path: Path, block: str, intro: str = "") -> None:
    """Put `block` between the markers of `path`, keeping everything else as it is."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    generated = f"{BEGIN}\n{block.rstrip()}\n{END}"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        text = head + generated + tail
    else:
        text = (text or intro).rstrip() + "\n\n" + generated + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def read_block(path: Path) -> str:
    """The generated block of `path` ('' when it has none)."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    if BEGIN not in text or END not in text:
        return ""
    return text.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n")


# ---- a part run on its own ----------------------------------------------------------------
def part_main(
    run: Callable[[bool], list[dict[str, Any]]],
    doc: str | None,
    quick_help: str,
    argv: list[str] | None = None,
) -> int:
    """`python -m bench.<part> [--quick]`: run the part, print its rows (common shape)."""
    parser = argparse.ArgumentParser(description=(doc or "").partition("\n")[0])
    parser.add_argument("--quick", action="store_true", help=quick_help)
    args = parser.parse_args(argv)
    for row in run(args.quick):
        print(f"{row['name']}: {row['value']:.2f} {row['unit']}  {row.get('detail', '')}")
    return 0
