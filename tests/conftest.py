"""Shared fixtures; each area keeps its own in tests/fixtures_*.py."""

import logging
from collections.abc import Iterator

import pytest

from tests.fixtures_model import *  # noqa: F403
from tests.fixtures_obs import *  # noqa: F403
from tests.fixtures_twitch import *  # noqa: F403


@pytest.fixture(autouse=True)
def _host_loggers_as_they_were() -> Iterator[None]:
    """A bench or CLI run inside a test may quiet the host's loggers (bench_engine sets
    `generator_host` to ERROR); later tests read those loggers' lines, so each test gets
    the levels back as they were before it."""
    names = [
        "generator_host",
        *[n for n in logging.root.manager.loggerDict if n.startswith("generator_host.")],
    ]
    levels = {name: logging.getLogger(name).level for name in names}
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("generator_host") and name not in levels:
            logging.getLogger(name).setLevel(logging.NOTSET)
