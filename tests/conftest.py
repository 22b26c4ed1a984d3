"""Shared fixtures; each area keeps its own in tests/fixtures_*.py."""

from tests.fixtures_model import *  # noqa: F403
from tests.fixtures_obs import *  # noqa: F403
from tests.fixtures_twitch import *  # noqa: F403
