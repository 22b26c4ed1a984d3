"""Skip a test whose requirement is missing, except under CI, where that is a failure.

`CI=true` is set by `.ci/run`: there every requirement must be present, so a missing one
must turn the run red instead of hiding behind a skip.
"""

from __future__ import annotations

import os

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(condition: bool, reason: str) -> None:
    """Skip (locally) or fail (in CI) when `condition` is false."""
    if condition:
        return
    if in_ci():
        pytest.fail(f"requirement missing in CI: {reason}")
    pytest.skip(reason)
