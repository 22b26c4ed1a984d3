"""A probe script loaded beside Chat Diffusion in a real OBS (tests only).

Its hotkey does what OBS's properties view does when the streamer changes a field of the
Chat Diffusion panel: set the value in that script's settings and call its
script_update, on OBS's own thread. The change to make comes in this probe's settings
("change": JSON of {"section.key": value}).
"""

import json
import sys

import obspython as obs

HOTKEY = "chat_diffusion_probe.panel_change"
_state = {"hotkey": None, "change": {}}


def script_load(settings):
    _state["change"] = json.loads(obs.obs_data_get_string(settings, "change") or "{}")
    _state["hotkey"] = obs.obs_hotkey_register_frontend(HOTKEY, "probe: change the panel", _pressed)


def script_unload():
    if _state["hotkey"] is not None:
        obs.obs_hotkey_unregister(_state["hotkey"])


def _pressed(down):
    if down:
        obs.timer_add(_apply, 10)  # the properties view works on OBS's thread, so do we


def _apply():
    obs.remove_current_callback()
    target = sys.modules["chat_diffusion"]
    data = target.S.data
    for key, value in _state["change"].items():
        if isinstance(value, bool):
            obs.obs_data_set_bool(data, key, value)
        elif isinstance(value, int):
            obs.obs_data_set_int(data, key, value)
        elif isinstance(value, float):
            obs.obs_data_set_double(data, key, value)
        else:
            obs.obs_data_set_string(data, key, str(value))
    target.script_update(data)
    print(f"[probe] changed the panel: {_state['change']}", flush=True)
