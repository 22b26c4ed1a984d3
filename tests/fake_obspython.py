"""A stand-in for OBS's `obspython` module, for the script's unit tests only.

It implements the calls the script makes, keeps sources with their settings, records
every call with the thread it came from, and counts references: every source, data
object and data array handed out must be released, as in real OBS (where a missed release
leaks memory or keeps a removed source alive). The real OBS is tested in test_obs_e2e.py.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any

OBS_TEXT_DEFAULT, OBS_TEXT_PASSWORD, OBS_TEXT_MULTILINE, OBS_TEXT_INFO = 0, 1, 2, 3
OBS_TEXT_INFO_NORMAL, OBS_TEXT_INFO_WARNING, OBS_TEXT_INFO_ERROR = 0, 1, 2
OBS_COMBO_TYPE_INVALID, OBS_COMBO_TYPE_EDITABLE, OBS_COMBO_TYPE_LIST = 0, 1, 2
OBS_COMBO_FORMAT_INVALID, OBS_COMBO_FORMAT_INT, OBS_COMBO_FORMAT_FLOAT = 0, 1, 2
OBS_COMBO_FORMAT_STRING = 3
OBS_PATH_FILE, OBS_PATH_FILE_SAVE, OBS_PATH_DIRECTORY = 0, 1, 2
LOG_ERROR, LOG_WARNING, LOG_INFO, LOG_DEBUG = 100, 200, 300, 400


class Data:
    """obs_data_t: settings with defaults."""

    def __init__(self, values: dict[str, Any] | None = None) -> None:
        self.values: dict[str, Any] = dict(values or {})
        self.defaults: dict[str, Any] = {}

    def get(self, key: str, fallback: Any) -> Any:
        return self.values.get(key, self.defaults.get(key, fallback))


class Source:
    def __init__(self, name: str, kind: str, settings: dict[str, Any] | None = None) -> None:
        self.name, self.kind = name, kind
        self.settings: dict[str, Any] = dict(settings or {})
        self.updates: list[dict[str, Any]] = []


class Property:
    def __init__(self, name: str, label: str, kind: str, **extra: Any) -> None:
        self.name, self.label, self.kind = name, label, kind
        self.items: list[tuple[str, Any]] = []
        self.extra = extra
        self.long_description = ""


class Properties:
    def __init__(self) -> None:
        self.props: dict[str, Property] = {}

    def add(self, prop: Property) -> Property:
        self.props[prop.name] = prop
        return prop


class FakeOBS:
    """State of the fake OBS; `module` is what the script imports as obspython."""

    def __init__(self) -> None:
        self.sources: dict[str, Source] = {}
        self.refs: dict[int, tuple[str, Any]] = {}
        self._ids = itertools.count(1)
        self.timers: list[tuple[Callable[[], None], int]] = []
        self.hotkeys: dict[int, tuple[str, str, Callable[[bool], None]]] = {}
        self.hotkey_bindings: dict[int, list[Any]] = {}
        self.calls: list[tuple[str, str]] = []  # (function, thread name)
        self.script_logs: list[tuple[int, str]] = []  # (level, line) via script_log
        self.obs_thread = threading.current_thread().name
        self.module = self._build_module()

    # --- helpers for tests -----------------------------------------------------------
    def add_source(self, name: str, kind: str, **settings: Any) -> Source:
        self.sources[name] = Source(name, kind, settings)
        return self.sources[name]

    def tick(self) -> None:
        """One round of OBS timers, on the calling ('OBS') thread."""
        for callback, _ in list(self.timers):
            callback()

    def leaks(self) -> list[str]:
        return [f"{kind} {obj!r}" for kind, obj in self.refs.values()]

    def foreign_thread_calls(self) -> list[tuple[str, str]]:
        return [c for c in self.calls if c[1] != self.obs_thread]

    # --- reference counting --------------------------------------------------------
    def _acquire(self, kind: str, obj: Any) -> Any:
        handle = _Handle(next(self._ids), kind, obj)
        self.refs[handle.id] = (kind, obj)
        return handle

    def _release(self, handle: Any, kind: str) -> None:
        if handle is None:
            return
        assert isinstance(handle, _Handle) and handle.kind == kind, f"released {handle!r} as {kind}"
        assert handle.id in self.refs, f"{kind} released twice"
        del self.refs[handle.id]

    # --- the module ------------------------------------------------------------------
    def _build_module(self) -> ModuleType:
        m = ModuleType("obspython")
        for name, value in globals().items():
            if name.isupper() and isinstance(value, int):
                setattr(m, name, value)
        fake = self

        def api(fn: Callable[..., Any]) -> Callable[..., Any]:
            def wrapper(*args: Any) -> Any:
                fake.calls.append((fn.__name__, threading.current_thread().name))
                return fn(*args)

            wrapper.__name__ = fn.__name__
            setattr(m, fn.__name__, wrapper)
            return wrapper

        # sources
        @api
        def obs_get_source_by_name(name: str) -> Any:
            src = fake.sources.get(name)
            return None if src is None else fake._acquire("source", src)

        @api
        def obs_source_release(h: Any) -> None:
            fake._release(h, "source")

        @api
        def obs_enum_sources() -> list[Any]:
            return [fake._acquire("source", s) for s in fake.sources.values()]

        @api
        def source_list_release(handles: list[Any]) -> None:
            for h in handles or []:
                fake._release(h, "source")

        @api
        def obs_source_get_name(h: Any) -> str:
            return h.obj.name

        @api
        def obs_source_get_unversioned_id(h: Any) -> str:
            return h.obj.kind

        @api
        def obs_source_update(h: Any, data: Any) -> None:
            assert h.id in fake.refs and data.id in fake.refs, "used after release"
            h.obj.settings.update(data.obj.values)
            h.obj.updates.append(dict(data.obj.values))

        @api
        def obs_get_version_string() -> str:
            return "29.0.2-fake"

        # data
        @api
        def obs_data_create() -> Any:
            return fake._acquire("data", Data())

        @api
        def obs_data_release(h: Any) -> None:
            fake._release(h, "data")

        @api
        def obs_data_array_release(h: Any) -> None:
            fake._release(h, "array")

        for typ, fallback in (("string", ""), ("int", 0), ("double", 0.0), ("bool", False)):

            def make(typ: str = typ, fallback: Any = fallback) -> None:
                def set_(d: Any, key: str, value: Any) -> None:
                    _data(d).values[key] = value

                def get(d: Any, key: str) -> Any:
                    return _data(d).get(key, fallback)

                def set_default(d: Any, key: str, value: Any) -> None:
                    _data(d).defaults[key] = value

                set_.__name__ = f"obs_data_set_{typ}"
                get.__name__ = f"obs_data_get_{typ}"
                set_default.__name__ = f"obs_data_set_default_{typ}"
                for fn in (set_, get, set_default):
                    api(fn)

            make()

        @api
        def obs_data_has_user_value(d: Any, key: str) -> bool:
            return key in _data(d).values

        @api
        def obs_data_erase(d: Any, key: str) -> None:
            _data(d).values.pop(key, None)

        @api
        def obs_data_set_array(d: Any, key: str, arr: Any) -> None:
            assert arr.id in fake.refs
            _data(d).values[key] = list(arr.obj)

        @api
        def obs_data_get_array(d: Any, key: str) -> Any:
            value = _data(d).values.get(key)
            return None if value is None else fake._acquire("array", list(value))

        # hotkeys
        @api
        def obs_hotkey_register_frontend(name: str, desc: str, cb: Callable[[bool], None]) -> int:
            hid = next(fake._ids)
            fake.hotkeys[hid] = (name, desc, cb)
            fake.hotkey_bindings[hid] = []
            return hid

        @api
        def obs_hotkey_unregister(hid: int) -> None:
            del fake.hotkeys[hid]

        @api
        def obs_hotkey_save(hid: int) -> Any:
            return fake._acquire("array", list(fake.hotkey_bindings[hid]))

        @api
        def obs_hotkey_load(hid: int, arr: Any) -> None:
            fake.hotkey_bindings[hid] = list(arr.obj) if arr is not None else []

        @api
        def script_log(level: int, text: str) -> None:
            fake.script_logs.append((level, text))

        # timers
        @api
        def timer_add(cb: Callable[[], None], ms: int) -> None:
            fake.timers.append((cb, ms))

        @api
        def timer_remove(cb: Callable[[], None]) -> None:
            fake.timers[:] = [t for t in fake.timers if t[0] is not cb]

        # properties
        @api
        def obs_properties_create() -> Properties:
            return Properties()

        @api
        def obs_properties_add_text(p: Properties, name: str, label: str, kind: int) -> Property:
            return p.add(Property(name, label, "text", text_type=kind))

        @api
        def obs_properties_add_list(
            p: Properties, name: str, label: str, kind: int, fmt: int
        ) -> Property:
            return p.add(Property(name, label, "list", combo=kind, format=fmt))

        @api
        def obs_properties_add_float_slider(
            p: Properties, name: str, label: str, lo: float, hi: float, step: float
        ) -> Property:
            return p.add(Property(name, label, "float", lo=lo, hi=hi, step=step))

        @api
        def obs_properties_add_int(
            p: Properties, name: str, label: str, lo: int, hi: int, step: int
        ) -> Property:
            return p.add(Property(name, label, "int", lo=lo, hi=hi, step=step))

        @api
        def obs_properties_add_bool(p: Properties, name: str, label: str) -> Property:
            return p.add(Property(name, label, "bool"))

        @api
        def obs_properties_add_path(
            p: Properties, name: str, label: str, kind: int, flt: str, default: str
        ) -> Property:
            return p.add(Property(name, label, "path", path_type=kind))

        @api
        def obs_properties_add_button(
            p: Properties, name: str, label: str, cb: Callable[[Any, Any], bool]
        ) -> Property:
            return p.add(Property(name, label, "button", callback=cb))

        @api
        def obs_property_list_add_string(prop: Property, label: str, value: str) -> None:
            prop.items.append((label, value))

        @api
        def obs_property_list_add_int(prop: Property, label: str, value: int) -> None:
            prop.items.append((label, value))

        @api
        def obs_property_set_long_description(prop: Property, text: str) -> None:
            prop.long_description = text

        @api
        def obs_property_text_set_info_type(prop: Property, kind: int) -> None:
            prop.extra["info_type"] = kind

        return m


class _Handle:
    """An acquired reference: what the script gets instead of a raw object."""

    def __init__(self, id: int, kind: str, obj: Any) -> None:
        self.id, self.kind, self.obj = id, kind, obj

    def __repr__(self) -> str:
        return f"<{self.kind} #{self.id} {getattr(self.obj, 'name', '')}>"


def _data(d: Any) -> Data:
    """Settings passed in by OBS are plain Data; created ones are handles."""
    return d.obj if isinstance(d, _Handle) else d
