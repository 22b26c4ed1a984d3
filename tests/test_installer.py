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
    assert [d for d in deps if d.startswith("torch")] == [PIN]


# ----------------------------------------------------------------- which PyTorch

# What `nvidia-smi --query-gpu=name,compute_cap,driver_version --format=csv,noheader` prints.
RTX_3060_WIN = "NVIDIA GeForce RTX 3060, 8.6, 581.57\r\n"
RTX_3060_OLD_DRIVER = "NVIDIA GeForce RTX 3060, 8.6, 560.94\n"
GTX_1070 = "NVIDIA GeForce GTX 1070, 6.1, 581.57\n"
RTX_5090 = "NVIDIA GeForce RTX 5090, 12.0, 590.44.01\n"
RTX_5090_OLD_DRIVER = "NVIDIA GeForce RTX 5090, 12.0, 572.16\n"
GTX_980_ANCIENT = "NVIDIA GeForce GTX 980, 5.2, 511.79\n"
KEPLER = "NVIDIA GeForce GTX 780, 3.5, 535.10\n"
NO_CAP_OLD = "NVIDIA GeForce GTX 1060 6GB, 531.18\n"  # a driver without compute_cap
MIXED = "Tesla V100-PCIE-16GB, 7.0, 580.65.06\nNVIDIA L4, 8.9, 580.65.06\n"


def _gpus(text: str):
    return inst.parse_nvidia_smi(text)


def test_parse_nvidia_smi():
    (gpu,) = _gpus(RTX_5090)
    assert (gpu.name, gpu.capability, gpu.driver) == (
        "NVIDIA GeForce RTX 5090",
        (12, 0),
        (590, 44, 1),
    )
    (old,) = _gpus(NO_CAP_OLD)
    assert (old.capability, old.driver) == (None, (531, 18))
    assert len(_gpus(MIXED)) == 2
    assert _gpus("") == [] and _gpus("No devices were found\n") == []


@pytest.mark.parametrize(
    ("system", "smi", "tag"),
    [
        ("Windows", RTX_3060_WIN, "cu130"),  # Ampere, driver 580+: CUDA 13
        ("Windows", RTX_3060_OLD_DRIVER, "cu126"),  # driver < 580: CUDA 12.6 still runs
        ("Windows", GTX_1070, "cu126"),  # Pascal: CUDA 13 has no kernels for it
        ("Linux", RTX_5090, "cu130"),  # Blackwell: only CUDA 13 has its kernels
        ("Linux", MIXED, "cu126"),  # a Volta card in the box decides
        ("Windows", NO_CAP_OLD, "cu126"),  # capability unknown: never CUDA 13 on a guess
    ],
)
def test_the_cuda_build_follows_the_gpu_and_the_driver(system, smi, tag):
    choice = inst.choose_torch(system, "AMD64", _gpus(smi), False)
    assert choice.variant == "cuda" and choice.requirement == PIN
    assert choice.index_url == f"https://download.pytorch.org/whl/{tag}"
    assert not choice.fallback_to_default_index  # a CUDA build comes from its index or not at all


@pytest.mark.parametrize(
    ("smi", "says"),
    [
        (RTX_5090_OLD_DRIVER, "driver 580 or newer"),
        (GTX_980_ANCIENT, "too old"),
        (KEPLER, "compute capability 3.5"),
    ],
)
def test_no_cuda_build_fits_stops_with_what_to_do(smi, says):
    with pytest.raises(inst.Unsupported, match=says) as info:
        inst.choose_torch("Windows", "AMD64", _gpus(smi), False)
    assert "--cpu" in str(info.value)


def test_the_indexes_are_the_ones_pytorch_publishes_for_2_13():
    """cu128 was dropped in 2.12; 2.13 ships cu126 (legacy), cu130 and cu132 (RELEASE.md)."""
    assert inst.TORCH_VERSION == "2.13.0"
    assert [b[0] for b in inst.CUDA_BUILDS] == ["cu130", "cu126"]


@pytest.mark.parametrize(
    ("system", "machine", "smi", "cpu", "variant", "index"),
    [
        ("Linux", "x86_64", "", False, "cpu", inst.CPU_INDEX),
        ("Linux", "x86_64", RTX_3060_WIN, True, "cpu", inst.CPU_INDEX),
        ("Linux", "aarch64", "", False, "cpu", inst.CPU_INDEX),
        ("Windows", "AMD64", "", False, "cpu", None),
        ("Windows", "AMD64", RTX_3060_WIN, True, "cpu", None),
        ("Darwin", "arm64", "", False, "mps", None),
        ("Darwin", "arm64", "", True, "cpu", None),
        ("FreeBSD", "amd64", "", False, "cpu", None),
    ],
)
def test_choose_torch_without_cuda(system, machine, smi, cpu, variant, index):
    choice = inst.choose_torch(system, machine, _gpus(smi), cpu, (15, 1))
    assert (choice.variant, choice.requirement, choice.index_url) == (variant, PIN, index)
    assert choice.reason
    assert choice.fallback_to_default_index == (system == "Linux")


def test_intel_macs_and_macos_before_14_are_refused_in_one_line():
    with pytest.raises(inst.Unsupported, match="Intel Macs are not supported") as intel:
        inst.choose_torch("Darwin", "x86_64", [], False, (13, 6))
    assert "Rosetta" in str(intel.value) and "\n" not in str(intel.value)
    with pytest.raises(inst.Unsupported, match="macOS 14") as old:
        inst.choose_torch("Darwin", "arm64", [], False, (13, 6, 1))
    assert "13.6.1" in str(old.value)
    assert inst.choose_torch("Darwin", "arm64", [], False, (14, 0)).variant == "mps"


def test_a_cuda_build_that_cannot_use_the_gpu_stops_the_install():
    cuda = inst.choose_torch("Windows", "AMD64", _gpus(RTX_3060_WIN), False)
    assert inst.cuda_check_problem(cuda, 0, "CUDA ok: NVIDIA GeForce RTX 3060") is None
    problem = inst.cuda_check_problem(cuda, 1, "torch.cuda.is_available() is False")
    assert "is_available() is False" in problem and "driver" in problem
    kernel = "RuntimeError: CUDA error: no kernel image is available for execution"
    assert "no kernel image" in inst.cuda_check_problem(cuda, 1, kernel)
    cpu = inst.choose_torch("Linux", "x86_64", [], False)
    assert inst.cuda_check_problem(cpu, 1, "anything") is None


@pytest.mark.parametrize(
    ("installed", "system", "smi", "cpu", "action"),
    [
        (None, "Linux", "", False, "install"),
        ("", "Linux", "", False, "install"),
        ("2.13.0+cpu", "Linux", "", False, "keep"),
        ("2.12.1+cpu", "Linux", "", False, "install"),  # pip changes the version
        ("2.13.0+cpu", "Linux", RTX_3060_WIN, False, "replace"),  # a GPU appeared
        ("2.13.0", "Linux", RTX_3060_WIN, False, "keep"),  # PyPI's Linux build has CUDA
        ("2.13.0", "Linux", "", False, "keep"),  # works on the CPU too: no 2 GB again
        ("2.13.0+cu130", "Windows", "", True, "replace"),  # --cpu asked for
        ("2.13.0+cu130", "Windows", RTX_3060_WIN, False, "keep"),
        ("2.13.0", "Darwin", "", False, "keep"),
    ],
)
def test_torch_action(installed, system, smi, cpu, action):
    machine = "arm64" if system == "Darwin" else "x86_64"
    choice = inst.choose_torch(system, machine, _gpus(smi), cpu, (15, 0))
    assert inst.torch_action(installed, choice) == action


# ----------------------------------------------------------------- which Python, where


@pytest.mark.parametrize(
    ("system", "version", "bits", "exe", "says"),
    [
        ("Linux", (3, 11, 2), 64, "/usr/bin/python3", None),
        ("Windows", (3, 12, 7), 64, "C:\\Python312\\python.exe", None),
        ("Windows", (3, 12, 7), 32, "C:\\Python312-32\\python.exe", "32-bit"),
        ("Linux", (3, 9, 2), 64, "/usr/bin/python3", "3.9 is not supported"),
        ("Darwin", (3, 15, 0), 64, "/usr/local/bin/python3.15", "3.15 is not supported"),
        (
            "Windows",
            (3, 12, 7),
            64,
            "C:\\Users\\s\\AppData\\Local\\Microsoft\\WindowsApps\\python.exe",
            "Microsoft Store",
        ),
    ],
)
def test_host_python_problem(system, version, bits, exe, says):
    problem = inst.host_python_problem(system, version, bits, exe, "")
    if says is None:
        assert problem is None
    else:
        assert says in problem and "python.org" in problem


def test_store_python_is_recognised_by_its_package_folder():
    prefix = (
        "C:\\Program Files\\WindowsApps\\"
        "PythonSoftwareFoundation.Python.3.12_3.12.2288.0_x64__qbz5n2kfra8p0"
    )
    assert inst.is_store_python("C:\\venv\\Scripts\\python.exe", prefix)
    assert not inst.is_store_python(
        "C:\\Users\\s\\AppData\\Local\\Programs\\Python\\Python312\\python.exe",
        "C:\\Users\\s\\AppData\\Local\\Programs\\Python\\Python312",
    )


DOWNLOADS = "C:\\Users\\Streamer\\Downloads\\chat-diffusion-main\\chat-diffusion-main\\.venv"
LOCAL = "C:\\Users\\Streamer\\AppData\\Local"


def test_windows_venv_moves_to_a_short_path_when_long_paths_are_off():
    """torch's licence files sit ~191 characters deep in a venv; Windows stops at 260."""
    env = {"LOCALAPPDATA": LOCAL}
    assert len(DOWNLOADS) + 1 + 191 > 259  # the venv the issue saw fail
    moved = inst.choose_venv("Windows", DOWNLOADS, None, env, long_paths=False)
    assert moved.path == LOCAL + "\\chat-diffusion\\venv"
    assert len(moved.path) + 1 + inst.DEEPEST_IN_VENV <= 259
    assert "too long" in moved.notes[0]
    kept = inst.choose_venv("Windows", DOWNLOADS, None, env, long_paths=True)
    assert kept.path == DOWNLOADS and not kept.notes
    short = "C:\\cd\\.venv"
    assert inst.choose_venv("Windows", short, None, env, long_paths=False).path == short
    assert inst.choose_venv("Linux", "/" + "x" * 300, None, {}, False).path == "/" + "x" * 300


def test_a_too_long_venv_that_cannot_move_explains_long_paths():
    with pytest.raises(inst.Unsupported, match="LongPathsEnabled"):
        inst.choose_venv("Windows", DOWNLOADS, DOWNLOADS, {"LOCALAPPDATA": LOCAL}, False)
    deep = "C:\\Users\\" + "a-very-long-user-name-" * 3 + "\\AppData\\Local"
    with pytest.raises(inst.Unsupported, match="LongPathsEnabled"):
        inst.choose_venv("Windows", DOWNLOADS, None, {"LOCALAPPDATA": deep}, False)


def test_a_project_inside_onedrive_keeps_its_venv_outside():
    od = "C:\\Users\\Streamer\\OneDrive"
    env = {"LOCALAPPDATA": LOCAL, "OneDrive": od}
    repo_venv = od + "\\Documents\\cd\\.venv"
    assert inst.in_onedrive(repo_venv, env)
    assert inst.in_onedrive("D:\\OneDrive - Contoso\\cd\\.venv", {})
    assert not inst.in_onedrive("C:\\cd\\.venv", env)
    place = inst.choose_venv("Windows", repo_venv, None, env, long_paths=True)
    assert place.path == LOCAL + "\\chat-diffusion\\venv"
    assert "OneDrive" in place.notes[0]


def test_stamp_key_changes_with_everything_it_depends_on():
    cpu = inst.choose_torch("Linux", "x86_64", [], False)
    cuda = inst.choose_torch("Linux", "x86_64", _gpus(RTX_3060_WIN), False)
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
    cpu = inst.choose_torch("Linux", "x86_64", [], False)
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


def _action(system, python="/usr/bin/python3", ok=False, **kw):
    args = {"is_root": False, "has_apt": False, "externally_managed": False} | kw
    return inst.obs_python_action(system, python, ok, **args)


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
    assert _action("Darwin", python=None).kind == "manual"
    brew = _action("Darwin", python="/opt/homebrew/bin/python3.12", externally_managed=True)
    assert brew.kind == "manual" and "PEP 668" in brew.message


# What `py -0p` prints: the launcher of Python 3.11+ and an older one.
_PROGS = "C:\\Users\\Jo Ann\\AppData\\Local\\Programs\\Python"
PY_LIST_NEW = (
    f" -V:3.14 *        {_PROGS}\\Python314\\python.exe\r\n"
    f" -V:3.13t         {_PROGS}\\Python313\\python3.13t.exe\r\n"
    f" -V:3.12          {_PROGS}\\Python312\\python.exe\r\n"
    f" -V:3.11-32       {_PROGS}\\Python311-32\\python.exe\r\n"
    " -V:3.10-arm64    C:\\Python310-arm64\\python.exe\r\n"
)
PY_LIST_OLD = (
    " -3.10-64 *      C:\\Python310\\python.exe\n -3.8-32         C:\\Python38-32\\python.exe\n"
)


def test_the_pythons_found_are_listed_with_what_obs_can_load():
    found = inst.parse_py_list(PY_LIST_NEW)
    assert [inst.describe_found(f) for f in found] == [
        "3.14 (OBS cannot load it)",
        "3.12",
        "3.11 32-bit (OBS cannot load it)",
    ]


def test_printed_paths_with_spaces_are_quoted():
    assert inst._quote("C:\\Users\\Jo Ann\\cd\\.venv\\Scripts\\generator-host.exe") == (
        '"C:\\Users\\Jo Ann\\cd\\.venv\\Scripts\\generator-host.exe"'
    )
    assert (
        inst._quote("/home/jo/cd/.venv/bin/generator-host")
        == "/home/jo/cd/.venv/bin/generator-host"
    )


def test_parse_py_list_new_and_old_launchers():
    found = inst.parse_py_list(PY_LIST_NEW)
    assert [(f.version, f.bits) for f in found] == [((3, 14), 64), ((3, 12), 64), ((3, 11), 32)]
    assert found[1].path.endswith("Python312\\python.exe") and " " in found[1].path
    old = inst.parse_py_list(PY_LIST_OLD)
    assert [(f.version, f.bits, f.path) for f in old] == [
        ((3, 10), 64, "C:\\Python310\\python.exe"),
        ((3, 8), 32, "C:\\Python38-32\\python.exe"),
    ]
    assert inst.parse_py_list("no pythons found\n") == []


def _obs(python, how="set in OBS's Python Settings"):
    return inst.ObsPython(python, how)


def test_obs_python_choice_prefers_the_newest_python_obs_can_load():
    """3.14 is the default `py` picks; OBS up to 32.x loads 3.12 at most: 3.12 it is."""
    found = inst.parse_py_list(PY_LIST_NEW)
    plan = inst.choose_obs_python(
        "Windows", _obs(None, "OBS's Python Settings are not set yet"), None, found
    )
    assert plan.python.endswith("Python312\\python.exe")
    assert plan.folder == "C:\\Users\\Jo Ann\\AppData\\Local\\Programs\\Python\\Python312"
    assert "close OBS first" in plan.message and f'"{plan.folder}"' in plan.message


def test_obs_set_to_a_python_it_cannot_load_gets_a_loadable_one():
    found = inst.parse_py_list(PY_LIST_NEW)
    py314 = found[0].path
    plan = inst.choose_obs_python("Windows", _obs(py314), ((3, 14), 64), found)
    assert plan.python.endswith("Python312\\python.exe")
    assert "3.14, which OBS (up to 32.x) cannot load" in plan.message
    good = inst.choose_obs_python("Windows", _obs(found[1].path), ((3, 12), 64), found)
    assert (good.python, good.folder) == (found[1].path, None)  # nothing to change in OBS
    only_32 = [inst.FoundPython((3, 11), 32, "C:\\P311-32\\python.exe")]
    none = inst.choose_obs_python("Windows", _obs(None, "not set"), None, only_32)
    assert none.python is None and "install Python 3.12 (64-bit, from python.org)" in none.message


def test_macos_obs_python_choice_skips_homebrew_and_points_at_library_frameworks():
    brew = "/opt/homebrew/opt/python@3.12/Frameworks/Python.framework/Versions/3.12/bin/python3.12"
    frameworks = {
        "/Library/Frameworks/Python.framework/Versions/3.11/bin/python3.11",
        "/Library/Frameworks/Python.framework/Versions/3.13/bin/python3.13",
    }
    found = inst.framework_pythons(frameworks.__contains__)
    assert [f.version for f in found] == [(3, 11), (3, 13)]
    plan = inst.choose_obs_python("Darwin", _obs(brew), ((3, 12), 64), found)
    assert plan.python.endswith("3.11/bin/python3.11")
    assert plan.folder == "/Library/Frameworks"
    assert "Homebrew" in plan.message
    assert inst.is_homebrew(brew) and not inst.is_homebrew(plan.python)


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
    # double-clicked from Explorer (cmd /c "...install.bat"), the window waits at the end
    assert b"cmdcmdline" in bat and b"pause" in bat
    # the newest Python OBS can also load comes first; 64-bit only
    assert b"for %%V in (3.12 3.13 3.11 3.14 3.10)" in bat and b"-%%V-64" in bat
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


def _repo_copy(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    (repo / "install").mkdir(parents=True)
    shutil.copy2(INSTALL_PY, repo / "install" / "install.py")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, repo / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for pkg in ("generator_host", "obs_script"):
        shutil.copytree(REPO / pkg, repo / pkg, ignore=ignore)
    return repo


def test_second_run_changes_nothing_and_is_fast(tmp_path):
    """--light in a copy of the repo: a real venv and a real editable install, no torch.

    The first run is calm: one line per step, pip's output in the log whose path it
    prints (it printed ~190 lines of pip before)."""
    require(_venv_works(), "the venv module with ensurepip (Debian: python3-venv)")
    repo = _repo_copy(tmp_path)
    installer = repo / "install" / "install.py"
    venv = tmp_path / "venv"
    args = ["--light", "--skip-obs-python", "--venv", str(venv)]

    first, t1 = _run(args, tmp_path, installer=installer)
    assert first.returncode == 0, first.stdout + first.stderr
    assert (venv / inst.STAMP_NAME).exists()
    assert "generator_host imports" in first.stdout
    log = venv / inst.LOG_NAME
    assert f'"{log}"' in first.stdout
    assert "Successfully installed" in log.read_text(encoding="utf-8")
    assert "Successfully installed" not in first.stdout and "Obtaining" not in first.stdout
    lines = first.stdout.strip().splitlines()
    assert len(lines) <= 25, first.stdout
    assert "Chat Diffusion: done (" in first.stdout

    second, t2 = _run(args, tmp_path, installer=installer)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "up to date, nothing changed" in second.stdout
    assert ": done (" not in second.stdout
    assert t2 < 10, f"second run took {t2:.1f} s (first {t1:.1f} s)"

    # a changed pyproject.toml changes the stamp: the next run installs again
    with open(repo / "pyproject.toml", "a", encoding="utf-8") as f:
        f.write("\n# changed\n")
    third, _ = _run(args, tmp_path, installer=installer)
    assert third.returncode == 0, third.stdout + third.stderr
    assert "stamp differs" in third.stdout and "Chat Diffusion: done (" in third.stdout


def test_a_failing_pip_shows_its_own_words_and_the_log(tmp_path):
    require(_venv_works(), "the venv module with ensurepip (Debian: python3-venv)")
    repo = _repo_copy(tmp_path)
    (repo / "pyproject.toml").write_text("[project\nname = broken\n", encoding="utf-8")
    venv = tmp_path / "venv"
    out, _ = _run(
        ["--light", "--skip-obs-python", "--venv", str(venv)],
        tmp_path,
        installer=repo / "install" / "install.py",
    )
    assert out.returncode == 1, out.stdout
    assert "error: Chat Diffusion did not install" in out.stdout
    assert "  | " in out.stdout  # pip's own lines, shown on failure
    assert f'Full log: "{venv / inst.LOG_NAME}"' in out.stdout
    assert not (venv / inst.STAMP_NAME).exists()


def test_refuses_a_folder_that_is_not_a_venv(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me", encoding="utf-8")
    out, _ = _run(["--light", "--skip-obs-python", "--venv", str(tmp_path)], tmp_path)
    assert out.returncode == 2 and "not a virtual environment" in out.stdout
    assert (tmp_path / "precious.txt").read_text(encoding="utf-8") == "keep me"


@pytest.mark.skipif(os.name == "nt", reason="POSIX shell")
def test_install_sh_is_valid_shell():
    require(shutil.which("sh") is not None, "sh")
    assert subprocess.run(["sh", "-n", str(REPO / "install" / "install.sh")]).returncode == 0
