"""Atomic writes survive what Windows does to fresh files (antivirus, search indexer).

The sharing violations themselves (WinError 5/32) cannot happen on Linux, so the rename
is made to fail the way Windows makes it fail, a few times, through a stand-in for
os.replace; everything else (files, folders, the gallery) is real.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from generator_host.edges import files


def _held_for(n: int, monkeypatch: pytest.MonkeyPatch, error: OSError) -> list[float]:
    """os.replace fails `n` times with `error` (a scanner holding the file), then works."""
    real, calls = os.replace, []

    def replace(src, dst):
        calls.append(1)
        if len(calls) <= n:
            raise error
        real(src, dst)

    slept: list[float] = []
    monkeypatch.setattr(files.os, "replace", replace)
    monkeypatch.setattr(files.time, "sleep", slept.append)
    return slept


def test_a_file_held_for_a_moment_is_still_written(tmp_path: Path, monkeypatch) -> None:
    slept = _held_for(3, monkeypatch, PermissionError(13, "Access is denied"))
    target = tmp_path / "state.json"
    files.write_atomic(target, b'{"queue": []}')
    assert target.read_bytes() == b'{"queue": []}'
    assert slept == list(files.REPLACE_DELAYS[:3])
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temporary left


def test_a_file_held_for_good_fails_after_about_two_seconds(tmp_path, monkeypatch) -> None:
    slept = _held_for(99, monkeypatch, PermissionError(13, "Access is denied"))
    with pytest.raises(PermissionError):
        files.write_atomic(tmp_path / "x.png", b"png")
    assert 1.5 <= sum(slept) <= 3.0
    assert list(tmp_path.iterdir()) == []


def test_other_errors_are_not_retried(tmp_path: Path, monkeypatch) -> None:
    slept = _held_for(99, monkeypatch, OSError(28, "No space left on device"))
    with pytest.raises(OSError):
        files.write_atomic(tmp_path / "x.png", b"png")
    assert slept == []
