#!/usr/bin/env python3
"""Install Chat Diffusion: a virtual environment with the right PyTorch, the host, and
websocket-client for the Python that OBS Studio uses.

Runs with any Python >= 3.10 on Linux, macOS and Windows, standard library only:

    python3 install/install.py            # the host, in <repo>/.venv
    python3 install/install.py --dev      # + what the tests need
    python3 install/install.py --dry-run  # print the plan, change nothing

A second run with the same options compares a stamp in the venv (a hash of pyproject.toml,
the PyTorch variant and the options) and checks that the packages import; when both hold
it changes nothing and takes a few seconds. See docs/install.md.

The decisions (which PyTorch, which index, which Python OBS uses, what to do about it) are
pure functions below, so they are unit-tested for all three systems on any machine.
"""

from __future__ import annotations

import argparse
import configparser
import dataclasses
import hashlib
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path, PurePath, PurePosixPath, PureWindowsPath
from urllib.parse import urlparse

if sys.version_info < (3, 10):  # noqa: UP036 - this file runs under any python3
    sys.exit(f"Chat Diffusion needs Python 3.10 or newer; this is {sys.version.split()[0]}.")

INSTALLER_VERSION = 1  # bump when the install recipe changes: old stamps stop matching
TORCH_VERSION = "2.13.0"  # the build every variant pins (the CPU one lies on CI's disk)
# PyTorch's CUDA wheel index for Windows (Linux's PyPI wheels already carry CUDA).
# CUDA 12.8 runs on every driver >= 570 and covers GTX 10xx up to RTX 50xx.
CUDA_INDEX = "https://download.pytorch.org/whl/cu128"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
STAMP_NAME = "chat-diffusion-install.json"
APP_NAME = "chat-diffusion"  # as generator_host.core.settings.APP_NAME
# OBS 30+ loads Python 3.6 .. 3.12 on Windows and macOS (newer OBS releases may go
# higher); the OBS script needs 3.9+.
OBS_PYTHON_RECOMMENDED = "3.11 or 3.12 (64-bit, from python.org)"
OBS_PYTHON_MIN = (3, 9)
OBS_PYTHON_CHECK = (
    "import sys; print('%d.%d' % sys.version_info[:2]); import websocket; "
    "websocket.create_connection"
)


# --------------------------------------------------------------------------- decisions


@dataclasses.dataclass(frozen=True)
class TorchChoice:
    variant: str  # "cuda" | "cpu" | "mps"
    requirement: str  # what pip is asked for, e.g. "torch==2.13.0"
    index_url: str | None  # None: pip's own indexes (PyPI and whatever pip.conf adds)
    fallback_to_default_index: bool  # index unreachable: ask pip's own indexes instead
    reason: str

    def describe(self) -> str:
        where = self.index_url or "PyPI (pip's configured indexes)"
        return f"{self.requirement} [{self.variant}] from {where}"


def choose_torch(system: str, machine: str, has_nvidia: bool, force_cpu: bool) -> TorchChoice:
    """Which PyTorch build to install. `system` as platform.system() says it."""
    pin = f"torch=={TORCH_VERSION}"
    arch = machine.lower()
    if system == "Darwin":
        if arch in ("x86_64", "amd64", "i386"):
            return TorchChoice(
                "cpu",
                "torch>=2.1",
                None,
                False,
                "Intel Mac: PyTorch publishes no current build for it; the newest one PyPI "
                "has is taken (CPU only, slow)",
            )
        variant = "cpu" if force_cpu else "mps"
        return TorchChoice(
            variant,
            pin,
            None,
            False,
            "macOS: PyPI's build runs on the Apple GPU (MPS) and the CPU"
            + (' (--cpu: set [model] device = "cpu" in the config)' if force_cpu else ""),
        )
    if system == "Windows":
        if has_nvidia and not force_cpu:
            return TorchChoice(
                "cuda",
                pin,
                CUDA_INDEX,
                False,
                "NVIDIA GPU found: PyTorch's CUDA 12.8 build (PyPI's Windows build is CPU only)",
            )
        why = "--cpu given" if force_cpu else "no NVIDIA GPU found"
        return TorchChoice("cpu", pin, None, False, f"{why}: PyPI's Windows build (CPU)")
    if system == "Linux":
        if has_nvidia and not force_cpu:
            return TorchChoice(
                "cuda", pin, None, False, "NVIDIA GPU found: PyPI's Linux build (ships CUDA)"
            )
        why = "--cpu given" if force_cpu else "no NVIDIA GPU found"
        return TorchChoice(
            "cpu",
            pin,
            CPU_INDEX,
            True,
            f"{why}: PyTorch's CPU build (PyPI's Linux build carries GBs of CUDA)",
        )
    return TorchChoice("cpu", pin, None, False, f"{system}: PyPI's build, CPU")


def torch_action(installed: str | None, choice: TorchChoice) -> str:
    """What to do with the torch already in the venv: "install" | "keep" | "replace".

    "replace" (uninstall, then install) where pip alone would say "already satisfied"
    although the build is the wrong kind: a CPU build where a GPU is now found, or a
    CUDA-index build where --cpu is now asked for.
    """
    if not installed:
        return "install"
    public, _, local = installed.partition("+")
    pinned = choice.requirement.startswith("torch==")
    if pinned and public != choice.requirement[len("torch==") :]:
        return "install"  # pip swaps the version itself
    if choice.variant == "cuda" and local == "cpu":
        return "replace"
    if choice.variant == "cpu" and local.startswith(("cu", "rocm")):
        return "replace"
    return "keep"


def stamp_key(pyproject: bytes, choice: TorchChoice, dev: bool, light: bool) -> str:
    """What the venv's content depends on; equal keys mean nothing to do."""
    h = hashlib.sha256()
    h.update(f"installer {INSTALLER_VERSION}\n".encode())
    h.update(pyproject)
    h.update(f"\n{choice.variant}|{choice.requirement}|{choice.index_url}|".encode())
    h.update(f"dev={dev}|light={light}".encode())
    return h.hexdigest()


def stamp_accepts(
    recorded: str | None, pyproject: bytes, choice: TorchChoice, dev: bool, light: bool
) -> bool:
    """Does the venv's stamp cover this run? A venv installed with --dev serves a run
    without it (the extra packages do no harm)."""
    wanted = {stamp_key(pyproject, choice, dev, light)}
    if not dev:
        wanted.add(stamp_key(pyproject, choice, True, light))
    return recorded in wanted


def parse_obs_global_ini(text: str) -> str | None:
    """The Python folder OBS is set to: [Python] Path64bit (Path32bit on 32-bit builds).

    OBS writes its ini files with a UTF-8 BOM on Windows; keys are case-sensitive.
    Returns None when the section or key is missing or empty, or the file is unreadable.
    """
    parser = configparser.ConfigParser(
        interpolation=None, strict=False, allow_no_value=True, delimiters=("=",)
    )
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    try:
        parser.read_string(text.lstrip("\ufeff"))
    except configparser.Error:
        return None
    if not parser.has_section("Python"):
        return None
    for key in ("Path64bit", "Path32bit"):
        value = parser.get("Python", key, fallback=None)
        if value and value.strip():
            return value.strip().strip('"')
    return None


def _pure_path(system: str, *parts: str) -> PurePath:
    return PureWindowsPath(*parts) if system == "Windows" else PurePosixPath(*parts)


def obs_config_dirs(system: str, env: Mapping[str, str], home: str) -> list[str]:
    """Where OBS Studio keeps global.ini / user.ini."""
    if system == "Windows":
        appdata = env.get("APPDATA") or str(PureWindowsPath(home, "AppData", "Roaming"))
        return [str(PureWindowsPath(appdata, "obs-studio"))]
    if system == "Darwin":
        return [str(PurePosixPath(home, "Library", "Application Support", "obs-studio"))]
    xdg = env.get("XDG_CONFIG_HOME") or str(PurePosixPath(home, ".config"))
    return [str(PurePosixPath(xdg, "obs-studio"))]


def python_candidates(system: str, obs_path: str) -> list[str]:
    """Interpreters that the folder set in OBS's Python Settings may hold, best first.

    Windows: the folder holding python3XX.dll, i.e. the install folder with python.exe.
    macOS (OBS 30+): the folder holding Python.framework (e.g. /Library/Frameworks), OBS
    loads the newest Versions/3.X; older OBS took the Versions/3.X folder itself.
    """
    if system == "Windows":
        return [str(PureWindowsPath(obs_path.replace("/", "\\"), "python.exe"))]
    base = PurePosixPath(obs_path.rstrip("/") or "/")
    minors = range(14, 5, -1)
    out = [str(base / f"Python.framework/Versions/3.{m}/bin/python3.{m}") for m in minors]
    if base.name == "Python.framework":
        out += [str(base / f"Versions/3.{m}/bin/python3.{m}") for m in minors]
    out.append(str(base / "bin" / "python3"))
    return out


@dataclasses.dataclass(frozen=True)
class ObsPython:
    python: str | None  # the interpreter to install websocket-client into
    how: str  # how it was found, for the user
    config_file: str | None = None
    configured_path: str | None = None


def find_obs_python(
    system: str,
    env: Mapping[str, str],
    home: str,
    read_text: Callable[[str], str | None] | None = None,
    exists: Callable[[str], bool] | None = None,
) -> ObsPython:
    """The Python that OBS Studio runs scripts with.

    Linux: OBS links the system's libpython, so /usr/bin/python3. Windows and macOS: the
    folder chosen in Tools > Scripts > Python Settings, stored as [Python] Path64bit in
    user.ini (OBS 31+) or global.ini (OBS 30 and older).
    """
    read_text = read_text or _read_text
    exists = exists or os.path.exists
    if system not in ("Windows", "Darwin"):
        return ObsPython("/usr/bin/python3", "OBS on Linux runs scripts with the system Python")
    for folder in obs_config_dirs(system, env, home):
        for name in ("user.ini", "global.ini"):
            ini = str(_pure_path(system, folder, name))
            text = read_text(ini)
            if text is None:
                continue
            configured = parse_obs_global_ini(text)
            if not configured:
                continue
            for candidate in python_candidates(system, configured):
                if exists(candidate):
                    return ObsPython(candidate, "set in OBS's Python Settings", ini, configured)
            return ObsPython(
                None,
                f"OBS's Python Settings point at {configured}, but no python is there",
                ini,
                configured,
            )
    return ObsPython(None, "OBS's Python Settings are not set yet (or OBS is not installed)")


@dataclasses.dataclass(frozen=True)
class ObsPythonAction:
    kind: str  # "ok" | "run" | "manual"
    command: tuple[str, ...] = ()  # what to run ("run") or suggest ("manual")
    message: str = ""


def obs_python_action(
    system: str,
    obs: ObsPython,
    websocket_ok: bool,
    version: str | None,
    is_root: bool,
    has_apt: bool,
    externally_managed: bool,
) -> ObsPythonAction:
    """What to do so that OBS's Python can `import websocket` (websocket-client)."""
    if obs.python is None:
        return ObsPythonAction(
            "manual",
            ("<python>", "-m", "pip", "install", "websocket-client"),
            f"{obs.how}. In OBS: Tools > Scripts > Python Settings, choose a Python "
            f"{OBS_PYTHON_RECOMMENDED}, then run this installer again (or the command "
            "below with that Python).",
        )
    if websocket_ok:
        return ObsPythonAction("ok", (), f"websocket-client already imports in {obs.python}")
    if system not in ("Windows", "Darwin"):
        if has_apt:
            if is_root:
                return ObsPythonAction(
                    "run",
                    ("apt-get", "install", "-y", "python3-websocket"),
                    "Debian/Ubuntu: the system Python takes packages from apt (PEP 668)",
                )
            return ObsPythonAction(
                "manual",
                ("sudo", "apt", "install", "python3-websocket"),
                "Debian/Ubuntu: the system Python takes packages from apt (PEP 668)",
            )
        if externally_managed:
            return ObsPythonAction(
                "manual",
                ("sudo", "dnf", "install", "python3-websocket-client"),
                "the system Python is managed by your distribution (PEP 668): install "
                "its websocket-client package (Fedora: as below; Arch: "
                "python-websocket-client)",
            )
        return ObsPythonAction(
            "run",
            (obs.python, "-m", "pip", "install", "--user", "websocket-client"),
            "the system Python, for your user",
        )
    too_old = version is not None and _version_tuple(version) < OBS_PYTHON_MIN
    if too_old:
        return ObsPythonAction(
            "manual",
            (obs.python, "-m", "pip", "install", "websocket-client"),
            f"OBS's Python is {version}; the script needs 3.9+. Choose a Python "
            f"{OBS_PYTHON_RECOMMENDED} in Tools > Scripts > Python Settings.",
        )
    return ObsPythonAction(
        "run",
        (obs.python, "-m", "pip", "install", "websocket-client"),
        "the Python set in OBS's Python Settings",
    )


def config_file_path(system: str, env: Mapping[str, str], home: str) -> str:
    """Where `generator-host init` writes the config (platformdirs' user_config_dir)."""
    if system == "Windows":
        base = env.get("LOCALAPPDATA") or str(PureWindowsPath(home, "AppData", "Local"))
        return str(PureWindowsPath(base, APP_NAME, "config.toml"))
    if system == "Darwin":
        return str(PurePosixPath(home, "Library/Application Support", APP_NAME, "config.toml"))
    xdg = env.get("XDG_CONFIG_HOME") or str(PurePosixPath(home, ".config"))
    return str(PurePosixPath(xdg, APP_NAME, "config.toml"))


def venv_python(system: str, venv: str) -> str:
    if system == "Windows":
        return str(PureWindowsPath(venv, "Scripts", "python.exe"))
    return str(PurePosixPath(venv, "bin", "python"))


def venv_script(system: str, venv: str, name: str) -> str:
    if system == "Windows":
        return str(PureWindowsPath(venv, "Scripts", name + ".exe"))
    return str(PurePosixPath(venv, "bin", name))


def _version_tuple(text: str) -> tuple[int, ...]:
    out = []
    for part in text.split("."):
        if not part.isdigit():
            break
        out.append(int(part))
    return tuple(out)


# --------------------------------------------------------------------------- the edges


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8-sig", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def detect_nvidia() -> tuple[bool, str]:
    exe = shutil.which("nvidia-smi")
    if exe is None and platform.system() == "Windows":
        for guess in (
            r"C:\Windows\System32\nvidia-smi.exe",
            r"C:\Program Files\NVIDIA Corporation\NVSMI\nvidia-smi.exe",
        ):
            if os.path.exists(guess):
                exe = guess
                break
    if exe is None:
        return False, "nvidia-smi not found"
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError) as exc:
        return False, f"nvidia-smi failed: {exc}"
    first = (out.stdout or "").strip().splitlines()
    if out.returncode == 0 and first and "GPU" in first[0]:
        return True, first[0]
    return False, f"nvidia-smi found but lists no GPU (exit {out.returncode})"


def index_reachable(url: str, timeout: float = 5.0) -> bool:
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return True
    host = parsed.hostname or ""
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def externally_managed(python: str) -> bool:
    """PEP 668: does this interpreter's stdlib folder carry an EXTERNALLY-MANAGED marker?"""
    try:
        out = subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_path('stdlib'))"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0 and os.path.exists(
        os.path.join(out.stdout.strip(), "EXTERNALLY-MANAGED")
    )


def check_obs_python(python: str) -> tuple[bool, str | None]:
    """(websocket-client imports, the interpreter's X.Y) without changing anything."""
    try:
        out = subprocess.run(
            [python, "-c", OBS_PYTHON_CHECK], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.SubprocessError):
        return False, None
    lines = out.stdout.strip().splitlines()
    version = lines[0].strip() if lines else None
    return out.returncode == 0, version


def shell_join(cmd: Sequence[str]) -> str:
    if platform.system() == "Windows":
        return subprocess.list2cmdline(list(cmd))
    import shlex

    return shlex.join(list(cmd))


class Reporter:
    """Prints each step with its duration."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.n = 0

    def step(self, title: str) -> _Step:
        self.n += 1
        return _Step(self.n, title)

    def total(self) -> float:
        return time.monotonic() - self.t0


class _Step:
    def __init__(self, n: int, title: str) -> None:
        self.n, self.title = n, title

    def __enter__(self) -> _Step:
        self.t = time.monotonic()
        print(f"\n[{self.n}] {self.title}", flush=True)
        return self

    def info(self, text: str) -> None:
        print(f"    {text}", flush=True)

    def __exit__(self, *exc: object) -> None:
        print(f"    ({time.monotonic() - self.t:.1f} s)", flush=True)


def run(cmd: Sequence[str], step: _Step, env: Mapping[str, str] | None = None) -> int:
    step.info("$ " + shell_join(cmd))
    t = time.monotonic()
    rc = subprocess.call(list(cmd), env=dict(env) if env is not None else None)
    step.info(f"-> exit {rc} after {time.monotonic() - t:.1f} s")
    return rc


def pip_base(py: str) -> list[str]:
    # --compile: byte-code is written at install time even where PYTHONDONTWRITEBYTECODE is
    # set, else every start of the host pays seconds of imports.
    return [py, "-m", "pip", "install", "--compile", "--disable-pip-version-check"]


def plan_packages(
    py: str, choice: TorchChoice, target: str, light: bool
) -> tuple[list[str], list[tuple[str, list[str]]], str | None]:
    """What installing the packages takes, planned once for the dry run and the real one:
    notes to show, the pip commands (what each installs, the command) and the index torch
    comes from (None: pip's own). PyTorch goes first, so the host's pin finds it there.
    """
    notes: list[str] = []
    commands: list[tuple[str, list[str]]] = []
    index = choice.index_url
    if not light:
        rc, installed = venv_query(py, TORCH_VERSION_QUERY) if os.path.exists(py) else (1, "")
        action = torch_action(installed if rc == 0 else None, choice)
        if action == "keep":
            notes.append(f"torch {installed} is already the right build: kept")
        else:
            if action == "replace":
                notes.append(f"torch {installed} is the wrong build: replacing it")
                commands.append(("PyTorch", [py, "-m", "pip", "uninstall", "-y", "torch"]))
            if index and choice.fallback_to_default_index and not index_reachable(index):
                notes.append(
                    f"{index} is unreachable: asking pip's own indexes "
                    "(a local wheel or mirror from pip.conf, else PyPI)"
                )
                index = None
            cmd = pip_base(py) + [choice.requirement] + (["--index-url", index] if index else [])
            commands.append(("PyTorch", cmd))
    # editable: the OBS script is loaded from this checkout anyway, and a `git pull`
    # updates the host without reinstalling (a changed pyproject.toml changes the stamp,
    # so the next run reinstalls).
    commands.append(("the host", pip_base(py) + (["--no-deps"] if light else []) + ["-e", target]))
    return notes, commands, index


def venv_query(py: str, code: str) -> tuple[int, str]:
    """Run code in the venv's Python: (exit code, last line of its output or error)."""
    try:
        out = subprocess.run([py, "-c", code], capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.SubprocessError) as exc:
        return 1, str(exc)
    if out.returncode == 0:
        return 0, out.stdout.strip()
    lines = (out.stderr.strip() or out.stdout.strip()).splitlines()
    return out.returncode, lines[-1] if lines else ""


CHECK_FULL = (
    "import torch, diffusers, generator_host; "
    "mps = getattr(torch.backends, 'mps', None); "
    "print('torch %s, diffusers %s, CUDA: %s, MPS: %s' % (torch.__version__, "
    "diffusers.__version__, torch.cuda.is_available(), bool(mps and mps.is_available())))"
)
CHECK_LIGHT = "import generator_host; print('generator_host imports')"
TORCH_VERSION_QUERY = (
    "import importlib.metadata as m\n"
    "try:\n    print(m.version('torch'))\nexcept m.PackageNotFoundError:\n    print('')"
)


def read_stamp(venv: Path) -> dict:
    try:
        return json.loads((venv / STAMP_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def apt_install(packages: Sequence[str], step: _Step) -> int:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
    if run(cmd, step, env) == 0:
        return 0
    step.info("retrying after apt-get update")
    run(["apt-get", "update"], step, env)
    return run(cmd, step, env)


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="install.py",
        description="Install Chat Diffusion: a venv with the right PyTorch and the host, "
        "and websocket-client for OBS's Python. Safe to run again: it changes only what "
        "is out of date.",
    )
    p.add_argument("--venv", type=Path, help="virtual environment to use (default: <repo>/.venv)")
    p.add_argument("--dev", action="store_true", help="add the [dev] extra (tests, ruff)")
    p.add_argument("--cpu", action="store_true", help="install a CPU build even with a GPU")
    p.add_argument(
        "--torch-index",
        metavar="URL",
        help="take torch from this index instead (e.g. .../whl/cu126, .../whl/rocm6.4); "
        "'pypi' for pip's own indexes",
    )
    p.add_argument(
        "--obs",
        action="store_true",
        help="also install OBS Studio and Xvfb (Debian/Ubuntu as root; for the end-to-end "
        "tests), else print how",
    )
    p.add_argument(
        "--skip-obs-python",
        action="store_true",
        help="leave OBS's Python alone (print what it would need)",
    )
    p.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    p.add_argument(
        "--light",
        action="store_true",
        help="tests only: install the project without its dependencies (no torch)",
    )
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    rep = Reporter()
    system, machine = platform.system(), platform.machine()
    repo = Path(__file__).resolve().parent.parent
    venv = (args.venv or repo / ".venv").expanduser().absolute()
    home = str(Path.home())
    dry = args.dry_run
    failed: list[str] = []
    print(f"Chat Diffusion installer{' (dry run: nothing is changed)' if dry else ''}")
    print(f"    repo {repo}\n    venv {venv}\n    Python {sys.version.split()[0]} ({system})")

    # 1. PyTorch choice
    with rep.step("Choosing PyTorch") as s:
        if args.light:
            has_nvidia, gpu = False, "not looked for (--light)"
        else:
            has_nvidia, gpu = detect_nvidia()
        s.info(f"GPU: {gpu}")
        choice = choose_torch(system, machine, has_nvidia, args.cpu)
        if args.torch_index:
            url = None if args.torch_index.lower() == "pypi" else args.torch_index
            choice = dataclasses.replace(
                choice, index_url=url, fallback_to_default_index=False, reason="--torch-index"
            )
        s.info(f"{choice.describe()}")
        s.info(f"why: {choice.reason}")
        if args.light:
            s.info("--light: torch and the other dependencies are not installed")

    # 2. venv
    py = venv_python(system, str(venv))
    with rep.step("Virtual environment") as s:
        if os.path.exists(py):
            s.info(f"exists: {py}")
        elif venv.exists() and any(venv.iterdir()) and not (venv / "pyvenv.cfg").exists():
            print(f"error: {venv} exists and is not a virtual environment; choose --venv")
            return 2
        elif dry:
            s.info(f"would create it with {sys.executable} -m venv {venv}")
        else:
            if run([sys.executable, "-m", "venv", str(venv)], s) != 0 or not os.path.exists(py):
                print(
                    "error: could not create the virtual environment (on Debian/Ubuntu: "
                    "apt install python3-venv)"
                )
                return 1

    # 3. packages
    extra = "[dev]" if args.dev else ""
    pyproject = (repo / "pyproject.toml").read_bytes()
    key = stamp_key(pyproject, choice, args.dev, args.light)
    with rep.step(
        "Packages (PyTorch first, then the host" + (" + [dev]" if args.dev else "") + ")"
    ) as s:
        stamp = read_stamp(venv)
        check = CHECK_LIGHT if args.light else CHECK_FULL
        up_to_date = False
        if os.path.exists(py) and stamp_accepts(
            stamp.get("key"), pyproject, choice, args.dev, args.light
        ):
            rc, out = venv_query(py, check)
            if rc == 0:
                up_to_date = True
                s.info(f"up to date, nothing changed ({out})")
            else:
                s.info(f"stamp matches but the check failed ({out}): installing again")
        elif stamp:
            s.info("stamp differs (pyproject.toml, PyTorch variant or options changed)")
        if not up_to_date:
            notes, commands, index = plan_packages(py, choice, f"{repo}{extra}", args.light)
            for note in notes:
                s.info(note)
            if dry:
                for _, cmd in commands:
                    s.info("would run: " + shell_join(cmd))
            else:
                for what, cmd in commands:
                    if run(cmd, s) != 0:
                        print(f"error: {what} did not install (see pip's message above)")
                        return 1
                rc, out = venv_query(py, check)
                if rc != 0:
                    print(f"error: installed, but the check failed: {out}")
                    return 1
                s.info(f"check: {out}")
                (venv / STAMP_NAME).write_text(
                    json.dumps(
                        {
                            "key": key,
                            "torch": choice.requirement,
                            "variant": choice.variant,
                            "index": index,
                            "dev": args.dev,
                            "light": args.light,
                            "python": sys.version.split()[0],
                            "installed": time.strftime("%Y-%m-%d %H:%M:%S"),
                        },
                        indent=2,
                    )
                    + "\n",
                    encoding="utf-8",
                )

    # 4. OBS's Python
    with rep.step("websocket-client for the Python that OBS uses") as s:
        obs = find_obs_python(system, os.environ, home)
        s.info(f"OBS's Python: {obs.python or '(unknown)'} - {obs.how}")
        if obs.config_file:
            s.info(f"from {obs.config_file}: [Python] Path64bit={obs.configured_path}")
        ok, version = check_obs_python(obs.python) if obs.python else (False, None)
        if obs.python and version:
            s.info(f"its version: {version}")
        if system == "Linux" and os.path.isdir(
            os.path.join(home, ".var/app/com.obsproject.Studio")
        ):
            s.info("note: a Flatpak OBS runs its own Python; see docs/install.md")
        action = obs_python_action(
            system,
            obs,
            ok,
            version,
            is_root(),
            shutil.which("apt-get") is not None,
            bool(obs.python) and externally_managed(obs.python),
        )
        s.info(action.message)
        if action.kind == "run" and (dry or args.skip_obs_python):
            s.info(("would run: " if dry else "skipped; to do it: ") + shell_join(action.command))
        elif action.kind == "run":
            if action.command[0] == "apt-get":
                rc = apt_install(action.command[3:], s)
            else:
                rc = run(action.command, s)
            if rc == 0 and check_obs_python(obs.python or "")[0]:
                s.info("websocket-client now imports in OBS's Python")
            else:
                failed.append("websocket-client for OBS's Python")
                s.info("could not install it; run this yourself: " + shell_join(action.command))
        elif action.kind == "manual":
            failed.append("websocket-client for OBS's Python")
            s.info("run: " + shell_join(action.command))

    # 5. OBS itself (optional)
    if args.obs:
        with rep.step("OBS Studio and Xvfb (--obs)") as s:
            have = shutil.which("obs") and shutil.which("Xvfb")
            if system != "Linux":
                s.info("install OBS Studio from https://obsproject.com (not automated here)")
            elif have:
                s.info("obs and Xvfb are installed")
            elif dry:
                s.info("would run: apt-get install -y --no-install-recommends obs-studio xvfb")
            elif is_root() and shutil.which("apt-get"):
                if apt_install(["obs-studio", "xvfb"], s) != 0:
                    failed.append("OBS Studio and Xvfb")
            else:
                failed.append("OBS Studio and Xvfb")
                s.info("run: sudo apt install --no-install-recommends obs-studio xvfb")

    # 6. next steps
    script = repo / "obs_script" / "chat_diffusion.py"
    host = venv_script(system, str(venv), "generator-host")
    print(f"\nDone in {rep.total():.1f} s{' (dry run)' if dry else ''}.")
    if failed:
        print("Left for you: " + "; ".join(failed) + " (commands above).")
    print(
        "\nNext steps\n"
        f"  1. Write the config:  {host} init\n"
        f"     (it goes to {config_file_path(system, os.environ, home)};"
        " set [twitch] channel there)\n"
        f"  2. Try it offline:    {host} demo\n"
        f"  3. Go live:           {host} run\n"
        "  4. In OBS: Tools > Scripts"
        + (
            " > Python Settings: a Python " + OBS_PYTHON_RECOMMENDED + ";"
            if system != "Linux"
            else ""
        )
        + " then + and choose\n"
        f"       {script}\n"
        "  More: docs/install.md"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
