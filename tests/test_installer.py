"""install/install.py: its pure decisions for Linux, macOS and Windows, and real runs.

The real runs use `--dry-run` (nothing changes) and `--light` (the project without its
dependencies, in a throwaway venv), so the whole file takes about 15 s. The full install
with PyTorch is exercised by the README's command in CI.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.requirements import require

REPO = Path(__file__).resolve().parent.parent
INSTALL_PY = REPO / "install" / "install.py"


def _load():
    spec = importlib.util.spec_from_file_location("chat_diffusion_installer", INSTALL_PY)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


inst = _load()
PIN = f"torch=={inst.TORCH_VERSION}"


def test_the_package_pins_the_torch_the_installer_installs() -> None:
    """A plain `pip install -e .` must not pull another (multi-GB) torch build."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    torch = [d for d in deps if d.startswith("torch")]
    assert f"{PIN}; sys_platform != 'darwin' or platform_machine != 'x86_64'" in torch
    assert all(d.startswith(PIN) or "platform_machine == 'x86_64'" in d for d in torch)


# ----------------------------------------------------------------- choose_torch


@pytest.mark.parametrize(
    ("system", "machine", "nvidia", "cpu", "variant", "requirement", "index"),
    [
        ("Linux", "x86_64", False, False, "cpu", PIN, inst.CPU_INDEX),
        ("Linux", "x86_64", True, False, "cuda", PIN, None),
        ("Linux", "x86_64", True, True, "cpu", PIN, inst.CPU_INDEX),
        ("Linux", "aarch64", False, False, "cpu", PIN, inst.CPU_INDEX),
        ("Windows", "AMD64", True, False, "cuda", PIN, inst.CUDA_INDEX),
        ("Windows", "AMD64", False, False, "cpu", PIN, None),
        ("Windows", "AMD64", True, True, "cpu", PIN, None),
        ("Darwin", "arm64", False, False, "mps", PIN, None),
        ("Darwin", "arm64", False, True, "cpu", PIN, None),
        ("Darwin", "x86_64", False, False, "cpu", "torch>=2.1", None),
        ("FreeBSD", "amd64", False, False, "cpu", PIN, None),
    ],
)
def test_choose_torch(system, machine, nvidia, cpu, variant, requirement, index):
    choice = inst.choose_torch(system, machine, nvidia, cpu)
    assert (choice.variant, choice.requirement, choice.index_url) == (
        variant,
        requirement,
        index,
    )
    assert choice.reason


def test_cuda_index_is_a_cuda_12_index_and_only_linux_cpu_falls_back():
    assert inst.CUDA_INDEX.startswith("https://download.pytorch.org/whl/cu12")
    assert inst.choose_torch("Linux", "x86_64", False, False).fallback_to_default_index
    # a CUDA build must come from its index or not at all: PyPI's Windows torch is CPU only
    assert not inst.choose_torch("Windows", "AMD64", True, False).fallback_to_default_index


@pytest.mark.parametrize(
    ("installed", "system", "nvidia", "cpu", "action"),
    [
        (None, "Linux", False, False, "install"),
        ("", "Linux", False, False, "install"),
        ("2.13.0+cpu", "Linux", False, False, "keep"),
        ("2.12.1+cpu", "Linux", False, False, "install"),  # pip changes the version
        ("2.13.0+cpu", "Linux", True, False, "replace"),  # a GPU appeared
        ("2.13.0", "Linux", True, False, "keep"),  # PyPI's Linux build has CUDA
        ("2.13.0", "Linux", False, False, "keep"),  # works on the CPU too: no 2 GB again
        ("2.13.0+cu128", "Windows", False, True, "replace"),  # --cpu asked for
        ("2.13.0+cu128", "Windows", True, False, "keep"),
        ("2.13.0", "Darwin", False, False, "keep"),
    ],
)
def test_torch_action(installed, system, nvidia, cpu, action):
    machine = "arm64" if system == "Darwin" else "x86_64"
    choice = inst.choose_torch(system, machine, nvidia, cpu)
    assert inst.torch_action(installed, choice) == action


def test_stamp_key_changes_with_everything_it_depends_on():
    cpu = inst.choose_torch("Linux", "x86_64", False, False)
    cuda = inst.choose_torch("Linux", "x86_64", True, False)
    base = inst.stamp_key(b"[project]\n", cpu, False, False)
    assert base == inst.stamp_key(b"[project]\n", cpu, False, False)
    others = {
        inst.stamp_key(b"[project]\n# changed\n", cpu, False, False),
        inst.stamp_key(b"[project]\n", cuda, False, False),
        inst.stamp_key(b"[project]\n", cpu, True, False),
        inst.stamp_key(b"[project]\n", cpu, False, True),
    }
    assert base not in others and len(others) == 4


def test_a_dev_install_serves_a_plain_run_but_not_the_reverse():
    cpu = inst.choose_torch("Linux", "x86_64", False, False)
    dev_key = inst.stamp_key(b"p", cpu, True, False)
    plain_key = inst.stamp_key(b"p", cpu, False, False)
    assert inst.stamp_accepts(dev_key, b"p", cpu, False, False)
    assert inst.stamp_accepts(dev_key, b"p", cpu, True, False)
    assert not inst.stamp_accepts(plain_key, b"p", cpu, True, False)
    assert not inst.stamp_accepts(None, b"p", cpu, False, False)
    assert not inst.stamp_accepts(dev_key, b"p2", cpu, False, False)


# ----------------------------------------------------------------- OBS's ini files

# What OBS 30 on Windows writes (abridged), BOM included.
WINDOWS_GLOBAL_INI = (
    "\ufeff[General]\r\n"
    "Pre19Defaults=false\r\n"
    "Pre21Defaults=false\r\n"
    "FirstRun=true\r\n"
    "LastVersion=503316480\r\n"
    "\r\n"
    "[BasicWindow]\r\n"
    "geometry=AdnQywADAAAAAAAAAAAAFwAAB38AAAQWAAAAAAAAAB0AAAd/AAAEFgAAAAAAAAAAB4A=\r\n"
    "DockState=AAAA/wAAAAD9AAAAAQAAAAMAAAeAAAABIvwBAAAABfsAAAAUAHMAYwBlAG4AZQBzAEQA==\r\n"
    "gridMode=false\r\n"
    "\r\n"
    "[Basic]\r\n"
    "Profile=Untitled\r\n"
    "ProfileDir=Untitled\r\n"
    "SceneCollection=Untitled\r\n"
    "SceneCollectionFile=Untitled\r\n"
    "\r\n"
    "[Python]\r\n"
    "Path64bit=C:/Users/Streamer/AppData/Local/Programs/Python/Python311\r\n"
    "\r\n"
    "[scripts-tool]\r\n"
    "prevScriptRow=0\r\n"
    "\r\n"
    "[OBSWebSocket]\r\n"
    "ServerPassword=a%b:c=d\r\n"
)


def test_parse_obs_global_ini_realistic_windows_file_with_bom():
    assert (
        inst.parse_obs_global_ini(WINDOWS_GLOBAL_INI)
        == "C:/Users/Streamer/AppData/Local/Programs/Python/Python311"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[General]\nFirstRun=true\n", None),  # no [Python] section
        ("", None),
        ("[Python]\nPath64bit=\n", None),  # emptied in the dialog
        ("[Python]\npath64bit=/x\n", None),  # keys are case-sensitive in OBS
        ("[Python]\nPath32bit=C:\\Python38-32\n", "C:\\Python38-32"),
        ("\ufeff[Python]\nPath64bit = /Library/Frameworks \n", "/Library/Frameworks"),
        ("not an ini file at all\n[[[", None),
        ("[Python]\nPath64bit=/a\n[Python]\nPath64bit=/b\n", "/b"),  # tolerated duplicates
    ],
)
def test_parse_obs_global_ini_edge_cases(text, expected):
    assert inst.parse_obs_global_ini(text) == expected


def _fs(files: dict[str, str], executables: set[str]):
    return files.get, executables.__contains__


def test_find_obs_python_windows_from_global_ini():
    appdata = "C:\\Users\\Streamer\\AppData\\Roaming"
    read, exists = _fs(
        {appdata + "\\obs-studio\\global.ini": WINDOWS_GLOBAL_INI},
        {"C:\\Users\\Streamer\\AppData\\Local\\Programs\\Python\\Python311\\python.exe"},
    )
    obs = inst.find_obs_python("Windows", {"APPDATA": appdata}, "C:\\Users\\Streamer", read, exists)
    assert (
        obs.python == "C:\\Users\\Streamer\\AppData\\Local\\Programs\\Python\\Python311\\python.exe"
    )
    assert obs.config_file == appdata + "\\obs-studio\\global.ini"


def test_find_obs_python_windows_prefers_obs31_user_ini():
    appdata = "C:\\Users\\S\\AppData\\Roaming"
    read, exists = _fs(
        {
            appdata + "\\obs-studio\\user.ini": "[Python]\nPath64bit=D:/Py312\n",
            appdata + "\\obs-studio\\global.ini": "[Python]\nPath64bit=D:/Py310\n",
        },
        {"D:\\Py312\\python.exe", "D:\\Py310\\python.exe"},
    )
    obs = inst.find_obs_python("Windows", {"APPDATA": appdata}, "C:\\Users\\S", read, exists)
    assert obs.python == "D:\\Py312\\python.exe"


def test_find_obs_python_windows_not_configured_or_missing():
    appdata = "C:\\A"
    read, exists = _fs({}, set())
    obs = inst.find_obs_python("Windows", {"APPDATA": appdata}, "C:\\U", read, exists)
    assert obs.python is None and "not set" in obs.how
    read, exists = _fs(
        {appdata + "\\obs-studio\\global.ini": "[Python]\nPath64bit=E:/Gone\n"}, set()
    )
    obs = inst.find_obs_python("Windows", {"APPDATA": appdata}, "C:\\U", read, exists)
    assert obs.python is None and "E:/Gone" in obs.how


def test_find_obs_python_macos_new_and_old_style_paths():
    ini = "/Users/s/Library/Application Support/obs-studio/global.ini"
    # OBS 30+: the folder holding Python.framework; the newest version wins, as in OBS
    read, exists = _fs(
        {ini: "[Python]\nPath64bit=/Library/Frameworks\n"},
        {
            "/Library/Frameworks/Python.framework/Versions/3.10/bin/python3.10",
            "/Library/Frameworks/Python.framework/Versions/3.12/bin/python3.12",
        },
    )
    obs = inst.find_obs_python("Darwin", {}, "/Users/s", read, exists)
    assert obs.python == "/Library/Frameworks/Python.framework/Versions/3.12/bin/python3.12"
    # older OBS: the Versions/3.X folder itself
    old = "/Library/Frameworks/Python.framework/Versions/3.11"
    read, exists = _fs({ini: f"[Python]\nPath64bit={old}\n"}, {old + "/bin/python3"})
    obs = inst.find_obs_python("Darwin", {}, "/Users/s", read, exists)
    assert obs.python == old + "/bin/python3"


def test_find_obs_python_linux_is_the_system_python():
    obs = inst.find_obs_python("Linux", {}, "/home/s", lambda p: None, lambda p: False)
    assert obs.python == "/usr/bin/python3"


def test_obs_config_dirs():
    assert inst.obs_config_dirs("Windows", {"APPDATA": "C:\\R"}, "C:\\U") == ["C:\\R\\obs-studio"]
    assert inst.obs_config_dirs("Darwin", {}, "/Users/s") == [
        "/Users/s/Library/Application Support/obs-studio"
    ]
    assert inst.obs_config_dirs("Linux", {"XDG_CONFIG_HOME": "/x"}, "/h") == ["/x/obs-studio"]


# ----------------------------------------------------------------- what to do about it


def _action(system, python="/usr/bin/python3", ok=False, version="3.11", **kw):
    obs = inst.ObsPython(python, "test")
    args = {"is_root": False, "has_apt": False, "externally_managed": False} | kw
    return inst.obs_python_action(system, obs, ok, version, **args)


def test_obs_python_action_linux():
    assert _action("Linux", ok=True).kind == "ok"
    root = _action("Linux", is_root=True, has_apt=True, externally_managed=True)
    assert (root.kind, root.command) == ("run", ("apt-get", "install", "-y", "python3-websocket"))
    user = _action("Linux", has_apt=True, externally_managed=True)
    assert (user.kind, user.command) == ("manual", ("sudo", "apt", "install", "python3-websocket"))
    assert _action("Linux", externally_managed=True).kind == "manual"
    pip = _action("Linux")
    assert pip.kind == "run" and pip.command[-2:] == ("--user", "websocket-client")


def test_obs_python_action_windows_and_macos():
    win = _action("Windows", python="C:\\Py\\python.exe")
    assert win.kind == "run"
    assert win.command == ("C:\\Py\\python.exe", "-m", "pip", "install", "websocket-client")
    assert _action("Windows", python="C:\\Py\\python.exe", ok=True).kind == "ok"
    unknown = _action("Darwin", python=None, version=None)
    assert unknown.kind == "manual" and "Python Settings" in unknown.message
    old = _action("Darwin", python="/p/bin/python3", version="3.8")
    assert old.kind == "manual" and "3.9" in old.message


def test_config_file_paths_match_platformdirs_conventions():
    assert inst.config_file_path("Linux", {}, "/home/s") == (
        "/home/s/.config/chat-diffusion/config.toml"
    )
    assert inst.config_file_path("Darwin", {}, "/Users/s") == (
        "/Users/s/Library/Application Support/chat-diffusion/config.toml"
    )
    assert inst.config_file_path("Windows", {"LOCALAPPDATA": "C:\\L"}, "C:\\U") == (
        "C:\\L\\chat-diffusion\\config.toml"
    )
    assert inst.venv_script("Windows", "C:\\r\\.venv", "generator-host") == (
        "C:\\r\\.venv\\Scripts\\generator-host.exe"
    )


def test_app_name_matches_the_host_settings():
    settings = (REPO / "generator_host" / "core" / "settings.py").read_text(encoding="utf-8")
    assert f'APP_NAME = "{inst.APP_NAME}"' in settings


# ----------------------------------------------------------------- wrappers


def test_wrappers_call_install_py():
    sh = (REPO / "install" / "install.sh").read_text(encoding="utf-8")
    assert sh.startswith("#!/bin/sh") and 'install.py" "$@"' in sh
    bat = (REPO / "install" / "install.bat").read_bytes()
    assert b"\r\n" in bat and bat.count(b"\n") == bat.count(b"\r\n")  # cmd wants CRLF
    assert b'install.py" %*' in bat
    require(shutil.which("sh") is not None, "sh")
    out = subprocess.run(
        ["sh", str(REPO / "install" / "install.sh"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and "--dry-run" in out.stdout


# ----------------------------------------------------------------- real runs


def _run(args, cwd, timeout=300, installer=INSTALL_PY):
    t = time.monotonic()
    out = subprocess.run(
        [sys.executable, str(installer), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )
    return out, time.monotonic() - t


def test_dry_run_prints_the_plan_and_changes_nothing(tmp_path):
    venv = tmp_path / "v"
    out, took = _run(["--dry-run", "--dev", "--venv", str(venv)], tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    assert not venv.exists()
    assert "would create" in text
    assert PIN in text or "torch>=" in text
    assert "OBS's Python:" in text
    assert str(REPO / "obs_script" / "chat_diffusion.py") in text
    assert "generator-host" in text and "demo" in text and "init" in text
    assert took < 30


def _venv_works() -> bool:
    return importlib.util.find_spec("ensurepip") is not None


def test_second_run_changes_nothing_and_is_fast(tmp_path):
    """--light in a copy of the repo: a real venv and a real editable install, no torch."""
    require(_venv_works(), "the venv module with ensurepip (Debian: python3-venv)")
    repo = tmp_path / "repo"
    (repo / "install").mkdir(parents=True)
    shutil.copy2(INSTALL_PY, repo / "install" / "install.py")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, repo / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for pkg in ("generator_host", "obs_script"):
        shutil.copytree(REPO / pkg, repo / pkg, ignore=ignore)
    installer = repo / "install" / "install.py"
    venv = tmp_path / "venv"
    args = ["--light", "--skip-obs-python", "--venv", str(venv)]

    first, t1 = _run(args, tmp_path, installer=installer)
    assert first.returncode == 0, first.stdout + first.stderr
    assert (venv / inst.STAMP_NAME).exists()
    assert "generator_host imports" in first.stdout

    second, t2 = _run(args, tmp_path, installer=installer)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "up to date, nothing changed" in second.stdout
    assert "pip install" not in second.stdout and "-m venv" not in second.stdout
    assert t2 < 10, f"second run took {t2:.1f} s (first {t1:.1f} s)"

    # a changed pyproject.toml changes the stamp: the next run installs again
    with open(repo / "pyproject.toml", "a", encoding="utf-8") as f:
        f.write("\n# changed\n")
    third, _ = _run(args, tmp_path, installer=installer)
    assert third.returncode == 0, third.stdout + third.stderr
    assert "stamp differs" in third.stdout and "pip install" in third.stdout


def test_refuses_a_folder_that_is_not_a_venv(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me", encoding="utf-8")
    out, _ = _run(["--light", "--skip-obs-python", "--venv", str(tmp_path)], tmp_path)
    assert out.returncode == 2 and "not a virtual environment" in out.stdout
    assert (tmp_path / "precious.txt").read_text(encoding="utf-8") == "keep me"


@pytest.mark.skipif(os.name == "nt", reason="POSIX shell")
def test_install_sh_is_valid_shell():
    require(shutil.which("sh") is not None, "sh")
    assert subprocess.run(["sh", "-n", str(REPO / "install" / "install.sh")]).returncode == 0
