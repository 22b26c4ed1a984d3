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
import contextlib
import dataclasses
import hashlib
import json
import os
import platform
import re
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path, PurePath, PurePosixPath, PureWindowsPath
from urllib.parse import urlparse

if sys.version_info < (3, 10):  # noqa: UP036 - this file runs under any python3
    sys.exit(f"Chat Diffusion needs Python 3.10 or newer; this is {sys.version.split()[0]}.")

INSTALLER_VERSION = 2  # bump when the install recipe changes: old stamps stop matching
TORCH_VERSION = "2.13.0"  # the build every variant pins (the CPU one lies on CI's disk)
TORCH_INDEX = "https://download.pytorch.org/whl/"
CPU_INDEX = TORCH_INDEX + "cpu"
STAMP_NAME = "chat-diffusion-install.json"
LOG_NAME = "install.log"  # pip's full output, in the venv; its path is printed
APP_NAME = "chat-diffusion"  # as generator_host.core.settings.APP_NAME
# The venv's Python: torch 2.13 ships wheels for 3.10 to 3.14 (pytorch RELEASE.md lists
# <=3.15, but the other dependencies' wheels lag behind; 3.15 is refused to be safe).
HOST_PYTHON = ((3, 10), (3, 14))
# OBS Studio up to 32.x loads Python 3.6 to 3.12 only on Windows and macOS (64-bit):
# 3.13 shows "Python not loaded" (obsproject/obs-studio#11461, #13155, 2026-02: "up to
# 3.12 is supported at run time"). The OBS script itself needs 3.9+.
OBS_PYTHON = ((3, 9), (3, 12))
OBS_PYTHON_RECOMMENDED = "3.12 (64-bit, from python.org)"
OBS_PYTHON_CHECK = (
    "import sys, struct; print('%d.%d %d' % (sys.version_info[:2] + (struct.calcsize('P') * 8,)))"
    "; import websocket; websocket.create_connection"
)
MACOS_MIN = (14, 0)  # torch 2.12+ wheels are tagged macosx_14_0_arm64 (pytorch#177303)
# The deepest path torch's wheel puts in a venv on Windows: Lib\site-packages\ (18) +
# torch-2.13.0+cu130.dist-info\licenses\third_party\kineto\...\duktape-1.8.0\LICENSE.txt
# (173, measured on this build's +cpu twin) = 191, rounded up to 200 for what pip adds.
DEEPEST_IN_VENV = 200
WINDOWS_MAX_PATH = 259  # MAX_PATH is 260 including the terminating NUL

# CUDA builds of torch 2.13 on download.pytorch.org (pytorch RELEASE.md, 2.12/2.13 matrix;
# cu128 was dropped in 2.12): which GPUs (compute capability) each has kernels for and
# the oldest driver it runs on (NVIDIA's minor-version compatibility: CUDA 13.x needs
# 580+, CUDA 12.x 525+ on Linux and 528.33+ on Windows). Preferred first.
CUDA_BUILDS = (
    # tag, lowest compute capability, highest, driver Linux, driver Windows
    ("cu130", (7, 5), None, (580, 0), (580, 0)),  # Turing .. Blackwell (RTX 20xx-50xx)
    ("cu126", (5, 0), (9, 0), (525, 60), (528, 33)),  # Maxwell .. Hopper (GTX 9xx-RTX 40xx)
)
# --obs: what the end-to-end tests drive (OBS under Xvfb) and Debian's own Chromium with
# its driver for the review page's browser tests (no browser download)
TEST_APT_PACKAGES = ("obs-studio", "xvfb", "chromium", "chromium-driver")
TEST_TOOLS = ("obs", "Xvfb", "chromium", "chromedriver")  # what those packages put on PATH
# pip packages the tests need beyond pyproject's [dev] extra (installed with --dev),
# e.g. a browser driver for the review page's tests; empty: nothing more.
DEV_EXTRA_REQUIREMENTS: tuple[str, ...] = ()


# --------------------------------------------------------------------------- decisions


class Unsupported(Exception):
    """This machine or Python cannot run Chat Diffusion as installed here; the message
    names what to do instead (one line)."""


@dataclasses.dataclass(frozen=True)
class Gpu:
    name: str
    capability: tuple[int, int] | None  # compute capability; None: nvidia-smi did not say
    driver: tuple[int, ...] | None


def parse_nvidia_smi(text: str) -> list[Gpu]:
    """`nvidia-smi --query-gpu=name,compute_cap,driver_version --format=csv,noheader`.

    Drivers before ~510 do not know compute_cap and exit with an error instead (then
    `detect_nvidia` asks for name,driver_version only: capability None).
    """
    gpus = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 2 or not parts[0] or parts[0].startswith(("Field", "No devices")):
            continue
        cap = _version_tuple(parts[1]) if len(parts) == 3 else ()
        driver = _version_tuple(parts[-1])
        gpus.append(Gpu(parts[0], (cap[0], cap[1]) if len(cap) >= 2 else None, driver or None))
    return gpus


def choose_cuda_build(system: str, gpus: Sequence[Gpu]) -> tuple[str, str]:
    """(index tag, why) for these GPUs; raises Unsupported when no build runs on them.

    Every GPU must be covered (the host uses the first CUDA device, whose order need not
    be nvidia-smi's), so the oldest capability decides.
    """
    drivers = [g.driver for g in gpus if g.driver]
    driver = min(drivers) if drivers else None
    caps = [g.capability for g in gpus if g.capability]
    low = min(caps) if caps else None
    high = max(caps) if caps else None
    names = ", ".join(g.name for g in gpus)
    shown = ".".join(map(str, driver)) if driver else "unknown"
    for tag, cap_min, cap_max, drv_linux, drv_windows in CUDA_BUILDS:
        need = drv_windows if system == "Windows" else drv_linux
        if driver is None or driver < need:
            continue
        if low is None:  # capability unknown: an old driver; never cu130 on a guess
            if cap_max is None:
                continue
        elif low < cap_min or (cap_max is not None and high > cap_max):
            continue
        cc = f"compute capability {low[0]}.{low[1]}" if low else "capability not reported"
        return tag, f"{names} ({cc}, driver {shown}): PyTorch's CUDA {tag[2:-1]}.{tag[-1]} build"
    if low is not None and low < (5, 0):
        raise Unsupported(
            f"{names} (compute capability {low[0]}.{low[1]}) is too old for PyTorch "
            f"{TORCH_VERSION}'s CUDA builds; rerun with --cpu"
        )
    if high is not None and high >= (10, 0) and (driver is None or driver < (580, 0)):
        raise Unsupported(
            f"{names}: this GPU needs NVIDIA driver 580 or newer for PyTorch "
            f"{TORCH_VERSION} (this one is {shown}); update the driver from nvidia.com and "
            "run the installer again, or rerun with --cpu"
        )
    raise Unsupported(
        f"NVIDIA driver {shown} is too old for PyTorch {TORCH_VERSION} (it needs 525 or "
        "newer; 580 or newer for the CUDA 13 build); update the driver from nvidia.com "
        "and run the installer again, or rerun with --cpu"
    )


@dataclasses.dataclass(frozen=True)
class TorchChoice:
    variant: str  # "cuda" | "cpu" | "mps"
    requirement: str  # what pip is asked for, e.g. "torch==2.13.0"
    index_url: str | None  # None: pip's own indexes (PyPI and whatever pip.conf adds)
    fallback_to_default_index: bool  # index unreachable: ask pip's own indexes instead
    reason: str

    def describe(self) -> str:
        where = self.index_url or "PyPI"
        return f"{self.requirement} ({self.variant.upper()}) from {where}"


def choose_torch(
    system: str,
    machine: str,
    gpus: Sequence[Gpu],
    force_cpu: bool,
    mac_version: tuple[int, ...] = (),
) -> TorchChoice:
    """Which PyTorch build to install. `system` as platform.system() says it.

    Raises Unsupported (Intel Mac, macOS before 14, a GPU or driver no build runs on).
    """
    pin = f"torch=={TORCH_VERSION}"
    arch = machine.lower()
    if system == "Darwin":
        if arch in ("x86_64", "amd64", "i386"):
            raise Unsupported(
                "Intel Macs are not supported: PyTorch stopped publishing Mac builds for "
                "Intel at 2.2 (2024). On a Mac with Apple silicon this Python runs under "
                "Rosetta: install python.org's universal2 Python and run it natively"
            )
        if mac_version and mac_version < MACOS_MIN:
            shown = ".".join(map(str, mac_version))
            raise Unsupported(
                f"macOS 14 (Sonoma) or newer is needed: PyTorch {TORCH_VERSION} publishes "
                f"Mac builds for macOS 14+ only, and this Mac runs {shown}"
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
    if system in ("Windows", "Linux") and gpus and not force_cpu:
        tag, why = choose_cuda_build(system, gpus)
        return TorchChoice("cuda", pin, TORCH_INDEX + tag, False, why)
    why = "--cpu given" if force_cpu else "no NVIDIA GPU found"
    if system == "Windows":
        return TorchChoice("cpu", pin, None, False, f"{why}: PyPI's Windows build (CPU)")
    if system == "Linux":
        return TorchChoice(
            "cpu",
            pin,
            CPU_INDEX,
            True,
            f"{why}: PyTorch's CPU build (PyPI's Linux build carries GBs of CUDA)",
        )
    return TorchChoice("cpu", pin, None, False, f"{system}: PyPI's build, CPU")


def cuda_check_problem(choice: TorchChoice, rc: int, out: str) -> str | None:
    """After installing a CUDA build: None when a kernel ran on the GPU, else what to do.

    Never a silent CPU fallback: with an NVIDIA GPU found, a CUDA build that cannot use
    it is an installation problem, reported now rather than as slowness on stream.
    """
    if choice.variant != "cuda":
        return None
    if rc == 0 and out.startswith("CUDA ok"):
        return None
    return (
        f"PyTorch's CUDA build is installed but cannot use the GPU ({out.strip() or rc}). "
        "Update the NVIDIA driver (nvidia.com) and run the installer again; or rerun "
        "with --cpu (slow), or pick another build with --torch-index URL"
    )


def host_python_problem(
    system: str, version: tuple[int, ...], bits: int, executable: str, base_prefix: str
) -> str | None:
    """Can this Python make the venv? None, or one line saying which Python to use."""
    lo, hi = HOST_PYTHON
    fix = (
        "install 64-bit Python 3.12 from python.org and run: py -3.12 install\\install.py"
        if system == "Windows"
        else "install Python 3.12 (python.org, or your distribution) and run: "
        "python3.12 install/install.py"
    )
    if bits != 64:
        return f"this Python is {bits}-bit; PyTorch has 64-bit builds only: {fix}"
    if not lo <= tuple(version[:2]) <= hi:
        shown = ".".join(map(str, version[:2]))
        return f"Python {shown} is not supported (3.10 to 3.14 are): {fix}"
    if system == "Windows" and is_store_python(executable, base_prefix):
        return (
            "this is the Microsoft Store's Python, which keeps files written under "
            "%LOCALAPPDATA% in its own sandbox where OBS cannot see them (the link token, "
            f"the config): {fix}"
        )
    return None


def is_store_python(executable: str, prefix: str = "") -> bool:
    """Microsoft Store Python: installed under WindowsApps as PythonSoftwareFoundation.*"""
    text = f"{executable}|{prefix}".replace("/", "\\").lower()
    return "\\windowsapps\\" in text or "pythonsoftwarefoundation.python." in text


def in_onedrive(path: str, env: Mapping[str, str]) -> bool:
    """Is this folder synced by OneDrive (Windows keeps Documents/Desktop there often)?"""
    norm = path.replace("/", "\\").rstrip("\\").lower() + "\\"
    for key in ("OneDrive", "OneDriveConsumer", "OneDriveCommercial"):
        root = env.get(key, "").replace("/", "\\").rstrip("\\").lower()
        if root and norm.startswith(root + "\\"):
            return True
    return any(part.startswith("onedrive") for part in norm.split("\\")[:-1])


@dataclasses.dataclass(frozen=True)
class VenvPlace:
    path: str
    notes: tuple[str, ...] = ()


def choose_venv(
    system: str,
    default: str,
    requested: str | None,
    env: Mapping[str, str],
    long_paths: bool,
) -> VenvPlace:
    """Where the venv goes. Windows: torch's wheel holds paths ~191 characters deep
    inside the venv, past the 260-character limit unless long paths are enabled; and a
    venv inside OneDrive gets its 20,000 files synced and locked. Then the venv goes to
    %LOCALAPPDATA%\\chat-diffusion\\venv (short, never synced), or Unsupported says how
    to enable long paths."""
    path = requested or default
    if system != "Windows":
        return VenvPlace(path)
    notes: list[str] = []
    too_long = not long_paths and len(path) + 1 + DEEPEST_IN_VENV > WINDOWS_MAX_PATH
    synced = in_onedrive(path, env)
    if requested:
        if too_long:
            raise Unsupported(_long_path_fix(path))
        if synced:
            notes.append(f"{path} is inside OneDrive: syncing its thousands of files is slow")
        return VenvPlace(path, tuple(notes))
    if not (too_long or synced):
        return VenvPlace(path)
    local = env.get("LOCALAPPDATA") or str(
        PureWindowsPath(env.get("USERPROFILE", "C:\\"), "AppData", "Local")
    )
    short = str(PureWindowsPath(local, APP_NAME, "venv"))
    if not long_paths and len(short) + 1 + DEEPEST_IN_VENV > WINDOWS_MAX_PATH:
        raise Unsupported(_long_path_fix(short))
    why = (
        "the project is inside OneDrive (it would sync and lock the venv's files)"
        if synced
        else f"{path} is too long for PyTorch's files while Windows long paths are off"
    )
    notes.append(f"venv in {short}: {why}")
    if synced:
        notes.append("tip: keep the project outside OneDrive too (e.g. C:\\chat-diffusion)")
    return VenvPlace(short, tuple(notes))


def _long_path_fix(path: str) -> str:
    return (
        f"{path} is too long for PyTorch's files (Windows limits paths to 260 characters). "
        "Enable long paths: in PowerShell as administrator run  New-ItemProperty -Path "
        '"HKLM:\\SYSTEM\\CurrentControlSet\\Control\\FileSystem" -Name LongPathsEnabled '
        "-Value 1 -PropertyType DWORD -Force  then run the installer again (or use a "
        "shorter --venv)"
    )


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
class FoundPython:
    version: tuple[int, int]
    bits: int
    path: str


_PY_LIST_LINE = re.compile(
    r"^\s*-(?:V:)?(?:[^/\s]+/)?(\d+)\.(\d+)(t?)(?:-(32|64|arm64))?\s+(?:\*\s+)?(\S.*?)\s*$"
)


def parse_py_list(text: str) -> list[FoundPython]:
    """The Pythons the Windows launcher knows, from `py -0p`.

    Lines look like " -V:3.12 *        C:\\...\\python.exe" (launcher 3.11+; "-V:3.12-32"
    for 32-bit) or " -3.9-64 *       C:\\...\\python.exe" (older launchers). Free-threaded
    builds (3.13t) and ARM64 ones are left out: OBS (x64) cannot load them. A format not
    recognised gives an empty list, and the installer says what to do by hand.
    """
    found = []
    for line in text.splitlines():
        m = _PY_LIST_LINE.match(line)
        if not m or m.group(3) or m.group(4) == "arm64":
            continue
        bits = 32 if m.group(4) == "32" else 64
        found.append(FoundPython((int(m.group(1)), int(m.group(2))), bits, m.group(5)))
    return found


def framework_pythons(exists: Callable[[str], bool]) -> list[FoundPython]:
    """macOS: the framework builds python.org's installers put in /Library/Frameworks."""
    out = []
    for minor in range(9, 16):
        path = f"/Library/Frameworks/Python.framework/Versions/3.{minor}/bin/python3.{minor}"
        if exists(path):
            out.append(FoundPython((3, minor), 64, path))
    return out


def is_homebrew(path: str) -> bool:
    """Homebrew's Python: externally managed (PEP 668), and `brew upgrade` moves its
    framework, after which OBS no longer loads it (obsproject/obs-studio#10314)."""
    return path.startswith(("/opt/homebrew/", "/usr/local/Cellar/", "/usr/local/opt/"))


def obs_can_load(version: tuple[int, ...]) -> bool:
    lo, hi = OBS_PYTHON
    return lo <= tuple(version[:2]) <= hi


def describe_found(f: FoundPython) -> str:
    """'3.12', '3.14 (OBS cannot load it)', '3.11 32-bit (OBS cannot load it)'..."""
    shown = ".".join(map(str, f.version)) + (" 32-bit" if f.bits != 64 else "")
    if f.bits != 64 or not obs_can_load(f.version):
        return f"{shown} (OBS cannot load it)"
    if is_homebrew(f.path) or is_store_python(f.path):
        return f"{shown} (not for OBS)"
    return shown


def obs_folder(system: str, python: str) -> str:
    """The folder to choose in OBS's Python Settings for this interpreter: Windows, the
    one holding python.exe; macOS (OBS 30+), the one holding Python.framework."""
    if system == "Windows":
        return str(PureWindowsPath(python).parent)
    head, sep, _ = python.partition("/Python.framework/")
    return head if sep else str(PurePosixPath(python).parent.parent)


@dataclasses.dataclass(frozen=True)
class ObsPlan:
    python: str | None  # where websocket-client goes; None: nothing usable was found
    folder: str | None  # to choose in OBS's Python Settings; None: already chosen there
    message: str


def choose_obs_python(
    system: str,
    obs: ObsPython,
    probe: tuple[tuple[int, ...], int] | None,
    found: Sequence[FoundPython],
) -> ObsPlan:
    """Which Python OBS should run the script with (Windows and macOS).

    The one set in OBS when OBS can load it; else the newest 64-bit Python OBS can load
    (3.9-3.12) among those installed, never the Store's or Homebrew's. OBS writes its
    Python Settings only when it exits, so the user is told to close it first.
    `probe`: (version, bits) of the configured interpreter, None if it did not run.
    """
    problem = obs.how
    if obs.python and probe:
        version, bits = probe
        shown = ".".join(map(str, version[:2]))
        if bits != 64:
            problem = f"OBS is set to a {bits}-bit Python {shown}; OBS loads 64-bit ones only"
        elif not obs_can_load(version):
            problem = (
                f"OBS is set to Python {shown}, which OBS (up to 32.x) cannot load: it "
                "loads 3.6 to 3.12, and the script needs 3.9 or newer"
            )
        elif is_homebrew(obs.python):
            problem = "OBS is set to Homebrew's Python (PEP 668; moves on every brew upgrade)"
        elif is_store_python(obs.python):
            problem = "OBS is set to the Microsoft Store's Python"
        else:
            return ObsPlan(obs.python, None, f"the Python set in OBS (Python {shown})")
    usable = [
        f
        for f in found
        if f.bits == 64
        and obs_can_load(f.version)
        and not is_homebrew(f.path)
        and not is_store_python(f.path)
    ]
    if not usable:
        return ObsPlan(
            None,
            None,
            f"{problem}. No Python OBS can load was found: install Python "
            f"{OBS_PYTHON_RECOMMENDED}, then run this installer again",
        )
    best = max(usable, key=lambda f: f.version)
    folder = obs_folder(system, best.path)
    shown = ".".join(map(str, best.version))
    return ObsPlan(
        best.path,
        folder,
        f"{problem}. Use Python {shown}: close OBS first (it saves Python Settings only "
        f'when it exits), start it again, Tools > Scripts > Python Settings: choose "{folder}", '
        "then restart OBS",
    )


@dataclasses.dataclass(frozen=True)
class ObsPythonAction:
    kind: str  # "ok" | "run" | "manual"
    command: tuple[str, ...] = ()  # what to run ("run") or suggest ("manual")
    message: str = ""


def obs_python_action(
    system: str,
    python: str | None,
    websocket_ok: bool,
    is_root: bool,
    has_apt: bool,
    externally_managed: bool,
) -> ObsPythonAction:
    """What to do so that OBS's Python (`python`) can `import websocket`."""
    if python is None:
        return ObsPythonAction(
            "manual",
            ("<python>", "-m", "pip", "install", "websocket-client"),
            "with the Python you choose in OBS",
        )
    if websocket_ok:
        return ObsPythonAction("ok", (), "websocket-client already imports there")
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
            (python, "-m", "pip", "install", "--user", "websocket-client"),
            "the system Python, for your user",
        )
    if externally_managed:
        return ObsPythonAction(
            "manual",
            (python, "-m", "pip", "install", "websocket-client"),
            "this Python refuses pip (PEP 668): choose a python.org Python in OBS instead",
        )
    return ObsPythonAction("run", (python, "-m", "pip", "install", "websocket-client"), "")


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


def detect_nvidia() -> tuple[list[Gpu], str]:
    """The NVIDIA GPUs nvidia-smi lists (name, compute capability, driver), and a line
    saying what was found."""
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
        return [], "no NVIDIA GPU (nvidia-smi not found)"
    for fields in ("name,compute_cap,driver_version", "name,driver_version"):
        try:
            out = subprocess.run(
                [exe, f"--query-gpu={fields}", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=30,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            return [], f"nvidia-smi failed: {exc}"
        gpus = parse_nvidia_smi(out.stdout) if out.returncode == 0 else []
        if gpus:
            return gpus, "; ".join(
                f"{g.name}"
                + (
                    f", compute capability {g.capability[0]}.{g.capability[1]}"
                    if g.capability
                    else ""
                )
                + (f", driver {'.'.join(map(str, g.driver))}" if g.driver else "")
                for g in gpus
            )
    return [], f"nvidia-smi found but lists no GPU (exit {out.returncode})"


def mac_version() -> tuple[int, ...]:
    return _version_tuple(platform.mac_ver()[0]) if platform.system() == "Darwin" else ()


def long_paths_enabled() -> bool:
    r"""Windows: HKLM\SYSTEM\CurrentControlSet\Control\FileSystem LongPathsEnabled = 1?"""
    if platform.system() != "Windows":
        return True
    try:
        import winreg

        key = winreg.OpenKey(
            winreg.HKEY_LOCAL_MACHINE, r"SYSTEM\CurrentControlSet\Control\FileSystem"
        )
        with key:
            value, _ = winreg.QueryValueEx(key, "LongPathsEnabled")
        return int(value) == 1
    except (OSError, ImportError, ValueError, TypeError):
        return False


def installed_pythons(system: str) -> list[FoundPython]:
    """Pythons OBS could be pointed at: `py -0p` on Windows, python.org's frameworks on
    macOS."""
    if system == "Darwin":
        return framework_pythons(os.path.exists)
    if system != "Windows" or shutil.which("py") is None:
        return []
    try:
        out = subprocess.run(["py", "-0p"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return []
    return parse_py_list(out.stdout + "\n" + out.stderr)


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


def check_obs_python(python: str) -> tuple[bool, tuple[tuple[int, ...], int] | None]:
    """(websocket-client imports, (version, bits)) without changing anything."""
    try:
        out = subprocess.run(
            [python, "-c", OBS_PYTHON_CHECK], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.SubprocessError):
        return False, None
    first = (out.stdout.strip().splitlines() or [""])[0].split()
    if len(first) != 2:
        return False, None
    return out.returncode == 0, (_version_tuple(first[0]), int(first[1]))


def shell_join(cmd: Sequence[str]) -> str:
    if platform.system() == "Windows":
        return subprocess.list2cmdline(list(cmd))
    import shlex

    return shlex.join(list(cmd))


# --------------------------------------------------------------------------- output


class Console:
    """One calm line per step; pip's output goes to the log file.

    Where the installer waits (pip, apt), a terminal shows a spinner with the seconds
    and pip's latest "Collecting/Downloading/Installing" line; redirected output (CI)
    gets only the result line. On failure the failing command's output is printed (its
    last lines) with the log's path. --verbose streams everything as well.
    """

    SPIN = "|/-\\"
    TAIL = 40
    SHOWN = ("Collecting", "Downloading", "Installing", "Building", "Processing", "Using")

    def __init__(self, verbose: bool = False) -> None:
        self.t0 = time.monotonic()
        self.n = 0
        self.verbose = verbose
        self.tty = sys.stdout.isatty() and not verbose
        self.log_path: Path | None = None

    def step(self, title: str) -> None:
        self.n += 1
        print(f"[{self.n}] {title}", flush=True)

    def info(self, text: str) -> None:
        print(f"    {text}", flush=True)

    def total(self) -> float:
        return time.monotonic() - self.t0

    def _log(self, text: str) -> None:
        if self.log_path is None:
            return
        with contextlib.suppress(OSError), open(self.log_path, "a", encoding="utf-8") as f:
            f.write(text)

    def run(
        self, label: str, cmd: Sequence[str], env: Mapping[str, str] | None = None
    ) -> tuple[int, list[str]]:
        """Run `cmd` quietly (output to the log), showing `label` while it runs."""
        t = time.monotonic()
        self._log(f"\n$ {shell_join(cmd)}\n")
        child_env = dict(env if env is not None else os.environ)
        child_env.setdefault("PYTHONIOENCODING", "utf-8")
        lines: list[str] = []
        latest = [""]
        try:
            proc = subprocess.Popen(
                list(cmd),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                text=True,
                encoding="utf-8",
                errors="replace",
                env=child_env,
            )
        except OSError as exc:
            lines = [f"cannot run {cmd[0]}: {exc}"]
            self._log(lines[0] + "\n")
            return 127, lines

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line.rstrip("\n"))
                self._log(line)
                if self.verbose:
                    print("      " + line.rstrip("\n"), flush=True)
                if line.lstrip().startswith(self.SHOWN):
                    latest[0] = line.strip()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        k = 0
        while reader.is_alive():
            reader.join(0.1)
            if self.tty:
                k += 1
                width = max(20, shutil.get_terminal_size((80, 24)).columns - 1)
                shown = f"    {label} {self.SPIN[k % 4]} {time.monotonic() - t:4.0f} s  {latest[0]}"
                print("\r" + shown[:width].ljust(width), end="", flush=True)
        rc = proc.wait()
        if self.tty:
            width = max(20, shutil.get_terminal_size((80, 24)).columns - 1)
            print("\r" + " " * width + "\r", end="", flush=True)
        self._log(f"-> exit {rc} after {time.monotonic() - t:.1f} s\n")
        result = "done" if rc == 0 else f"FAILED (exit {rc})"
        print(f"    {label}: {result} ({time.monotonic() - t:.1f} s)", flush=True)
        return rc, lines

    def failure(self, what: str, lines: Sequence[str]) -> None:
        """The failing command's own words, then where the whole log is."""
        print(f"error: {what}. Its output (last {min(len(lines), self.TAIL)} lines):")
        for line in lines[-self.TAIL :]:
            print("  | " + line)
        if self.log_path is not None:
            print(f'Full log: "{self.log_path}"')


def pip_base(py: str) -> list[str]:
    # --compile: byte-code is written at install time even where PYTHONDONTWRITEBYTECODE is
    # set, else every start of the host pays seconds of imports.
    return [
        py, "-m", "pip", "install", "--compile", "--disable-pip-version-check",
        "--progress-bar", "off",
    ]  # fmt: skip


def plan_packages(
    py: str,
    choice: TorchChoice,
    target: str,
    light: bool,
    dev_requirements: Sequence[str] = (),
) -> tuple[list[str], list[tuple[str, list[str]]], str | None]:
    """What installing the packages takes, planned once for the dry run and the real one:
    notes to show, the pip commands (what each installs, the command) and the index torch
    comes from (None: pip's own). PyTorch goes first, so the host's pin finds it there;
    then the host (with its extras); then `dev_requirements`, what the tests need beyond
    the [dev] extra (DEV_EXTRA_REQUIREMENTS, with --dev).
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
                commands.append(
                    ("removing the old PyTorch", [py, "-m", "pip", "uninstall", "-y", "torch"])
                )
            if index and choice.fallback_to_default_index and not index_reachable(index):
                notes.append(
                    f"{index} is unreachable: asking pip's own indexes "
                    "(a local wheel or mirror from pip.conf, else PyPI)"
                )
                index = None
            cmd = pip_base(py) + [choice.requirement] + (["--index-url", index] if index else [])
            commands.append((f"PyTorch {TORCH_VERSION} ({choice.variant.upper()})", cmd))
    # editable: the OBS script is loaded from this checkout anyway, and a `git pull`
    # updates the host without reinstalling (a changed pyproject.toml changes the stamp,
    # so the next run reinstalls).
    what = "Chat Diffusion" + (" [dev]" if target.endswith("[dev]") else "")
    commands.append((what, pip_base(py) + (["--no-deps"] if light else []) + ["-e", target]))
    if dev_requirements:
        commands.append(("test tools", pip_base(py) + list(dev_requirements)))
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
# A kernel must run: is_available() is True on a GPU the build has no kernels for.
CHECK_CUDA = (
    "import sys, torch\n"
    "if not torch.cuda.is_available():\n"
    "    print('torch.cuda.is_available() is False'); sys.exit(1)\n"
    "(torch.ones(2, device='cuda') * 2).sum().item()\n"
    "print('CUDA ok: %s' % torch.cuda.get_device_name(0))"
)
TORCH_VERSION_QUERY = (
    "import importlib.metadata as m\n"
    "try:\n    print(m.version('torch'))\nexcept m.PackageNotFoundError:\n    print('')"
)


def read_stamp(venv: Path) -> dict:
    try:
        return json.loads((venv / STAMP_NAME).read_text(encoding="utf-8-sig"))
    except (OSError, ValueError):
        return {}


def apt_install(packages: Sequence[str], con: Console) -> tuple[int, list[str]]:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
    rc, lines = con.run("apt-get install " + " ".join(packages), cmd, env)
    if rc == 0:
        return rc, lines
    con.run("apt-get update", ["apt-get", "update"], env)
    return con.run("apt-get install " + " ".join(packages), cmd, env)


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
        help="take torch from this index instead (e.g. .../whl/cu126, .../whl/rocm7.2); "
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
    p.add_argument("--verbose", action="store_true", help="show pip's output as it runs")
    p.add_argument(
        "--light",
        action="store_true",
        help="tests only: install the project without its dependencies (no torch)",
    )
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    con = Console(args.verbose)
    system, machine = platform.system(), platform.machine()
    repo = Path(__file__).resolve().parent.parent
    home = str(Path.home())
    dry = args.dry_run
    failed: list[str] = []
    bits = struct.calcsize("P") * 8
    print(
        f"Chat Diffusion installer{' (dry run: nothing is changed)' if dry else ''}: "
        f"Python {sys.version.split()[0]} ({bits}-bit), {system} {machine}"
    )
    problem = host_python_problem(
        system, tuple(sys.version_info), bits, sys.executable, sys.base_prefix
    )
    if problem:
        print(f"error: {problem}")
        return 1
    try:
        place = choose_venv(
            system,
            str(repo / ".venv"),
            str(args.venv.expanduser().absolute()) if args.venv else None,
            os.environ,
            long_paths_enabled(),
        )
    except Unsupported as exc:
        print(f"error: {exc}")
        return 1
    venv = Path(place.path)
    if system == "Windows" and in_onedrive(str(repo), os.environ):
        print("    note: the project is inside OneDrive; keep it outside if OBS ever cannot "
              "read the script (files kept online only)")  # fmt: skip

    # 1. PyTorch choice
    con.step("Choosing PyTorch")
    gpus, gpu = ([], "not looked for (--light)") if args.light else detect_nvidia()
    con.info(f"GPU: {gpu}")
    try:
        choice = choose_torch(system, machine, gpus, args.cpu, mac_version())
    except Unsupported as exc:
        if not args.torch_index:
            print(f"error: {exc}")
            return 1
        choice = TorchChoice("cpu", f"torch=={TORCH_VERSION}", None, False, str(exc))
    if args.torch_index:
        url = None if args.torch_index.lower() == "pypi" else args.torch_index
        choice = dataclasses.replace(
            choice, index_url=url, fallback_to_default_index=False, reason="--torch-index"
        )
    if args.light:
        con.info("--light: the project only, without torch and the other dependencies")
    else:
        con.info(f"{choice.describe()}: {choice.reason}")

    # 2. venv
    py = venv_python(system, str(venv))
    con.step(f"Virtual environment {venv}")
    for note in place.notes:
        con.info(note)
    if os.path.exists(py):
        con.info("exists")
    elif venv.exists() and any(venv.iterdir()) and not (venv / "pyvenv.cfg").exists():
        print(f"error: {venv} exists and is not a virtual environment; choose --venv")
        return 2
    elif dry:
        con.info(f"would create it with {sys.executable} -m venv")
    else:
        rc, lines = con.run("creating", [sys.executable, "-m", "venv", str(venv)])
        if rc != 0 or not os.path.exists(py):
            con.failure(
                "could not create the virtual environment (on Debian/Ubuntu: apt install "
                "python3-venv)",
                lines,
            )
            return 1
    if not dry:
        con.log_path = venv / LOG_NAME
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        con._log(f"\n==== {started} install.py {' '.join(argv or sys.argv[1:])}\n")
        con.info(f'pip\'s output goes to "{con.log_path}"')

    # 3. packages
    extra = "[dev]" if args.dev else ""
    pyproject = (repo / "pyproject.toml").read_bytes()
    key = stamp_key(pyproject, choice, args.dev, args.light)
    con.step("Packages: PyTorch first, then Chat Diffusion" + (" [dev]" if args.dev else ""))
    stamp = read_stamp(venv)
    check = CHECK_LIGHT if args.light else CHECK_FULL
    up_to_date = False
    if os.path.exists(py) and stamp_accepts(
        stamp.get("key"), pyproject, choice, args.dev, args.light
    ):
        rc, out = venv_query(py, check)
        if rc == 0:
            up_to_date = True
            con.info(f"up to date, nothing changed ({out})")
        else:
            con.info(f"the stamp matches but the check failed ({out}): installing again")
    elif stamp:
        con.info("stamp differs (pyproject.toml, PyTorch build or options changed): installing")
    if not up_to_date:
        dev_reqs = DEV_EXTRA_REQUIREMENTS if args.dev else ()
        notes, commands, index = plan_packages(py, choice, f"{repo}{extra}", args.light, dev_reqs)
        for note in notes:
            con.info(note)
        if dry:
            for _, cmd in commands:
                con.info("would run: " + shell_join(cmd))
        else:
            for what, cmd in commands:
                rc, lines = con.run(what, cmd)
                if rc != 0:
                    con.failure(f"{what} did not install", lines)
                    return 1
            rc, out = venv_query(py, check)
            if rc != 0:
                print(f"error: installed, but the check failed: {out}")
                if con.log_path:
                    print(f'Full log: "{con.log_path}"')
                return 1
            con.info(f"check: {out}")
    if not dry and not args.light and choice.variant == "cuda":
        rc, out = venv_query(py, CHECK_CUDA)
        cuda_problem = cuda_check_problem(choice, rc, out)
        if cuda_problem:
            print(f"error: {cuda_problem}")
            return 1
        con.info(out)
    if not dry and not up_to_date:
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
    con.step("websocket-client for the Python that OBS uses")
    obs_folder_hint = obs_python_step(con, system, home, dry, args.skip_obs_python, failed)

    # 5. OBS itself (optional)
    if args.obs:
        con.step("OBS Studio, Xvfb and Chromium (--obs, for the end-to-end tests)")
        have = all(shutil.which(tool) for tool in TEST_TOOLS)
        apt_cmd = "apt-get install -y --no-install-recommends " + " ".join(TEST_APT_PACKAGES)
        if system != "Linux":
            con.info("install OBS Studio from https://obsproject.com (not automated here)")
        elif have:
            con.info("obs, Xvfb, chromium and chromedriver are installed")
        elif dry:
            con.info("would run: " + apt_cmd)
        elif is_root() and shutil.which("apt-get"):
            rc, lines = apt_install(TEST_APT_PACKAGES, con)
            if rc != 0:
                con.failure("OBS Studio, Xvfb and Chromium did not install", lines)
                failed.append("OBS Studio, Xvfb and Chromium")
        else:
            failed.append("OBS Studio, Xvfb and Chromium")
            con.info("run: sudo " + apt_cmd)

    # 6. next steps
    script = repo / "obs_script" / "chat_diffusion.py"
    host = venv_script(system, str(venv), "generator-host")
    q = _quote
    print(f"Done in {con.total():.0f} s{' (dry run)' if dry else ''}.")
    if failed:
        print("Left for you: " + "; ".join(failed) + " (commands above).")
    obs_python_line = (
        f' > Python Settings: choose "{obs_folder_hint}" (close OBS first);'
        if obs_folder_hint
        else ""
    )
    print(
        "\nNext steps\n"
        f"  1. Try it offline:   {q(host)} demo\n"
        f"  2. Write the config: {q(host)} init   (then set [twitch] channel in\n"
        f"     {q(config_file_path(system, os.environ, home))})\n"
        f"  3. Go live:          {q(host)} run\n"
        f"  4. In OBS: Tools > Scripts{obs_python_line} then + and choose\n"
        f"     {q(str(script))}\n"
        "  More: docs/install.md"
    )
    return 0


def _quote(path: str) -> str:
    """A path to paste into a terminal: quoted when it holds a space (user names do)."""
    return f'"{path}"' if " " in path else path


def obs_python_step(
    con: Console, system: str, home: str, dry: bool, skip: bool, failed: list[str]
) -> str | None:
    """Find OBS's Python, choose the one to use, install websocket-client into it.
    Returns the folder the user must choose in OBS's Python Settings (None: nothing to
    change there)."""
    obs = find_obs_python(system, os.environ, home)
    ok, probe = check_obs_python(obs.python) if obs.python else (False, None)
    if system in ("Windows", "Darwin"):
        found = installed_pythons(system)
        if found:
            con.info("Pythons found: " + ", ".join(describe_found(f) for f in found))
        plan = choose_obs_python(system, obs, probe, found)
        if plan.python and plan.python != obs.python:
            ok, probe = check_obs_python(plan.python)
    else:
        plan = ObsPlan(obs.python, None, obs.how)
        if os.path.isdir(os.path.join(home, ".var/app/com.obsproject.Studio")):
            con.info("note: a Flatpak OBS runs its own Python; see docs/install.md")
    con.info(f"OBS's Python: {plan.python or '(none usable)'}: {plan.message}")
    action = obs_python_action(
        system,
        plan.python,
        ok,
        is_root(),
        shutil.which("apt-get") is not None,
        bool(plan.python) and externally_managed(plan.python or ""),
    )
    if action.message:
        con.info(action.message)
    if action.kind == "run" and (dry or skip):
        con.info(("would run: " if dry else "skipped; to do it: ") + shell_join(action.command))
    elif action.kind == "run":
        if action.command[0] == "apt-get":
            rc, lines = apt_install(action.command[3:], con)
        else:
            rc, lines = con.run("pip install websocket-client", action.command)
        if rc == 0 and check_obs_python(plan.python or "")[0]:
            con.info("websocket-client now imports in OBS's Python")
        else:
            failed.append("websocket-client for OBS's Python")
            con.info("could not install it; run this yourself: " + shell_join(action.command))
    elif action.kind == "manual":
        failed.append("websocket-client for OBS's Python")
        con.info("run: " + shell_join(action.command))
    return plan.folder


if __name__ == "__main__":
    sys.exit(main())
